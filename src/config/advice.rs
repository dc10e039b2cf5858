//! What `check-config` advises without refusing: settings that are valid but
//! do nothing where they point. Latency and service tiers and Bedrock prompt caching apply
//! to Bedrock targets only, so a route that asks for them on an `openai` or
//! `sagemaker` target is told so; a fallback to such an upstream that names no
//! model would send it the route's Bedrock model id. The proxy logs the same
//! lines when it loads the config.

use super::{Config, LatencyPolicy, PromptCacheMode, ServicePolicy, UpstreamConfig};

impl Config {
    /// Advice about settings that have no effect where they point, each line
    /// naming its key.
    pub fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        let kind_of = |name: &str| self.upstreams.get(name).map(|u: &UpstreamConfig| u.kind);
        for (i, r) in self.routes.iter().enumerate() {
            let Some(primary) = kind_of(&r.upstream) else {
                continue;
            };
            let key = format!("routes[{i}]");
            if primary.speaks_chat() {
                if r.resilience.latency != LatencyPolicy::Client {
                    out.push(format!(
                        "{key}.latency: `{}` applies to Bedrock targets only; the primary \
                         upstream `{}` is `{primary}`, which has no latency tiers",
                        r.resilience.latency, r.upstream
                    ));
                }
                if r.resilience.service_tier != ServicePolicy::Client {
                    out.push(format!(
                        "{key}.service_tier: `{}` applies to Bedrock targets only; the primary \
                         upstream `{}` is `{primary}`, which has no service tiers",
                        r.resilience.service_tier, r.upstream
                    ));
                }
                if r.prompt_cache.mode != PromptCacheMode::Off {
                    out.push(format!(
                        "{key}.prompt_cache: Bedrock prompt caching applies to Bedrock targets \
                         only; the primary upstream `{}` is `{primary}` (servers such as vLLM \
                         cache prefixes on their own)",
                        r.upstream
                    ));
                }
                if r.upstream_model.is_none() {
                    out.push(format!(
                        "{key}.upstream_model: not set, so `{}` is sent the model id the client \
                         used (for an alias, the route's first model) as its model name",
                        r.upstream
                    ));
                }
            }
            for (j, f) in r.resilience.fallback.iter().enumerate() {
                let upstream = f.upstream.as_deref().unwrap_or(&r.upstream);
                let Some(kind) = kind_of(upstream) else {
                    continue;
                };
                if !kind.speaks_chat() {
                    continue;
                }
                let key = format!("{key}.fallback[{j}]");
                if let Some(latency) = f.latency {
                    out.push(format!(
                        "{key}.latency: `{latency}` applies to Bedrock targets only; upstream \
                         `{upstream}` is `{kind}`"
                    ));
                }
                if let Some(tier) = f.service_tier {
                    out.push(format!(
                        "{key}.service_tier: `{tier}` applies to Bedrock targets only; upstream \
                         `{upstream}` is `{kind}`"
                    ));
                }
                if f.model.is_none() && !primary.speaks_chat() {
                    out.push(format!(
                        "{key}.model: not set, so `{upstream}` ({kind}) is sent the route's \
                         Bedrock model id as its model name; name the model (or SageMaker \
                         endpoint) it serves"
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const UPSTREAMS: &str = r#"
[server]
auth = "none"
[upstreams.bedrock]
kind = "bedrock"
[upstreams.vllm]
kind = "openai"
base_url = "http://vllm:8000/v1"
"#;

    fn advice(routes: &str) -> Vec<String> {
        Config::parse(&format!("{UPSTREAMS}{routes}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .advice()
    }

    #[test]
    fn tiers_and_prompt_caching_off_bedrock_are_pointed_out() {
        let notes = advice(
            r#"
[[routes]]
name = "self"
aliases = ["self"]
upstream = "vllm"
latency = "optimized"
service_tier = "flex"
prompt_cache = { mode = "auto" }
fallback = [{ latency = "standard", service_tier = "default" }]
"#,
        );
        let keys: Vec<&str> = notes.iter().map(|n| n.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "routes[0].latency",
                "routes[0].service_tier",
                "routes[0].prompt_cache",
                "routes[0].upstream_model",
                "routes[0].fallback[0].latency",
                "routes[0].fallback[0].service_tier"
            ],
            "{notes:#?}"
        );
    }

    #[test]
    fn the_china_example_is_valid_and_needs_no_advice() {
        let text = include_str!("../../config/china.toml")
            .replace("${DASHSCOPE_API_KEY}", "sk-test")
            .replace("${APP_KEY_SHA256}", &"ab".repeat(32))
            .replace("${APP_SECRET_ACCESS_KEY}", "secret");
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.advice(), Vec::<String>::new());
        let sm = &c.upstreams["sagemaker"];
        assert_eq!(
            sm.endpoint_url().as_deref(),
            Some("https://runtime.sagemaker.cn-northwest-1.amazonaws.com.cn")
        );
        assert_eq!(
            c.upstreams["dashscope"].endpoint_url().as_deref(),
            Some("https://dashscope.aliyuncs.com/compatible-mode/v1")
        );
        assert!(c.routes[0].catch_all);
    }

    #[test]
    fn a_fallback_to_a_chat_server_must_name_its_model() {
        let notes = advice(
            r#"
[[routes]]
name = "haiku"
aliases = ["haiku"]
upstream = "bedrock"
latency = "optimized"
prompt_cache = { mode = "auto" }
fallback = [{ latency = "standard" }, { upstream = "vllm" }, { upstream = "vllm", model = "llama" }]
"#,
        );
        assert_eq!(notes.len(), 1, "{notes:#?}");
        assert!(notes[0].starts_with("routes[0].fallback[1].model: not set"));
    }
}
