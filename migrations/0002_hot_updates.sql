-- Channel rows are updated with every event (last_sequence) and lease rows with every renewal. Room on each page
-- lets PostgreSQL update them in place (HOT: no new index entries), which is most of the journal's write cost.
ALTER TABLE channels SET (fillfactor = 70);
ALTER TABLE session_leases SET (fillfactor = 70);
