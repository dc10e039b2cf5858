//! Config parsing and validation, driven by config text as an operator writes it.

use super::values::expand_env_with;
use super::*;
use crate::error::ErrorKind;
use std::time::Duration;

const MINIMAL: &str = r#"
[server]
auth = "none"
[upstreams.sim]
kind = "simulator"
endpoint = "http://127.0.0.1:7070"
[[routes]]
name = "haiku"
aliases = ["haiku"]
models = ["us.anthropic.claude-3-5-haiku-20241022-v1:0"]
upstream = "sim"
"#;

fn errors(text: &str) -> Vec<String> {
    Config::parse(text).unwrap_err().0
}

#[test]
fn a_minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.limits.max_body_bytes, 25_000_000);
    assert_eq!(
        c.upstreams["sim"].timeouts.first_byte,
        Duration::from_secs(60)
    );
    assert_eq!(c.hash.len(), 64);
}

#[test]
fn unknown_keys_name_themselves() {
    let e = errors(&format!("{MINIMAL}\n[limits]\nmax_body = 5\n"));
    assert!(e[0].contains("max_body"), "{e:?}");
    let e = errors(&MINIMAL.replace(
        "upstream = \"sim\"",
        "upstream = \"sim\"\nupstrem_model = \"x\"",
    ));
    assert!(e[0].contains("upstrem_model"), "{e:?}");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
[server]
listen = "0.0.0.0:8080"
auth = "none"
[limits]
shutdown_grace = "soon"
[upstreams.sim]
kind = "simulator"
endpoint = "ftp://x"
[[routes]]
name = "a"
models = ["m"]
upstream = "missing"
[[routes]]
name = "a"
aliases = ["m"]
upstream = "sim"
[[keys]]
tenant = "t"
key_sha256 = "nothex"
routes = ["nope"]
"#;
    let e = errors(text).join("\n");
    for expected in [
        "server.auth: `none` is only allowed on a loopback address",
        "limits.shutdown_grace: `soon` is not a duration",
        "upstreams.sim.endpoint: `ftp://x` must start with http:// or https://",
        "routes[0].upstream: no upstream named `missing`",
        "routes[1]: `m` is already claimed by route a",
        "routes: the name `a` is used twice",
        "keys[0].key_sha256: must be 64 hex characters",
        "keys[0].routes: no route named `nope`",
    ] {
        assert!(e.contains(expected), "missing `{expected}` in:\n{e}");
    }
}

#[test]
fn keys_are_required_unless_auth_is_none() {
    let e = errors(&MINIMAL.replace("auth = \"none\"", "auth = \"keys\""));
    assert!(e[0].contains("no [[keys]] entry"), "{e:?}");
}

#[test]
fn environment_variables_expand() {
    let lookup = |name: &str| (name == "SET").then(|| "value".to_owned());
    let mut e = Vec::new();
    assert_eq!(
        expand_env_with("k", "a-${SET}-b", &mut e, lookup),
        "a-value-b"
    );
    assert_eq!(
        expand_env_with("k", "${UNSET:-fallback}", &mut e, lookup),
        "fallback"
    );
    assert!(e.is_empty());
    expand_env_with("keys[0].secret", "${UNSET}", &mut e, lookup);
    assert_eq!(e, ["keys[0].secret: environment variable UNSET is not set"]);
}

#[test]
fn the_shipped_configs_are_valid() {
    let demo = Config::parse(include_str!("../../config/demo.toml")).unwrap();
    assert_eq!(demo.server.auth, AuthMode::None);
    assert!(demo.routes.iter().any(|r| r.name == "haiku"));

    let bedrock = include_str!("../../config/bedrock.toml");
    let e = errors(bedrock);
    assert!(
        e.iter()
            .any(|m| m.contains("PLATFORM_KEY_SHA256 is not set")),
        "{e:?}"
    );
    let hash = "ab".repeat(32);
    let c = Config::parse(&bedrock.replace("${PLATFORM_KEY_SHA256}", &hash)).unwrap();
    assert_eq!(c.upstreams["bedrock"].kind, UpstreamKind::Bedrock);
    assert_eq!(
        c.upstreams["bedrock"].endpoint_url().unwrap(),
        "https://bedrock-runtime.us-east-2.amazonaws.com"
    );
    assert_eq!(c.keys.len(), 2);
}

// --- Each section's problems, all reported at once, each under its key path.

/// `MINIMAL` with `table` (TOML for tables `MINIMAL` does not have) added.
fn with(table: &str) -> String {
    format!("{MINIMAL}\n{table}\n")
}

/// A config with one upstream `sim` and `routes` as its `[[routes]]` entries.
fn with_routes(routes: &str) -> String {
    format!("[server]\nauth = \"none\"\n[upstreams.sim]\nkind = \"simulator\"\n{routes}\n")
}

#[test]
fn server_problems_name_their_keys() {
    let e = errors(
        r#"
[server]
listen = "localhost"
auth = "maybe"
tls_cert = "/cert.pem"
[upstreams.sim]
[[routes]]
name = "r"
models = ["m"]
upstream = "sim"
"#,
    );
    assert_eq!(
        e,
        [
            "server.listen: `localhost` is not an address like 127.0.0.1:8080",
            "server.auth: `maybe` is not one of keys, none",
            "server.tls_cert and server.tls_key go together",
            // A wrong `auth` is read as the default, `keys`, which needs keys.
            "keys: server.auth is `keys` but no [[keys]] entry is configured; nobody could call the proxy",
        ]
    );
    let e = errors(&MINIMAL.replace(
        "auth = \"none\"",
        "auth = \"none\"\nlisten = \"0.0.0.0:8080\"",
    ));
    assert_eq!(
        e,
        ["server.auth: `none` is only allowed on a loopback address, not 0.0.0.0:8080; configure [[keys]] instead"]
    );
}

#[test]
fn admin_limits_and_logging_problems_name_their_keys() {
    let e = errors(&with(
        r#"
[admin]
listen = "9090"
token_sha256 = "not-hex"
[limits]
max_json_depth = 200
header_read_timeout = "a while"
[logging]
format = "xml"
"#,
    ));
    assert_eq!(e.len(), 5, "{e:#?}");
    assert_eq!(
        e[0],
        "admin.token_sha256: must be 64 hex characters (run `bedrock-proxy hash-key`)"
    );
    assert_eq!(
        e[1],
        "admin.listen: `9090` is not an address like 127.0.0.1:8080"
    );
    assert_eq!(e[2], "limits.max_json_depth: must be between 1 and 127");
    assert!(
        e[3].starts_with("limits.header_read_timeout: `a while` is not a duration"),
        "{e:#?}"
    );
    assert_eq!(e[4], "logging.format: `xml` is not one of text, json");
    let e = errors(&with("[limits]\nmax_json_depth = 0"));
    assert_eq!(e, ["limits.max_json_depth: must be between 1 and 127"]);
}

#[test]
fn tracing_and_emf_problems_name_their_keys() {
    let e = errors(&with(
        r#"
[logging]
cloudwatch_namespace = "AWS/Bedrock"
[tracing]
endpoint = "collector:4318"
headers = { "bad header" = "x", "x-key" = "line\nbreak" }
service_name = " "
sample_ratio = 1.5
timeout = "0s"
"#,
    ));
    assert_eq!(
        e,
        [
            "logging.cloudwatch_namespace: `AWS/Bedrock` must be 1 to 255 letters, digits, . - _ / # : or spaces, not starting with AWS/",
            "tracing.endpoint: `collector:4318` is not an http:// or https:// URL like http://collector:4318",
            "tracing.headers.bad header: not a valid HTTP header name",
            "tracing.headers.x-key: not a valid HTTP header value",
            "tracing.service_name: must not be empty",
            "tracing.sample_ratio: 1.5 is not between 0 and 1 (1 keeps every trace)",
            "tracing.timeout: must be more than zero",
        ]
    );
}

#[test]
fn tracing_and_emf_are_off_by_default_and_read_as_written() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.tracing, TracingConfig::default());
    assert!(!c.logging.cloudwatch_emf);
    assert_eq!(c.logging.cloudwatch_namespace, "BedrockProxy");
    let c = Config::parse(&with(
        r#"
[logging]
cloudwatch_emf = true
cloudwatch_namespace = "Acme/LLM gateway"
[tracing]
endpoint = "https://otlp.example.com"
headers = { "x-api-key" = "${BEDROCK_PROXY_TEST_UNSET_KEY:-k-123}" }
service_name = "gateway"
sample_ratio = 0.25
timeout = "3s"
capture_content = true
"#,
    ))
    .unwrap();
    assert!(c.logging.cloudwatch_emf);
    assert_eq!(c.logging.cloudwatch_namespace, "Acme/LLM gateway");
    let t = &c.tracing;
    assert_eq!(
        t.enabled, None,
        "on because an endpoint is set (telemetry::install)"
    );
    assert_eq!(t.endpoint.as_deref(), Some("https://otlp.example.com"));
    assert_eq!(t.headers["x-api-key"], "k-123");
    assert_eq!(t.service_name.as_deref(), Some("gateway"));
    assert_eq!(t.sample_ratio, Some(0.25));
    assert_eq!(t.timeout, Some(Duration::from_secs(3)));
    assert!(t.capture_content);
    assert!(errors(&with("[tracing]\nendpont = \"http://c:4318\""))
        .iter()
        .any(|e| e.contains("endpont")));
}

#[test]
fn upstream_problems_name_their_keys() {
    let e = errors(
        r#"
[server]
auth = "none"
[upstreams.east]
kind = "azure"
endpoint = "bedrock.example"
bearer_token = "${CONFIG_TEST_UNSET_TOKEN}"
idle_timeout = "forever"
[[routes]]
name = "r"
models = ["m"]
upstream = "east"
"#,
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[..3],
        [
            "upstreams.east.kind: `azure` is not one of bedrock, simulator, openai, sagemaker",
            "upstreams.east.endpoint: `bedrock.example` must start with http:// or https://",
            "upstreams.east.bearer_token: environment variable CONFIG_TEST_UNSET_TOKEN is not set",
        ]
    );
    assert!(
        e[3].starts_with("upstreams.east.idle_timeout: `forever` is not a duration"),
        "{e:#?}"
    );
    let e = errors(
        "[server]\nauth = \"none\"\n[[routes]]\nname = \"r\"\nmodels = [\"m\"]\nupstream = \"x\"\n",
    );
    assert_eq!(
        e,
        [
            "upstreams: at least one [upstreams.NAME] table is needed",
            "routes[0].upstream: no upstream named `x`",
        ]
    );
}

#[test]
fn cache_prompt_cache_and_catalog_problems_name_their_keys() {
    let e = errors(&with(
        r#"
[cache.redis]
url = "http://cache:6379"
urls = ["rediss://a:6379"]
ttl = "a day"
[catalog]
file = "${CONFIG_TEST_UNSET_CATALOG}"
"#,
    ));
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!(
        e[0],
        "cache.redis.url: `http://cache:6379` must start with redis:// or rediss://"
    );
    assert!(
        e[1].starts_with("cache.redis.ttl: `a day` is not a duration"),
        "{e:#?}"
    );
    assert_eq!(
        e[2],
        "catalog.file: environment variable CONFIG_TEST_UNSET_CATALOG is not set"
    );
    let e = errors(&with("[cache.redis]\ncluster = true"));
    assert_eq!(e, ["cache.redis: give `url` (or `urls` for a cluster)"]);

    // Numbers that cannot work are read as the smallest that does.
    let c = Config::parse(&with("[prompt_cache]\nmax_prefixes = 0")).unwrap();
    assert_eq!(c.prompt_cache.max_prefixes, 1);
    let e = errors(&with(
        "[prompt_cache]\nretention = \"10m\"\ntime_scale = 0.0",
    ));
    assert_eq!(
        e,
        [
            "prompt_cache.retention: must be at least 1h",
            "prompt_cache.time_scale: must be a number above 0, got 0",
        ]
    );
    let c = Config::parse(&with(
        "[prompt_cache]\nretention = \"2h\"\ntime_scale = 0.01",
    ))
    .unwrap();
    assert_eq!(c.prompt_cache.retention, Duration::from_secs(7200));
    assert_eq!(c.prompt_cache.time_scale, 0.01);
}

#[test]
fn the_responses_store_has_defaults_and_bounds() {
    let c = Config::parse(&with("")).unwrap();
    assert_eq!(c.responses.ttl, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(c.responses.max_bytes, 64 * 1024 * 1024);
    let c = Config::parse(&with("[responses]\nttl = \"7d\"\nmax_bytes = 1048576")).unwrap();
    assert_eq!(c.responses.ttl, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.responses.max_bytes, 1 << 20);
    let e = errors(&with("[responses]\nttl = \"0s\"\nmax_bytes = 10"));
    assert_eq!(
        e,
        [
            "responses.ttl: must be at least 1s",
            "responses.max_bytes: must be at least 1024, got 10",
        ]
    );
    let e = errors(&with("[responses]\nttl = \"soon\""));
    assert!(
        e[0].starts_with("responses.ttl: `soon` is not a duration"),
        "{e:#?}"
    );
    let e = errors(&with("[responses]\nmax_entries = 3"));
    assert!(e[0].contains("unknown field `max_entries`"), "{e:#?}");
}

#[test]
fn a_routes_own_problems_name_their_keys() {
    let e = errors(&with_routes(
        r#"
[[routes]]
name = "no spaces please"
upstream = "sim"
latency = "fast"
fallback = [{}, { latency = "slow" }]
fallback_on = ["validation", "timeout", "gremlins"]
backoff = "soon"
breaker = { error_rate = 0.0 }
cache = { mode = "sometimes", replay = "slow", ttl = "0s", stop_reasons = ["end_turn", "guardrail_intervened"] }
prompt_cache = { mode = "never", ttl = "2h", min_repeats = 0, positions = ["system", "footer"] }
"#,
    ));
    let expected = [
        "routes[0].name: `no spaces please` must be non-empty letters, digits, - _ . (no `:`: it separates the parts of cache keys)",
        "routes[0]: give at least one of aliases, models",
        "routes[0].cache.mode: `sometimes` is not one of off, deterministic, always",
        "routes[0].cache.replay: `slow` is not one of instant, paced",
        "routes[0].cache.stop_reasons: `guardrail_intervened` answers are never cached",
        "routes[0].cache.ttl: must be more than 0",
        "routes[0].prompt_cache.mode: `never` is not one of off, auto, always",
        "routes[0].prompt_cache.ttl: `2h` is not one of 5m, 1h, auto",
        "routes[0].prompt_cache.positions: `footer` is not one of tools, system, head, conversation",
        "routes[0].prompt_cache.min_repeats: must be at least 1",
        "routes[0].latency: `fast` is not one of optimized, standard, client",
        "routes[0].fallback[0]: give at least one of upstream, model, latency, service_tier",
        "routes[0].fallback[1].latency: `slow` is not one of optimized, standard, client",
        "routes[0].fallback_on: `validation` is not one of throttled, unavailable, timeout, model_not_ready, unsupported, model_error, quota_exceeded, internal",
        "routes[0].fallback_on: `gremlins` is not one of throttled, unavailable, timeout, model_not_ready, unsupported, model_error, quota_exceeded, internal",
    ];
    assert_eq!(e[..expected.len()], expected, "{e:#?}");
    assert_eq!(e.len(), expected.len() + 2, "{e:#?}");
    assert!(
        e[expected.len()].starts_with("routes[0].backoff: `soon` is not a duration"),
        "{e:#?}"
    );
    assert_eq!(
        e[expected.len() + 1],
        "routes[0].breaker.error_rate: must be in (0, 1]"
    );
}

#[test]
fn what_routes_claim_must_be_theirs_alone() {
    let e = errors(&with_routes(
        r#"
[[routes]]
name = "a"
aliases = ["fast"]
models = ["*", "m1"]
upstream = "sim"
[[routes]]
name = "b"
aliases = ["m1"]
models = ["*"]
upstream = "sim"
[[routes]]
name = "a"
models = ["m1", "fast"]
upstream = "sim"
"#,
    ));
    assert_eq!(
        e,
        [
            "routes[1].models: `*` is already claimed by route a",
            "routes[1]: `m1` is already claimed by route a",
            "routes[2]: `m1` is already claimed by route b",
            "routes[2]: `fast` is already claimed by route a",
            "routes: the name `a` is used twice",
        ]
    );
}

#[test]
fn key_problems_name_their_keys() {
    let hash = "ab".repeat(32);
    let e = errors(&with(&format!(
        r#"
[[keys]]
tenant = "t"
access_key_id = "AKIDONLY"
[[keys]]
tenant = "team a"
key_sha256 = "{hash}"
routes = ["haiku", "sonnet", "opus"]
requests_per_minute = 0
[[keys]]
tenant = "t"
key_sha256 = "{hash}"
access_key_id = "AKID"
[[keys]]
tenant = "t"
key_sha256 = "{}"
[[keys]]
tenant = "t"
access_key_id = "AKID"
secret_access_key = "${{CONFIG_TEST_UNSET_SECRET:-}}"
"#,
        hash.to_uppercase()
    )));
    assert_eq!(
        e,
        [
            "keys[0]: access_key_id needs secret_access_key",
            "keys[1].tenant: `team a` must be non-empty letters, digits, - _ . (no `:`: it separates the parts of cache keys)",
            "keys[1].requests_per_minute: must be at least 1",
            "keys[2]: give either key_sha256, or access_key_id with secret_access_key",
            "keys[4].secret_access_key: must not be empty",
            // The same hash in capitals is the same key.
            "keys[3]: the same credential is configured twice",
            // An unusable entry before it does not shift this key's path.
            "keys[1].routes: no route named `opus`",
            "keys[1].routes: no route named `sonnet`",
        ]
    );
}

#[test]
fn references_between_tables_are_checked_after_each_table() {
    let e = errors(&with_routes(
        r#"
[[routes]]
name = "r"
models = ["m"]
upstream = "west"
fallback = [{ upstream = "sim" }, { upstream = "east", model = "m2" }]
"#,
    ));
    assert_eq!(
        e,
        [
            "routes[0].upstream: no upstream named `west`",
            "routes[0].fallback[1].upstream: no upstream named `east`",
        ]
    );
    // Keys whose credentials are all unusable leave nobody able to call.
    let e = errors(&MINIMAL.replace(
        "auth = \"none\"",
        "auth = \"keys\"\n[[keys]]\ntenant = \"t\"",
    ));
    assert_eq!(
        e,
        [
            "keys[0]: give either key_sha256, or access_key_id with secret_access_key",
            "keys: server.auth is `keys` but no [[keys]] entry is configured; nobody could call the proxy",
        ]
    );
}

// --- Defaults: the typed config's `Default` impls, which parsing falls back to.

#[test]
fn absent_keys_take_the_documented_defaults() {
    let c = Config::parse(&with(
        "[cache.redis]\nurl = \"redis://127.0.0.1:6379\"\n[[routes]]\nname = \"b\"\nmodels = [\"b\"]\nupstream = \"sim\"\nbreaker = {}",
    ))
    .unwrap();
    // What docs/CONFIG.md promises, key by key.
    assert_eq!(c.server.auth, AuthMode::None);
    assert!(c.server.tls.is_none());
    assert_eq!(c.admin.token_sha256, None);
    assert_eq!(c.limits.max_json_depth, 64);
    assert_eq!(c.limits.max_concurrent_requests, 1024);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.logging.level, "info");
    assert!(!c.logging.log_bodies);
    let sim = &c.upstreams["sim"];
    assert_eq!(sim.region, "us-east-2");
    assert_eq!(
        sim.timeouts,
        Timeouts {
            connect: Duration::from_secs(3),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    );
    assert_eq!(c.cache.max_bytes, 256 * 1024 * 1024);
    let redis = c.cache.redis.as_ref().unwrap();
    assert_eq!(redis.urls, ["redis://127.0.0.1:6379"]);
    assert!(!redis.cluster);
    assert_eq!(redis.key_prefix, "bedrock-proxy:");
    assert_eq!(redis.ttl, Duration::from_secs(24 * 3600));
    assert_eq!(redis.timeout, Duration::from_millis(100));
    assert_eq!(redis.compress_min_bytes, 2048);
    assert_eq!(c.prompt_cache.max_prefixes, 100_000);
    assert_eq!(c.catalog_file, None);
    for route in &c.routes {
        let r = &route.resilience;
        assert_eq!(r.latency, LatencyPolicy::Client);
        assert_eq!(r.fallback_on, DEFAULT_FALLBACK_ON);
        assert_eq!((r.retries, r.backoff), (0, Duration::from_millis(100)));
        assert_eq!(r.max_backoff, Duration::from_secs(2));
        assert_eq!(
            (r.deadline, r.first_byte_timeout, r.hedge_after),
            (None, None, None)
        );
        assert_eq!(r.breaker.consecutive_failures, 5);
        assert_eq!(r.breaker.error_rate, 0.5);
        assert_eq!(r.breaker.window, Duration::from_secs(30));
        assert_eq!(r.breaker.min_requests, 20);
        assert_eq!(r.breaker.open_for, Duration::from_secs(30));
    }
    // And each is the typed config's `Default`, the one place it is written.
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.logging, LoggingConfig::default());
    assert_eq!(c.admin, AdminConfig::default());
    assert_eq!(sim.timeouts, Timeouts::default());
    assert_eq!(
        *redis,
        RedisConfig {
            urls: redis.urls.clone(),
            ..RedisConfig::default()
        }
    );
    assert_eq!(c.routes[1].resilience, ResilienceConfig::default());
}

#[test]
fn a_routes_cache_tables_turn_their_feature_on() {
    let c = Config::parse(&with_routes(
        r#"
[[routes]]
name = "plain"
models = ["a"]
upstream = "sim"
[[routes]]
name = "tables"
models = ["b"]
upstream = "sim"
cache = {}
prompt_cache = {}
[[routes]]
name = "explicit"
models = ["c"]
upstream = "sim"
cache = { mode = "off", ttl = "5m" }
prompt_cache = { mode = "off", window = "1m" }
"#,
    ))
    .unwrap();
    let [plain, tables, explicit] = &c.routes[..] else {
        panic!("{:?}", c.routes);
    };
    // No table: the feature is off.
    assert_eq!(plain.cache.mode, CacheMode::Off);
    assert_eq!(plain.prompt_cache.mode, PromptCacheMode::Off);
    // A table that names no mode: on, for what is safe (temperature 0) or pays.
    assert_eq!(tables.cache.mode, CacheMode::Deterministic);
    assert_eq!(tables.prompt_cache.mode, PromptCacheMode::Auto);
    // Every other key of a table keeps the no-table default.
    for (r, ttl, window) in [(plain, 3600, 600), (tables, 3600, 600), (explicit, 300, 60)] {
        assert_eq!(r.cache.ttl, Duration::from_secs(ttl), "{}", r.name);
        assert!(!r.cache.shared);
        assert_eq!(r.cache.replay, Replay::Instant);
        assert_eq!(r.cache.stop_reasons, DEFAULT_CACHED_STOP_REASONS);
        assert_eq!(r.prompt_cache.window, Duration::from_secs(window));
        assert_eq!(r.prompt_cache.min_repeats, 2);
        assert_eq!(r.prompt_cache.ttl, CacheTtl::FiveMinutes);
        assert!(r.prompt_cache.learn);
        assert_eq!(
            r.prompt_cache.positions,
            [
                CachePosition::Tools,
                CachePosition::System,
                CachePosition::Head,
                CachePosition::Conversation
            ]
        );
    }
    assert_eq!(explicit.cache.mode, CacheMode::Off);
    assert_eq!(explicit.prompt_cache.mode, PromptCacheMode::Off);
}

// --- Names: one table per closed set, for parsing and for labels.

/// Every entry of a name table parses back to its value, labels as its
/// name, and no name is used twice.
fn assert_round_trip<T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display>(
    names: &[(T, &str)],
    parse: fn(&str) -> Option<T>,
    name: fn(T) -> &'static str,
) {
    let mut seen = HashSet::new();
    for (value, text) in names {
        assert_eq!(parse(text), Some(*value), "{text}");
        assert_eq!(name(*value), *text);
        assert_eq!(value.to_string(), *text);
        assert!(seen.insert(*text), "`{text}` is in the table twice");
        assert_eq!(parse(&text.to_uppercase()), None, "names are exact");
    }
}

#[test]
fn every_name_table_round_trips() {
    assert_round_trip(AuthMode::NAMES, AuthMode::parse, AuthMode::name);
    assert_round_trip(LogFormat::NAMES, LogFormat::parse, LogFormat::name);
    assert_round_trip(UpstreamKind::NAMES, UpstreamKind::parse, UpstreamKind::name);
    assert_round_trip(CacheMode::NAMES, CacheMode::parse, CacheMode::name);
    assert_round_trip(Replay::NAMES, Replay::parse, Replay::name);
    assert_round_trip(
        CachePosition::NAMES,
        CachePosition::parse,
        CachePosition::name,
    );
    assert_round_trip(
        PromptCacheMode::NAMES,
        PromptCacheMode::parse,
        PromptCacheMode::name,
    );
    assert_round_trip(CacheTtl::NAMES, CacheTtl::parse, CacheTtl::name);
    assert_round_trip(
        LatencyPolicy::NAMES,
        LatencyPolicy::parse,
        LatencyPolicy::name,
    );
    assert_round_trip(
        ServicePolicy::NAMES,
        ServicePolicy::parse,
        ServicePolicy::name,
    );
    assert_round_trip(
        SharedFailure::NAMES,
        SharedFailure::parse,
        SharedFailure::name,
    );
    assert_round_trip(LimitsClock::NAMES, LimitsClock::parse, LimitsClock::name);
    assert_eq!(CacheMode::parse("sometimes"), None);
}

#[test]
fn the_file_accepts_exactly_the_names_in_the_tables() {
    for (mode, name) in AuthMode::NAMES {
        let c = Config::parse(
            &with(&format!(
                "[[keys]]\ntenant = \"t\"\nkey_sha256 = \"{}\"",
                "ab".repeat(32)
            ))
            .replace("auth = \"none\"", &format!("auth = \"{name}\"")),
        )
        .unwrap();
        assert_eq!(c.server.auth, *mode);
        assert!(
            c.summary().contains(&format!("(auth {name})")),
            "{}",
            c.summary()
        );
    }
    for (format, name) in LogFormat::NAMES {
        let c = Config::parse(&with(&format!("[logging]\nformat = \"{name}\""))).unwrap();
        assert_eq!(c.logging.format, *format);
    }
    for (kind, name) in UpstreamKind::NAMES {
        let text = MINIMAL.replace("kind = \"simulator\"", &format!("kind = \"{name}\""));
        // An OpenAI-compatible server is found by its base URL.
        let text = match kind {
            UpstreamKind::OpenAi => text.replace("endpoint =", "base_url ="),
            _ => text,
        };
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.upstreams["sim"].kind, *kind);
    }
    let route = |keys: &str| {
        let text = with_routes(&format!(
            "[[routes]]\nname = \"r\"\nmodels = [\"m\"]\nupstream = \"sim\"\n{keys}"
        ));
        Config::parse(&text).unwrap().routes.remove(0)
    };
    for (mode, name) in CacheMode::NAMES {
        assert_eq!(
            route(&format!("cache = {{ mode = \"{name}\" }}"))
                .cache
                .mode,
            *mode
        );
    }
    for (replay, name) in Replay::NAMES {
        assert_eq!(
            route(&format!("cache = {{ replay = \"{name}\" }}"))
                .cache
                .replay,
            *replay
        );
    }
    for (mode, name) in PromptCacheMode::NAMES {
        let r = route(&format!("prompt_cache = {{ mode = \"{name}\" }}"));
        assert_eq!(r.prompt_cache.mode, *mode);
    }
    let all: Vec<&str> = CachePosition::NAMES.iter().rev().map(|(_, n)| *n).collect();
    let r = route(&format!("prompt_cache = {{ positions = {all:?} }}"));
    let expected: Vec<CachePosition> = CachePosition::NAMES.iter().rev().map(|(p, _)| *p).collect();
    assert_eq!(r.prompt_cache.positions, expected);
    for (ttl, name) in CacheTtl::NAMES {
        let r = route(&format!("prompt_cache = {{ ttl = \"{name}\" }}"));
        assert_eq!(r.prompt_cache.ttl, *ttl);
    }
    assert!(!route("prompt_cache = { learn = false }").prompt_cache.learn);
    for (policy, name) in LatencyPolicy::NAMES {
        let r = route(&format!(
            "latency = \"{name}\"\nfallback = [{{ latency = \"{name}\" }}]"
        ));
        assert_eq!(r.resilience.latency, *policy);
        assert_eq!(r.resilience.fallback[0].latency, Some(*policy));
    }
    for (policy, name) in ServicePolicy::NAMES {
        let r = route(&format!(
            "service_tier = \"{name}\"\nfallback = [{{ service_tier = \"{name}\" }}]"
        ));
        assert_eq!(r.resilience.service_tier, *policy);
        assert_eq!(r.resilience.fallback[0].service_tier, Some(*policy));
    }
    assert_eq!(route("").resilience.service_tier, ServicePolicy::Client);
    // fallback_on reads the error kinds' own labels.
    let r = route("fallback_on = [\"model_error\", \"quota_exceeded\"]");
    assert_eq!(
        r.resilience.fallback_on,
        [ErrorKind::ModelError, ErrorKind::QuotaExceeded]
    );
}

// --- Connection bounds, the body budget, Redis fast-fail, names ---

/// MINIMAL with `lines` added to its `[server]` table.
fn with_server(lines: &str) -> String {
    MINIMAL.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

#[test]
fn connection_bounds_have_safe_defaults_and_are_read() {
    let c = Config::parse(MINIMAL).unwrap().server.connections;
    assert_eq!(c, Connections::default());
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.first_byte_timeout, Duration::from_secs(10));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.body_timeout, Duration::from_secs(120));
    assert_eq!(c.body_min_rate, 1024);
    assert_eq!(c.h2_keep_alive_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.max_header_bytes, 65536);
    let c = Config::parse(&with_server(
        "max_connections = 5\nfirst_byte_timeout = \"2s\"\nidle_timeout = \"75s\"\nbody_timeout = \"30s\"\nbody_min_rate = 0\nbody_rate_grace = \"1s\"\nh2_keep_alive_interval = \"0s\"\nh2_keep_alive_timeout = \"5s\"\nmax_header_bytes = 16384",
    ))
    .unwrap()
    .server
    .connections;
    assert_eq!(c.max_connections, 5);
    assert_eq!(c.first_byte_timeout, Duration::from_secs(2));
    assert_eq!(c.idle_timeout, Duration::from_secs(75));
    assert_eq!(c.body_timeout, Duration::from_secs(30));
    assert_eq!(c.body_min_rate, 0);
    assert_eq!(c.h2_keep_alive_interval, None, "0s turns pings off");
    assert_eq!(c.max_header_bytes, 16384);
    let e = errors(&with_server(
        "max_connections = 0\nidle_timeout = \"0s\"\nbody_timeout = \"soon\"\nmax_header_bytes = 100\nsigv4_regions = [\"US EAST\"]",
    ))
    .join("\n");
    for expected in [
        "server.max_connections: must be at least 1",
        "server.idle_timeout: must be longer than 0s",
        "server.body_timeout: `soon` is not a duration",
        "server.max_header_bytes: must be at least 8192",
        "server.sigv4_regions: `US EAST` is not a region name",
    ] {
        assert!(e.contains(expected), "{expected}\n{e}");
    }
}

#[test]
fn connection_runtimes_default_to_one_per_core_and_take_auto_or_a_count() {
    let cores = bedrock_wire::workers::cores();
    let workers = |lines: &str| Config::parse(&with_server(lines)).map(|c| c.server.workers);
    assert_eq!(Config::parse(MINIMAL).unwrap().server.workers, cores);
    assert_eq!(workers("workers = \"auto\"").unwrap(), cores);
    assert_eq!(workers("workers = 3").unwrap(), 3);
    assert_eq!(workers("workers = 0").unwrap(), 0, "0: the shared runtime");
    for (value, shown) in [
        ("-1", "-1"),
        ("5000", "5000"),
        ("\"all\"", "\"all\""),
        ("1.5", "1.5"),
    ] {
        let e = errors(&with_server(&format!("workers = {value}"))).join("\n");
        assert!(
            e.contains(&format!(
                "server.workers: {shown} is not \"auto\" (one per core) or a count from 0"
            )),
            "{value}: {e}"
        );
    }
}

#[test]
fn the_body_budget_holds_at_least_one_largest_body() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.limits.max_inflight_body_bytes, 256 * 1024 * 1024);
    let c = Config::parse(&with("[limits]\nmax_body_bytes = 300000000")).unwrap();
    assert_eq!(
        c.limits.max_inflight_body_bytes, 300_000_000,
        "raised to fit one"
    );
    let e = errors(&with(
        "[limits]\nmax_body_bytes = 1000\nmax_inflight_body_bytes = 999",
    ));
    assert!(
        e[0].starts_with("limits.max_inflight_body_bytes: must be at least"),
        "{e:?}"
    );
}

#[test]
fn redis_fast_fail_settings() {
    let c = Config::parse(&with("[cache.redis]\nurl = \"redis://127.0.0.1:6379\"")).unwrap();
    let r = c.cache.redis.unwrap();
    assert_eq!((r.down_after, r.retry_after), (3, Duration::from_secs(2)));
    let e = errors(&with(
        "[cache.redis]\nurl = \"redis://x\"\ndown_after = 0\nretry_after = \"0s\"",
    ))
    .join("\n");
    assert!(
        e.contains("cache.redis.down_after: must be at least 1"),
        "{e}"
    );
    assert!(
        e.contains("cache.redis.retry_after: must be longer than 0s"),
        "{e}"
    );
}

#[test]
fn names_that_could_pass_for_another_namespace_are_refused() {
    let key = "[[keys]]\ntenant = \"{T}\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"";
    let e = errors(&with(&key.replace("{T}", "shared"))).join("\n");
    assert!(
        e.contains(
            "keys[0].tenant: `shared` is the cache namespace of routes with `shared = true`"
        ),
        "{e}"
    );
    let e = errors(&with(&key.replace("{T}", "a:b"))).join("\n");
    assert!(e.contains("keys[0].tenant: `a:b` must be"), "{e}");
    let e = errors(&with_routes(
        "[[routes]]\nname = \"r:1\"\nmodels = [\"m\"]\nupstream = \"sim\"",
    ))
    .join("\n");
    assert!(e.contains("routes[0].name: `r:1` must be"), "{e}");
}
#[test]
fn tenants_keys_and_routes_take_the_same_limits() {
    let hash = "ab".repeat(32);
    let c = Config::parse(&with(&format!(
        r#"
[limits]
on_shared_failure = "closed"
output_tokens_estimate = 512
[[keys]]
tenant = "acme"
key_sha256 = "{hash}"
requests_per_minute = 60
usd_per_day = 1.5
[[tenants]]
name = "acme"
tokens_per_minute = 100000
usd_per_month = 300
"#
    )))
    .unwrap();
    assert_eq!(c.limits.on_shared_failure, SharedFailure::Closed);
    assert_eq!(c.limits.output_tokens_estimate, 512);
    assert_eq!(c.limits.clock, LimitsClock::System);
    assert_eq!(c.keys[0].quota.requests_per_minute, Some(60));
    assert_eq!(c.keys[0].quota.usd_per_day, Some(1.5));
    assert_eq!(c.tenants[0].quota.tokens_per_minute, Some(100_000));
    assert_eq!(c.tenants[0].quota.usd_per_month, Some(300.0));
    assert!(c.routes[0].quota.is_empty());
    let route = Config::parse(&MINIMAL.replace(
        "upstream = \"sim\"",
        "upstream = \"sim\"\nrequests_per_minute = 5\nusd_per_month = 9",
    ))
    .unwrap();
    assert_eq!(route.routes[0].quota.requests_per_minute, Some(5));
    assert_eq!(route.routes[0].quota.usd_per_month, Some(9.0));
    // With auth = "none" everyone is `anonymous`, which may have limits.
    let anonymous =
        Config::parse(&with("[[tenants]]\nname = \"anonymous\"\nusd_per_day = 2")).unwrap();
    assert_eq!(anonymous.tenants[0].name, ANONYMOUS_TENANT);
}

#[test]
fn limit_problems_name_their_keys() {
    let hash = "ab".repeat(32);
    let e = errors(&with(&format!(
        r#"
[limits]
on_shared_failure = "maybe"
clock = "sundial"
[[keys]]
tenant = "acme"
key_sha256 = "{hash}"
tokens_per_minute = 0
usd_per_day = -1
[[tenants]]
name = "acme"
usd_per_month = 0
[[tenants]]
name = "acme"
[[tenants]]
name = "nobody"
requests_per_minute = 0
"#
    )));
    assert_eq!(
        e,
        [
            "limits.on_shared_failure: `maybe` is not one of open, closed",
            "limits.clock: `sundial` is not one of system, manual",
            "keys[0].tokens_per_minute: must be at least 1",
            "keys[0].usd_per_day: must be a positive number of dollars",
            "tenants[0].usd_per_month: must be a positive number of dollars",
            "tenants[2].requests_per_minute: must be at least 1",
            "tenants[1].name: `acme` is configured twice",
            "tenants[2].name: no [[keys]] entry belongs to tenant `nobody`",
        ]
    );
}

#[test]
fn the_log_buffer_loses_no_line_unless_told_to_drop() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.logging.overflow, LogOverflow::Wait);
    assert_eq!(c.logging.buffer_lines, 16_384);
    let c = Config::parse(&with(
        "[logging]\naccess_log_overflow = \"drop\"\naccess_log_buffer = 64",
    ))
    .unwrap();
    assert_eq!(c.logging.overflow, LogOverflow::Drop);
    assert_eq!(c.logging.buffer_lines, 64);
    let e = errors(&with(
        "[logging]\naccess_log_overflow = \"block\"\naccess_log_buffer = 0",
    ));
    assert_eq!(
        e,
        [
            "logging.access_log_buffer: must be at least 1 line",
            "logging.access_log_overflow: `block` is not one of wait, drop",
        ]
    );
}

#[test]
fn keys_name_their_guardrails_and_async_models_and_operations_have_an_upstream() {
    let keyed = MINIMAL.replace("auth = \"none\"", "auth = \"keys\"");
    let c = Config::parse(&format!(
        "{keyed}\n[[keys]]\ntenant = \"a\"\nkey_sha256 = \"{}\"\nguardrails = [\"g1\", \"g2:1\"]\nasync_invoke_models = []\n[[keys]]\ntenant = \"b\"\nkey_sha256 = \"{}\"\n",
        "0".repeat(64),
        "1".repeat(64)
    ))
    .unwrap();
    let a = &c.keys[0];
    assert!(a.guardrails.allows("g1") && a.guardrails.allows("g2:1"));
    assert!(!a.guardrails.allows("g2") && !a.guardrails.allows("g3"));
    assert!(a.async_invoke_models.is_none());
    // Left out: everything, as for `routes`.
    assert_eq!(c.keys[1].guardrails, RouteAccess::All);
    assert_eq!(c.keys[1].async_invoke_models, RouteAccess::All);
    assert_eq!(c.server.operations_upstream, None);

    let e = errors(&MINIMAL.replace(
        "auth = \"none\"",
        "auth = \"none\"\noperations_upstream = \"nope\"",
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("server.operations_upstream") && e.contains("nope")),
        "{e:?}"
    );
    let e = errors(&format!(
        "{}\n[upstreams.vllm]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\n",
        MINIMAL.replace(
            "auth = \"none\"",
            "auth = \"none\"\noperations_upstream = \"vllm\""
        )
    ));
    assert!(e.iter().any(|e| e.contains("not a Bedrock")), "{e:?}");
}
