//! The end-to-end harness: a simulator and a proxy in front of it, each on a
//! free loopback port, configured from a TOML string like a user would write.
#![allow(dead_code)]

use bedrock_proxy::server::{start, ProxyHandle, StartOptions};
use bedrock_proxy::Config;
use bedrock_sim::testing::{raw, RawResponse, TEST_ACCESS_KEY, TEST_SECRET};
use bedrock_sim::{SimConfig, SimHandle};
use std::net::SocketAddr;

pub const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
pub const HAIKU_BASE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
pub const LLAMA: &str = "us.meta.llama3-1-70b-instruct-v1:0";

/// An API key of tenant `team-b`, allowed on the `haiku` route only.
pub const KEY_B: &str = "bpk_team_b_test_key";

/// A simulator and a proxy.
pub struct Stack {
    pub sim: SimHandle,
    pub proxy: ProxyHandle,
}

impl Stack {
    /// The proxy's API URL.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    /// `{proxy}/model/{model}/{op}`
    pub fn op_url(&self, model: &str, op: &str) -> String {
        format!("{}/model/{model}/{op}", self.proxy.url())
    }

    /// What the simulator received, oldest first.
    pub fn upstream_requests(&self) -> Vec<bedrock_sim::state::LoggedRequest> {
        self.sim.sim.state().log.recent(usize::MAX)
    }

    /// The simulator's counters.
    pub fn sim_stats(&self) -> serde_json::Value {
        self.sim.sim.state().stats.snapshot()
    }

    /// The proxy's Prometheus text.
    pub async fn metrics(&self) -> String {
        let r = raw(
            "GET",
            &format!("{}/metrics", self.proxy.admin_url()),
            &[],
            "",
        )
        .await
        .unwrap();
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.sim.shutdown().await;
    }
}

/// The config the harness uses: routes `haiku` and `llama` to the simulator at
/// `sim_url`; tenant `team-a` signs with the SDK test key pair, tenant `team-b`
/// uses [`KEY_B`] on `haiku` only. `extra` is appended (more tables, or keys of
/// the tables above when `sections` replaces them).
pub fn config_text(sim_url: &str, upstream_extra: &str, extra: &str) -> String {
    let key_b = bedrock_proxy::auth::hash_key(KEY_B);
    format!(
        r#"
[server]
auth = "keys"
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[logging]
level = "warn"
[upstreams.sim]
kind = "simulator"
endpoint = "{sim_url}"
{upstream_extra}
[[routes]]
name = "haiku"
aliases = ["haiku"]
models = ["{HAIKU}", "{HAIKU_BASE}"]
upstream = "sim"
[[routes]]
name = "llama"
aliases = ["llama"]
models = ["{LLAMA}"]
upstream = "sim"
[[keys]]
tenant = "team-a"
access_key_id = "{TEST_ACCESS_KEY}"
secret_access_key = "{TEST_SECRET}"
[[keys]]
tenant = "team-b"
key_sha256 = "{key_b}"
routes = ["haiku"]
{extra}
"#
    )
}

/// A simulator with `sim_config` and a proxy configured by [`config_text`].
pub async fn stack_with(sim_config: SimConfig, upstream_extra: &str, extra: &str) -> Stack {
    let sim = bedrock_sim::testing::spawn(sim_config).await;
    let config = Config::parse(&config_text(&sim.url(), upstream_extra, extra))
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = start(
        config,
        None,
        StartOptions {
            listen: Some(loopback),
            admin_listen: Some(loopback),
            config_path: None,
        },
    )
    .await
    .expect("proxy starts");
    Stack { sim, proxy }
}

/// A fast simulator (no simulated delays) behind a proxy.
pub async fn stack() -> Stack {
    stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "",
        "",
    )
    .await
}

/// A JSON POST with team-b's API key.
pub async fn post_b(url: &str, body: impl Into<bytes::Bytes>) -> RawResponse {
    raw(
        "POST",
        url,
        &[
            ("authorization", &format!("Bearer {KEY_B}")),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
    .expect("the proxy answers")
}

/// A minimal Converse body.
pub fn converse_body(text: &str) -> serde_json::Value {
    serde_json::json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
}
