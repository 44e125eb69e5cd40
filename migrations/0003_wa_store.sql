-- The whatsapp-rust store (src/engine/whatsapp/store.rs): one set of rows per channel.
--
-- Every table is keyed by channel_id plus the natural key the store traits look up by. Keys (addresses, JIDs, ids)
-- are plaintext because they appear in WHERE clauses; every value is one AES-GCM blob (`sealed`) sealed under the
-- master key named by `kid`, with an AAD of (channel id, table, natural key), so a blob copied to another row or
-- channel does not open. The only other plaintext columns are the timestamps and flags that the traits' expiry,
-- merge and newer-wins rules compare in SQL.
--
-- Ciphertext does not compress: STORAGE EXTERNAL makes large values go to TOAST without a futile compression try.
-- Rows rewritten on every message (sessions, sender keys) leave room on their page for HOT updates.

CREATE TABLE wa_device (
    channel_id  text PRIMARY KEY REFERENCES channels(id) ON DELETE CASCADE,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Signal addresses are `user@server` or `user:device@server`; has_signal_state_for_user looks them up by the
-- prefix `user@` / `user:` as a byte range, which needs the C collation.
CREATE TABLE wa_identities (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    address     text COLLATE "C" NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, address)
);

CREATE TABLE wa_sessions (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    address     text COLLATE "C" NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, address)
) WITH (fillfactor = 80);
ALTER TABLE wa_sessions ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- Prekey ids are u32, beyond int4.
CREATE TABLE wa_prekeys (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    id          bigint NOT NULL,
    uploaded    boolean NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, id)
);

CREATE TABLE wa_signed_prekeys (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    id          bigint NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, id)
);

CREATE TABLE wa_sender_keys (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    address     text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, address)
) WITH (fillfactor = 80);
ALTER TABLE wa_sender_keys ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- set_seq is drawn again on every set, so the highest one is the most recently stored key
-- (get_latest_sync_key_id), whatever the key ids' order.
CREATE TABLE wa_app_state_sync_keys (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    key_id      bytea NOT NULL,
    set_seq     bigserial,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, key_id)
);
CREATE INDEX wa_app_state_sync_keys_latest ON wa_app_state_sync_keys (channel_id, set_seq DESC);

CREATE TABLE wa_app_state_versions (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    name        text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, name)
);
ALTER TABLE wa_app_state_versions ALTER COLUMN sealed SET STORAGE EXTERNAL;

CREATE TABLE wa_app_state_mutation_macs (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    name        text NOT NULL,
    index_mac   bytea NOT NULL,
    version     bigint NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, name, index_mac)
);

-- delete_sender_key_device_rows removes a device from every group.
CREATE TABLE wa_sender_key_devices (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    group_jid   text NOT NULL,
    device_jid  text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, group_jid, device_jid)
);
CREATE INDEX wa_sender_key_devices_device ON wa_sender_key_devices (channel_id, device_jid);

-- get_pn_mapping answers with the mapping most recently put among the LIDs now mapped to the phone number:
-- put_seq is drawn again on every put.
CREATE TABLE wa_lid_pn_mappings (
    channel_id    text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    lid           text NOT NULL,
    phone_number  text NOT NULL,
    put_seq       bigserial,
    kid           text NOT NULL,
    sealed        bytea NOT NULL,
    PRIMARY KEY (channel_id, lid)
);
CREATE INDEX wa_lid_pn_mappings_phone ON wa_lid_pn_mappings (channel_id, phone_number, put_seq DESC);

CREATE TABLE wa_base_keys (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    address     text NOT NULL,
    message_id  text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, address, message_id)
);

CREATE TABLE wa_device_lists (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    jid_user    text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, jid_user)
);

CREATE TABLE wa_group_metadata (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    group_jid   text NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, group_jid)
);
ALTER TABLE wa_group_metadata ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- The token bytes are sealed; whether there are any, and the two timestamps, drive the newer-wins upsert, the
-- sender-bucket max and the expiry sweep in SQL.
CREATE TABLE wa_tc_tokens (
    channel_id        text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    jid               text NOT NULL,
    has_token         boolean NOT NULL,
    token_timestamp   bigint NOT NULL,
    sender_timestamp  bigint,
    kid               text NOT NULL,
    sealed            bytea NOT NULL,
    PRIMARY KEY (channel_id, jid)
);

-- created_at is unix seconds from the client's clock, the clock its expiry cutoffs come from.
CREATE TABLE wa_sent_messages (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    chat_jid    text NOT NULL,
    message_id  text NOT NULL,
    created_at  bigint NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, chat_jid, message_id)
);
CREATE INDEX wa_sent_messages_created ON wa_sent_messages (channel_id, created_at);
ALTER TABLE wa_sent_messages ALTER COLUMN sealed SET STORAGE EXTERNAL;

CREATE TABLE wa_pending_inbound (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    chat_jid    text NOT NULL,
    sender_jid  text NOT NULL,
    message_id  text NOT NULL,
    created_at  bigint NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, chat_jid, sender_jid, message_id)
);
CREATE INDEX wa_pending_inbound_created ON wa_pending_inbound (channel_id, created_at);
ALTER TABLE wa_pending_inbound ALTER COLUMN sealed SET STORAGE EXTERNAL;

-- expires_at 0 means never; only rows with a deadline are swept.
CREATE TABLE wa_msg_secrets (
    channel_id  text NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    chat_jid    text NOT NULL,
    sender_jid  text NOT NULL,
    message_id  text NOT NULL,
    expires_at  bigint NOT NULL,
    message_ts  bigint NOT NULL,
    kid         text NOT NULL,
    sealed      bytea NOT NULL,
    PRIMARY KEY (channel_id, chat_jid, sender_jid, message_id)
);
CREATE INDEX wa_msg_secrets_expiry ON wa_msg_secrets (channel_id, expires_at) WHERE expires_at <> 0;
