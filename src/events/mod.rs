//! Events: the journal (the only writer of channel status and the event log), the hub (LISTEN/NOTIFY fed
//! fan-out of committed rows to every node) and subscriptions (replay from the log, then live).

pub mod hub;
pub mod journal;
pub mod stream;

pub use hub::Hub;
pub use journal::{Fence, Journal, MessageChange, MessageWrite, Op, OpOutcome, StateWrite};
pub use stream::Filter;

/// `message.*` style patterns; empty matches everything.
pub fn matches(patterns: &[String], event: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event.starts_with(prefix),
            None => p == event,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        let p = vec!["message.*".to_string(), "qr.updated".to_string()];
        assert!(super::matches(&p, "message.received"));
        assert!(super::matches(&p, "qr.updated"));
        assert!(!super::matches(&p, "channel.connected"));
        assert!(super::matches(&[], "anything"));
    }
}
