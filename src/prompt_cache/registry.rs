//! The prefix registry: what the proxy learns about prompt prefixes. A prefix
//! is the SHA-256 of tenant, model, section (`tools`, `system`, `head`,
//! `conversation`) and the canonical content up to the end of that section
//! (cache markers left out); a class is tenant, model and section. Each has a
//! ledger ([`super::ledger`]): sightings and the gaps between them, the writes
//! and reads Bedrock reported for the proxy's points, savings, back-off.
//!
//! With a Redis tier configured, every ledger is a Redis hash under
//! `pc:{tenant}:` (updated by one Lua script, atomically), so replicas agree;
//! this process keeps the last state it saw of each for the admin API, and
//! falls back to it when Redis is unreachable. Memory is bounded by
//! `max_prefixes` here and by the retention (an expiry) in both places.

use moka::sync::Cache;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ledger::{field, usd, Fields, Update};
use crate::config::CachePosition;
use crate::shared::RedisTier;
use crate::support::{lock, Clock};

/// Applies an [`Update`] to a ledger hash the way [`Fields::apply`] does, sets
/// its expiry and returns all its fields. ARGV: now (-1: no sighting), window,
/// expiry (ms), then counts of increments, sets and deletes, then those.
const UPDATE_SCRIPT: &str = r"
local k = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local expire = tonumber(ARGV[3])
local nincr, nset, ndel = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if now >= 0 then
  local last = tonumber(redis.call('HGET', k, 'last') or '0')
  if last > 0 then
    local gap = now - last
    if gap <= 300000 then redis.call('HINCRBY', k, 'gs', 1)
    elseif gap <= 3600000 then redis.call('HINCRBY', k, 'gm', 1)
    else redis.call('HINCRBY', k, 'gl', 1) end
    if gap > window then redis.call('HSET', k, 'n', 0) end
  else
    redis.call('HSET', k, 'first', now)
  end
  redis.call('HINCRBY', k, 'n', 1)
  redis.call('HSET', k, 'last', now)
end
local i = 7
for _ = 1, nincr do redis.call('HINCRBY', k, ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, nset do redis.call('HSET', k, ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, ndel do redis.call('HDEL', k, ARGV[i]); i = i + 1 end
if expire > 0 then redis.call('PEXPIRE', k, expire) end
return redis.call('HGETALL', k)
";

/// Class ledgers change slowly: one read from Redis serves this long.
const CLASS_REFRESH: Duration = Duration::from_secs(1);

/// What a ledger is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject {
    pub tenant: Arc<str>,
    pub model: Arc<str>,
    pub section: CachePosition,
    /// Estimated tokens up to the end of the section (0 for a class).
    pub tokens: u32,
    /// A class of prefixes rather than one.
    pub class: bool,
}

/// A ledger's identity and subject; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    pub id: [u8; 32],
    pub subject: Arc<Subject>,
}

impl LedgerKey {
    /// The Redis key: `pc:{tenant}:{hex id}`.
    fn redis_key(&self) -> String {
        format!("pc:{}:{}", self.subject.tenant, hex::encode(self.id))
    }
}

/// One ledger as this process last saw it.
struct Local {
    subject: Arc<Subject>,
    fields: Mutex<Fields>,
    /// When it was last read from or written to Redis.
    synced: Mutex<Option<Instant>>,
}

/// Savings by route, model and tenant (this process's answers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub answers: u64,
    pub read_tokens: u64,
    pub write_tokens_5m: u64,
    pub write_tokens_1h: u64,
    pub saved_usd: f64,
}

/// The registry.
pub struct PrefixRegistry {
    local: Cache<[u8; 32], Arc<Local>>,
    redis: Option<Arc<RedisTier>>,
    script: redis::Script,
    clock: Clock,
    retention: Duration,
    totals: Mutex<BTreeMap<TotalsKey, Totals>>,
}

/// Route, model, tenant.
type TotalsKey = (Arc<str>, String, Arc<str>);

fn id(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl PrefixRegistry {
    pub fn new(
        max_prefixes: u64,
        retention: Duration,
        time_scale: f64,
        redis: Option<Arc<RedisTier>>,
    ) -> PrefixRegistry {
        let clock = Clock::new(time_scale);
        PrefixRegistry {
            local: Cache::builder()
                .max_capacity(max_prefixes)
                .time_to_idle(clock.real(retention).max(Duration::from_secs(1)))
                .build(),
            redis,
            script: redis::Script::new(UPDATE_SCRIPT),
            clock,
            retention,
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// The learning clock (tests and benchmarks move or speed it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.clock.now_ms()).unwrap_or(i64::MAX)
    }

    /// How long ledgers are kept after their last use.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The ledger of one prefix.
    pub fn prefix_key(
        tenant: &Arc<str>,
        model: &str,
        section: CachePosition,
        digest: &[u8; 32],
        tokens: u32,
    ) -> LedgerKey {
        LedgerKey {
            id: id(&[
                tenant.as_bytes(),
                model.as_bytes(),
                section.name().as_bytes(),
                digest,
            ]),
            subject: Arc::new(Subject {
                tenant: tenant.clone(),
                model: Arc::from(model),
                section,
                tokens,
                class: false,
            }),
        }
    }

    /// The ledger of a class: every prefix of one section for a tenant and model.
    pub fn class_key(tenant: &Arc<str>, model: &str, section: CachePosition) -> LedgerKey {
        LedgerKey {
            id: id(&[
                tenant.as_bytes(),
                model.as_bytes(),
                section.name().as_bytes(),
                b"class",
            ]),
            subject: Arc::new(Subject {
                tenant: tenant.clone(),
                model: Arc::from(model),
                section,
                tokens: 0,
                class: true,
            }),
        }
    }

    fn local(&self, key: &LedgerKey) -> Arc<Local> {
        self.local.get_with(key.id, || {
            Arc::new(Local {
                subject: key.subject.clone(),
                fields: Mutex::new(Fields::default()),
                synced: Mutex::new(None),
            })
        })
    }

    /// Applies `update` to a ledger (in Redis when it answers, else here) and
    /// returns the ledger as it is now.
    /// The shared tier the ledger also lives in, if any.
    pub fn shared(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    pub async fn update(&self, key: &LedgerKey, update: &Update, window: Duration) -> Fields {
        let local = self.local(key);
        if let Some(redis) = &self.redis {
            let expire = self.clock.real(self.retention).as_millis().max(1);
            let mut args = vec![
                update.sight.map_or(-1, |s| s.now_ms).to_string(),
                window.as_millis().to_string(),
                expire.to_string(),
                update.incr.len().to_string(),
                update.set.len().to_string(),
                update.delete.len().to_string(),
            ];
            for (f, v) in update.incr.iter().chain(&update.set) {
                args.push(f.clone());
                args.push(v.to_string());
            }
            args.extend(update.delete.iter().cloned());
            if let Some(pairs) = redis
                .script_pairs(&self.script, &key.redis_key(), &args)
                .await
            {
                let pairs: Vec<(String, String)> = pairs.into_iter().collect();
                let fields = Fields::from_pairs(&pairs);
                *lock(&local.fields) = fields.clone();
                *lock(&local.synced) = Some(Instant::now());
                return fields;
            }
        }
        let mut fields = lock(&local.fields);
        fields.apply(update);
        fields.clone()
    }

    /// A ledger as it is now, read from Redis at most once per second.
    pub async fn read(&self, key: &LedgerKey) -> Fields {
        let local = self.local(key);
        if let Some(redis) = &self.redis {
            let fresh = lock(&local.synced).is_some_and(|t| t.elapsed() < CLASS_REFRESH);
            if !fresh {
                if let Some(pairs) = redis.hash(&key.redis_key()).await {
                    let pairs: Vec<(String, String)> = pairs.into_iter().collect();
                    let fields = Fields::from_pairs(&pairs);
                    *lock(&local.fields) = fields.clone();
                    *lock(&local.synced) = Some(Instant::now());
                    return fields;
                }
            }
        }
        let fields = lock(&local.fields).clone();
        fields
    }

    /// Adds one answer's prompt-cache usage to the route, model and tenant's totals.
    pub fn add_totals(&self, route: &Arc<str>, model: &str, tenant: &Arc<str>, add: Totals) {
        let mut totals = lock(&self.totals);
        let t = totals
            .entry((route.clone(), model.to_owned(), tenant.clone()))
            .or_default();
        t.answers += add.answers;
        t.read_tokens += add.read_tokens;
        t.write_tokens_5m += add.write_tokens_5m;
        t.write_tokens_1h += add.write_tokens_1h;
        t.saved_usd += add.saved_usd;
    }

    /// `GET /admin/prompt-cache`: totals by route, model and tenant, the classes'
    /// thresholds, and the prefixes with the most at stake (savings either way),
    /// at most `n`.
    pub fn report(&self, n: usize) -> Value {
        self.local.run_pending_tasks();
        let now = self.now_ms();
        let totals: Vec<Value> = lock(&self.totals)
            .iter()
            .map(|((route, model, tenant), t)| {
                json!({
                    "route": &**route, "model": model, "tenant": &**tenant,
                    "answers": t.answers,
                    "read_tokens": t.read_tokens,
                    "write_tokens_5m": t.write_tokens_5m,
                    "write_tokens_1h": t.write_tokens_1h,
                    "saved_usd": t.saved_usd,
                })
            })
            .collect();
        let mut prefixes = Vec::new();
        let mut classes = Vec::new();
        for (_, entry) in self.local.iter() {
            let f = lock(&entry.fields).clone();
            let s = &entry.subject;
            if s.class {
                classes.push(json!({
                    "tenant": &*s.tenant, "model": &*s.model, "section": s.section.name(),
                    "extra_needed": f.get(field::EXTRA),
                }));
                continue;
            }
            let ttl = match f.get(field::TTL) {
                2 => "1h",
                1 => "5m",
                _ => "-",
            };
            let suppressed = f.get(field::SUPPRESSED_UNTIL);
            prefixes.push((
                f.get(field::SAVED).abs(),
                json!({
                    "tenant": &*s.tenant, "model": &*s.model, "section": s.section.name(),
                    "estimated_tokens": s.tokens,
                    "sightings": f.get(field::SIGHTINGS),
                    "gaps": {"up_to_5m": f.get(field::GAPS_SHORT), "up_to_1h": f.get(field::GAPS_MID), "longer": f.get(field::GAPS_LONG)},
                    "writes": f.get(field::WRITES),
                    "write_tokens_5m": f.get(field::WRITE_TOKENS_5M),
                    "write_tokens_1h": f.get(field::WRITE_TOKENS_1H),
                    "reads": f.get(field::READS),
                    "read_tokens": f.get(field::READ_TOKENS),
                    "ttl": ttl,
                    "saved_usd": usd(f.get(field::SAVED)),
                    "backed_off_for_s": if suppressed > now { (suppressed - now) / 1000 } else { 0 },
                    "last_seen_ms": f.get(field::LAST_SEEN),
                }),
            ));
        }
        let tracked = prefixes.len();
        prefixes.sort_by_key(|(stake, _)| std::cmp::Reverse(*stake));
        json!({
            "prefixes_tracked": tracked,
            "totals": totals,
            "classes": classes,
            "prefixes": prefixes.into_iter().take(n).map(|(_, v)| v).collect::<Vec<_>>(),
        })
    }

    /// The most-seen prefixes, for `/admin/prefixes`.
    pub fn top(&self, n: usize) -> Vec<Value> {
        self.local.run_pending_tasks();
        let mut all: Vec<(Arc<Subject>, Fields)> = self
            .local
            .iter()
            .filter(|(_, e)| !e.subject.class)
            .map(|(_, e)| (e.subject.clone(), lock(&e.fields).clone()))
            .collect();
        all.sort_by_key(|(_, f)| std::cmp::Reverse(f.get(field::SIGHTINGS)));
        all.into_iter()
            .take(n)
            .map(|(s, f)| {
                json!({
                    "tenant": &*s.tenant,
                    "model": &*s.model,
                    "section": s.section.name(),
                    "sightings": f.get(field::SIGHTINGS),
                    "estimated_tokens": s.tokens,
                    "first_seen_ms": f.get(field::FIRST_SEEN),
                    "last_seen_ms": f.get(field::LAST_SEEN),
                })
            })
            .collect()
    }

    /// Ledgers remembered here (prefixes and classes).
    pub fn len(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::Sight;
    use super::super::{Format, Survey};
    use super::*;
    use crate::json_body::JsonBody;

    /// The digest the survey of `body` gives `section`.
    fn section_digest(body: &Value, format: Format, section: CachePosition) -> Option<[u8; 32]> {
        Survey::of(&JsonBody::from_value(body.clone()), format).digest(section)
    }

    fn registry(max: u64) -> PrefixRegistry {
        PrefixRegistry::new(max, Duration::from_secs(86_400), 1.0, None)
    }

    async fn sight(r: &PrefixRegistry, key: &LedgerKey) -> i64 {
        let update = Update {
            sight: Some(Sight {
                now_ms: r.now_ms(),
                window_ms: 60_000,
            }),
            ..Update::default()
        };
        r.update(key, &update, Duration::from_secs(60))
            .await
            .get(field::SIGHTINGS)
    }

    #[tokio::test]
    async fn sightings_count_per_tenant_model_and_content() {
        let r = registry(100);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let sys = json!({"system": [{"text": "You are a helpful assistant."}]});
        let marked = json!({"system": [{"text": "You are a helpful assistant."}, {"cachePoint": {"type": "default"}}]});
        let d1 = section_digest(&sys, Format::Converse, CachePosition::System).unwrap();
        let d2 = section_digest(&marked, Format::Converse, CachePosition::System).unwrap();
        assert_eq!(d1, d2, "markers do not change the prefix");
        let key = |t: &Arc<str>, m: &str, d: &[u8; 32]| {
            PrefixRegistry::prefix_key(t, m, CachePosition::System, d, 10)
        };
        assert_eq!(sight(&r, &key(&a, "m", &d1)).await, 1);
        assert_eq!(sight(&r, &key(&a, "m", &d2)).await, 2);
        assert_eq!(sight(&r, &key(&b, "m", &d1)).await, 1, "tenants apart");
        assert_eq!(sight(&r, &key(&a, "other", &d1)).await, 1, "models apart");
        assert_eq!(r.len(), 3);
        assert_eq!(r.top(1)[0]["sightings"], 2);
        assert!(section_digest(&sys, Format::Converse, CachePosition::Tools).is_none());
    }

    #[test]
    fn anthropic_markers_and_plain_strings_do_not_change_the_prefix() {
        let plain = json!({"system": [{"type": "text", "text": "s"}]});
        let marked = json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]});
        let string = json!({"system": "s"});
        let d = |b: &Value| section_digest(b, Format::Anthropic, CachePosition::System);
        assert_eq!(d(&plain), d(&marked));
        assert_eq!(d(&plain), d(&string));
    }

    #[test]
    fn a_conversation_is_its_opening_under_its_system_prompt() {
        let turn = |system: &str, first: &str, n: usize| {
            let mut messages = vec![json!({"role": "user", "content": [{"text": first}]})];
            for i in 1..n {
                messages.push(json!({"role": "assistant", "content": [{"text": format!("a{i}")}]}));
                messages.push(json!({"role": "user", "content": [{"text": format!("q{i}")}]}));
            }
            json!({"system": [{"text": system}], "messages": messages})
        };
        let d = |b: &Value| section_digest(b, Format::Converse, CachePosition::Conversation);
        assert_eq!(
            d(&turn("s", "hello", 1)),
            d(&turn("s", "hello", 3)),
            "turns share it"
        );
        assert_ne!(d(&turn("s", "hello", 1)), d(&turn("t", "hello", 1)));
        assert_ne!(d(&turn("s", "hello", 1)), d(&turn("s", "bye", 1)));
        assert!(d(&json!({"system": [{"text": "s"}]})).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let r = registry(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let t: Arc<str> = Arc::from("t");
        for i in 0..100u8 {
            let key = PrefixRegistry::prefix_key(&t, "m", CachePosition::System, &[i; 32], 1);
            rt.block_on(sight(&r, &key));
        }
        assert!(r.len() <= 10, "{}", r.len());
    }
}
