//! The simulated Bedrock's model catalog: which model ids exist, what they support,
//! and how fast they are, and AWS's default prompt routers. Parsed from TOML
//! (`models.toml`, embedded by default).

pub use bedrock_wire::catalog::ServiceTierRegions;
use bedrock_wire::catalog::{check_kind, check_router, prompt_router_id, Lookup, ModelIds};
pub use bedrock_wire::catalog::{EmbeddingInfo, ModelKind};
use serde::Deserialize;
use std::sync::Arc;

/// The catalog compiled into the binary.
pub const DEFAULT_CATALOG: &str = include_str!("../models.toml");

/// How a model answers InvokeModel bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Anthropic,
    Meta,
    Amazon,
    Cohere,
}

/// Latency parameters of one tier.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speed {
    pub ttft_ms: f64,
    pub prefill_us_per_token: f64,
    pub tokens_per_s: f64,
}

/// One model, as the catalog describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    #[serde(default)]
    pub profiles: Vec<String>,
    pub family: Family,
    pub context_tokens: u32,
    pub max_output_tokens: u32,
    #[serde(default)]
    pub prompt_cache: bool,
    #[serde(default)]
    pub cache_min_tokens: u32,
    #[serde(default)]
    pub cache_tools: bool,
    #[serde(default)]
    pub cache_ttl_1h: bool,
    #[serde(default)]
    pub optimized_regions: Vec<String>,
    #[serde(default)]
    pub optimized_max_tokens: Option<u32>,
    pub standard: Speed,
    #[serde(default)]
    pub optimized: Option<Speed>,
    /// Regions offering the priority and flex service tiers.
    #[serde(default)]
    pub service_tiers: ServiceTierRegions,
    /// Served through StartAsyncInvoke only (video generation).
    #[serde(default)]
    pub async_invoke: bool,
    /// How long an async job takes, in simulated seconds.
    #[serde(default)]
    pub async_job: Option<AsyncJobTime>,
    /// Served through InvokeModelWithBidirectionalStream only (speech).
    #[serde(default)]
    pub bidirectional_stream: bool,
    #[serde(default)]
    pub kind: ModelKind,
    /// Extended thinking.
    #[serde(default)]
    pub reasoning: bool,
    /// A new thinking block after each tool result with the
    /// `interleaved-thinking-2025-05-14` beta (Claude 4 and later).
    #[serde(default)]
    pub interleaved_thinking: bool,
    /// `outputConfig.textFormat` json_schema and strict tools.
    #[serde(default)]
    pub structured_output: bool,
    /// `outputConfig.effort`.
    #[serde(default)]
    pub effort: bool,
    /// Citations on document blocks.
    #[serde(default)]
    pub citations: bool,
    /// An embedding model's limits.
    #[serde(default)]
    pub embedding: Option<EmbeddingInfo>,
}

/// How long an async invocation runs: a base plus a share per second of output.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncJobTime {
    pub base_s: f64,
    pub per_output_second_s: f64,
}

/// One of AWS's default prompt routers, as the simulator runs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// The id its ARN ends with (`anthropic.claude:1`).
    pub id: String,
    /// The two inference profiles it routes between, the smaller model first.
    pub models: Vec<String>,
    /// Prompts of at least this many input tokens go to the larger model.
    #[serde(default = "default_large_from_tokens")]
    pub large_from_tokens: u32,
}

fn default_large_from_tokens() -> u32 {
    1000
}

/// Bedrock's limit on cache checkpoints per request.
pub const MAX_CACHE_POINTS: usize = bedrock_wire::catalog::BEDROCK_MAX_CACHE_POINTS as usize;

impl Model {
    /// Whether the `/model/{modelId}/{operation}` operations serve it: text
    /// models all five, embedding models InvokeModel; video and speech models
    /// have operations of their own.
    pub fn serves_model_operations(&self) -> bool {
        !self.async_invoke && !self.bidirectional_stream
    }

    /// The name Anthropic-native responses carry in `model` (the id without
    /// provider prefix and version suffix).
    pub fn short_name(&self) -> &str {
        let name = self.id.split_once('.').map_or(self.id.as_str(), |(_, n)| n);
        name.rsplit_once("-v").map_or(name, |(n, _)| n)
    }
}

/// A model id as the caller wrote it, resolved (`via_profile`: the caller named
/// an inference profile, which optimized latency needs).
pub type Resolved = Lookup<Model>;

/// All models, indexed by base id and profile id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    ids: ModelIds<Model>,
    models: Vec<Arc<Model>>,
    routers: Vec<Router>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<Model>,
    #[serde(default)]
    routers: Vec<Router>,
}

impl Catalog {
    /// Parses a catalog; errors name the offending key.
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut catalog = Catalog::default();
        for model in file.models {
            if model.optimized_regions.is_empty() != model.optimized.is_none() {
                return Err(format!(
                    "model {}: `optimized_regions` and `optimized` go together",
                    model.id
                ));
            }
            if model.async_invoke != model.async_job.is_some() {
                return Err(format!(
                    "model {}: `async_invoke` and `async_job` go together",
                    model.id
                ));
            }
            check_kind(&model.id, model.kind, model.embedding.as_ref())?;
            if model.kind == ModelKind::Embedding && !model.serves_model_operations() {
                return Err(format!(
                    "model {}: an embedding model serves InvokeModel, not `async_invoke` or `bidirectional_stream`",
                    model.id
                ));
            }
            if model.interleaved_thinking && !model.reasoning {
                return Err(format!(
                    "model {}: `interleaved_thinking` needs `reasoning`",
                    model.id
                ));
            }
            let model = Arc::new(model);
            catalog.ids.add(&model, &model.id, &model.profiles)?;
            catalog.models.push(model);
        }
        for router in &file.routers {
            let info = bedrock_wire::catalog::RouterInfo {
                id: router.id.clone(),
                models: router.models.clone(),
            };
            check_router(&info, |id| {
                catalog.ids.get(id).is_some_and(|l| {
                    l.via_profile
                        && l.model.kind == ModelKind::Text
                        && l.model.serves_model_operations()
                })
            })?;
        }
        catalog.routers = file.routers;
        Ok(catalog)
    }

    /// The embedded default catalog.
    pub fn embedded() -> Catalog {
        // The embedded file is checked by a unit test; an empty catalog is the
        // safe answer should it ever fail to parse.
        Catalog::parse(DEFAULT_CATALOG).unwrap_or_default()
    }

    /// Resolves a model id, an inference profile id, or an ARN of either.
    pub fn resolve(&self, model_id: &str) -> Option<Resolved> {
        self.ids.get(model_id).cloned()
    }

    /// Every model.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }

    /// The prompt router a model id names, when it is a prompt-router ARN of
    /// one the catalog knows.
    pub fn router(&self, model_id: &str) -> Option<&Router> {
        let id = prompt_router_id(model_id)?;
        self.routers.iter().find(|r| r.id == id)
    }

    /// Every prompt router.
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_parses_and_resolves_every_spelling() {
        let catalog = Catalog::parse(DEFAULT_CATALOG).unwrap();
        assert!(catalog.models().len() >= 10);
        let base = catalog
            .resolve("anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert!(!base.via_profile);
        let profile = catalog
            .resolve("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert!(profile.via_profile);
        let arn = catalog
            .resolve("arn:aws:bedrock:us-east-2:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert_eq!(arn.model.id, base.model.id);
        assert_eq!(base.model.short_name(), "claude-3-5-haiku-20241022");
        assert!(catalog.resolve("anthropic.claude-99").is_none());
    }

    #[test]
    fn it_agrees_with_the_proxys_catalog() {
        let sim = Catalog::parse(DEFAULT_CATALOG).unwrap();
        let proxy = bedrock_wire::catalog::Catalog::embedded();
        for model in sim.models() {
            let theirs = proxy
                .get(&model.id)
                .unwrap_or_else(|| panic!("{} is missing from config/models.toml", model.id));
            let theirs = &theirs.model;
            assert_eq!(model.profiles, theirs.profiles, "{}", model.id);
            assert_eq!(
                model.optimized_regions, theirs.optimized_regions,
                "{}",
                model.id
            );
            assert_eq!(model.prompt_cache, theirs.prompt_cache, "{}", model.id);
            assert_eq!(model.service_tiers, theirs.service_tiers, "{}", model.id);
            assert_eq!(model.async_invoke, theirs.async_invoke, "{}", model.id);
            assert_eq!(
                model.bidirectional_stream, theirs.bidirectional_stream,
                "{}",
                model.id
            );
            assert_eq!(model.kind, theirs.kind, "{}", model.id);
            assert_eq!(model.reasoning, theirs.reasoning, "{}", model.id);
            assert_eq!(
                model.structured_output, theirs.structured_output,
                "{}",
                model.id
            );
            assert_eq!(model.effort, theirs.effort, "{}", model.id);
            assert_eq!(model.citations, theirs.citations, "{}", model.id);
            assert_eq!(model.embedding, theirs.embedding, "{}", model.id);
        }
        let ids = |r: &[String]| r.to_vec();
        let sim_routers: Vec<_> = sim
            .routers()
            .iter()
            .map(|r| (r.id.clone(), ids(&r.models)))
            .collect();
        let proxy_routers: Vec<_> = proxy
            .routers()
            .iter()
            .map(|r| (r.id.clone(), ids(&r.models)))
            .collect();
        assert_eq!(sim_routers, proxy_routers);
    }

    #[test]
    fn bad_catalogs_name_the_problem() {
        let err = Catalog::parse("[[models]]\nid = \"x\"\nfamily = \"anthropic\"\nbogus = 1\n")
            .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let video_embedder = "[[models]]\nid = \"e\"\nfamily = \"amazon\"\nkind = \"embedding\"\ncontext_tokens = 8\nmax_output_tokens = 0\nembedding = { dimensions = [8], default_dimensions = 8, max_input_tokens = 8, max_input_chars = 8, max_batch = 1 }\nstandard = { ttft_ms = 1, prefill_us_per_token = 1, tokens_per_s = 1 }\nasync_invoke = true\nasync_job = { base_s = 1, per_output_second_s = 1 }\n";
        let err = Catalog::parse(video_embedder).unwrap_err();
        assert!(err.contains("embedding model serves InvokeModel"), "{err}");
    }
}
