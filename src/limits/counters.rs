//! Where the limits' counters live: in Redis when `[cache.redis]` is
//! configured (updated atomically by the `admit.lua` and `settle.lua`
//! scripts, so every replica counts the same requests, tokens and dollars),
//! else in this process. The process keeps a copy of what Redis last said,
//! so when Redis is unreachable a replica counts on from there; budget spend
//! settled meanwhile is kept and added to Redis once it answers again.
//!
//! Keys are `{prefix}{limits}:...`: one Redis Cluster hash tag, so the
//! counters a script touches are always in one slot.

use bedrock_wire::FastMap as HashMap;
use redis::Script;
use std::sync::{Arc, LazyLock, Mutex};

use super::bucket::Bucket;
use crate::shared::RedisTier;
use crate::support::lock;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("admit.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("settle.lua")));

/// Every counter key starts with this (after the configured prefix): the hash tag.
pub(super) const TAG: &str = "{limits}:";

/// One test of one counter at admission.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Check {
    pub(super) key: String,
    pub(super) op: CheckOp,
    /// Per minute (buckets), or nano-dollars (budgets; 0 reads only).
    pub(super) limit: f64,
    /// Requests or tokens (buckets).
    pub(super) amount: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckOp {
    /// Take `amount` from a bucket, if every check passes.
    Take,
    /// Whether `amount` would fit, writing nothing.
    Peek,
    /// Whether a budget has something left.
    Spent,
}

impl CheckOp {
    fn code(self) -> &'static str {
        match self {
            CheckOp::Take => "t",
            CheckOp::Peek => "p",
            CheckOp::Spent => "s",
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Found {
    /// A bucket's level before this request (what it took is not included).
    Bucket { ok: bool, level: f64 },
    /// A budget's spend so far, in nano-dollars.
    Spent { ok: bool, nano: i64 },
}

impl Found {
    pub(super) fn ok(&self) -> bool {
        match self {
            Found::Bucket { ok, .. } | Found::Spent { ok, .. } => *ok,
        }
    }
}

/// One change to one counter when an answer ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// Add `amount` (negative gives back) to a bucket limited to `limit` per minute.
    Bucket {
        key: String,
        limit: f64,
        amount: f64,
    },
    /// Add nano-dollars to a budget, which lives `ttl_ms` from now.
    Budget { key: String, nano: i64, ttl_ms: u64 },
}

/// A [`Change`] with its key borrowed, for settling here only.
#[derive(Debug, Clone, Copy)]
pub(super) enum ChangeRef<'a> {
    Bucket {
        key: &'a str,
        limit: f64,
        amount: f64,
    },
    Budget {
        key: &'a str,
        nano: i64,
        ttl_ms: u64,
    },
}

impl ChangeRef<'_> {
    /// The change with its key copied (to send to Redis after the response).
    pub(super) fn owned(self) -> Change {
        match self {
            ChangeRef::Bucket { key, limit, amount } => Change::Bucket {
                key: key.to_owned(),
                limit,
                amount,
            },
            ChangeRef::Budget { key, nano, ttl_ms } => Change::Budget {
                key: key.to_owned(),
                nano,
                ttl_ms,
            },
        }
    }
}

impl Change {
    fn borrowed(&self) -> ChangeRef<'_> {
        match self {
            Change::Bucket { key, limit, amount } => ChangeRef::Bucket {
                key,
                limit: *limit,
                amount: *amount,
            },
            Change::Budget { key, nano, ttl_ms } => ChangeRef::Budget {
                key,
                nano: *nano,
                ttl_ms: *ttl_ms,
            },
        }
    }
}

/// Where an admission was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Redis (every replica's count).
    Shared,
    /// This process, by configuration (no Redis).
    Local,
    /// This process, because Redis is configured but did not answer.
    Fallback,
}

impl Source {
    pub(super) fn name(self) -> &'static str {
        match self {
            Source::Shared => "redis",
            Source::Local => "local",
            Source::Fallback => "local (redis unreachable)",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cell {
    Bucket(Bucket),
    Spent { nano: i64, expires_ms: f64 },
}

/// The counters: Redis when configured, this process's always.
pub(super) struct Counters {
    shared: Option<Arc<RedisTier>>,
    /// Short critical sections only (no `.await` while held).
    local: Mutex<HashMap<String, Cell>>,
    /// Budget spend settled while Redis was unreachable: key -> (nano-dollars, ttl).
    pending: Mutex<HashMap<String, (i64, u64)>>,
}

/// Past this many local cells, expired ones are dropped on the next settlement.
const PRUNE_ABOVE: usize = 4096;

impl Counters {
    pub(super) fn new(shared: Option<Arc<RedisTier>>) -> Counters {
        Counters {
            shared,
            local: Mutex::new(HashMap::default()),
            pending: Mutex::new(HashMap::default()),
        }
    }

    /// Runs `checks` atomically: every bucket `Take` is written only when every
    /// check passes. When Redis is configured but does not answer, this
    /// process decides, taking only if `take_on_fallback` (a replica that will
    /// refuse anyway counts nothing).
    pub(super) async fn admit(
        &self,
        now: f64,
        checks: &[Check],
        take_on_fallback: bool,
    ) -> (Vec<Found>, Source) {
        if checks.is_empty() {
            return (Vec::new(), Source::Local);
        }
        let Some(redis) = &self.shared else {
            return (self.admit_local(now, checks), Source::Local);
        };
        // The Redis round trips are boxed: their state would otherwise be
        // carried (and copied) by every request's future, Redis or not.
        match Box::pin(self.admit_shared(redis, now, checks)).await {
            Some(found) => {
                self.mirror(now, checks, &found);
                Box::pin(self.flush_pending(redis, now)).await;
                (found, Source::Shared)
            }
            None if take_on_fallback => (self.admit_local(now, checks), Source::Fallback),
            None => {
                let peeks: Vec<Check> = checks
                    .iter()
                    .map(|c| Check {
                        op: if c.op == CheckOp::Take {
                            CheckOp::Peek
                        } else {
                            c.op
                        },
                        ..c.clone()
                    })
                    .collect();
                (self.admit_local(now, &peeks), Source::Fallback)
            }
        }
    }

    async fn admit_shared(
        &self,
        redis: &RedisTier,
        now: f64,
        checks: &[Check],
    ) -> Option<Vec<Found>> {
        let keys: Vec<String> = checks.iter().map(|c| redis.prefixed(&c.key)).collect();
        let mut args = vec![format!("{now:.3}")];
        for c in checks {
            args.push(c.op.code().to_owned());
            args.push(format!("{}", c.limit));
            args.push(format!("{}", c.amount));
        }
        let rows: Vec<(i64, String, String)> =
            redis.eval("limits_admit", &ADMIT, &keys, &args).await?;
        if rows.len() != checks.len() {
            return None;
        }
        Some(
            checks
                .iter()
                .zip(rows)
                .map(|(c, (ok, a, _))| match c.op {
                    CheckOp::Spent => Found::Spent {
                        ok: ok == 1,
                        nano: a.parse::<f64>().map_or(0, |v| v as i64),
                    },
                    _ => Found::Bucket {
                        ok: ok == 1,
                        level: a.parse().unwrap_or(0.0),
                    },
                })
                .collect(),
        )
    }

    fn admit_local(&self, now: f64, checks: &[Check]) -> Vec<Found> {
        let mut cells = lock(&self.local);
        let found: Vec<Found> = checks
            .iter()
            .map(|c| match c.op {
                CheckOp::Spent => {
                    let nano = spent(cells.get(&c.key), now);
                    Found::Spent {
                        ok: c.limit <= 0.0 || (nano as f64) < c.limit,
                        nano,
                    }
                }
                CheckOp::Take | CheckOp::Peek => {
                    let bucket = bucket(cells.get(&c.key));
                    Found::Bucket {
                        ok: bucket.fits(c.limit, c.amount, now),
                        level: bucket.level(c.limit, now),
                    }
                }
            })
            .collect();
        if found.iter().all(Found::ok) {
            for c in checks.iter().filter(|c| c.op == CheckOp::Take) {
                let b = bucket(cells.get(&c.key)).add(c.limit, c.amount, now);
                cells.insert(c.key.clone(), Cell::Bucket(b));
            }
        }
        found
    }

    /// Keeps this process's copy of what Redis said, to count on from it if
    /// Redis stops answering.
    fn mirror(&self, now: f64, checks: &[Check], found: &[Found]) {
        let all = found.iter().all(Found::ok);
        let mut cells = lock(&self.local);
        for (c, f) in checks.iter().zip(found) {
            match (c.op, f) {
                (CheckOp::Spent, Found::Spent { nano, .. }) => {
                    let expires_ms = match cells.get(&c.key) {
                        Some(Cell::Spent { expires_ms, .. }) => *expires_ms,
                        _ => now + 86_400_000.0,
                    };
                    cells.insert(
                        c.key.clone(),
                        Cell::Spent {
                            nano: *nano,
                            expires_ms,
                        },
                    );
                }
                (op, Found::Bucket { level, .. }) => {
                    let taken = if all && op == CheckOp::Take {
                        c.amount
                    } else {
                        0.0
                    };
                    cells.insert(
                        c.key.clone(),
                        Cell::Bucket(Bucket {
                            used: level + taken,
                            at: now,
                        }),
                    );
                }
                _ => {}
            }
        }
    }

    /// Applies what answers used. Through Redis when it answers; else here,
    /// keeping budget spend to add to Redis when it is back.
    pub(super) async fn settle(&self, now: f64, changes: Vec<Change>) {
        if let Some(changes) = self.settle_here(now, changes) {
            Box::pin(self.settle_redis(now, changes)).await;
        }
    }

    /// Applies `changes` to this process's counters, and returns them when
    /// Redis must take them too (the caller awaits [`Counters::settle_redis`],
    /// off the response path); without Redis nothing is left to wait for, so
    /// no task is spawned per request.
    pub(super) fn settle_here(&self, now: f64, changes: Vec<Change>) -> Option<Vec<Change>> {
        if changes.is_empty() {
            return None;
        }
        self.settle_local(now, &changes);
        self.shared.as_ref().map(|_| changes)
    }

    /// The Redis half of [`Counters::settle`].
    pub(super) async fn settle_redis(&self, now: f64, changes: Vec<Change>) {
        let Some(redis) = &self.shared else { return };
        if self.settle_shared(redis, now, &changes).await {
            self.flush_pending(redis, now).await;
        } else {
            let mut pending = lock(&self.pending);
            for c in changes {
                if let Change::Budget { key, nano, ttl_ms } = c {
                    let entry = pending.entry(key).or_insert((0, ttl_ms));
                    entry.0 += nano;
                    entry.1 = ttl_ms;
                }
            }
        }
    }

    fn settle_local(&self, now: f64, changes: &[Change]) {
        self.settle_local_with(now, |apply| {
            for c in changes {
                apply(c.borrowed());
            }
        });
    }

    /// Settles here the changes `changes` hands to its applier, their keys
    /// borrowed: without Redis, an answered request settles without making a
    /// `String` per counter it touches.
    pub(super) fn settle_local_with(
        &self,
        now: f64,
        changes: impl FnOnce(&mut dyn FnMut(ChangeRef<'_>)),
    ) {
        let mut cells = lock(&self.local);
        if cells.len() > PRUNE_ABOVE {
            cells.retain(|_, cell| match cell {
                Cell::Bucket(b) => b.at + 120_000.0 > now,
                Cell::Spent { expires_ms, .. } => *expires_ms > now,
            });
        }
        // One lookup per change: the cell is updated where it is, and its key
        // copied only the first time it is seen.
        changes(&mut |c| {
            let key = match c {
                ChangeRef::Bucket { key, .. } | ChangeRef::Budget { key, .. } => key,
            };
            match cells.get_mut(key) {
                Some(slot) => *slot = c.applied(Some(slot), now),
                None => {
                    cells.insert(key.to_owned(), c.applied(None, now));
                }
            }
        });
    }

    /// Whether Redis took the changes (this process's copy then follows it).
    async fn settle_shared(&self, redis: &RedisTier, now: f64, changes: &[Change]) -> bool {
        let mut keys = Vec::with_capacity(changes.len());
        let mut args = vec![format!("{now:.3}")];
        for c in changes {
            match c {
                Change::Bucket { key, limit, amount } => {
                    keys.push(redis.prefixed(key));
                    args.extend(["a".to_owned(), format!("{limit}"), format!("{amount}")]);
                }
                Change::Budget { key, nano, ttl_ms } => {
                    keys.push(redis.prefixed(key));
                    args.extend(["i".to_owned(), ttl_ms.to_string(), nano.to_string()]);
                }
            }
        }
        let Some(rows) = redis
            .eval::<Vec<(String, String)>>("limits_settle", &SETTLE, &keys, &args)
            .await
        else {
            return false;
        };
        let mut cells = lock(&self.local);
        for (c, (a, _)) in changes.iter().zip(rows) {
            match c {
                Change::Bucket { key, .. } => {
                    let used = a.parse().unwrap_or(0.0);
                    cells.insert(key.clone(), Cell::Bucket(Bucket { used, at: now }));
                }
                Change::Budget { key, ttl_ms, .. } => {
                    let nano = a.parse::<f64>().map_or(0, |v| v as i64);
                    cells.insert(
                        key.clone(),
                        Cell::Spent {
                            nano,
                            expires_ms: now + *ttl_ms as f64,
                        },
                    );
                }
            }
        }
        true
    }

    /// Adds the spend settled while Redis was unreachable, now that it answers.
    async fn flush_pending(&self, redis: &RedisTier, now: f64) {
        let pending: Vec<(String, (i64, u64))> = {
            let mut p = lock(&self.pending);
            if p.is_empty() {
                return;
            }
            p.drain().collect()
        };
        let changes: Vec<Change> = pending
            .iter()
            .map(|(key, (nano, ttl_ms))| Change::Budget {
                key: key.clone(),
                nano: *nano,
                ttl_ms: *ttl_ms,
            })
            .collect();
        if self.settle_shared(redis, now, &changes).await {
            tracing::info!(
                counters = changes.len(),
                "budget spend counted while Redis was unreachable is now in Redis"
            );
        } else {
            let mut p = lock(&self.pending);
            for (key, (nano, ttl_ms)) in pending {
                let entry = p.entry(key).or_insert((0, ttl_ms));
                entry.0 += nano;
            }
        }
    }

    /// Whether counters are shared through Redis.
    pub(super) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The shared tier, when the counters live in Redis.
    pub(super) fn shared(&self) -> Option<&Arc<RedisTier>> {
        self.shared.as_ref()
    }
}

fn bucket(cell: Option<&Cell>) -> Bucket {
    match cell {
        Some(Cell::Bucket(b)) => *b,
        _ => Bucket::default(),
    }
}

impl ChangeRef<'_> {
    /// The cell after this change, from the one before (`None`: new).
    fn applied(&self, cell: Option<&Cell>, now: f64) -> Cell {
        match *self {
            ChangeRef::Bucket { limit, amount, .. } => {
                Cell::Bucket(bucket(cell).add(limit, amount, now))
            }
            ChangeRef::Budget { nano, ttl_ms, .. } => Cell::Spent {
                nano: spent(cell, now) + nano,
                expires_ms: now + ttl_ms as f64,
            },
        }
    }
}

fn spent(cell: Option<&Cell>, now: f64) -> i64 {
    match cell {
        Some(Cell::Spent { nano, expires_ms }) if *expires_ms > now => *nano,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(key: &str, limit: f64, amount: f64) -> Check {
        Check {
            key: key.into(),
            op: CheckOp::Take,
            limit,
            amount,
        }
    }

    #[tokio::test]
    async fn local_admission_is_all_or_nothing() {
        let c = Counters::new(None);
        let now = 1_000_000.0;
        let (found, source) = c
            .admit(now, &[take("a", 2.0, 1.0), take("b", 1.0, 1.0)], true)
            .await;
        assert_eq!(source, Source::Local);
        assert!(found.iter().all(Found::ok));
        // `b` is full, so `a` must not be taken either.
        let (found, _) = c
            .admit(now, &[take("a", 2.0, 1.0), take("b", 1.0, 1.0)], true)
            .await;
        assert!(found[0].ok() && !found[1].ok());
        let (found, _) = c.admit(now, &[take("a", 2.0, 1.0)], true).await;
        assert!(found[0].ok(), "a still has its second request");
    }

    #[tokio::test]
    async fn budgets_refuse_once_spent_and_expire_with_their_window() {
        let c = Counters::new(None);
        let now = 0.0;
        let spent_check = Check {
            key: "d".into(),
            op: CheckOp::Spent,
            limit: 100.0,
            amount: 0.0,
        };
        c.settle(
            now,
            vec![Change::Budget {
                key: "d".into(),
                nano: 100,
                ttl_ms: 1000,
            }],
        )
        .await;
        let (found, _) = c.admit(now, std::slice::from_ref(&spent_check), true).await;
        assert_eq!(
            found[0],
            Found::Spent {
                ok: false,
                nano: 100
            }
        );
        let (found, _) = c.admit(now + 1000.0, &[spent_check], true).await;
        assert_eq!(found[0], Found::Spent { ok: true, nano: 0 });
    }
}
