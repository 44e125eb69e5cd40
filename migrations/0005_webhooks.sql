-- Webhooks: endpoints, one delivery row per (event, matching endpoint) written in the event's own transaction,
-- and one row per attempt.

CREATE TABLE webhook_endpoints (
    id                    text PRIMARY KEY,
    customer_id           text NOT NULL,
    mode                  text NOT NULL,
    url                   text NOT NULL,
    description           text NOT NULL DEFAULT '',
    -- Exact names or `prefix.*`; empty matches every event.
    events                text[] NOT NULL DEFAULT '{}',
    channel_id            text,
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    -- Milliseconds between attempts; NULL follows the server's schedule.
    retry_schedule        int[],
    -- The signing secret, sealed under the master key (AAD = endpoint id).
    secret_kid            text NOT NULL,
    secret_sealed         bytea NOT NULL,
    -- The secret before the last rotation, still signing until old_secret_expires_at.
    old_secret_kid        text,
    old_secret_sealed     bytea,
    old_secret_expires_at timestamptz,
    -- Set at the first failed attempt after a success; an endpoint failing for too long is disabled.
    failing_since         timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
-- The journal's fan-out join: enabled endpoints of one customer and mode.
CREATE INDEX webhook_endpoints_match ON webhook_endpoints (customer_id, mode) WHERE enabled;
CREATE INDEX webhook_endpoints_list ON webhook_endpoints (customer_id, mode, id DESC);

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    -- The payload is the event row, rendered as the envelope at send time (deterministic, so every attempt sends
    -- the same bytes); nothing is copied per endpoint.
    event_row        bigint NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    event            text NOT NULL,
    channel_id       text NOT NULL,
    customer_id      text NOT NULL,
    mode             text NOT NULL,
    -- pending | retrying | success | failed
    status           text NOT NULL DEFAULT 'pending',
    attempts         int NOT NULL DEFAULT 0,
    -- Scheduled attempts made in the current round (indexes the retry schedule).
    round_attempts   int NOT NULL DEFAULT 0,
    -- A manual redelivery is tried once, not rescheduled.
    manual           boolean NOT NULL DEFAULT false,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- The claim of a dispatcher; a claim whose node died expires and the row is due again.
    locked_until     timestamptz,
    locked_by        text,
    last_http_status int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (customer_id, mode, id DESC);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_row);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at)
    WHERE status IN ('success', 'failed');

CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempted_at     timestamptz NOT NULL,
    duration_ms      int NOT NULL,
    http_status      int,
    error            text,
    -- The first bytes of the response body (capped).
    response_excerpt text,
    -- scheduled | manual
    trigger_type     text NOT NULL,
    node_id          text NOT NULL,
    -- When the delivery was scheduled next after this attempt (NULL: it is finished).
    next_attempt_at  timestamptz
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
