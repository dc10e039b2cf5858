//! Placeholder until the proxy core lands.
fn main() {
    eprintln!("bedrock-proxy: not implemented yet; see bedrock-sim");
}
