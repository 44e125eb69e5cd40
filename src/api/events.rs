//! The event stream: gRPC `StreamEvents` here; SSE in `crate::http` over the same subscription.

use super::App;
use crate::error::{ApiError, ApiResult, Code};
use crate::events::Filter;
use crate::events::stream::Subscription;
use crate::metrics::GaugeGuard;
use crate::model::Principal;
use crate::pb;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::{Request, Response, Status as GrpcStatus};

/// Counts an open stream against WHATISUP_MAX_STREAMS.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn valid_event_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_' || b == b'*')
}

impl App {
    /// Validates a stream request and opens the subscription (replay after `after`, then live).
    pub async fn open_stream(
        &self,
        p: &Principal,
        channel_id: &str,
        events: Vec<String>,
        after: Option<&str>,
    ) -> ApiResult<(Subscription, StreamSlot)> {
        let after = match after.map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::invalid("last_event_id", "not a cursor from this stream")
            })?),
        };
        let patterns: Vec<String> = events
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if let Some(bad) = patterns.iter().find(|e| !valid_event_pattern(e)) {
            return Err(ApiError::invalid(
                "events",
                format!("\"{bad}\" is not an event name or pattern"),
            ));
        }
        let channel_id = match (channel_id, &p.channel_id) {
            ("", None) => None,
            ("", Some(bound)) => Some(bound.clone()),
            (c, _) => {
                let client = self.pool.get().await?;
                crate::store::channels::get_visible(&client, p, c).await?;
                Some(c.to_string())
            }
        };
        let open = self.open_streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.open_streams.clone());
        if open >= self.cfg.max_streams {
            return Err(ApiError::new(
                Code::Unavailable,
                "this node serves as many streams as it may",
            ));
        }
        let filter = Filter {
            customer_id: p.customer_id.clone(),
            mode: p.mode,
            channel_id,
            patterns,
        };
        Ok((
            Subscription::new(&self.hub, self.pool.clone(), filter, after),
            slot,
        ))
    }
}

/// Response metadata of StreamEvents: the cursor the stream starts at (pass it as `after_cursor` to resume).
pub const CURSOR_HEADER: &str = "whatisup-cursor";

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, GrpcStatus>> + Send>>;

pub struct EventGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventGrpc {
    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        r: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<EventStream>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        // Set on every route by the router: at shutdown the stream ends (UNAVAILABLE, resume from the last
        // cursor) so the server can drain and clients move on at once, as SSE streams do.
        let stop = r
            .extensions()
            .get::<crate::http::Stopping>()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        let req = r.into_inner();
        let after = (!req.after_cursor.is_empty()).then_some(req.after_cursor.as_str());
        let (sub, slot) = self
            .0
            .open_stream(&p, &req.channel_id, req.events, after)
            .await?;
        // The start position goes out in the response headers, so a client that started live and loses the
        // stream before its first event can still resume without a gap.
        let position = sub.position();
        let guard = GaugeGuard::new(self.0.metrics.subscribers.with_label_values(&["grpc"]));
        let stream = futures::stream::unfold(
            (sub, slot, guard, stop, false),
            |(mut sub, slot, guard, stop, done)| async move {
                if done {
                    return None;
                }
                let item = tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        let e = ApiError::unavailable(
                            "the gateway is shutting down; resume from the last cursor",
                        );
                        return Some((Err(GrpcStatus::from(e)), (sub, slot, guard, stop, true)));
                    }
                    item = sub.next() => item?,
                };
                let out = item
                    .map(|e| pb::StreamEventsResponse {
                        event: Some(e.to_pb()),
                        cursor: e.id.to_string(),
                    })
                    .map_err(GrpcStatus::from);
                Some((out, (sub, slot, guard, stop, false)))
            },
        );
        let mut resp = Response::new(Box::pin(stream) as EventStream);
        if let Ok(v) = position.to_string().parse() {
            resp.metadata_mut().insert(CURSOR_HEADER, v);
        }
        Ok(resp)
    }
}
