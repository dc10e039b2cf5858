//! The access log as an operator reads it, from the `bedrock-proxy` binary's
//! stderr: one line per request under concurrent load, even through a tiny
//! buffer; and with `access_log_overflow = "drop"`, a stderr nobody reads
//! costs log lines (counted in a metric), never requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use bedrock_sim::testing::{raw, sdk_client, user_text};
use common::*;
use std::collections::HashSet;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Child;

/// The proxy binary with the harness's config plus `[logging]` keys, its API
/// and admin URLs once it printed `ready`.
async fn spawn_proxy(
    dir: &tempfile::TempDir,
    sim_url: &str,
    logging: &str,
) -> (Child, String, String) {
    let text = config_text(sim_url, "", "").replacen(
        "[logging]\nlevel = \"warn\"\n",
        &format!("[logging]\nlevel = \"info\"\n{logging}\n"),
        1,
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    // Stderr is what the tests read.
    run_proxy_binary(&path, |c| {
        c.stderr(Stdio::piped());
    })
    .await
}

fn access_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(" INFO access: "))
        .collect()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=");
    let start = line.find(&key).unwrap() + key.len();
    line[start..].split(' ').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_concurrent_request_gets_its_access_line_through_a_tiny_buffer() {
    let sim = bedrock_sim::testing::spawn_fast().await;
    let dir = tempfile::tempdir().unwrap();
    // Four lines of buffer for 64 requests at once: lines must wait, not vanish.
    let (mut child, api, _admin) = spawn_proxy(&dir, &sim.url(), "access_log_buffer = 4").await;
    let mut stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    let client = sdk_client(&api);
    const N: usize = 200;
    let calls = (0..N).map(|i| {
        let client = client.clone();
        async move {
            client
                .converse()
                .model_id(HAIKU)
                .messages(user_text(&format!("Question number {i}?")))
                .send()
                .await
                .map(|_| ())
        }
    });
    let mut pending = futures_util::stream::iter(calls).buffer_unordered(64);
    use futures_util::StreamExt;
    let mut answered = 0;
    while let Some(result) = pending.next().await {
        result.unwrap();
        answered += 1;
    }
    assert_eq!(answered, N);
    // SIGTERM, as an orchestrator stops it: the writer empties its buffer.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().await.unwrap().success());
    let stderr = reader.await.unwrap();
    let lines = access_lines(&stderr);
    assert_eq!(lines.len(), N, "one access line per request:\n{stderr}");
    let ids: HashSet<_> = lines.iter().map(|l| field(l, "request_id")).collect();
    assert_eq!(ids.len(), N, "each request's own line");
    for line in lines {
        assert_eq!(field(line, "status"), "200", "{line}");
        assert_eq!(field(line, "tenant"), "\"team-a\"", "{line}");
        assert_eq!(field(line, "route"), "\"haiku\"", "{line}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_drop_mode_a_stuck_stderr_costs_lines_not_requests() {
    let sim = bedrock_sim::testing::spawn_fast().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, api, admin) = spawn_proxy(
        &dir,
        &sim.url(),
        "access_log_buffer = 16\naccess_log_overflow = \"drop\"",
    )
    .await;
    // Nobody reads stderr: once the pipe (64 KiB) and the 16 lines of buffer
    // are full, every further line is dropped.
    let _stuck = child.stderr.take().unwrap();
    const N: usize = 1000;
    let url = format!("{api}/model/haiku/converse");
    let calls = (0..N).map(|i| {
        let url = url.clone();
        async move {
            let body = converse_body(&format!("Question number {i}?")).to_string();
            raw(
                "POST",
                &url,
                &[
                    ("authorization", &format!("Bearer {KEY_B}")),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
            .unwrap()
            .status
            .as_u16()
        }
    });
    use futures_util::StreamExt;
    let statuses: Vec<u16> = futures_util::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics = raw("GET", &format!("{admin}/metrics"), &[], "")
        .await
        .unwrap();
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    let dropped = metric(
        &text,
        "bedrock_proxy_log_buffer_full_total",
        &["action=\"dropped\""],
    );
    assert!(
        dropped > 0.0 && dropped <= N as f64,
        "lines dropped, and counted: {dropped}"
    );
    assert_eq!(
        metric(
            &text,
            "bedrock_proxy_log_buffer_full_total",
            &["action=\"waited\""]
        ),
        0.0
    );
    child.kill().await.unwrap();
    sim.shutdown().await;
}
