//! Truth in cost: what Bedrock reported for one answer (`cacheReadInputTokens`,
//! `cacheWriteInputTokens` and their split by TTL), attributed to the points
//! that caused it, priced by the catalog, and written to the ledgers.
//!
//! Bedrock reads the longest cached prefix ending at a checkpoint (or up to 20
//! blocks before one) and writes from there to the last checkpoint. So the
//! points of a request, in cache order, cut its prompt into segments, each
//! ending at a point: the reported reads cover the first segments, the writes
//! the rest, each written token at the TTL of the point that closes its
//! segment. The proxy estimates where each point falls with the simulator's
//! token estimator, scales the estimates to the tokens Bedrock counted, and
//! shares the reported reads and writes out over the segments, so the shares
//! add up to exactly what was billed. Segments closed by the client's own
//! points count toward the totals but teach nothing: the planner never touches
//! those points.

use std::sync::Arc;
use std::time::Duration;

use super::ledger::{bucket, field, Prices, Update};
use super::registry::{LedgerKey, Totals};
use super::{Observed, Plan, PrefixRegistry, Survey};
use crate::answer::UsageSink;
use crate::catalog::ModelInfo;
use crate::config::CachePosition;
use bedrock_wire::converse::{Summary, Usage};
use bedrock_wire::tier::LatencyTier;

/// A share smaller than this part of its segment is estimation noise, not a
/// write or read event (its tokens and dollars still count).
const EVENT_SHARE: f64 = 0.05;

/// One of the proxy's points, with what its ledger said when it was planned.
#[derive(Debug, Clone)]
struct Ours {
    key: LedgerKey,
    section: CachePosition,
    first_write: bool,
    credit_bucket: i64,
}

/// A point in the request, where its segment ends.
#[derive(Debug, Clone)]
struct Mark {
    end: u32,
    ttl_1h: bool,
    ours: Option<Ours>,
}

/// What one attempt's answer is settled against.
pub struct Settlement {
    registry: Arc<PrefixRegistry>,
    route: Arc<str>,
    tenant: Arc<str>,
    model: Arc<ModelInfo>,
    window: Duration,
    marks: Vec<Mark>,
    total: u32,
}

/// One mark's share of an answer's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Share {
    read: f64,
    write_5m: f64,
    write_1h: f64,
}

impl Settlement {
    /// The settlement of an attempt whose plan is `plan`, made from the
    /// client's body as `survey` read it; `observed` names the ledgers of
    /// the planned positions (none when the attempt goes to another model than
    /// the one observed: nothing is learned from it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: Arc<PrefixRegistry>,
        route: Arc<str>,
        tenant: Arc<str>,
        model: Arc<ModelInfo>,
        window: Duration,
        survey: &Survey,
        plan: &Plan,
        observed: Option<&super::Observations>,
    ) -> Settlement {
        let prefixes = survey.prefixes;
        let mut marks: Vec<Mark> = survey
            .settle
            .iter()
            .map(|&(end, ttl_1h)| Mark {
                end,
                ttl_1h,
                ours: None,
            })
            .collect();
        for point in &plan.injected {
            let seen: Option<&Observed> = observed.and_then(|o| o.get(point.position));
            marks.push(Mark {
                end: prefixes.at(point.position),
                ttl_1h: point.ttl_1h,
                ours: seen.and_then(|o| {
                    o.key.clone().map(|key| Ours {
                        key,
                        section: point.position,
                        first_write: o.first_write,
                        credit_bucket: o.credit_bucket,
                    })
                }),
            });
        }
        marks.sort_by_key(|m| m.end);
        Settlement {
            registry,
            route,
            tenant,
            model,
            window,
            marks,
            total: prefixes.total,
        }
    }

    /// Each mark's share of `usage`'s reads and writes.
    fn shares(&self, usage: &Usage) -> Vec<Share> {
        let read = usage.cache_read_input_tokens as f64;
        let written = usage.cache_write_input_tokens as f64;
        let written_1h = usage
            .cache_write_1h_input_tokens
            .min(usage.cache_write_input_tokens) as f64;
        let written_5m = written - written_1h;
        let counted = (usage.input_tokens
            + usage.cache_read_input_tokens
            + usage.cache_write_input_tokens) as f64;
        let scale = if self.total > 0 && counted > 0.0 {
            counted / f64::from(self.total)
        } else {
            1.0
        };
        // Estimated read and written tokens of each segment.
        let mut estimates = Vec::with_capacity(self.marks.len());
        let mut start = 0.0f64;
        for m in &self.marks {
            let end = (f64::from(m.end) * scale).max(start);
            let segment = end - start;
            let r = (read - start).clamp(0.0, segment);
            estimates.push((r, segment - r, m.ttl_1h));
            start = end;
        }
        let sum = |f: &dyn Fn(&(f64, f64, bool)) -> f64| estimates.iter().map(f).sum::<f64>();
        let read_sum = sum(&|e| e.0);
        let write_sum = sum(&|e| e.1);
        let write_1h_sum = sum(&|e| if e.2 { e.1 } else { 0.0 });
        let write_5m_sum = write_sum - write_1h_sum;
        // Share `total` out in proportion to `part` of `of`; when nothing was
        // expected where Bedrock reports something, over all writes instead.
        let share = |total: f64, part: f64, of: f64, any: f64| {
            if total <= 0.0 {
                0.0
            } else if of > 0.0 {
                total * part / of
            } else if write_sum > 0.0 {
                total * any / write_sum
            } else {
                0.0
            }
        };
        estimates
            .iter()
            .map(|&(r, w, hour)| Share {
                read: if read_sum > 0.0 {
                    read * r / read_sum
                } else {
                    0.0
                },
                write_1h: share(written_1h, if hour { w } else { 0.0 }, write_1h_sum, w),
                write_5m: share(written_5m, if hour { 0.0 } else { w }, write_5m_sum, w),
            })
            .collect()
    }

    /// The ledger updates an answer's usage makes at `now_ms`: for each of the
    /// proxy's points, its writes and reads with their dollars, and its class's.
    fn updates(&self, usage: &Usage, prices: &Prices, now_ms: i64) -> Vec<(LedgerKey, Update)> {
        let shares = self.shares(usage);
        let mut out: Vec<(LedgerKey, Update)> = Vec::new();
        let mut start = 0.0f64;
        for (m, s) in self.marks.iter().zip(shares) {
            let segment = f64::from(m.end) - start;
            start = f64::from(m.end);
            let Some(ours) = &m.ours else { continue };
            let event = |tokens: f64| tokens >= 1.0 && tokens >= EVENT_SHARE * segment;
            let read_tokens = s.read.round() as u64;
            let (w5, w1) = (s.write_5m.round() as u64, s.write_1h.round() as u64);
            let saving = prices.read_saving(read_tokens);
            let premium = prices.write_premium(w5, false) + prices.write_premium(w1, true);
            let mut u = Update::default();
            let mut class = Update::default();
            u.incr(field::SAVED, saving - premium);
            u.incr(field::WINDOW_SAVED, saving - premium);
            u.incr(field::READ_TOKENS, read_tokens as i64);
            u.incr(field::WRITE_TOKENS_5M, w5 as i64);
            u.incr(field::WRITE_TOKENS_1H, w1 as i64);
            if event(s.read) {
                u.incr(field::READS, 1);
                u.incr(field::READS_SINCE_WRITE, 1);
                u.set(field::BACKOFF_LEVEL, 0);
                if ours.credit_bucket > 0 {
                    class.incr(
                        format!("{}{}", field::BUCKET_SAVED, ours.credit_bucket),
                        saving,
                    );
                }
            }
            if event(s.write_5m + s.write_1h) {
                let one_hour = w1 > w5;
                u.incr(field::WRITES, 1);
                u.set(field::LAST_WRITE, now_ms);
                u.set(field::LAST_WRITE_1H, i64::from(one_hour));
                u.set(field::READS_SINCE_WRITE, 0);
                u.set(field::TTL, if one_hour { 2 } else { 1 });
                // A conversation's every tail is a new prefix; the fixed sections
                // answer to their class for their first write only.
                if ours.section == CachePosition::Conversation || ours.first_write {
                    let b = bucket(now_ms);
                    class.incr(format!("{}{b}", field::BUCKET_PREMIUM), premium);
                    class.incr(format!("{}{b}", field::BUCKET_WRITES), 1);
                    if one_hour {
                        class.set(format!("{}{b}", field::BUCKET_1H), 1);
                    }
                    u.set(field::CREDIT_BUCKET, b);
                }
            }
            if !class.is_empty() {
                let s = &ours.key.subject;
                out.push((
                    PrefixRegistry::class_key(&s.tenant, &s.model, s.section),
                    class,
                ));
            }
            out.push((ours.key.clone(), u));
        }
        out
    }
}

impl UsageSink for Settlement {
    fn settle(&self, summary: &Summary) {
        let Some(usage) = summary.usage else { return };
        let price = self
            .model
            .price_for(summary.latency_tier.map(LatencyTier::name));
        self.registry.add_totals(
            &self.route,
            &self.model.id,
            &self.tenant,
            Totals {
                answers: 1,
                read_tokens: usage.cache_read_input_tokens,
                write_tokens_5m: usage.cache_write_5m_input_tokens(),
                write_tokens_1h: usage
                    .cache_write_1h_input_tokens
                    .min(usage.cache_write_input_tokens),
                saved_usd: price.prompt_cache_savings(&usage),
            },
        );
        if usage.cache_read_input_tokens + usage.cache_write_input_tokens == 0 {
            return;
        }
        let updates = self.updates(&usage, &Prices::of(&price), self.registry.now_ms());
        if updates.is_empty() {
            return;
        }
        let registry = self.registry.clone();
        let window = self.window;
        let write = async move {
            for (key, update) in updates {
                registry.update(&key, &update, window).await;
            }
        };
        match self.registry.shared() {
            Some(tier) => tier.spawn(write),
            // In memory only: nothing outlives the process to wait for.
            None => drop(tokio::spawn(write)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::prompt_cache::{Format, Observations};
    use serde_json::json;

    const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

    fn settlement(marks: Vec<Mark>, total: u32) -> Settlement {
        Settlement {
            registry: Arc::new(PrefixRegistry::new(
                10,
                Duration::from_secs(86_400),
                1.0,
                None,
            )),
            route: Arc::from("r"),
            tenant: Arc::from("t"),
            model: Catalog::embedded().get(HAIKU).unwrap().model.clone(),
            window: Duration::from_secs(600),
            marks,
            total,
        }
    }

    fn ours(section: CachePosition, end: u32, ttl_1h: bool) -> Mark {
        Mark {
            end,
            ttl_1h,
            ours: Some(Ours {
                key: PrefixRegistry::prefix_key(&Arc::from("t"), "m", section, &[1; 32], end),
                section,
                first_write: true,
                credit_bucket: 7,
            }),
        }
    }

    fn usage(input: u64, read: u64, write: u64, write_1h: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_input_tokens: read,
            cache_write_input_tokens: write,
            cache_write_1h_input_tokens: write_1h,
            ..Usage::default()
        }
    }

    #[test]
    fn reads_cover_the_first_segments_and_writes_the_rest() {
        // System point at 3000, conversation tail at 3500; the last turn wrote up to 3300.
        let s = settlement(
            vec![
                ours(CachePosition::System, 3000, false),
                ours(CachePosition::Conversation, 3500, false),
            ],
            3510,
        );
        let shares = s.shares(&usage(10, 3300, 200, 0));
        assert!((shares[0].read - 3000.0).abs() < 1e-6);
        assert_eq!(shares[0].write_5m, 0.0);
        assert!((shares[1].read - 300.0).abs() < 1e-6);
        assert!((shares[1].write_5m - 200.0).abs() < 1e-6);
    }

    #[test]
    fn shares_add_up_to_what_was_billed_when_estimates_are_off() {
        let s = settlement(
            vec![
                ours(CachePosition::System, 1000, true),
                ours(CachePosition::Conversation, 2000, false),
            ],
            2000,
        );
        // Bedrock counted 10% more tokens than the estimate; all written.
        let u = usage(0, 0, 2200, 1100);
        let shares = s.shares(&u);
        let w5: f64 = shares.iter().map(|s| s.write_5m).sum();
        let w1: f64 = shares.iter().map(|s| s.write_1h).sum();
        assert!((w1 - 1100.0).abs() < 1e-6 && (w5 - 1100.0).abs() < 1e-6);
        assert!(
            (shares[0].write_1h - 1100.0).abs() < 1e-6,
            "the hour closes the first segment"
        );
    }

    #[test]
    fn a_read_credits_the_prefix_and_its_class_and_a_write_charges_them() {
        let s = settlement(vec![ours(CachePosition::System, 3000, false)], 3010);
        let prices = Prices {
            input: 1.0,
            read: 0.1,
            write_5m: 1.25,
            write_1h: 2.0,
        };
        let updates = s.updates(&usage(10, 3000, 0, 0), &prices, 3_600_000);
        let (class, prefix) = (&updates[0], &updates[1]);
        assert!(class.0.subject.class);
        // 3,000 tokens read at 0.1 instead of 1 dollar per million.
        assert!(class.1.incr.contains(&("r:7".into(), 2_700_000)));
        assert!(prefix.1.incr.contains(&(field::READS.into(), 1)));
        assert!(prefix.1.incr.contains(&(field::SAVED.into(), 2_700_000)));
        let updates = s.updates(&usage(10, 0, 3000, 0), &prices, 3_600_000);
        let (class, prefix) = (&updates[0], &updates[1]);
        assert!(class.1.incr.contains(&("w:12".into(), 750_000)));
        assert!(prefix.1.incr.contains(&(field::SAVED.into(), -750_000)));
        assert!(prefix.1.incr.contains(&(field::WRITES.into(), 1)));
        assert!(prefix
            .1
            .set
            .contains(&(field::LAST_WRITE.into(), 3_600_000)));
    }

    #[test]
    fn the_clients_own_points_teach_nothing() {
        let body = json!({"system": [{"text": "x".repeat(12_000)}, {"cachePoint": {"type": "default", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [{"text": "hi"}]}]});
        let json = crate::json_body::JsonBody::from_value(body);
        let survey = Survey::of(&json, Format::Converse);
        let s = Settlement::new(
            Arc::new(PrefixRegistry::new(
                10,
                Duration::from_secs(86_400),
                1.0,
                None,
            )),
            Arc::from("r"),
            Arc::from("t"),
            Catalog::embedded().get(HAIKU).unwrap().model.clone(),
            Duration::from_secs(600),
            &survey,
            &Plan {
                injected: vec![],
                skipped: vec![],
            },
            Some(&Observations::default()),
        );
        assert_eq!(s.marks.len(), 1);
        assert!(s.marks[0].ttl_1h && s.marks[0].ours.is_none());
        assert_eq!(s.marks[0].end, 3000);
        let prices = Prices::of(&s.model.price);
        assert!(s.updates(&usage(5, 0, 3000, 3000), &prices, 1).is_empty());
    }
}
