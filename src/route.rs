//! The route stage: a model id as the client wrote it (URL-decoded; an alias, a
//! model or inference-profile id, or an ARN of one) to the route that serves it
//! and the model id to send upstream.

use bedrock_wire::catalog::{arn_resource, prompt_router_id};
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteConfig};
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;

/// A route, as the pipeline uses it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub config: RouteConfig,
    /// The route's per-request metric handles.
    pub metrics: Arc<RouteMetrics>,
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub struct Routed {
    pub route: Arc<Route>,
    /// The model id to call upstream.
    pub upstream_model: String,
}

/// All routes, indexed by every id and alias they answer.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_alias: HashMap<String, usize>,
    by_model: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, r) in config.routes.iter().enumerate() {
            let name: Arc<str> = Arc::from(r.name.as_str());
            table.routes.push(Arc::new(Route {
                metrics: Arc::new(RouteMetrics::new(&name)),
                name,
                config: r.clone(),
            }));
            for alias in &r.aliases {
                table.by_alias.insert(alias.clone(), i);
            }
            for model in &r.models {
                table.by_model.insert(model.clone(), i);
                // Any ARN of a listed prompt router (another account or
                // region) finds the route, as ARNs of listed models do.
                if let Some(router) = prompt_router_id(model) {
                    table.by_model.entry(router.to_owned()).or_insert(i);
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
    pub fn resolve(&self, model_id: &str) -> Result<Routed, ProxyError> {
        let routed = |i: usize, upstream_model: &str| {
            let route = self.routes[i].clone();
            let upstream_model = route
                .config
                .upstream_model
                .clone()
                .unwrap_or_else(|| upstream_model.to_owned());
            Routed {
                route,
                upstream_model,
            }
        };
        // An alias or a route name stands for the route's first model
        // (borrowed: the one allocation is the `Routed`'s own model id).
        let first_model = |i: usize| {
            self.routes[i]
                .config
                .models
                .first()
                .map_or(model_id, String::as_str)
        };
        if let Some(&i) = self.by_alias.get(model_id) {
            return Ok(routed(i, first_model(i)));
        }
        if let Some(&i) = self.by_model.get(model_id) {
            return Ok(routed(i, model_id));
        }
        if let Some(&i) = arn_resource(model_id).and_then(|id| self.by_model.get(id)) {
            return Ok(routed(i, model_id));
        }
        if let Some(i) = self.routes.iter().position(|r| &*r.name == model_id) {
            return Ok(routed(i, first_model(i)));
        }
        if let Some(i) = self.catch_all {
            return Ok(routed(i, model_id));
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
            alias.upstream_model,
            "us.anthropic.claude-3-5-haiku-20241022-v1:0"
        );
        let base = t
            .resolve("anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert_eq!(
            base.upstream_model, "anthropic.claude-3-5-haiku-20241022-v1:0",
            "the client's id passes through"
        );
        let arn = "arn:aws:bedrock:us-east-2:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0";
        let by_arn = t.resolve(arn).unwrap();
        assert_eq!(&*by_arn.route.name, "haiku");
        assert_eq!(by_arn.upstream_model, arn);
        assert_eq!(
            t.resolve("pinned").unwrap().upstream_model,
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
        assert_eq!(by_alias.upstream_model, listed);
        let elsewhere =
            "arn:aws:bedrock:us-west-2:111122223333:default-prompt-router/anthropic.claude:1";
        let other = t.resolve(elsewhere).unwrap();
        assert_eq!(&*other.route.name, "router");
        assert_eq!(
            other.upstream_model, elsewhere,
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
        assert_eq!(any.upstream_model, "meta.llama");
    }
}
