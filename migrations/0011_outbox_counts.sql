-- The outbox cap (WHATISUP_OUTBOX_MAX_PER_CHANNEL) without counting the queue on every send: one counter row per
-- channel, kept exact by statement-level triggers on messages (every writer, whatever its code path, moves it:
-- the accept path, the journal's status writes, expiry, deletion). The accept path locks the channel's row in its
-- transaction before inserting, so concurrent accepts on any node see each other's rows.
CREATE TABLE outbox_counts (
    channel_id text PRIMARY KEY,
    -- Messages of the channel with rank 0 (queued).
    queued     bigint NOT NULL DEFAULT 0
);
-- Updated in place on every accept batch and status change.
ALTER TABLE outbox_counts SET (fillfactor = 50);

INSERT INTO outbox_counts (channel_id, queued)
    SELECT channel_id, count(*) FROM messages WHERE rank = 0 GROUP BY channel_id;

-- One row per channel changed, in channel order (the accept path locks counters in the same order).
CREATE FUNCTION outbox_counts_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts AS c (channel_id, queued)
        SELECT channel_id, count(*) FROM new_rows WHERE rank = 0 GROUP BY channel_id ORDER BY channel_id
    ON CONFLICT (channel_id) DO UPDATE SET queued = c.queued + excluded.queued;
    RETURN NULL;
END $$;

CREATE FUNCTION outbox_counts_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts AS c (channel_id, queued)
        SELECT channel_id, sum(d) FROM (
            SELECT channel_id, -1 AS d FROM old_rows WHERE rank = 0
            UNION ALL
            SELECT channel_id, 1 AS d FROM new_rows WHERE rank = 0) x
        GROUP BY channel_id HAVING sum(d) <> 0 ORDER BY channel_id
    ON CONFLICT (channel_id) DO UPDATE SET queued = c.queued + excluded.queued;
    RETURN NULL;
END $$;

CREATE FUNCTION outbox_counts_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox_counts c SET queued = c.queued - d.n
    FROM (SELECT channel_id, count(*) AS n FROM old_rows WHERE rank = 0 GROUP BY channel_id) d
    WHERE c.channel_id = d.channel_id;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_outbox_counts_ins AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_ins();
CREATE TRIGGER messages_outbox_counts_upd AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_upd();
CREATE TRIGGER messages_outbox_counts_del AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_counts_del();
