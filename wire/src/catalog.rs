//! The model catalog: what each Bedrock model supports (prompt caching and its
//! limits, latency-optimized regions, service tiers, async and bidirectional
//! invocation, extended thinking, structured output, citations; embedding
//! models and their limits), what it costs, and AWS's default prompt routers.
//! One catalog serves the whole proxy; `config/models.toml` is compiled in and
//! `[catalog] file` replaces it.

use crate::FastMap as HashMap;
use serde::Deserialize;
use std::sync::Arc;

use crate::converse::Usage;
use crate::tier::ServiceTier;

/// The catalog compiled into the binary.
pub const DEFAULT_CATALOG: &str = include_str!("../../config/models.toml");

/// Bedrock's limit on cache checkpoints per request.
pub const BEDROCK_MAX_CACHE_POINTS: u32 = 4;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Writing a prefix to the prompt cache (defaults to `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Reading a cached prefix (defaults to `input`).
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Writing a prefix with the 1-hour TTL (defaults to twice `input`, the
    /// multiple Anthropic's models are billed at).
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
}

impl Price {
    /// Writing with the 5-minute TTL.
    pub fn cache_write(&self) -> f64 {
        self.cache_write.unwrap_or(self.input)
    }

    pub fn cache_write_1h(&self) -> f64 {
        self.cache_write_1h.unwrap_or(2.0 * self.input)
    }

    /// Writing with the 1-hour TTL when `one_hour`, else the 5-minute one.
    pub fn cache_write_for(&self, one_hour: bool) -> f64 {
        if one_hour {
            self.cache_write_1h()
        } else {
            self.cache_write()
        }
    }

    pub fn cache_read(&self) -> f64 {
        self.cache_read.unwrap_or(self.input)
    }

    /// What `usage` costs, in USD: cache writes at their TTL's price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + self.cache_writes(usage)
            + usage.cache_read_input_tokens as f64 * self.cache_read())
            / 1_000_000.0
    }

    /// What `usage`'s input costs (plain input, cache reads and writes), in USD.
    pub fn input_cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + self.cache_writes(usage)
            + usage.cache_read_input_tokens as f64 * self.cache_read())
            / 1_000_000.0
    }

    /// Cache writes in USD per million, each TTL at its price.
    fn cache_writes(&self, usage: &Usage) -> f64 {
        usage.cache_write_5m_input_tokens() as f64 * self.cache_write()
            + usage
                .cache_write_1h_input_tokens
                .min(usage.cache_write_input_tokens) as f64
                * self.cache_write_1h()
    }

    /// What the prompt cache saved on `usage`, in USD: reads at the read price
    /// instead of input, minus each write's premium over input at its TTL's
    /// price (negative while writes outweigh reads).
    pub fn prompt_cache_savings(&self, usage: &Usage) -> f64 {
        let cached = usage.cache_read_input_tokens + usage.cache_write_input_tokens;
        (cached as f64 * self.input
            - usage.cache_read_input_tokens as f64 * self.cache_read()
            - self.cache_writes(usage))
            / 1_000_000.0
    }

    /// What `usage` would have cost without the prompt cache: every cached token
    /// billed as plain input.
    pub fn cost_uncached(&self, usage: &Usage) -> f64 {
        ((usage.input_tokens + usage.cache_write_input_tokens + usage.cache_read_input_tokens)
            as f64
            * self.input
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// What a model does: answer conversations or embed text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Converse, ConverseStream and InvokeModel with a chat body.
    #[default]
    Text,
    /// InvokeModel only, answering vectors (Titan Text Embeddings, Cohere Embed).
    Embedding,
}

impl ModelKind {
    /// The catalog spelling, also used as a label.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Text => "text",
            ModelKind::Embedding => "embedding",
        }
    }
}

/// The limits of an embedding model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingInfo {
    /// Vector sizes the model offers.
    pub dimensions: Vec<u32>,
    /// The size when the request names none.
    pub default_dimensions: u32,
    /// Longest input, in tokens, of one text.
    pub max_input_tokens: u32,
    /// Longest input, in characters, of one text.
    pub max_input_chars: u32,
    /// Texts one request may carry (Titan: 1, Cohere: 96).
    pub max_batch: u32,
}

/// One model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub prompt_cache: bool,
    #[serde(default)]
    pub cache_min_tokens: u32,
    #[serde(default = "default_max_points")]
    pub max_cache_points: u32,
    #[serde(default)]
    pub cache_tools: bool,
    #[serde(default)]
    pub cache_ttl_1h: bool,
    #[serde(default)]
    pub optimized_regions: Vec<String>,
    #[serde(default)]
    pub optimized_max_tokens: Option<u32>,
    pub price: Price,
    #[serde(default)]
    pub price_optimized: Option<Price>,
    /// Regions offering the priority and flex service tiers (`default` is
    /// offered everywhere; `reserved` depends on the account's reservations).
    #[serde(default)]
    pub service_tiers: ServiceTierRegions,
    /// Prices of the priority tier (default: [`PRIORITY_PREMIUM`] times `price`).
    #[serde(default)]
    pub price_priority: Option<Price>,
    /// Prices of the flex tier (default: [`FLEX_DISCOUNT`] times `price`).
    #[serde(default)]
    pub price_flex: Option<Price>,
    /// Accepts StartAsyncInvoke (video generation such as Nova Reel).
    #[serde(default)]
    pub async_invoke: bool,
    /// Serves InvokeModelWithBidirectionalStream (speech such as Nova Sonic).
    #[serde(default)]
    pub bidirectional_stream: bool,
    #[serde(default)]
    pub kind: ModelKind,
    /// Extended thinking (`thinking` with a token budget).
    #[serde(default)]
    pub reasoning: bool,
    /// Structured output (`outputConfig.textFormat` of type `json_schema`).
    #[serde(default)]
    pub structured_output: bool,
    /// `outputConfig.effort`.
    #[serde(default)]
    pub effort: bool,
    /// Citations on document blocks.
    #[serde(default)]
    pub citations: bool,
    /// An embedding model's limits (exactly when `kind = "embedding"`).
    #[serde(default)]
    pub embedding: Option<EmbeddingInfo>,
}

fn default_max_points() -> u32 {
    BEDROCK_MAX_CACHE_POINTS
}

/// The priority tier's price relative to on-demand (AWS lists a premium of
/// about 75%), used when a model has no `price_priority`.
pub const PRIORITY_PREMIUM: f64 = 1.75;
/// The flex tier's price relative to on-demand (AWS lists a discount of about
/// 50%), used when a model has no `price_flex`.
pub const FLEX_DISCOUNT: f64 = 0.5;

/// Where a model offers the service tiers beyond `default`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTierRegions {
    #[serde(default)]
    pub priority: Vec<String>,
    #[serde(default)]
    pub flex: Vec<String>,
}

impl ServiceTierRegions {
    /// Whether `tier` can be asked for in `region`: `default` always; priority
    /// and flex where listed; `reserved` never by the catalog alone (it takes a
    /// reservation on the account).
    pub fn offers(&self, tier: ServiceTier, region: &str) -> bool {
        match tier {
            ServiceTier::Default => true,
            ServiceTier::Priority => self.priority.iter().any(|r| r == region),
            ServiceTier::Flex => self.flex.iter().any(|r| r == region),
            ServiceTier::Reserved => false,
        }
    }
}

impl Price {
    /// Every member multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> Price {
        Price {
            input: self.input * factor,
            output: self.output * factor,
            cache_write: self.cache_write.map(|p| p * factor),
            cache_read: self.cache_read.map(|p| p * factor),
            cache_write_1h: self.cache_write_1h.map(|p| p * factor),
        }
    }
}

impl ModelInfo {
    /// The price of a tier (`optimized` falls back to standard prices when the
    /// catalog gives none).
    pub fn price_for(&self, tier: Option<&str>) -> Price {
        match tier {
            Some("optimized") => self.price_optimized.unwrap_or(self.price),
            _ => self.price,
        }
    }

    /// The price of a service tier: the catalog's, or on-demand scaled by
    /// [`PRIORITY_PREMIUM`] / [`FLEX_DISCOUNT`]. Reserved capacity is billed
    /// per reservation, not per token; its tokens are priced as on-demand.
    pub fn price_for_service(&self, tier: ServiceTier) -> Price {
        match tier {
            ServiceTier::Priority => self
                .price_priority
                .unwrap_or_else(|| self.price.scaled(PRIORITY_PREMIUM)),
            ServiceTier::Flex => self
                .price_flex
                .unwrap_or_else(|| self.price.scaled(FLEX_DISCOUNT)),
            ServiceTier::Default | ServiceTier::Reserved => self.price,
        }
    }
}

/// One of AWS's default prompt routers: it sends each request to one of its
/// models and reports which in `trace.promptRouter.invokedModelId`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterInfo {
    /// The id its ARN ends with (`anthropic.claude:1`).
    pub id: String,
    /// The inference profiles it routes between, the smaller model first.
    pub models: Vec<String>,
}

/// The router id of a prompt-router ARN
/// (`arn:aws:bedrock:us-east-1:123456789012:default-prompt-router/anthropic.claude:1`
/// -> `anthropic.claude:1`); `None` for any other id.
pub fn prompt_router_id(model_id: &str) -> Option<&str> {
    let rest = model_id.strip_prefix("arn:")?;
    // arn:PARTITION:bedrock:REGION:ACCOUNT:RESOURCE
    let mut parts = rest.splitn(5, ':');
    let (_partition, service, _region, _account) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let resource = parts.next()?;
    if service != "bedrock" {
        return None;
    }
    let id = resource
        .strip_prefix("default-prompt-router/")
        .or_else(|| resource.strip_prefix("prompt-router/"))?;
    (!id.is_empty()).then_some(id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<ModelInfo>,
    #[serde(default)]
    routers: Vec<RouterInfo>,
}

/// Checks that a model's `kind` and its `embedding` table agree, and that the
/// embedding table is usable; the simulator's catalog applies the same rule.
pub fn check_kind(
    id: &str,
    kind: ModelKind,
    embedding: Option<&EmbeddingInfo>,
) -> Result<(), String> {
    match (kind, embedding) {
        (ModelKind::Text, None) => Ok(()),
        (ModelKind::Embedding, Some(e)) => {
            if !e.dimensions.contains(&e.default_dimensions) {
                return Err(format!(
                    "model {id}: embedding.default_dimensions {} is not one of its dimensions",
                    e.default_dimensions
                ));
            }
            if e.max_batch == 0 || e.max_input_tokens == 0 || e.max_input_chars == 0 {
                return Err(format!(
                    "model {id}: embedding limits must be greater than zero"
                ));
            }
            Ok(())
        }
        (ModelKind::Text, Some(_)) => Err(format!(
            "model {id}: an `embedding` table needs kind = \"embedding\""
        )),
        (ModelKind::Embedding, None) => Err(format!(
            "model {id}: kind = \"embedding\" needs an `embedding` table"
        )),
    }
}

/// The resource id of an ARN (`arn:aws:bedrock:...:inference-profile/ID` -> `ID`).
pub fn arn_resource(id: &str) -> Option<&str> {
    id.strip_prefix("arn:")?
        .rsplit_once('/')
        .map(|(_, resource)| resource)
}

/// A model as a catalog knows it under one id.
#[derive(Debug)]
pub struct Lookup<M = ModelInfo> {
    pub model: Arc<M>,
    /// Whether the id is an inference profile (latency-optimized inference is only
    /// served through profiles).
    pub via_profile: bool,
}

impl<M> Clone for Lookup<M> {
    fn clone(&self) -> Self {
        Lookup {
            model: self.model.clone(),
            via_profile: self.via_profile,
        }
    }
}

/// Models by every id that names them: the base model id and each inference
/// profile id; an ARN of either finds the same model. The proxy's catalog and
/// the simulator's (whose models carry other fields) both index with it.
#[derive(Debug)]
pub struct ModelIds<M> {
    by_id: HashMap<String, Lookup<M>>,
}

impl<M> Default for ModelIds<M> {
    fn default() -> Self {
        ModelIds {
            by_id: HashMap::default(),
        }
    }
}

impl<M> Clone for ModelIds<M> {
    fn clone(&self) -> Self {
        ModelIds {
            by_id: self.by_id.clone(),
        }
    }
}

impl<M> ModelIds<M> {
    /// Adds `model` under its base `id` and its `profiles`; an id that is
    /// already taken is an error.
    pub fn add(&mut self, model: &Arc<M>, id: &str, profiles: &[String]) -> Result<(), String> {
        let ids = std::iter::once((id, false)).chain(profiles.iter().map(|p| (p.as_str(), true)));
        for (id, via_profile) in ids {
            let lookup = Lookup {
                model: model.clone(),
                via_profile,
            };
            if self.by_id.insert(id.to_owned(), lookup).is_some() {
                return Err(format!("model id {id} appears twice"));
            }
        }
        Ok(())
    }

    /// Looks up a model id, profile id, or an ARN of either.
    pub fn get(&self, model_id: &str) -> Option<&Lookup<M>> {
        self.by_id
            .get(model_id)
            .or_else(|| self.by_id.get(arn_resource(model_id)?))
    }
}

/// Every model, by base id and profile id, and the prompt routers.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    ids: ModelIds<ModelInfo>,
    len: usize,
    routers: Vec<RouterInfo>,
}

impl Catalog {
    /// Parses a catalog; errors name the offending key.
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut catalog = Catalog::default();
        for model in file.models {
            if model.max_cache_points > BEDROCK_MAX_CACHE_POINTS {
                return Err(format!(
                    "model {}: max_cache_points is at most {BEDROCK_MAX_CACHE_POINTS}",
                    model.id
                ));
            }
            check_kind(&model.id, model.kind, model.embedding.as_ref())?;
            let model = Arc::new(model);
            catalog.ids.add(&model, &model.id, &model.profiles)?;
            catalog.len += 1;
        }
        for router in &file.routers {
            check_router(router, |id| catalog.ids.get(id).is_some())?;
        }
        catalog.routers = file.routers;
        Ok(catalog)
    }

    /// The prompt router a model id names (its ARN), if it is one the catalog knows.
    pub fn router(&self, model_id: &str) -> Option<&RouterInfo> {
        let id = prompt_router_id(model_id)?;
        self.routers.iter().find(|r| r.id == id)
    }

    /// Every prompt router.
    pub fn routers(&self) -> &[RouterInfo] {
        &self.routers
    }

    /// The embedded catalog (checked by a unit test).
    pub fn embedded() -> Catalog {
        Catalog::parse(DEFAULT_CATALOG).unwrap_or_default()
    }

    /// Reads a catalog file; errors name the file and the offending key.
    pub fn read(path: &std::path::Path) -> Result<Catalog, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Catalog::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Looks up a model id, profile id, or an ARN of either.
    pub fn get(&self, model_id: &str) -> Option<&Lookup> {
        self.ids.get(model_id)
    }

    /// How many models it describes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Checks a router against the catalog's models: two models, each known.
pub fn check_router(router: &RouterInfo, known: impl Fn(&str) -> bool) -> Result<(), String> {
    if router.models.len() != 2 {
        return Err(format!(
            "router {}: a prompt router routes between exactly two models",
            router.id
        ));
    }
    if let Some(unknown) = router.models.iter().find(|m| !known(m)) {
        return Err(format!(
            "router {}: model {unknown} is not in the catalog",
            router.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_parses() {
        let c = Catalog::parse(DEFAULT_CATALOG).unwrap();
        assert!(c.len() >= 11);
        let haiku = c
            .get("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert!(haiku.via_profile && haiku.model.prompt_cache);
        assert_eq!(haiku.model.cache_min_tokens, 2048);
        assert_eq!(haiku.model.max_cache_points, 4);
        let arn = c
            .get("arn:aws:bedrock:us-east-2::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert!(!arn.via_profile);
        assert!(c.get("anthropic.unknown").is_none());
    }

    #[test]
    fn service_tiers_and_routers_are_in_the_catalog() {
        let c = Catalog::parse(DEFAULT_CATALOG).unwrap();
        let pro = &c.get("us.amazon.nova-pro-v1:0").unwrap().model;
        assert!(pro.service_tiers.offers(ServiceTier::Flex, "us-east-2"));
        assert!(pro.service_tiers.offers(ServiceTier::Priority, "us-east-2"));
        assert!(!pro.service_tiers.offers(ServiceTier::Flex, "eu-west-3"));
        assert!(!pro.service_tiers.offers(ServiceTier::Reserved, "us-east-2"));
        let flex = pro.price_for_service(ServiceTier::Flex);
        assert!((flex.input - pro.price.input * FLEX_DISCOUNT).abs() < 1e-9);
        let priority = pro.price_for_service(ServiceTier::Priority);
        assert!((priority.output - pro.price.output * PRIORITY_PREMIUM).abs() < 1e-9);
        let haiku = &c
            .get("anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap()
            .model;
        assert!(haiku
            .service_tiers
            .offers(ServiceTier::Default, "us-east-2"));
        assert!(!haiku.service_tiers.offers(ServiceTier::Flex, "us-east-2"));

        let arn = "arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/anthropic.claude:1";
        let router = c.router(arn).unwrap();
        assert_eq!(router.models.len(), 2);
        assert!(router.models.iter().all(|m| c.get(m).unwrap().via_profile));
        assert!(c
            .router("arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/meta.llama:1")
            .is_some());
        assert!(c
            .router("arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/amazon.nova:1")
            .is_some());
        assert!(c.router("anthropic.claude:1").is_none());
        assert!(c
            .router("arn:aws:bedrock:us-east-2:123456789012:inference-profile/anthropic.claude:1")
            .is_none());

        let reel = &c.get("amazon.nova-reel-v1:1").unwrap().model;
        assert!(reel.async_invoke && !reel.bidirectional_stream);
        let sonic = &c.get("amazon.nova-sonic-v1:0").unwrap().model;
        assert!(sonic.bidirectional_stream && !sonic.async_invoke);
    }

    #[test]
    fn routers_must_name_two_known_models() {
        let base = "[[models]]\nid = \"a\"\nprice = { input = 1, output = 1 }\n";
        let one = format!("{base}[[routers]]\nid = \"r:1\"\nmodels = [\"a\"]\n");
        assert!(Catalog::parse(&one).unwrap_err().contains("two models"));
        let unknown = format!("{base}[[routers]]\nid = \"r:1\"\nmodels = [\"a\", \"b\"]\n");
        assert!(Catalog::parse(&unknown).unwrap_err().contains("b is not"));
    }

    #[test]
    fn the_embedded_catalog_knows_capabilities_and_embedding_models() {
        let c = Catalog::parse(DEFAULT_CATALOG).unwrap();
        let sonnet = c
            .get("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
            .unwrap();
        assert!(sonnet.model.reasoning && sonnet.model.structured_output);
        assert_eq!(sonnet.model.kind, ModelKind::Text);
        let haiku35 = c.get("anthropic.claude-3-5-haiku-20241022-v1:0").unwrap();
        assert!(!haiku35.model.reasoning && !haiku35.model.structured_output);
        let titan = c.get("amazon.titan-embed-text-v2:0").unwrap();
        assert_eq!(titan.model.kind, ModelKind::Embedding);
        let e = titan.model.embedding.as_ref().unwrap();
        assert_eq!(e.dimensions, [256, 512, 1024]);
        assert_eq!(
            (e.default_dimensions, e.max_input_tokens, e.max_batch),
            (1024, 8192, 1)
        );
        let cohere = c.get("cohere.embed-multilingual-v3").unwrap();
        assert_eq!(cohere.model.embedding.as_ref().unwrap().max_batch, 96);
    }

    #[test]
    fn kind_and_embedding_table_go_together() {
        let base = "[[models]]\nid = \"m\"\nprice = { input = 1.0, output = 0.0 }\n";
        let no_table = format!("{base}kind = \"embedding\"\n");
        assert!(Catalog::parse(&no_table)
            .unwrap_err()
            .contains("needs an `embedding` table"));
        let bad_default = format!(
            "{base}kind = \"embedding\"\nembedding = {{ dimensions = [256], default_dimensions = 512, max_input_tokens = 1, max_input_chars = 1, max_batch = 1 }}\n"
        );
        assert!(Catalog::parse(&bad_default)
            .unwrap_err()
            .contains("default_dimensions"));
    }

    #[test]
    fn prices_cost_usage() {
        let p = Price {
            input: 1.0,
            output: 5.0,
            cache_write: Some(1.25),
            cache_read: Some(0.1),
            cache_write_1h: None,
        };
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            total_tokens: 0,
            cache_read_input_tokens: 1_000_000,
            cache_write_input_tokens: 1_000_000,
            cache_write_1h_input_tokens: 0,
        };
        assert!((p.cost(&usage) - 7.35).abs() < 1e-9);
        assert!((p.cost_uncached(&usage) - 8.0).abs() < 1e-9);
        assert!((p.input_cost(&usage) - 2.35).abs() < 1e-9);
        // A read saves 0.9, a 5-minute write costs 0.25 more than input.
        assert!((p.prompt_cache_savings(&usage) - 0.65).abs() < 1e-9);
        // Half the writes with the 1-hour TTL, at twice the input price.
        let mixed = Usage {
            cache_write_1h_input_tokens: 500_000,
            ..usage
        };
        assert!((p.cost(&mixed) - (7.35 + 0.5 * (2.0 - 1.25))).abs() < 1e-9);
        assert!((p.prompt_cache_savings(&mixed) - (0.9 - 0.125 - 0.5)).abs() < 1e-9);
        assert!((p.cost_uncached(&mixed) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn one_hour_prices_are_in_the_catalog_where_the_ttl_is() {
        let c = Catalog::parse(DEFAULT_CATALOG).unwrap();
        let sonnet = c
            .get("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
            .unwrap();
        assert!(sonnet.model.cache_ttl_1h);
        assert_eq!(sonnet.model.price.cache_write_1h, Some(6.0));
        let haiku = c.get("anthropic.claude-3-5-haiku-20241022-v1:0").unwrap();
        assert!(!haiku.model.cache_ttl_1h);
    }
}
