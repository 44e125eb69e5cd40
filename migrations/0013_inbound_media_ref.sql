-- Inbound media of the real WhatsApp engine is stored before its `message.received` is committed. WhatsApp
-- redelivers a message whose ack was lost (a crash between our commit and the ack); the media is then found again
-- by the message it came with (`source_ref`: sender and WhatsApp message id) instead of being downloaded and
-- stored a second time.
ALTER TABLE media ADD COLUMN source_ref text;
CREATE UNIQUE INDEX media_source_ref ON media (channel_id, source_ref) WHERE source_ref IS NOT NULL;
