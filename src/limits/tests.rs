//! The limits stage against its local counters: admission from the headers
//! and the body, settlement, refusals and their views.

use super::*;
use crate::config::Config;

fn limits() -> Limits {
    Limits::default()
}

fn quota(rpm: Option<u32>, tpm: Option<u64>, day: Option<f64>) -> Quota {
    Quota {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        usd_per_day: day,
        usd_per_month: None,
    }
}

struct Who {
    tenant: Arc<str>,
    key: Arc<str>,
    key_quota: Quota,
    tenant_quota: Quota,
}

impl Who {
    fn new(key_quota: Quota, tenant_quota: Quota) -> Who {
        Who {
            tenant: Arc::from("acme"),
            key: Arc::from("k1"),
            key_quota,
            tenant_quota,
        }
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            tenant: &self.tenant,
            key: Some(&self.key),
            key_quota: &self.key_quota,
            tenant_quota: &self.tenant_quota,
        }
    }
}

fn manual() -> Arc<Limiter> {
    Limiter::new(LimitsClock::Manual, None)
}

#[tokio::test]
async fn requests_are_counted_from_the_headers_until_the_limit() {
    let l = manual();
    let who = Who::new(quota(Some(3), None, None), Quota::default());
    for left in [2, 1, 0] {
        let t = l
            .admit_headers(&limits(), who.caller(), None, true)
            .await
            .unwrap();
        assert_eq!(t.view.requests.unwrap().remaining, left);
    }
    let refused = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap_err();
    assert_eq!(refused.error.kind, ErrorKind::Throttled);
    assert!(
        refused
            .error
            .message
            .contains("key k1 of tenant acme: 3 requests per minute"),
        "{}",
        refused.error.message
    );
    assert_eq!(refused.view.retry_after, Some(Duration::from_secs(20)));
    // A third of a minute later one more fits.
    l.advance_clock(Duration::from_secs(20));
    assert!(l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .is_ok());
}

#[tokio::test]
async fn unverified_callers_are_only_peeked_at_until_the_body() {
    let l = manual();
    let who = Who::new(quota(Some(1), None, None), Quota::default());
    let route: Arc<str> = Arc::from("haiku");
    let route_quota = Quota::default();
    for _ in 0..3 {
        assert!(l
            .admit_headers(&limits(), who.caller(), None, false)
            .await
            .is_ok());
    }
    let mut t = l
        .admit_headers(&limits(), who.caller(), None, false)
        .await
        .unwrap();
    l.admit_body(&mut t, &limits(), (&route, &route_quota), Estimate::default)
        .await
        .unwrap();
    assert!(l
        .admit_headers(&limits(), who.caller(), None, false)
        .await
        .is_err());
}

#[tokio::test]
async fn tokens_are_estimated_then_settled_with_what_was_used() {
    let l = manual();
    let who = Who::new(Quota::default(), quota(None, Some(1000), None));
    let route: Arc<str> = Arc::from("haiku");
    let rq = Quota::default();
    let estimate = || Estimate {
        input: 100,
        output: 500,
    };
    let mut first = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    l.admit_body(&mut first, &limits(), (&route, &rq), estimate)
        .await
        .unwrap();
    assert_eq!(first.view.tokens.unwrap().remaining, 400);
    let mut second = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    let refused = l
        .admit_body(&mut second, &limits(), (&route, &rq), estimate)
        .await
        .unwrap_err();
    assert!(
        refused.error.message.contains("400 left"),
        "{}",
        refused.error.message
    );
    // The first answer used 150 tokens: 450 come back.
    first.settle(Outcome::Answered {
        usage: Usage {
            input_tokens: 100,
            output_tokens: 50,
            ..Usage::default()
        },
        price: None,
        cache_hit: false,
    });
    // Settlement runs in a task.
    tokio::task::yield_now().await;
    let mut third = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    l.admit_body(&mut third, &limits(), (&route, &rq), estimate)
        .await
        .unwrap();
    assert_eq!(third.view.tokens.unwrap().remaining, 250);
    // More than the whole limit can never fit.
    let mut big = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    let refused = l
        .admit_body(&mut big, &limits(), (&route, &rq), || Estimate {
            input: 900,
            output: 200,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.view.retry_after, None);
    assert!(refused
        .error
        .message
        .contains("more than the 1000 tokens per minute tenant acme may use"));
}

#[tokio::test]
async fn a_refusal_from_the_body_gives_back_the_request() {
    let l = manual();
    let who = Who::new(quota(Some(2), None, None), Quota::default());
    let route: Arc<str> = Arc::from("haiku");
    let tight = quota(Some(1), None, None);
    let mut a = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    l.admit_body(&mut a, &limits(), (&route, &tight), Estimate::default)
        .await
        .unwrap();
    let mut b = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    let refused = l
        .admit_body(&mut b, &limits(), (&route, &tight), Estimate::default)
        .await
        .unwrap_err();
    assert!(refused.error.message.contains("route haiku"));
    // The key's second request was given back: it still has one.
    assert!(l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .is_ok());
}

#[tokio::test]
async fn budgets_refuse_once_spent_until_the_utc_day_turns() {
    let l = manual();
    let who = Who::new(Quota::default(), quota(None, None, Some(1.0)));
    let route: Arc<str> = Arc::from("haiku");
    let rq = Quota::default();
    let price = Price {
        input: 1.0,
        output: 2.0,
        cache_write: None,
        cache_read: None,
        cache_write_1h: None,
    };
    // 600k tokens of output at $2/M: $1.20, more than the day's $1.
    let mut t = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap();
    l.admit_body(&mut t, &limits(), (&route, &rq), Estimate::default)
        .await
        .unwrap();
    t.settle(Outcome::Answered {
        usage: Usage {
            output_tokens: 600_000,
            ..Usage::default()
        },
        price: Some(price),
        cache_hit: false,
    });
    tokio::task::yield_now().await;
    let refused = l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .unwrap_err();
    assert_eq!(refused.error.kind, ErrorKind::BudgetExceeded);
    assert!(
        refused
            .error
            .message
            .contains("daily budget of tenant acme ($1.00 per day) is spent: $1.20 used"),
        "{}",
        refused.error.message
    );
    let wait = refused.view.retry_after.unwrap();
    assert!(wait <= Duration::from_secs(86_400));
    l.advance_clock(wait);
    assert!(l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .is_ok());
}

#[tokio::test]
async fn cache_hits_and_failures_cost_nothing() {
    let l = manual();
    let who = Who::new(Quota::default(), quota(None, None, Some(0.000_001)));
    let route: Arc<str> = Arc::from("haiku");
    let rq = Quota::default();
    let price = Some(Price {
        input: 1.0,
        output: 1.0,
        cache_write: None,
        cache_read: None,
        cache_write_1h: None,
    });
    let usage = Usage {
        input_tokens: 1000,
        output_tokens: 1000,
        ..Usage::default()
    };
    for outcome in [
        Outcome::Answered {
            usage,
            price,
            cache_hit: true,
        },
        Outcome::Failed,
    ] {
        let mut t = l
            .admit_headers(&limits(), who.caller(), None, true)
            .await
            .unwrap();
        l.admit_body(&mut t, &limits(), (&route, &rq), Estimate::default)
            .await
            .unwrap();
        t.settle(outcome);
        tokio::task::yield_now().await;
    }
    assert!(l
        .admit_headers(&limits(), who.caller(), None, true)
        .await
        .is_ok());
}

#[tokio::test]
async fn usage_reports_every_scope_of_the_config() {
    let config = Config::parse(
        r#"
[upstreams.sim]
kind = "simulator"
[[routes]]
name = "haiku"
models = ["m"]
upstream = "sim"
requests_per_minute = 10
[[keys]]
tenant = "acme"
key_sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
[[tenants]]
name = "acme"
usd_per_month = 20
"#,
    )
    .unwrap();
    let l = manual();
    let report = l.usage(&config).await;
    assert_eq!(report["counters"], "local");
    assert_eq!(report["tenants"][0]["tenant"], "acme");
    assert_eq!(report["tenants"][0]["limits"]["usd_per_month"], 20.0);
    assert_eq!(report["tenants"][0]["spend"]["this_month_usd"], 0.0);
    assert_eq!(report["keys"][0]["key"], "aaaaaaaaaaaa");
    assert_eq!(report["keys"][0]["tenant"], "acme");
    assert_eq!(report["routes"][0]["requests"]["remaining"], 10);
}
