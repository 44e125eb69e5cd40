//! Group commit for the store's single-statement writes (Signal sessions, identities, pending-inbound rows, …).
//!
//! Every inbound message makes the crate write a few rows, each durable before it goes on: before this, each was a
//! transaction of its own on a pooled connection, ≈2.6 commits per message, and PostgreSQL's per-transaction work
//! was most of the database's CPU per message. Writes that overlap in time now share one transaction: a writer
//! joins the open group (or opens one), runs its statement on the group's connection (statements from several
//! writers pipeline on it), and waits for the commit. The writer whose statement finishes last, leaving none
//! running, closes the group and commits it. Each write is still durable when it returns, and a channel's writes
//! still apply in the order the crate makes them (the crate awaits each).
//!
//! If any statement of a group fails (or the commit does), the whole group is rolled back and every member runs
//! its statement again on its own, so one bad write neither fails nor loses the others and its own error is the
//! one its caller sees. Two groups that wait on each other's row locks form a cycle PostgreSQL detects (both are
//! transactions); it aborts one, whose members then write alone.

use deadpool_postgres::{Object, Pool};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

/// Most writers in one group: bounds how long a group stays open under a steady stream of writes.
const MAX_MEMBERS: usize = 128;

/// The process's group committer; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit(Arc<Inner>);

struct Inner {
    pool: Pool,
    open: Mutex<Option<Arc<Group>>>,
    /// One opener at a time, so writers arriving together join one new group instead of opening one each.
    opening: tokio::sync::Mutex<()>,
}

/// A pooled connection that may be inside a transaction. It goes back to the pool only once its transaction
/// has ended; dropped in any other state (a writer cancelled while BEGIN was in flight, a COMMIT and ROLLBACK
/// that both failed, a runtime shutting down), it is detached from the pool and closed, and the server rolls
/// back. Otherwise the next user of the connection would run its "autocommitted" writes inside a transaction
/// nobody commits, holding their row locks.
struct TxConn {
    obj: Option<Object>,
    ended: std::sync::atomic::AtomicBool,
}

impl TxConn {
    fn get(&self) -> Option<&Object> {
        self.obj.as_ref()
    }

    /// Runs a transaction-ending statement; true when it succeeded (the connection may go back to the pool).
    async fn end_with(&self, sql: &str) -> bool {
        let Some(c) = self.get() else { return false };
        let ok = c.batch_execute(sql).await.is_ok();
        if ok {
            self.ended.store(true, std::sync::atomic::Ordering::Release);
        }
        ok
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take()
            && !*self.ended.get_mut()
        {
            drop(Object::take(obj));
        }
    }
}

struct Group {
    /// The committer whose open slot may hold this group.
    home: std::sync::Weak<Inner>,
    client: TxConn,
    state: Mutex<State>,
    /// None while open; then whether the group committed.
    done: watch::Sender<Option<bool>>,
}

#[derive(Default)]
struct State {
    /// Statements running now.
    running: usize,
    joined: usize,
    closed: bool,
    failed: bool,
}

/// A grouped write did not happen (no group could be opened, or the group was rolled back: a member's
/// statement, possibly this one, or the commit failed); the caller writes alone.
pub struct Alone;

impl Group {
    fn try_enter(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed || s.joined >= MAX_MEMBERS {
            return false;
        }
        s.running += 1;
        s.joined += 1;
        true
    }

    /// Commits (or rolls back) and tells every member. Runs as a task of its own, so that a member cancelled
    /// meanwhile cannot leave the others waiting.
    async fn end(&self, failed: bool) {
        let committed = if failed {
            self.client.end_with("ROLLBACK").await;
            false
        } else if self.client.end_with("COMMIT").await {
            true
        } else {
            self.client.end_with("ROLLBACK").await;
            false
        };
        if !committed {
            // Its members write again alone, after writes that started later may have landed: worth seeing when
            // the order of one row's writes matters (the device: see PgStore::save).
            let members = self.state.lock().unwrap_or_else(|e| e.into_inner()).joined;
            tracing::debug!(
                members,
                failed,
                "group rolled back; its members write alone"
            );
        }
        self.done.send_replace(Some(committed));
    }

    /// Takes an ended group out of its committer's open slot: left there, it would keep its connection out of the
    /// pool until the next write.
    fn leave(self: &Arc<Self>) {
        if let Some(inner) = self.home.upgrade() {
            let mut open = inner.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.as_ref().is_some_and(|g| Arc::ptr_eq(g, self)) {
                *open = None;
            }
        }
    }
}

/// One writer's place in a group, until its statement has finished. Dropped before that (the writer was
/// cancelled), it counts as a failed statement: the group is rolled back and nobody waits for it.
struct Member {
    group: Arc<Group>,
    running: bool,
}

impl Member {
    fn finish(&mut self, ok: bool) {
        if !std::mem::replace(&mut self.running, false) {
            return;
        }
        let last = {
            let mut s = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
            s.failed |= !ok;
            s.running -= 1;
            if s.running == 0 {
                s.closed = true;
                Some(s.failed)
            } else {
                None
            }
        };
        if let Some(failed) = last {
            let group = self.group.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        group.end(failed).await;
                        group.leave();
                    });
                }
                // No runtime (shutting down): the waiters are gone with it; the connection is closed, not pooled
                // (see TxConn), and the server rolls back.
                Err(_) => {
                    group.done.send_replace(Some(false));
                    group.leave();
                }
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl GroupCommit {
    pub fn new(pool: Pool) -> GroupCommit {
        GroupCommit(Arc::new(Inner {
            pool,
            open: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }))
    }

    fn joinable(&self) -> Option<Member> {
        let open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        open.as_ref().filter(|g| g.try_enter()).map(|g| Member {
            group: g.clone(),
            running: true,
        })
    }

    async fn join(&self) -> Option<Member> {
        if let Some(m) = self.joinable() {
            return Some(m);
        }
        let _opening = self.0.opening.lock().await;
        if let Some(m) = self.joinable() {
            return Some(m);
        }
        // From here until the group ends, the connection goes back to the pool only through a finished COMMIT or
        // ROLLBACK: this future dropped while BEGIN is in flight, or BEGIN failing, closes it instead.
        let client = TxConn {
            obj: Some(self.0.pool.get().await.ok()?),
            ended: std::sync::atomic::AtomicBool::new(false),
        };
        match client.get() {
            Some(c) if c.batch_execute("BEGIN").await.is_ok() => {}
            _ => return None,
        }
        let (done, _) = watch::channel(None);
        let group = Arc::new(Group {
            home: Arc::downgrade(&self.0),
            client,
            state: Mutex::new(State::default()),
            done,
        });
        let entered = group.try_enter();
        debug_assert!(entered, "a new group takes its opener");
        *self.0.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(group.clone());
        Some(Member {
            group,
            running: true,
        })
    }

    /// Runs `sql` with `params` in a shared transaction and waits for its commit. Err(Alone): nothing of it was
    /// committed; the caller writes alone.
    pub async fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Alone> {
        let Some(mut member) = self.join().await else {
            return Err(Alone);
        };
        let group = member.group.clone();
        let mut done = group.done.subscribe();
        let result = match group.client.get() {
            Some(client) => {
                async {
                    let stmt = client.prepare_cached(sql).await?;
                    client.execute(&stmt, params).await
                }
                .await
            }
            None => {
                member.finish(false);
                return Err(Alone);
            }
        };
        member.finish(result.is_ok());
        let committed = match done.wait_for(|v| v.is_some()).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        };
        match result {
            Ok(n) if committed => Ok(n),
            _ => Err(Alone),
        }
    }
}
