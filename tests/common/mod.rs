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

    /// The bodies the simulator received, exactly as received, oldest first.
    pub fn upstream_bodies(&self) -> Vec<bytes::Bytes> {
        self.sim.sim.state().log.recent_raw(usize::MAX)
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
    config_with_route(sim_url, upstream_extra, "", extra)
}

/// [`config_text`] with `haiku_extra` inside the `haiku` route's table (inline
/// settings such as `cache = { mode = "deterministic" }`).
pub fn config_with_route(
    sim_url: &str,
    upstream_extra: &str,
    haiku_extra: &str,
    extra: &str,
) -> String {
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
{haiku_extra}
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
    stack_full(sim_config, upstream_extra, "", extra).await
}

/// A simulator and a proxy configured by [`config_with_route`].
pub async fn stack_full(
    sim_config: SimConfig,
    upstream_extra: &str,
    haiku_extra: &str,
    extra: &str,
) -> Stack {
    let sim = bedrock_sim::testing::spawn(sim_config).await;
    let proxy = proxy_for(&sim.url(), upstream_extra, haiku_extra, extra).await;
    Stack { sim, proxy }
}

/// A proxy in front of the simulator at `sim_url`.
pub async fn proxy_for(
    sim_url: &str,
    upstream_extra: &str,
    haiku_extra: &str,
    extra: &str,
) -> ProxyHandle {
    let config = Config::parse(&config_with_route(
        sim_url,
        upstream_extra,
        haiku_extra,
        extra,
    ))
    .unwrap_or_else(|e| panic!("test config: {e}"));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    start(
        config,
        None,
        StartOptions {
            listen: Some(loopback),
            admin_listen: Some(loopback),
            config_path: None,
        },
    )
    .await
    .expect("proxy starts")
}

/// [`stack_full`] with `server_extra` lines added to the proxy's `[server]`
/// table (connection deadlines, caps).
pub async fn stack_with_server(
    sim_config: SimConfig,
    server_extra: &str,
    haiku_extra: &str,
    extra: &str,
) -> Stack {
    let sim = bedrock_sim::testing::spawn(sim_config).await;
    let text = config_with_route(&sim.url(), "", haiku_extra, extra).replacen(
        "[server]\n",
        &format!("[server]\n{server_extra}\n"),
        1,
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}"));
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

/// A `redis-server` child process on a free loopback port, without persistence;
/// killed (by its PID) when dropped. The test command installs redis-server.
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    /// Starts (or restarts) on a given port.
    pub async fn start_on(port: u16) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let server = RedisServer { child, port };
        for _ in 0..200 {
            if server.ping().await {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        conn.write_all(b"PING\r\n").await.is_ok()
            && conn.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as if it crashed).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line with all of `labels`, or 0.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A three-master Redis Cluster of child processes, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{i}.conf"),
                    "--dir",
                    dir.path().to_str().unwrap(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test.sh installs it)");
            let node = RedisServer { child, port };
            for _ in 0..200 {
                if node.ping().await {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            nodes.push(node);
        }
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".to_owned(),
            "0".to_owned(),
            "--cluster-yes".to_owned(),
        ]);
        let status = std::process::Command::new("redis-cli")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("redis-cli must be installed with redis-server");
        assert!(status.success(), "redis-cli --cluster create failed");
        // Wait until the cluster reports itself ready.
        for _ in 0..200 {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &nodes[0].port.to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                return RedisCluster { nodes, _dir: dir };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the Redis cluster never became ready");
    }

    /// The `[cache.redis]` table for this cluster.
    pub fn config(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!(
            "[cache.redis]\nurls = [{}]\ncluster = true\ntimeout = \"500ms\"\n",
            urls.join(", ")
        )
    }
}

/// The `bedrock-proxy` binary with config file `path` (`configure` adds its
/// environment and stderr), started: its API and admin URLs once it printed
/// `ready`. Its stdout is drained from then on; it is killed when dropped.
pub async fn run_proxy_binary(
    path: &std::path::Path,
    configure: impl FnOnce(&mut tokio::process::Command),
) -> (tokio::process::Child, String, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bedrock-proxy"));
    command.arg("--config").arg(path);
    configure(&mut command);
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut api, mut admin) = (String::new(), String::new());
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(url) = line.strip_prefix("bedrock-proxy listening on ") {
            api = url.to_owned();
        } else if let Some(url) = line.strip_prefix("admin listening on ") {
            admin = url.to_owned();
        } else if line == "ready" {
            break;
        }
    }
    assert!(!api.is_empty() && !admin.is_empty(), "the proxy started");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, api, admin)
}
