//! Durable webhooks (contract §7).
//!
//! - `endpoints`: the endpoints and their sealed signing secrets (API methods on `App`).
//! - `deliveries`: one row per (event, matching endpoint), created by the journal in the event's own
//!   transaction (`FANOUT_*`), and one row per attempt; listing, redelivery, recovery.
//! - `dispatcher`: a task on every node that claims due rows with `FOR UPDATE SKIP LOCKED` under a lease,
//!   sends them, and records each attempt and the delivery's next state in one transaction.
//! - `signing`: Standard Webhooks and `X-WhatIsUp-Signature` signatures.
//! - `ssrf`: the outbound address guard (reusable by any fetch of a user-supplied URL).

pub mod deliveries;
pub mod dispatcher;
pub mod endpoints;
pub mod signing;
pub mod ssrf;

use crate::config::Config;
use anyhow::Context;
use std::time::Duration;

/// Webhook settings, parsed once at start (a bad value stops the start with a clear message).
#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    pub per_host: usize,
    pub max_in_flight: usize,
    pub disable_after: Duration,
    pub guard: ssrf::Guard,
    pub retention_days: u32,
    pub poll: Duration,
}

/// Most entries in a retry schedule, and the longest delay one may name.
pub const MAX_SCHEDULE: usize = 20;
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

impl Settings {
    pub fn from_config(c: &Config) -> anyhow::Result<Settings> {
        Ok(Settings {
            schedule: parse_schedule(&c.webhook_retry_schedule)
                .map_err(anyhow::Error::msg)
                .context("WHATISUP_WEBHOOK_RETRY_SCHEDULE")?,
            timeout: Duration::from_millis(c.webhook_timeout_ms.clamp(100, 120_000)),
            per_host: c.webhook_per_host.max(1),
            max_in_flight: c.webhook_max_in_flight.clamp(1, 10_000),
            disable_after: parse_duration(&c.webhook_disable_after)
                .map_err(anyhow::Error::msg)
                .context("WHATISUP_WEBHOOK_DISABLE_AFTER")?,
            guard: ssrf::Guard::new(
                ssrf::Cidr::parse_list(&c.webhook_allow_cidrs)
                    .map_err(anyhow::Error::msg)
                    .context("WHATISUP_WEBHOOK_ALLOW_CIDRS")?,
            ),
            retention_days: c.webhook_retention_days,
            poll: Duration::from_millis(c.webhook_poll_ms.clamp(10, 60_000)),
        })
    }
}

/// `500ms`, `10s`, `5m`, `2h`, `5d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 5m, 2h or 5d"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration like 10s, 5m, 2h or 5d"))?;
    Ok(Duration::from_millis(ms))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if !ms.is_multiple_of(1_000) {
        format!("{ms}ms")
    } else {
        let s = ms / 1_000;
        if s > 0 && s.is_multiple_of(86_400) {
            format!("{}d", s / 86_400)
        } else if s > 0 && s.is_multiple_of(3_600) {
            format!("{}h", s / 3_600)
        } else if s > 0 && s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

/// A comma list of delays; at most `MAX_SCHEDULE`, each at most `MAX_DELAY`. Empty means no retries.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    parse_schedule_items(s.split(',').filter(|p| !p.trim().is_empty()))
}

pub fn parse_schedule_items<'a>(
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<Duration>, String> {
    let v: Vec<Duration> = items.map(parse_duration).collect::<Result<_, _>>()?;
    if v.len() > MAX_SCHEDULE {
        return Err(format!("at most {MAX_SCHEDULE} retries"));
    }
    if v.iter().any(|d| *d > MAX_DELAY || d.is_zero()) {
        return Err("each delay is between 1ms and 7d".into());
    }
    Ok(v)
}

/// ±20 % jitter, so that receivers recovering from an outage are not hit by every retry at once.
pub fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let f: f64 = rand::thread_rng().gen_range(0.8..=1.2);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_schedule("10s,60s,5m,30m,2h").map(|v| v.len()), Ok(5));
        assert!(parse_schedule("8d").is_err());
        for d in ["250ms", "10s", "5m", "2h", "5d"] {
            assert_eq!(format_duration(parse_duration(d).expect("d")), d);
        }
        let j = jitter(Duration::from_secs(10));
        assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12));
    }
}
