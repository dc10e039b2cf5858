//! The simulated Bedrock's model catalog: which model ids exist, what they support,
//! and how fast they are. Parsed from TOML (`models.toml`, embedded by default).

use bedrock_wire::catalog::{check_kind, Lookup, ModelIds};

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

/// Bedrock's limit on cache checkpoints per request.
pub const MAX_CACHE_POINTS: usize = bedrock_wire::catalog::BEDROCK_MAX_CACHE_POINTS as usize;

impl Model {
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<Model>,
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
            check_kind(&model.id, model.kind, model.embedding.as_ref())?;
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
    fn the_embedded_catalog_agrees_with_the_proxy_catalog_on_capabilities() {
        let sim = Catalog::parse(DEFAULT_CATALOG).unwrap();
        let proxy = bedrock_wire::catalog::Catalog::embedded();
        for model in sim.models() {
            let theirs = proxy
                .get(&model.id)
                .unwrap_or_else(|| panic!("{} is missing from config/models.toml", model.id));
            let theirs = &theirs.model;
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
    }

    #[test]
    fn bad_catalogs_name_the_problem() {
        let err = Catalog::parse("[[models]]\nid = \"x\"\nfamily = \"anthropic\"\nbogus = 1\n")
            .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }
}
