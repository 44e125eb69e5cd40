//! The domain core and its gRPC faces. Every operation is one method on `App` taking the caller (`Principal`)
//! and a proto request; gRPC (here) and REST (`crate::http`) are thin adapters over the same methods.

pub mod audit;
pub mod channels;
pub mod events;
pub mod keys;
pub mod media;
pub mod messages;
pub mod sandbox;
pub mod webhooks;

use crate::config::Config;
use crate::crypto::{self, MasterKeys};
use crate::error::{ApiError, ApiResult, Code};
use crate::events::{Hub, Journal};
use crate::metrics::Metrics;
use crate::model::Principal;
use crate::sessions::Node;
use crate::store::keys as key_store;
use chrono::Utc;
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a resolved key is trusted without asking the database again. A revocation on this node applies
/// at once; on another node within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
const KEY_CACHE_MAX: usize = 10_000;

pub struct App {
    pub cfg: Arc<Config>,
    pub pool: Pool,
    pub keys: Arc<MasterKeys>,
    pub journal: Journal,
    pub hub: Arc<Hub>,
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    pub open_streams: Arc<AtomicUsize>,
    pub webhooks: Arc<crate::webhooks::Settings>,
    /// Group commit of accepted sends (the outbox).
    pub outbox: crate::store::messages::Accepter,
    pub media: Arc<crate::media::Media>,
    key_cache: Mutex<HashMap<Vec<u8>, (CachedKey, Instant)>>,
}

#[derive(Clone)]
struct CachedKey {
    principal: Principal,
    expires_at: Option<chrono::DateTime<Utc>>,
    revoked: bool,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        pool: Pool,
        keys: Arc<MasterKeys>,
        journal: Journal,
        hub: Arc<Hub>,
        node: Arc<Node>,
        metrics: Arc<Metrics>,
        webhooks: Arc<crate::webhooks::Settings>,
        media: Arc<crate::media::Media>,
    ) -> App {
        let limiter = RateLimiter::new(cfg.rate_limit_burst, cfg.rate_limit_per_sec);
        let outbox =
            crate::store::messages::Accepter::spawn(&cfg.database_url, cfg.outbox_max_per_channel);
        App {
            cfg,
            pool,
            keys,
            journal,
            hub,
            node,
            metrics,
            limiter,
            open_streams: Arc::new(AtomicUsize::new(0)),
            webhooks,
            outbox,
            media,
            key_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `Authorization: Bearer <key>` (or a bare key from `?token=`) to a principal, and charges the
    /// key's rate-limit bucket.
    pub async fn authenticate(&self, authorization: Option<&str>) -> ApiResult<Principal> {
        let Some(value) = authorization else {
            return Err(ApiError::new(
                Code::AuthMissing,
                "missing Authorization: Bearer <api key>",
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    Code::AuthMalformed,
                    "Authorization must be \"Bearer <api key>\"",
                )
            })?;
        self.authenticate_token(token).await
    }

    pub async fn authenticate_token(&self, token: &str) -> ApiResult<Principal> {
        if crypto::api_key_well_formed(token).is_none() {
            return Err(ApiError::new(
                Code::AuthMalformed,
                "not a whatisup API key (zpk_live_… or zpk_test_…)",
            ));
        }
        let hashes = self.keys.api_key_lookup_hashes(token);
        let cached = {
            let cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&hashes[0])
                .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
                .map(|(k, _)| k.clone())
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let client = self.pool.get().await?;
                let row = key_store::find_by_hashes(&client, &hashes).await?;
                let Some(row) = row else {
                    return Err(ApiError::new(Code::AuthInvalid, "unknown API key"));
                };
                let _ = key_store::touch(&client, &row.id).await;
                let k = CachedKey {
                    principal: row.principal(),
                    expires_at: row.expires_at,
                    revoked: row.revoked_at.is_some(),
                };
                let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= KEY_CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
                }
                cache.insert(hashes[0].clone(), (k.clone(), Instant::now()));
                k
            }
        };
        if key.revoked || key.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(ApiError::new(
                Code::AuthExpired,
                "this API key has expired or was revoked",
            ));
        }
        let rate = self.limiter.take(&key.principal.key_id);
        crate::http::set_rate(rate);
        if rate.remaining < 0 {
            let mut e = ApiError::new(
                Code::RateLimited,
                "rate limit exceeded; retry after the indicated time",
            );
            e.retry_after = Some(rate.retry_after.max(1));
            return Err(e);
        }
        Ok(key.principal)
    }

    pub fn forget_key(&self, key_id: &str) {
        let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (k, _)| k.principal.key_id != key_id);
    }

    /// gRPC: the principal from `authorization` metadata.
    pub async fn authenticate_grpc<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<Principal, tonic::Status> {
        let value = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        Ok(self.authenticate(value).await?)
    }
}

fn actor(p: &Principal) -> String {
    format!("key:{}", p.key_id)
}

#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    /// Negative when the request was refused.
    pub remaining: i64,
    /// Unix seconds when the bucket is full again.
    pub reset: i64,
    /// Seconds until one token is available.
    pub retry_after: u64,
}

/// A token bucket per API key.
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_sec: u32) -> RateLimiter {
        RateLimiter {
            burst: burst.max(1) as f64,
            per_sec: per_sec.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn take(&self, key: &str) -> RateInfo {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets
                .retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * per_sec < burst);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        let remaining = if allowed { tokens.floor() as i64 } else { -1 };
        let to_full = (self.burst - *tokens) / self.per_sec;
        let retry_after = if allowed {
            0
        } else {
            ((1.0 - *tokens) / self.per_sec).ceil() as u64
        };
        RateInfo {
            limit: self.burst as u32,
            remaining,
            reset: Utc::now().timestamp() + to_full.ceil() as i64,
            retry_after,
        }
    }

    /// The key's bucket as it stands, without charging it.
    pub fn peek(&self, key: &str) -> RateInfo {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let tokens = match buckets.get(key) {
            Some((tokens, at)) => {
                (*tokens + at.elapsed().as_secs_f64() * self.per_sec).min(self.burst)
            }
            None => self.burst,
        };
        let to_full = (self.burst - tokens) / self.per_sec;
        RateInfo {
            limit: self.burst as u32,
            remaining: tokens.floor() as i64,
            reset: Utc::now().timestamp() + to_full.ceil() as i64,
            retry_after: 0,
        }
    }

    /// Tokens added per second.
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    pub fn idle(&self) -> RateInfo {
        RateInfo {
            limit: self.burst as u32,
            remaining: self.burst as i64,
            reset: Utc::now().timestamp(),
            retry_after: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_past_burst_and_refills() {
        // 1/s: a slow machine between two takes cannot refill a token (at 1000/s a 1 ms pause did, in CI).
        let l = RateLimiter::new(3, 1);
        for expected in [2, 1, 0] {
            assert_eq!(l.take("k").remaining, expected);
        }
        let refused = RateLimiter::new(1, 1);
        assert_eq!(refused.take("a").remaining, 0);
        let r = refused.take("a");
        assert_eq!(r.remaining, -1);
        assert_eq!(r.retry_after, 1);
        assert_eq!(refused.take("b").remaining, 0, "buckets are per key");
        let fast = RateLimiter::new(3, 1000);
        for _ in 0..4 {
            fast.take("k");
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            fast.take("k").remaining >= 0,
            "1000/s refills within milliseconds"
        );
    }
}
