//! What the registry remembers about one prefix or one class of prefixes, as
//! named integer fields (the same in memory and in a Redis hash), and the
//! arithmetic on them: sightings and the gaps between them, the writes and reads
//! Bedrock reported for the proxy's points, the savings they realized, when a
//! prefix that does not pay is backed off, and how many sightings a class needs.
//!
//! One [`Update`] is applied atomically: by [`Fields::apply`] in memory, by the
//! Lua script in `registry.rs` in Redis; both follow the rules written here.

use std::collections::BTreeMap;

/// Field names. Short: they are repeated in every Redis hash.
pub mod field {
    /// Sightings within the route's window (reset when a gap exceeds it).
    pub const SIGHTINGS: &str = "n";
    pub const FIRST_SEEN: &str = "first";
    pub const LAST_SEEN: &str = "last";
    /// Gaps between sightings: up to 5 minutes, up to an hour, longer.
    pub const GAPS_SHORT: &str = "gs";
    pub const GAPS_MID: &str = "gm";
    pub const GAPS_LONG: &str = "gl";
    /// Writes Bedrock reported for the proxy's points on this prefix.
    pub const WRITES: &str = "wn";
    pub const WRITE_TOKENS_5M: &str = "w5";
    pub const WRITE_TOKENS_1H: &str = "w1";
    /// Reads Bedrock reported of what the proxy's points wrote.
    pub const READS: &str = "rn";
    pub const READ_TOKENS: &str = "rt";
    /// Realized savings in nano-dollars, all time (negative while writes dominate).
    pub const SAVED: &str = "sav";
    /// Realized savings since the prefix was last judged (the decision window).
    pub const WINDOW_SAVED: &str = "dsav";
    /// The last write: when (0 once judged), with which TTL (1 = 1 hour), and
    /// how many reads followed it.
    pub const LAST_WRITE: &str = "lw";
    pub const LAST_WRITE_1H: &str = "lwt";
    pub const READS_SINCE_WRITE: &str = "lwr";
    /// Not injected before this time; the back-off level that set it.
    pub const SUPPRESSED_UNTIL: &str = "sup";
    pub const BACKOFF_LEVEL: &str = "lvl";
    /// The TTL last chosen: 1 = 5 minutes, 2 = 1 hour.
    pub const TTL: &str = "ttl";
    /// The class bucket of the write whose reads credit the class.
    pub const CREDIT_BUCKET: &str = "fwb";
    /// A 5-minute write was excused once for a re-use the hour would have kept.
    pub const EXCUSED: &str = "ex";
    /// Class: sightings (system, tools, head) or user turns (conversation)
    /// needed beyond the route's rule; when it last changed; its back-off level.
    pub const EXTRA: &str = "extra";
    pub const EXTRA_SINCE: &str = "since";
    pub const CLASS_LEVEL: &str = "clvl";
    /// Class buckets: premium of the writes made in bucket B (`w:B`, nano-dollars),
    /// their count (`c:B`), whether any was a 1-hour write (`t:B`), and the savings
    /// of the reads that followed them (`r:B`).
    pub const BUCKET_PREMIUM: &str = "w:";
    pub const BUCKET_WRITES: &str = "c:";
    pub const BUCKET_1H: &str = "t:";
    pub const BUCKET_SAVED: &str = "r:";
}

pub const MINUTE_MS: i64 = 60_000;
/// Bedrock's TTLs.
pub const FIVE_MINUTES_MS: i64 = 5 * MINUTE_MS;
pub const ONE_HOUR_MS: i64 = 60 * MINUTE_MS;
/// The width of a class bucket.
pub const BUCKET_MS: i64 = FIVE_MINUTES_MS;
/// Class buckets older than this are dropped.
pub const BUCKET_HORIZON_MS: i64 = 6 * ONE_HOUR_MS;
/// A prefix that does not pay is backed off for this long, doubled each time
/// it fails again, up to the registry's retention.
pub const FIRST_BACKOFF_MS: i64 = 15 * MINUTE_MS;
/// Writes a class needs judged before its threshold moves.
pub const CLASS_EVIDENCE: i64 = 3;
/// Most sightings (or turns) a class may need beyond the route's rule.
pub const MAX_EXTRA: i64 = 6;

/// A sighting: the gap since the last one is counted, and the window's count
/// restarts when the gap exceeds `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sight {
    pub now_ms: i64,
    pub window_ms: i64,
}

/// One atomic change to a ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    pub sight: Option<Sight>,
    pub incr: Vec<(String, i64)>,
    pub set: Vec<(String, i64)>,
    pub delete: Vec<String>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.sight.is_none()
            && self.incr.is_empty()
            && self.set.is_empty()
            && self.delete.is_empty()
    }

    pub fn incr(&mut self, field: impl Into<String>, by: i64) {
        if by != 0 {
            self.incr.push((field.into(), by));
        }
    }

    pub fn set(&mut self, field: impl Into<String>, value: i64) {
        self.set.push((field.into(), value));
    }
}

/// A ledger's fields; a missing field is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub BTreeMap<String, i64>);

impl Fields {
    pub fn get(&self, field: &str) -> i64 {
        self.0.get(field).copied().unwrap_or(0)
    }

    /// Applies an update: the sighting first, then increments, sets and deletes
    /// (the order the Lua script follows).
    pub fn apply(&mut self, update: &Update) {
        use field::*;
        if let Some(Sight { now_ms, window_ms }) = update.sight {
            let last = self.get(LAST_SEEN);
            if last > 0 {
                let gap = now_ms - last;
                let bucket = if gap <= FIVE_MINUTES_MS {
                    GAPS_SHORT
                } else if gap <= ONE_HOUR_MS {
                    GAPS_MID
                } else {
                    GAPS_LONG
                };
                *self.0.entry(bucket.into()).or_default() += 1;
                if gap > window_ms {
                    self.0.insert(SIGHTINGS.into(), 0);
                }
            } else {
                self.0.insert(FIRST_SEEN.into(), now_ms);
            }
            *self.0.entry(SIGHTINGS.into()).or_default() += 1;
            self.0.insert(LAST_SEEN.into(), now_ms);
        }
        for (f, by) in &update.incr {
            *self.0.entry(f.clone()).or_default() += by;
        }
        for (f, v) in &update.set {
            self.0.insert(f.clone(), *v);
        }
        for f in &update.delete {
            self.0.remove(f);
        }
    }

    /// Reads the flat `[field, value, ...]` list Redis's HGETALL returns.
    pub fn from_pairs(pairs: &[(String, String)]) -> Fields {
        Fields(
            pairs
                .iter()
                .filter_map(|(k, v)| v.parse::<i64>().ok().map(|v| (k.clone(), v)))
                .collect(),
        )
    }
}

/// Dollars to the integer nano-dollars ledgers count in.
pub fn nano(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Nano-dollars back to dollars.
pub fn usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

/// A price list per token, for one model and tier, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub read: f64,
    pub write_5m: f64,
    pub write_1h: f64,
}

impl Prices {
    pub fn of(price: &crate::catalog::Price) -> Prices {
        Prices {
            input: price.input,
            read: price.cache_read(),
            write_5m: price.cache_write(),
            write_1h: price.cache_write_1h(),
        }
    }

    pub fn write(&self, one_hour: bool) -> f64 {
        if one_hour {
            self.write_1h
        } else {
            self.write_5m
        }
    }

    /// What a read of `tokens` saved against plain input, in nano-dollars.
    pub fn read_saving(&self, tokens: u64) -> i64 {
        nano(tokens as f64 * (self.input - self.read) / 1e6)
    }

    /// What a write of `tokens` cost beyond plain input, in nano-dollars.
    pub fn write_premium(&self, tokens: u64, one_hour: bool) -> i64 {
        nano(tokens as f64 * (self.write(one_hour) - self.input) / 1e6)
    }
}

/// `ttl = "auto"`: whether the 1-hour TTL pays for a prefix re-used after the
/// observed gaps. Per token, with `s`, `m`, `l` gaps of up to 5 minutes, up to
/// an hour and longer, caching with 5 minutes costs one write and then
/// `s·read + (m + l)·write_5m`; with an hour, `write_1h` and then
/// `(s + m)·read + l·write_1h`. Short gaps read under both, so the hour wins when
///
/// `m·(write_5m − read) > (l + 1)·(write_1h − write_5m)`
///
/// With Claude's prices (write_5m 1.25, write_1h 2, read 0.1 times input) that is
/// `1.15·m > 0.75·(l + 1)`: one gap of 5 to 60 minutes and no longer ones is enough.
pub fn one_hour_pays(prices: &Prices, short: i64, mid: i64, long: i64) -> bool {
    let _ = short;
    mid as f64 * (prices.write_5m - prices.read)
        > (long + 1) as f64 * (prices.write_1h - prices.write_5m)
}

/// Why learning holds a prefix back, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Its writes were not read back enough to pay; backing off.
    Unpaid,
}

/// What to do with a prefix at this sighting, from its ledger: whether it is held
/// back, and the changes that judging it makes (start or end a back-off, forget a
/// judged write).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judgement {
    pub hold: Option<Hold>,
    pub update: Update,
}

/// Judges a prefix's record at `now_ms`. Its last write went unread when no read
/// followed it within its TTL. If that leaves the decision window's savings
/// negative, the prefix is backed off (15 minutes, doubling, up to `max_ms`)
/// and the judged write forgotten, so the next write after the back-off is a
/// fresh trial. A 5-minute write that went unread only because the re-use came
/// later is excused, once, for a prefix whose TTL is now an hour (`ttl_1h_now`):
/// once, because the client's own 5-minute points can keep its writes short.
pub fn judge(f: &Fields, now_ms: i64, ttl_1h_now: bool, max_ms: i64) -> Judgement {
    use field::*;
    let mut j = Judgement::default();
    let until = f.get(SUPPRESSED_UNTIL);
    if until > now_ms {
        j.hold = Some(Hold::Unpaid);
        return j;
    }
    let last_write = f.get(LAST_WRITE);
    if last_write <= 0 || f.get(READS_SINCE_WRITE) > 0 {
        return j;
    }
    let write_1h = f.get(LAST_WRITE_1H) == 1;
    let ttl = if write_1h {
        ONE_HOUR_MS
    } else {
        FIVE_MINUTES_MS
    };
    if now_ms <= last_write + ttl {
        return j;
    }
    // The write is judged now: unread.
    j.update.set(LAST_WRITE, 0);
    if ttl_1h_now && !write_1h && now_ms - last_write <= ONE_HOUR_MS && f.get(EXCUSED) == 0 {
        // The hour would have kept it for this sighting: a new trial at 1 hour.
        j.update.set(WINDOW_SAVED, 0);
        j.update.set(EXCUSED, 1);
        return j;
    }
    if f.get(WINDOW_SAVED) < 0 {
        let level = f.get(BACKOFF_LEVEL).clamp(0, 30);
        let backoff = FIRST_BACKOFF_MS
            .saturating_mul(1 << level)
            .min(max_ms.max(FIRST_BACKOFF_MS));
        j.update.set(SUPPRESSED_UNTIL, now_ms + backoff);
        j.update.set(BACKOFF_LEVEL, level + 1);
        j.update.set(WINDOW_SAVED, 0);
        j.hold = Some(Hold::Unpaid);
    }
    j
}

/// The class bucket of a time.
pub fn bucket(now_ms: i64) -> i64 {
    now_ms.div_euclid(BUCKET_MS)
}

/// A class's view: how many sightings (or turns) it needs beyond the route's
/// rule, and the changes that judging its settled buckets makes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassJudgement {
    pub extra: i64,
    pub update: Update,
}

/// Judges a class at `now_ms`. A bucket is settled once every write in it has
/// outlived its TTL. When the settled writes (at least [`CLASS_EVIDENCE`] of
/// them) were not repaid by the reads that followed, the class needs one more
/// sighting (or turn) before the next write; after a back-off (15 minutes,
/// doubling with each failure, up to `max_ms`) it tries one fewer again.
/// Moving the threshold starts the evidence afresh.
pub fn judge_class(f: &Fields, now_ms: i64, max_ms: i64) -> ClassJudgement {
    use field::*;
    let extra = f.get(EXTRA).clamp(0, MAX_EXTRA);
    let mut j = ClassJudgement {
        extra,
        update: Update::default(),
    };
    let (mut premium, mut saved, mut writes) = (0i64, 0i64, 0i64);
    let mut buckets: Vec<String> = Vec::new();
    for (name, value) in &f.0 {
        let Some(b) = name
            .strip_prefix(BUCKET_PREMIUM)
            .and_then(|b| b.parse::<i64>().ok())
        else {
            continue;
        };
        buckets.push(b.to_string());
        if (b + 1) * BUCKET_MS + BUCKET_HORIZON_MS < now_ms {
            j.update.delete.extend(bucket_fields(b));
            continue;
        }
        let ttl = if f.get(&format!("{BUCKET_1H}{b}")) > 0 {
            ONE_HOUR_MS
        } else {
            FIVE_MINUTES_MS
        };
        if (b + 1) * BUCKET_MS + ttl <= now_ms {
            premium += value;
            saved += f.get(&format!("{BUCKET_SAVED}{b}"));
            writes += f.get(&format!("{BUCKET_WRITES}{b}"));
        }
    }
    let since = f.get(EXTRA_SINCE);
    let level = f.get(CLASS_LEVEL).clamp(0, 30);
    let restart = |j: &mut ClassJudgement, extra: i64, level: i64| {
        j.extra = extra;
        j.update.set(EXTRA, extra);
        j.update.set(EXTRA_SINCE, now_ms);
        j.update.set(CLASS_LEVEL, level);
        for b in &buckets {
            if let Ok(b) = b.parse::<i64>() {
                j.update.delete.extend(bucket_fields(b));
            }
        }
    };
    let judged = writes >= CLASS_EVIDENCE;
    if judged && saved < premium && extra < MAX_EXTRA {
        // Each failure waits longer before one fewer is tried again.
        restart(&mut j, extra + 1, level + 1);
    } else if extra > 0 {
        let wait = FIRST_BACKOFF_MS
            .saturating_mul(1 << (level - 1).max(0))
            .min(max_ms.max(FIRST_BACKOFF_MS));
        if now_ms >= since + wait {
            restart(&mut j, extra - 1, level);
        }
    } else if judged && level > 0 {
        // Writes at the route's own rule pay again.
        j.update.set(CLASS_LEVEL, 0);
    }
    j
}

fn bucket_fields(b: i64) -> [String; 4] {
    use field::*;
    [
        format!("{BUCKET_PREMIUM}{b}"),
        format!("{BUCKET_WRITES}{b}"),
        format!("{BUCKET_1H}{b}"),
        format!("{BUCKET_SAVED}{b}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::field::*;
    use super::*;

    const CLAUDE: Prices = Prices {
        input: 1.0,
        read: 0.1,
        write_5m: 1.25,
        write_1h: 2.0,
    };

    fn sight(f: &mut Fields, at_min: i64) {
        f.apply(&Update {
            sight: Some(Sight {
                now_ms: at_min * MINUTE_MS,
                window_ms: 10 * MINUTE_MS,
            }),
            ..Update::default()
        });
    }

    #[test]
    fn sightings_count_within_the_window_and_gaps_by_length() {
        let mut f = Fields::default();
        for at in [1, 2, 9, 30, 31, 200] {
            sight(&mut f, at);
        }
        assert_eq!(f.get(GAPS_SHORT), 2, "1->2, 30->31");
        assert_eq!(f.get(GAPS_MID), 2, "2->9, 9->30");
        assert_eq!(f.get(GAPS_LONG), 1, "31->200");
        assert_eq!(f.get(SIGHTINGS), 1, "the window restarted at 200");
        assert_eq!(f.get(FIRST_SEEN), MINUTE_MS);
        assert_eq!(f.get(LAST_SEEN), 200 * MINUTE_MS);
    }

    #[test]
    fn the_hour_pays_when_mid_gaps_outnumber_long_ones_enough() {
        assert!(!one_hour_pays(&CLAUDE, 10, 0, 0), "short gaps read anyway");
        assert!(one_hour_pays(&CLAUDE, 0, 1, 0), "one 7-minute gap");
        assert!(!one_hour_pays(&CLAUDE, 0, 1, 1));
        assert!(one_hour_pays(&CLAUDE, 0, 3, 2));
        // A model whose 1-hour write costs like the 5-minute one: any mid gap.
        let flat = Prices {
            write_1h: 1.25,
            ..CLAUDE
        };
        assert!(one_hour_pays(&flat, 0, 1, 50));
    }

    #[test]
    fn prices_in_nano_dollars() {
        assert_eq!(CLAUDE.read_saving(1_000_000), 900_000_000);
        assert_eq!(CLAUDE.write_premium(1_000_000, false), 250_000_000);
        assert_eq!(CLAUDE.write_premium(1_000_000, true), 1_000_000_000);
        assert!((usd(nano(0.123_456_789)) - 0.123_456_789).abs() < 1e-12);
    }

    fn written(at_min: i64, one_hour: bool, saved: i64) -> Fields {
        let mut f = Fields::default();
        f.apply(&Update {
            set: vec![
                (LAST_WRITE.into(), at_min * MINUTE_MS),
                (LAST_WRITE_1H.into(), i64::from(one_hour)),
            ],
            incr: vec![(WINDOW_SAVED.into(), saved), (WRITES.into(), 1)],
            ..Update::default()
        });
        f
    }

    #[test]
    fn an_unread_write_that_did_not_pay_backs_the_prefix_off_doubling() {
        let day = 24 * ONE_HOUR_MS;
        let f = written(1, false, -100);
        assert_eq!(
            judge(&f, 5 * MINUTE_MS, false, day),
            Judgement::default(),
            "still within its TTL"
        );
        let j = judge(&f, 6 * MINUTE_MS + 1, false, day);
        assert_eq!(j.hold, Some(Hold::Unpaid));
        let mut f = f;
        f.apply(&j.update);
        assert_eq!(f.get(SUPPRESSED_UNTIL), 21 * MINUTE_MS + 1);
        assert_eq!(f.get(LAST_WRITE), 0, "judged once");
        assert_eq!(
            judge(&f, 20 * MINUTE_MS, false, day).hold,
            Some(Hold::Unpaid)
        );
        assert_eq!(judge(&f, 22 * MINUTE_MS, false, day).hold, None, "retried");
        // The retry's write goes unread too: twice as long.
        f.apply(&Update {
            set: vec![(LAST_WRITE.into(), 22 * MINUTE_MS)],
            incr: vec![(WINDOW_SAVED.into(), -100)],
            ..Update::default()
        });
        let j = judge(&f, 40 * MINUTE_MS, false, day);
        f.apply(&j.update);
        assert_eq!(f.get(SUPPRESSED_UNTIL), 70 * MINUTE_MS);
    }

    #[test]
    fn a_read_or_a_paying_record_keeps_the_prefix() {
        let day = 24 * ONE_HOUR_MS;
        let mut read = written(1, false, -100);
        read.apply(&Update {
            incr: vec![(READS_SINCE_WRITE.into(), 1)],
            ..Update::default()
        });
        assert_eq!(judge(&read, 60 * MINUTE_MS, false, day).hold, None);
        let paid = written(1, false, 500);
        let j = judge(&paid, 60 * MINUTE_MS, false, day);
        assert_eq!(j.hold, None);
        assert!(j.update.set.contains(&(LAST_WRITE.into(), 0)));
    }

    #[test]
    fn a_five_minute_write_missed_by_a_slow_reuse_moves_to_the_hour_instead() {
        let mut f = written(1, false, -100);
        let j = judge(&f, 8 * MINUTE_MS, true, 24 * ONE_HOUR_MS);
        assert_eq!(j.hold, None);
        assert!(j.update.set.contains(&(WINDOW_SAVED.into(), 0)));
        // Once: the next short write that goes unread is judged like any other.
        f.apply(&j.update);
        f.apply(&Update {
            set: vec![(LAST_WRITE.into(), 7 * MINUTE_MS)],
            incr: vec![(WINDOW_SAVED.into(), -100)],
            ..Update::default()
        });
        assert_eq!(
            judge(&f, 14 * MINUTE_MS, true, 24 * ONE_HOUR_MS).hold,
            Some(Hold::Unpaid)
        );
    }

    fn class_with(writes: &[(i64, i64, i64)]) -> Fields {
        let mut f = Fields::default();
        for &(b, premium, saved) in writes {
            f.apply(&Update {
                incr: vec![
                    (format!("{BUCKET_PREMIUM}{b}"), premium),
                    (format!("{BUCKET_WRITES}{b}"), 1),
                    (format!("{BUCKET_SAVED}{b}"), saved),
                ],
                ..Update::default()
            });
        }
        f
    }

    #[test]
    fn a_class_whose_first_writes_go_unread_needs_one_more_sighting() {
        let day = 24 * ONE_HOUR_MS;
        let f = class_with(&[(0, 100, 0), (0, 100, 0), (1, 100, 0)]);
        // Bucket 1 (5-10 min) settles at 15 minutes.
        assert_eq!(judge_class(&f, 12 * MINUTE_MS, day).extra, 0, "two settled");
        let j = judge_class(&f, 15 * MINUTE_MS, day);
        assert_eq!(j.extra, 1);
        let mut f = f;
        f.apply(&j.update);
        assert_eq!(f.get(EXTRA), 1);
        assert!(
            f.0.keys().all(|k| !k.starts_with(BUCKET_PREMIUM)),
            "fresh evidence"
        );
        // No writes at the new level for a while: one fewer is tried again.
        assert_eq!(judge_class(&f, 29 * MINUTE_MS, day).extra, 1);
        let j = judge_class(&f, 31 * MINUTE_MS, day);
        assert_eq!(j.extra, 0);
    }

    #[test]
    fn a_class_whose_writes_are_read_keeps_its_rule() {
        let f = class_with(&[(0, 100, 900), (0, 100, 0), (0, 100, 0)]);
        assert_eq!(judge_class(&f, ONE_HOUR_MS, 24 * ONE_HOUR_MS).extra, 0);
    }
}
