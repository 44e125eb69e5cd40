//! A subscription: replay from the log after a cursor, then live from the hub, with no gap and no duplicate.
//! A subscriber that falls behind the hub's buffer goes back to the log (nothing is dropped).

use super::hub::{Hub, Shared};
use crate::error::{ApiError, ApiResult};
use crate::model::Mode;
use crate::store::events;
use deadpool_postgres::Pool;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

const PAGE: i64 = 500;

#[derive(Debug, Clone)]
pub struct Filter {
    pub customer_id: String,
    pub mode: Mode,
    pub channel_id: Option<String>,
    pub patterns: Vec<String>,
}

impl Filter {
    fn admits(&self, e: &events::EventRecord) -> bool {
        e.customer_id == self.customer_id
            && e.mode == self.mode
            && self.channel_id.as_deref().is_none_or(|c| c == e.channel_id)
            && super::matches(&self.patterns, &e.event)
    }
}

pub struct Subscription {
    pool: Pool,
    filter: Filter,
    rx: broadcast::Receiver<Shared>,
    last: i64,
    replaying: bool,
    buf: VecDeque<Shared>,
}

impl Subscription {
    /// `after`: None starts live; Some(n) replays everything after cursor n first.
    pub fn new(hub: &Hub, pool: Pool, filter: Filter, after: Option<i64>) -> Subscription {
        // Subscribe before reading the log or the hub's position: nothing can fall between.
        let rx = hub.subscribe(filter.channel_id.as_deref());
        let (last, replaying) = match after {
            Some(n) => (n, true),
            None => (hub.last_id(), false),
        };
        Subscription {
            pool,
            filter,
            rx,
            last,
            replaying,
            buf: VecDeque::new(),
        }
    }

    /// The cursor this subscription stands at: before the first event, where it started (the hub's head when
    /// live). Resuming after it later misses nothing this subscription would have delivered.
    pub fn position(&self) -> i64 {
        self.last
    }

    pub async fn next(&mut self) -> Option<ApiResult<Shared>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Some(Ok(e));
            }
            if self.replaying {
                if let Err(e) = self.replay_page().await {
                    return Some(Err(e));
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if e.id <= self.last {
                        continue;
                    }
                    self.last = e.id;
                    if self.filter.admits(&e) {
                        return Some(Ok(e));
                    }
                }
                Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    async fn replay_page(&mut self) -> ApiResult<()> {
        let client = self.pool.get().await?;
        let rows = events::after_for(
            &client,
            &self.filter.customer_id,
            self.filter.mode,
            self.filter.channel_id.as_deref(),
            self.last,
            PAGE,
        )
        .await
        .map_err(ApiError::from)?;
        if (rows.len() as i64) < PAGE {
            self.replaying = false;
        }
        for r in rows {
            self.last = r.id;
            if self.filter.admits(&r) {
                self.buf.push_back(Arc::new(r));
            }
        }
        Ok(())
    }
}
