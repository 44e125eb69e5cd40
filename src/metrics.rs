//! Prometheus metrics, served at /metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub channels: IntGaugeVec,
    pub transitions: IntCounterVec,
    pub events_committed: IntCounter,
    pub hub_fetches: IntCounter,
    pub subscribers: IntGaugeVec,
    pub sessions: IntGauge,
    pub http: HistogramVec,
    pub journal_batch: Histogram,
    pub webhook_queue: IntGauge,
    pub webhook_attempts: IntCounterVec,
    pub webhook_attempt_seconds: Histogram,
    pub webhook_delivery_latency: Histogram,
    pub messages_accepted: IntCounter,
    pub messages_sent: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("whatisup".into()), None).expect("static prefix is valid");
        let channels = IntGaugeVec::new(
            Opts::new("channels", "Channels by status (not deleted)"),
            &["status"],
        )
        .expect("valid");
        let transitions = IntCounterVec::new(
            Opts::new(
                "status_transitions_total",
                "Channel status transitions committed by this node",
            ),
            &["from", "to"],
        )
        .expect("valid");
        let events_committed =
            IntCounter::new("events_committed_total", "Events committed by this node")
                .expect("valid");
        let hub_fetches = IntCounter::new(
            "hub_fetches_total",
            "Reads of newly committed events by the hub",
        )
        .expect("valid");
        let subscribers = IntGaugeVec::new(
            Opts::new("stream_subscribers", "Open event streams"),
            &["kind"],
        )
        .expect("valid");
        let sessions = IntGauge::new("sessions_local", "Sessions this node runs").expect("valid");
        let http = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "HTTP and gRPC request latency")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
            &["protocol", "route", "status"],
        )
        .expect("valid");
        let journal_batch = Histogram::with_opts(
            HistogramOpts::new("journal_batch_ops", "Ops per journal transaction").buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("valid");
        let webhook_queue = IntGauge::new(
            "webhook_queue_depth",
            "Webhook deliveries waiting for an attempt (pending or retrying), all nodes",
        )
        .expect("valid");
        let webhook_attempts = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook attempts by this node, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid");
        let webhook_attempt_seconds = Histogram::with_opts(
            HistogramOpts::new("webhook_attempt_seconds", "Duration of one webhook attempt")
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
                ]),
        )
        .expect("valid");
        let webhook_delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_delivery_latency_seconds",
                "From the event to its successful webhook delivery",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
            ]),
        )
        .expect("valid");
        for outcome in ["success", "http_error", "network_error", "gone"] {
            webhook_attempts.with_label_values(&[outcome]);
        }
        let messages_accepted = IntCounter::new(
            "messages_accepted_total",
            "Outbound messages stored by this node's API",
        )
        .expect("valid");
        let messages_sent = IntCounter::new(
            "messages_sent_total",
            "Outbound messages this node's sessions handed to WhatsApp",
        )
        .expect("valid");
        for kind in ["sse", "grpc"] {
            subscribers.with_label_values(&[kind]).set(0);
        }
        for c in [
            Box::new(channels.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transitions.clone()),
            Box::new(events_committed.clone()),
            Box::new(hub_fetches.clone()),
            Box::new(subscribers.clone()),
            Box::new(sessions.clone()),
            Box::new(http.clone()),
            Box::new(journal_batch.clone()),
            Box::new(webhook_queue.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(webhook_attempt_seconds.clone()),
            Box::new(webhook_delivery_latency.clone()),
            Box::new(messages_accepted.clone()),
            Box::new(messages_sent.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            channels,
            transitions,
            events_committed,
            hub_fetches,
            subscribers,
            sessions,
            http,
            journal_batch,
            webhook_queue,
            webhook_attempts,
            webhook_attempt_seconds,
            webhook_delivery_latency,
            messages_accepted,
            messages_sent,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Decrements a gauge when a stream ends, however it ends.
pub struct GaugeGuard(pub IntGauge);

impl GaugeGuard {
    pub fn new(g: IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
