//! `[[tenants]]`: the limits every key of a tenant shares, and [`Quota`], the
//! four limit keys `[[tenants]]`, `[[keys]]` and `[[routes]]` each take
//! (`requests_per_minute`, `tokens_per_minute`, `usd_per_day`,
//! `usd_per_month`). That a tenant is one some key belongs to is checked with
//! the other cross-table references in `config/mod.rs`.

use serde::Deserialize;
use std::collections::HashSet;

use super::values::check_name;

/// Limits on one scope (a key, a tenant or a route); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quota {
    /// Requests admitted per minute (a bucket of this size refilled evenly).
    pub requests_per_minute: Option<u32>,
    /// Input plus output tokens per minute, estimated at admission and settled
    /// with what the answer reports.
    pub tokens_per_minute: Option<u64>,
    /// Dollars per calendar day in UTC, at catalog prices.
    pub usd_per_day: Option<f64>,
    /// Dollars per calendar month in UTC, at catalog prices.
    pub usd_per_month: Option<f64>,
}

impl Quota {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }
}

/// The four limit keys as written in a table.
#[derive(Debug, Default)]
pub(super) struct RawQuota {
    pub(super) requests_per_minute: Option<u32>,
    pub(super) tokens_per_minute: Option<u64>,
    pub(super) usd_per_day: Option<f64>,
    pub(super) usd_per_month: Option<f64>,
}

/// Checks the limit keys of the table at `key`: counts at least 1, dollars
/// positive.
pub(super) fn quota(key: &str, raw: RawQuota, e: &mut Vec<String>) -> Quota {
    if raw.requests_per_minute == Some(0) {
        e.push(format!("{key}.requests_per_minute: must be at least 1"));
    }
    if raw.tokens_per_minute == Some(0) {
        e.push(format!("{key}.tokens_per_minute: must be at least 1"));
    }
    for (name, value) in [
        ("usd_per_day", raw.usd_per_day),
        ("usd_per_month", raw.usd_per_month),
    ] {
        if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            e.push(format!(
                "{key}.{name}: must be a positive number of dollars"
            ));
        }
    }
    Quota {
        requests_per_minute: raw.requests_per_minute,
        tokens_per_minute: raw.tokens_per_minute,
        usd_per_day: raw.usd_per_day,
        usd_per_month: raw.usd_per_month,
    }
}

/// One tenant's shared limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub quota: Quota,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    name: Option<String>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    usd_per_day: Option<f64>,
    usd_per_month: Option<f64>,
}

pub(super) fn validate(raw: Vec<RawTenant>, e: &mut Vec<String>) -> Vec<TenantConfig> {
    let tenants: Vec<TenantConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let key = format!("tenants[{i}]");
            let name = t.name.unwrap_or_default();
            check_name(&format!("{key}.name"), &name, e);
            let quota = quota(
                &key,
                RawQuota {
                    requests_per_minute: t.requests_per_minute,
                    tokens_per_minute: t.tokens_per_minute,
                    usd_per_day: t.usd_per_day,
                    usd_per_month: t.usd_per_month,
                },
                e,
            );
            TenantConfig { name, quota }
        })
        .collect();
    let mut seen = HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        if !seen.insert(t.name.as_str()) {
            e.push(format!(
                "tenants[{i}].name: `{}` is configured twice",
                t.name
            ));
        }
    }
    tenants
}
