-- Webhook delivery claims: the claim UPDATE sets only locked_until/locked_by (no indexed column), so with room on
-- the page it is a HOT update and writes no entry into the five indexes of the table; at fillfactor 100 pages are
-- full after the fan-out INSERTs and every claim wrote five index entries (and bloated the due index it scans).
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
