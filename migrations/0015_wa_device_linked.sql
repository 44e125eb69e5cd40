-- Whether the stored device is linked (has a phone number), outside the sealed value so that the save statement
-- itself can refuse to replace a linked device with an unlinked one (see PgStore::save). Rows written before
-- this migration read as unlinked until their next save.
ALTER TABLE wa_device ADD COLUMN linked boolean NOT NULL DEFAULT false;
