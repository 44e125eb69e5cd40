-- Customers: the isolation boundary. Every query below filters on customer_id.
CREATE TABLE customers (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as a keyed hash (HMAC-SHA256 under a key derived from the master key) plus a display prefix.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES customers(id),
    name          text NOT NULL,
    mode          text NOT NULL CHECK (mode IN ('live', 'test')),
    key_hash      bytea NOT NULL UNIQUE,
    hash_kid      text NOT NULL,
    prefix        text NOT NULL,
    channel_id    text,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_customer ON api_keys (customer_id, created_at DESC);

CREATE TABLE channels (
    id                  text PRIMARY KEY,
    customer_id         text NOT NULL REFERENCES customers(id),
    mode                text NOT NULL CHECK (mode IN ('live', 'test')),
    engine              text NOT NULL CHECK (engine IN ('whatsapp', 'sandbox')),
    name                text NOT NULL,
    status              text NOT NULL DEFAULT 'pending',
    status_reason       text,
    status_since        timestamptz NOT NULL DEFAULT now(),
    phone_number        text,
    metadata            jsonb NOT NULL DEFAULT '{}',
    qr_code             text,
    qr_expires_at       timestamptz,
    pair_code           text,
    pair_code_expires_at timestamptz,
    -- The last per-channel event sequence handed out; bumped in the transaction that inserts the events.
    last_sequence       bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_connected_at   timestamptz,
    deleted_at          timestamptz
);
CREATE INDEX channels_customer_list ON channels (customer_id, mode, id DESC) WHERE deleted_at IS NULL;
-- Channels that some node must be running: scanned for orphans (their owner died).
CREATE INDEX channels_active ON channels (status) WHERE deleted_at IS NULL
    AND status IN ('qr', 'connecting', 'connected', 'reconnecting');

-- Sealed engine state (the WhatsApp device keys; the sandbox's simulated keys). kid names the master key
-- that sealed it, so the master key can be rotated.
CREATE TABLE session_state (
    channel_id  text PRIMARY KEY REFERENCES channels(id),
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per live session: the node that runs it, until when, and a fencing token that grows with every
-- change of owner. Writes of session state and status check (node_id, token).
CREATE TABLE session_leases (
    channel_id  text PRIMARY KEY REFERENCES channels(id),
    node_id     text NOT NULL,
    token       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX session_leases_node ON session_leases (node_id);

-- The durable event log. id is the global resume cursor: rows are inserted under a transaction-level advisory
-- lock, so ids become visible in commit order and a reader that has seen id N has seen everything below it.
CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    customer_id  text NOT NULL,
    mode         text NOT NULL,
    channel_id   text NOT NULL,
    sequence     bigint NOT NULL,
    event        text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    data         jsonb NOT NULL,
    UNIQUE (channel_id, sequence)
);
CREATE INDEX events_customer ON events (customer_id, id);

-- Append-only record of every customer-visible change; outlives what it refers to (no foreign keys).
CREATE TABLE audit_events (
    id           bigserial PRIMARY KEY,
    audit_id     text NOT NULL UNIQUE,
    customer_id  text NOT NULL,
    mode         text,
    actor        text NOT NULL,
    action       text NOT NULL,
    resource     text NOT NULL,
    channel_id   text,
    data         jsonb NOT NULL DEFAULT '{}',
    request_id   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_customer ON audit_events (customer_id, id DESC);
