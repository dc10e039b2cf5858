//! The route stage: a model id as the client wrote it (URL-decoded; an alias, a
//! model or inference-profile id, or an ARN of one) to the route that serves it
//! and the model id to send upstream.

use bedrock_wire::catalog::{arn_resource, prompt_router_id};
use bedrock_wire::FastMap as HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteConfig};
use crate::error::ProxyError;
use crate::metrics::{RouteMetrics, TargetMetrics};

/// A route, as the pipeline uses it: its config, and what every request on
/// it would otherwise allocate again (model ids, target labels) made once.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub config: RouteConfig,
    /// The route's per-request metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// `upstream_model`, when the route pins one.
    pinned_model: Option<Arc<str>>,
    /// The first of `models`: what an alias or the route's name stands for.
    first_model: Option<Arc<str>>,
    /// `primary`: the label of the route's first target.
    pub(crate) primary_label: Arc<str>,
    /// The first target's metric handles.
    pub(crate) primary_metrics: Arc<TargetMetrics>,
    /// Per fallback in config order: its label and model.
    pub(crate) fallbacks: Box<[FallbackTarget]>,
}

/// What a fallback target shares with every request.
#[derive(Debug)]
pub(crate) struct FallbackTarget {
    /// `fallback1`, `fallback2`, ...
    pub label: Arc<str>,
    /// Its own model, when it names one.
    pub model: Option<Arc<str>>,
    pub metrics: Arc<TargetMetrics>,
}

impl Route {
    pub fn new(name: Arc<str>, config: RouteConfig) -> Route {
        let primary_label: Arc<str> = Arc::from("primary");
        Route {
            metrics: Arc::new(RouteMetrics::new(&name)),
            primary_metrics: Arc::new(TargetMetrics::new(&name, &primary_label)),
            pinned_model: config.upstream_model.as_deref().map(Arc::from),
            first_model: config.models.first().map(|m| Arc::from(m.as_str())),
            primary_label,
            fallbacks: config
                .resilience
                .fallback
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let label: Arc<str> = Arc::from(format!("fallback{}", i + 1));
                    FallbackTarget {
                        metrics: Arc::new(TargetMetrics::new(&name, &label)),
                        label,
                        model: f.model.as_deref().map(Arc::from),
                    }
                })
                .collect(),
            name,
            config,
        }
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub struct Routed {
    pub route: Arc<Route>,
    /// The model id to call upstream.
    pub upstream_model: Arc<str>,
}

/// All routes, indexed by every id and alias they answer (looked up by the
/// request's `&str`, nothing allocated).
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_alias: HashMap<Box<str>, usize>,
    by_model: HashMap<Box<str>, usize>,
    catch_all: Option<usize>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, r) in config.routes.iter().enumerate() {
            let name: Arc<str> = Arc::from(r.name.as_str());
            table.routes.push(Arc::new(Route::new(name, r.clone())));
            for alias in &r.aliases {
                table.by_alias.insert(alias.as_str().into(), i);
            }
            for model in &r.models {
                table.by_model.insert(model.as_str().into(), i);
                // Any ARN of a listed prompt router (another account or
                // region) finds the route, as ARNs of listed models do.
                if let Some(router) = prompt_router_id(model) {
                    table.by_model.entry(router.into()).or_insert(i);
                }
            }
            if r.catch_all {
                table.catch_all = Some(i);
            }
        }
        table
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Routes a model id; the error is Bedrock's ValidationException wording.
    /// A pinned or configured model id is shared, not copied; only the
    /// client's own id, when it goes upstream as written, is allocated.
    pub fn resolve(&self, model_id: &str) -> Result<Routed, ProxyError> {
        let routed = |i: usize, alias: bool| {
            let route = self.routes[i].clone();
            let upstream_model = match (&route.pinned_model, &route.first_model) {
                (Some(pinned), _) => pinned.clone(),
                // An alias or a route name stands for the route's first model.
                (None, Some(first)) if alias => first.clone(),
                _ => Arc::from(model_id),
            };
            Routed {
                route,
                upstream_model,
            }
        };
        if let Some(&i) = self.by_alias.get(model_id) {
            return Ok(routed(i, true));
        }
        if let Some(&i) = self.by_model.get(model_id) {
            return Ok(routed(i, false));
        }
        if let Some(&i) = arn_resource(model_id).and_then(|id| self.by_model.get(id)) {
            return Ok(routed(i, false));
        }
        if let Some(i) = self.routes.iter().position(|r| &*r.name == model_id) {
            return Ok(routed(i, true));
        }
        if let Some(i) = self.catch_all {
            return Ok(routed(i, false));
        }
        Err(ProxyError::validation(format!(
            "The provided model identifier is invalid: no route of this proxy serves `{model_id}`."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> RouteTable {
        let config = Config::parse(&format!(
            r#"
            [server]
            auth = "none"
            [upstreams.sim]
            kind = "simulator"
            [[routes]]
            name = "haiku"
            aliases = ["haiku", "fast"]
            models = ["us.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic.claude-3-5-haiku-20241022-v1:0"]
            upstream = "sim"
            [[routes]]
            name = "pinned"
            aliases = ["pinned"]
            upstream = "sim"
            upstream_model = "us.amazon.nova-pro-v1:0"
            {extra}
            "#
        ))
        .unwrap();
        RouteTable::new(&config)
    }

    #[test]
    fn aliases_ids_and_arns_resolve() {
        let t = table("");
        let alias = t.resolve("fast").unwrap();
        assert_eq!(&*alias.route.name, "haiku");
        assert_eq!(
            &*alias.upstream_model,
            "us.anthropic.claude-3-5-haiku-20241022-v1:0"
        );
        let base = t
            .resolve("anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert_eq!(
            &*base.upstream_model, "anthropic.claude-3-5-haiku-20241022-v1:0",
            "the client's id passes through"
        );
        let arn = "arn:aws:bedrock:us-east-2:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0";
        let by_arn = t.resolve(arn).unwrap();
        assert_eq!(&*by_arn.route.name, "haiku");
        assert_eq!(&*by_arn.upstream_model, arn);
        assert_eq!(
            &*t.resolve("pinned").unwrap().upstream_model,
            "us.amazon.nova-pro-v1:0"
        );
    }

    #[test]
    fn prompt_router_arns_are_model_ids_and_targets() {
        let listed =
            "arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/anthropic.claude:1";
        let t = table(&format!(
            "[[routes]]\nname = \"router\"\naliases = [\"router\"]\nmodels = [\"{listed}\"]\nupstream = \"sim\"\n"
        ));
        let by_alias = t.resolve("router").unwrap();
        assert_eq!(&*by_alias.upstream_model, listed);
        let elsewhere =
            "arn:aws:bedrock:us-west-2:111122223333:default-prompt-router/anthropic.claude:1";
        let other = t.resolve(elsewhere).unwrap();
        assert_eq!(&*other.route.name, "router");
        assert_eq!(
            &*other.upstream_model, elsewhere,
            "the client's ARN goes upstream"
        );
        assert!(t
            .resolve("arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/meta.llama:1")
            .is_err());
    }

    #[test]
    fn unknown_models_are_validation_errors_unless_a_catch_all_exists() {
        let t = table("");
        let err = t.resolve("meta.llama").unwrap_err();
        assert!(err.message.contains("no route"));
        let t = table("[[routes]]\nname = \"rest\"\nmodels = [\"*\"]\nupstream = \"sim\"\n");
        let any = t.resolve("meta.llama").unwrap();
        assert_eq!(&*any.route.name, "rest");
        assert_eq!(&*any.upstream_model, "meta.llama");
    }
}
