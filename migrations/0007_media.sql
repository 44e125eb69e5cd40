-- Media: uploads (POST /v1/channels/{id}/media), bytes fetched from a send's media_url, and inbound media.
-- The bytes live in PostgreSQL so that any node can send or serve them (scale-out); rows expire (retention) and
-- a cleanup task deletes them.

CREATE TABLE media (
    id          text PRIMARY KEY,
    customer_id text NOT NULL,
    channel_id  text NOT NULL,
    -- upload | url | inbound
    origin      text NOT NULL,
    mime_type   text NOT NULL,
    filename    text,
    size        bigint NOT NULL,
    sha256      bytea NOT NULL,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX media_channel ON media (channel_id, id);
CREATE INDEX media_expiry ON media (expires_at);
-- Large values are compressed poorly (images, video are compressed already): store them out of line as they are.
ALTER TABLE media ALTER COLUMN data SET STORAGE EXTERNAL;
