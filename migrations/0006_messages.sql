-- Outbound messages: the durable outbox and each message's status history.
-- A row is committed before the API answers 202; the session that owns the channel sends queued rows in qseq
-- order. wa_id (the WhatsApp message id) is fixed at insert, before any send, so a send repeated after a crash
-- carries the same id and WhatsApp's servers drop the duplicate.
CREATE TABLE messages (
    id           text PRIMARY KEY,
    qseq         bigserial NOT NULL,
    customer_id  text NOT NULL,
    mode         text NOT NULL,
    channel_id   text NOT NULL REFERENCES channels(id),
    wa_id        text NOT NULL,
    to_addr      text NOT NULL,
    type         text NOT NULL,
    -- What is sent: {"text": ..., "reply_to": ...}. Kept for the message's lifetime (GET shows it).
    body         jsonb NOT NULL,
    client_ref   text,
    status       text NOT NULL DEFAULT 'queued',
    -- Order of statuses: queued 0, sent 1, delivered 2, read 3, played 4, failed 9 (final). Only forward moves.
    rank         smallint NOT NULL DEFAULT 0,
    error        jsonb,
    -- [{"status", "at", "error"?}], one entry per status reached.
    history      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    sent_at      timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- The outbox: queued rows of a channel in order (small: rows leave it when sent or failed).
CREATE INDEX messages_outbox ON messages (channel_id, qseq) WHERE rank = 0;
-- Receipts name the WhatsApp id.
CREATE INDEX messages_wa_id ON messages (channel_id, wa_id);
-- client_ref de-duplication (24 h window, enforced by the API; an older holder gives its ref up).
CREATE UNIQUE INDEX messages_client_ref ON messages (channel_id, client_ref) WHERE client_ref IS NOT NULL;
-- Status changes update rows in place.
ALTER TABLE messages SET (fillfactor = 80);

-- Per-channel pacing overrides (null: the server's WHATISUP_SEND_RATE_PER_SEC / WHATISUP_SEND_BURST).
ALTER TABLE channels ADD COLUMN send_rate_per_sec double precision, ADD COLUMN send_burst int;

-- Idempotency-Key: one row per (customer, key) for 24 h. A running request holds the row (state 'running'); a
-- duplicate waits for its stored answer. request_hash covers method, path and body.
CREATE TABLE idempotency_keys (
    customer_id   text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    state         text NOT NULL DEFAULT 'running',
    status        int,
    content_type  text,
    body          bytea,
    locked_at     timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (customer_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- The sandbox's simulated WhatsApp server: what it accepted, by WhatsApp id, so that a re-send after a gateway
-- crash is recognised (and counted) as a duplicate, as WhatsApp does. Tests read it through the sandbox API.
CREATE TABLE sandbox_accepted (
    channel_id   text NOT NULL,
    wa_id        text NOT NULL,
    to_addr      text NOT NULL,
    body         jsonb NOT NULL,
    duplicates   int NOT NULL DEFAULT 0,
    accepted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, wa_id)
);
