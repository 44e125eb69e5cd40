-- Inbound reactions (`message.reaction`) are de-duplicated like messages (a redelivery after a lost ack adds
-- nothing): the session looks them up by the reaction's own WhatsApp id.
CREATE INDEX events_inbound_reaction ON events (channel_id, (data->>'reaction_id'))
    WHERE event = 'message.reaction';
