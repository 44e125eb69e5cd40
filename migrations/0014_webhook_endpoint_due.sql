-- Per-endpoint due rows, for the claim that skips saturated hosts (see CLAIM_FAIR_SQL in
-- src/webhooks/dispatcher.rs). Its predicate is worded differently from webhook_deliveries_due's on purpose: only
-- a query that says `status NOT IN ('success', 'failed')` can use it, so the planner cannot trade it for the due
-- index (and the due index's ordered scan stays the plan of the ordinary claim).
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status NOT IN ('success', 'failed');
