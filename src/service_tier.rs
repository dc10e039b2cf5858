//! The service-tier planner: which service tier (`serviceTier.type`,
//! InvokeModel's `X-Amzn-Bedrock-Service-Tier` header) each upstream attempt
//! asks Bedrock for, the sibling of the latency planner (`latency.rs`). A route
//! says `priority`, `default`, `flex` or `client` (keep what the request asked);
//! the catalog says which models offer priority and flex in which regions (for
//! a prompt router: every model it may choose must offer it). Where a tier
//! cannot work, the proxy sends `default` instead of a request bound to fail,
//! and says why.
//!
//! Combined with the latency tier: flex trades speed for price, so an attempt
//! that sends flex sends the standard latency tier (an `optimized` ask is
//! dropped and counted as a latency downgrade, `service_tier_flex`); priority
//! and latency-optimized both buy speed and are sent together.

use axum::http::{HeaderName, HeaderValue};
use bedrock_wire::tier::{ServiceTier, SERVICE_TIER_HEADER};
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::config::ServicePolicy;
use crate::error::ProxyError;

/// The proxy's request header that marks one call's service tier, honoured
/// where the route's `service_tier` is `client`.
pub const REQUEST_HEADER: &str = "x-proxy-service-tier";

/// Why the tier wanted was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downgrade {
    /// The model is not in the catalog (nor a prompt router it knows).
    UnknownModel,
    /// The model (or one of a prompt router's models) does not offer the tier
    /// in this upstream's region.
    NotOffered,
}

impl Downgrade {
    pub fn label(self) -> &'static str {
        match self {
            Downgrade::UnknownModel => "unknown_model",
            Downgrade::NotOffered => "not_offered",
        }
    }
}

/// The service tier decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServicePlan {
    /// What to send, or `None` to leave the request as it is.
    pub send: Option<ServiceTier>,
    /// Set when priority or flex was wanted and cannot work here.
    pub downgraded: Option<Downgrade>,
}

/// The tier a route wants for a request, before the catalog or a fallback has
/// a say (nothing asked is Bedrock's default). Metrics compare it with the
/// tier served.
pub fn wanted(policy: ServicePolicy, requested: Option<ServiceTier>) -> ServiceTier {
    match policy {
        ServicePolicy::Priority => ServiceTier::Priority,
        ServicePolicy::Default => ServiceTier::Default,
        ServicePolicy::Flex => ServiceTier::Flex,
        ServicePolicy::Client => requested.unwrap_or(ServiceTier::Default),
    }
}

/// Whether `tier` can serve `model_id` (a model, profile, ARN of either, or a
/// prompt router's ARN) in `region`, by the catalog.
pub fn possible(
    catalog: &Catalog,
    model_id: &str,
    tier: ServiceTier,
    region: &str,
) -> Result<(), Downgrade> {
    let offers = |id: &str| {
        catalog
            .get(id)
            .map(|l| l.model.service_tiers.offers(tier, region))
    };
    let members: Vec<&str> = match catalog.router(model_id) {
        Some(router) => router.models.iter().map(String::as_str).collect(),
        None => vec![model_id],
    };
    for member in members {
        match offers(member) {
            None => return Err(Downgrade::UnknownModel),
            Some(false) => return Err(Downgrade::NotOffered),
            Some(true) => {}
        }
    }
    Ok(())
}

/// Decides the service tier of one attempt. `requested` is what the client asked.
pub fn plan(
    policy: ServicePolicy,
    requested: Option<ServiceTier>,
    catalog: &Catalog,
    model_id: &str,
    region: &str,
) -> ServicePlan {
    let want = match policy {
        ServicePolicy::Client => match requested {
            // Reserved capacity belongs to the account, not the catalog: the
            // client's ask goes as sent, and so does a request without one.
            None | Some(ServiceTier::Default) | Some(ServiceTier::Reserved) => {
                return ServicePlan::default()
            }
            Some(tier) => tier,
        },
        _ => wanted(policy, requested),
    };
    if want == ServiceTier::Default {
        return ServicePlan {
            send: Some(ServiceTier::Default),
            downgraded: None,
        };
    }
    match possible(catalog, model_id, want, region) {
        Ok(()) => ServicePlan {
            send: Some(want),
            downgraded: None,
        },
        Err(reason) => ServicePlan {
            send: Some(ServiceTier::Default),
            downgraded: Some(reason),
        },
    }
}

/// Reads the `x-proxy-service-tier` request header; a value that is no tier
/// is the caller's mistake, told in Bedrock's words.
pub fn from_request_header(
    headers: &axum::http::HeaderMap,
) -> Result<Option<ServiceTier>, ProxyError> {
    const NAME: axum::http::HeaderName = axum::http::HeaderName::from_static(REQUEST_HEADER);
    let Some(value) = headers.get(NAME) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| ServiceTier::parse(v.trim()))
        .map(Some)
        .ok_or_else(|| {
            ProxyError::validation(format!(
                "The {REQUEST_HEADER} header must be one of priority, default, flex, reserved; got `{}`.",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// Puts the tier into a Converse body (`serviceTier: {type}`).
pub fn apply_converse(body: &mut Value, tier: ServiceTier) {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("serviceTier".into(), json!({ "type": tier.name() }));
    }
}

/// Puts the tier into InvokeModel's headers.
pub fn apply_invoke(headers: &mut Vec<(HeaderName, HeaderValue)>, tier: ServiceTier) {
    headers.retain(|(k, _)| k != SERVICE_TIER_HEADER);
    headers.push((
        HeaderName::from_static(SERVICE_TIER_HEADER),
        HeaderValue::from_static(tier.name()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRO: &str = "us.amazon.nova-pro-v1:0";
    const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
    const NOVA_ROUTER: &str =
        "arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/amazon.nova:1";

    #[test]
    fn the_catalog_decides_where_priority_and_flex_work() {
        let c = Catalog::embedded();
        assert_eq!(possible(&c, PRO, ServiceTier::Flex, "us-east-2"), Ok(()));
        assert_eq!(
            possible(&c, PRO, ServiceTier::Flex, "eu-west-3"),
            Err(Downgrade::NotOffered)
        );
        assert_eq!(
            possible(&c, HAIKU, ServiceTier::Priority, "us-east-2"),
            Err(Downgrade::NotOffered)
        );
        assert_eq!(
            possible(&c, "no.such-model", ServiceTier::Flex, "us-east-2"),
            Err(Downgrade::UnknownModel)
        );
        // Nova Lite, the Nova router's other model, offers no flex: the router
        // may choose it, so flex is not sent through the router.
        assert_eq!(
            possible(&c, NOVA_ROUTER, ServiceTier::Flex, "us-east-2"),
            Err(Downgrade::NotOffered)
        );
    }

    #[test]
    fn policies() {
        let c = Catalog::embedded();
        let p = |policy, asked, model| plan(policy, asked, &c, model, "us-east-2");
        assert_eq!(
            p(ServicePolicy::Flex, None, PRO),
            ServicePlan {
                send: Some(ServiceTier::Flex),
                downgraded: None
            }
        );
        assert_eq!(
            p(ServicePolicy::Flex, None, HAIKU),
            ServicePlan {
                send: Some(ServiceTier::Default),
                downgraded: Some(Downgrade::NotOffered)
            },
            "a tier bound to fail is never sent"
        );
        assert_eq!(
            p(ServicePolicy::Default, Some(ServiceTier::Priority), PRO).send,
            Some(ServiceTier::Default)
        );
        assert_eq!(p(ServicePolicy::Client, None, PRO), ServicePlan::default());
        assert_eq!(
            p(ServicePolicy::Client, Some(ServiceTier::Reserved), HAIKU),
            ServicePlan::default(),
            "reserved capacity is the account's: the ask goes as sent"
        );
        assert_eq!(
            p(ServicePolicy::Client, Some(ServiceTier::Priority), PRO).send,
            Some(ServiceTier::Priority)
        );
        assert_eq!(
            p(ServicePolicy::Client, Some(ServiceTier::Flex), HAIKU),
            ServicePlan {
                send: Some(ServiceTier::Default),
                downgraded: Some(Downgrade::NotOffered)
            }
        );
    }

    #[test]
    fn the_tier_wanted_is_the_policy_applied_to_the_clients_ask() {
        use ServiceTier::*;
        for (policy, asked, want) in [
            (ServicePolicy::Flex, Some(Priority), Flex),
            (ServicePolicy::Priority, None, Priority),
            (ServicePolicy::Default, Some(Flex), Default),
            (ServicePolicy::Client, Some(Flex), Flex),
            (ServicePolicy::Client, None, Default),
        ] {
            assert_eq!(wanted(policy, asked), want, "{policy:?} {asked:?}");
        }
    }

    #[test]
    fn the_request_header_names_a_tier_or_is_refused() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(from_request_header(&h).unwrap(), None);
        h.insert(REQUEST_HEADER, HeaderValue::from_static("flex"));
        assert_eq!(from_request_header(&h).unwrap(), Some(ServiceTier::Flex));
        h.insert(REQUEST_HEADER, HeaderValue::from_static("cheap"));
        let e = from_request_header(&h).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Validation);
        assert!(e.to_string().contains("`cheap`"), "{e}");
    }

    #[test]
    fn tiers_are_written_where_bedrock_reads_them() {
        let mut body = json!({"messages": [], "serviceTier": {"type": "priority"}});
        apply_converse(&mut body, ServiceTier::Flex);
        assert_eq!(body["serviceTier"], json!({"type": "flex"}));
        let mut headers = vec![(
            HeaderName::from_static(SERVICE_TIER_HEADER),
            HeaderValue::from_static("priority"),
        )];
        apply_invoke(&mut headers, ServiceTier::Default);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].1, "default");
    }
}
