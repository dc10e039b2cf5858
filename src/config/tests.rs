use super::*;

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
