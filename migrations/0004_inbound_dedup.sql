-- WhatsApp redelivers an inbound message whose ack was lost (a crash between our commit and the ack). The session
-- looks up what it already committed by message id, so a redelivery adds no second `message.received`.
CREATE INDEX events_inbound_message ON events (channel_id, (data->>'message_id'))
    WHERE event = 'message.received';
