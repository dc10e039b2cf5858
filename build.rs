//! Links the proxy's hot functions first (`link/hot-text.ld`, written by
//! `bench/perf/run.sh hot-text`): the code a pass-through request runs then
//! shares pages and cache lines instead of being spread over the binary. On
//! Linux only, for the `bedrock-proxy` binary; GNU ld and LLD both read the
//! script, and a name it gives that a build lacks places nothing.

fn main() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    println!("cargo:rustc-link-arg-bin=bedrock-proxy=-Wl,-T,{dir}/link/hot-text.ld");
}
