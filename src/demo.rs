//! Demo mode: `bedrock-proxy` with no arguments. The simulator runs inside the
//! proxy process, `config/demo.toml` (compiled in) routes to it, and the admin
//! port also serves the simulator's control endpoints, so a user can script a
//! fault and watch the proxy react, all without an AWS account.

use bedrock_sim::{SimConfig, SimHandle, Simulator};
use std::net::SocketAddr;

/// The demo configuration, as shipped in `config/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Starts the embedded simulator on a free loopback port, with its realistic
/// latency model on.
pub async fn start_simulator() -> std::io::Result<SimHandle> {
    let sim = Simulator::new(SimConfig::default()).map_err(std::io::Error::other)?;
    sim.spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// What demo mode prints once it listens: how to call it.
pub fn banner(api: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"
Demo mode: Bedrock is simulated in this process (no AWS account needed).

  boto3:
    import boto3
    brt = boto3.client("bedrock-runtime", endpoint_url="http://{api}", region_name="us-east-2",
                       aws_access_key_id="demo", aws_secret_access_key="demo")
    r = brt.converse(modelId="haiku", messages=[{{"role": "user", "content": [{{"text": "Hello"}}]}}])
    print(r["output"]["message"]["content"][0]["text"])

  OpenAI SDK:     OpenAI(base_url="http://{api}/v1", api_key="demo").chat.completions.create(model="haiku", ...)
  Anthropic SDK:  Anthropic(base_url="http://{api}", api_key="demo").messages.create(model="haiku", ...)
  embeddings:     OpenAI(base_url="http://{api}/v1", api_key="demo").embeddings.create(model="titan-embed-v2", input=["..."])

  curl:
    curl -s http://{api}/model/haiku/converse -H 'content-type: application/json' \
      -d '{{"messages":[{{"role":"user","content":[{{"text":"Hello"}}]}}]}}'
    curl -s http://{api}/v1/chat/completions -H 'content-type: application/json' \
      -d '{{"model":"haiku","messages":[{{"role":"user","content":"Hello"}}]}}'

  metrics:        curl -s http://{admin}/metrics
  inject a fault: curl -s -X POST http://{admin}/_sim/faults -d '{{"model":"haiku","fault":"throttle","times":1}}'
  throttle Bedrock for good (the haiku route then answers from a self-hosted model;
  see the x-proxy-upstream header):
                  curl -s -X POST http://{admin}/_sim/faults -d '{{"model":"haiku","fault":"throttle","times":1000}}'
  clear faults:   curl -s -X DELETE http://{admin}/_sim/faults
  what Bedrock received: curl -s http://{admin}/_sim/requests?limit=1
"#
    )
}
