//! The proxy as it runs on AWS with a role's temporary credentials (here, the
//! container credentials endpoint ECS and EKS Pod Identity serve): the
//! `bedrock-proxy` binary, `aws-config`'s default chain finding the endpoint
//! through `AWS_CONTAINER_CREDENTIALS_FULL_URI`, and a simulator that accepts
//! only the role's key, secret and session token, as AWS would. The
//! credentials are loaded once; the endpoint is not asked again per request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use axum::routing::get;
use axum::Router;
use bedrock_sim::config::{SimConfig, StaticCredential};
use bedrock_sim::testing::{sdk_client, user_text};
use common::*;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::process::Child;

const ROLE_KEY: &str = "ASIAPROXYROLE";
const ROLE_SECRET: &str = "role-secret-from-the-container-endpoint";
const ROLE_TOKEN: &str = "role-session-token";

/// A container credentials endpoint that counts its calls and hands out the
/// role's credentials, valid for an hour.
async fn credentials_endpoint(calls: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/creds", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/creds",
        get(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let expiration =
                    aws_smithy_types::DateTime::from(SystemTime::now() + Duration::from_secs(3600))
                        .fmt(aws_smithy_types::date_time::Format::DateTime)
                        .unwrap();
                axum::Json(serde_json::json!({
                    "AccessKeyId": ROLE_KEY,
                    "SecretAccessKey": ROLE_SECRET,
                    "Token": ROLE_TOKEN,
                    "Expiration": expiration,
                }))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The proxy binary with a `bedrock` upstream at `sim_url`, in an environment
/// where only the container endpoint `creds_url` has credentials.
async fn spawn_proxy(dir: &tempfile::TempDir, sim_url: &str, creds_url: &str) -> (Child, String) {
    let text = config_text(sim_url, "region = \"us-east-2\"", "").replacen(
        "kind = \"simulator\"",
        "kind = \"bedrock\"",
        1,
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (child, api, _admin) = run_proxy_binary(&path, |c| {
        // No keys, profiles or metadata service: the container endpoint only.
        c.env_clear()
            .env("HOME", &home)
            .env("AWS_CONFIG_FILE", home.join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds_url)
            .stderr(Stdio::inherit());
    })
    .await;
    (child, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_credentials_are_loaded_once_and_sign_every_request() {
    let sim = bedrock_sim::testing::spawn(SimConfig {
        time_scale: 0.0,
        credentials: vec![StaticCredential {
            access_key_id: ROLE_KEY.into(),
            secret_access_key: ROLE_SECRET.into(),
            session_token: Some(ROLE_TOKEN.into()),
        }],
        ..SimConfig::default()
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let creds_url = credentials_endpoint(calls.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_child, api) = spawn_proxy(&dir, &sim.url(), &creds_url).await;

    let client = sdk_client(&api);
    for i in 0..12 {
        let out = client
            .converse()
            .model_id(HAIKU)
            .messages(user_text(&format!("Question number {i}?")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert!(out.usage().unwrap().output_tokens() > 0);
    }
    let stats = sim.sim.state().stats.snapshot();
    assert_eq!(
        stats["by_operation"]["converse"], 12,
        "each request reached the simulator, signed with the role's credentials and token: {stats}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the container endpoint is asked once (the readiness check), not per request"
    );
    sim.shutdown().await;
}
