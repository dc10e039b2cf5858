//! The upstream client's request headers.

use super::*;

#[test]
fn the_host_header_is_made_once_where_http1_is_certain() {
    let host = |base: &str, http| http1_host(base, http).map(|v| v.to_str().unwrap().to_owned());
    // As the HTTP client would write it: the port unless it is the default.
    assert_eq!(
        host("http://127.0.0.1:17070", HttpProtocol::Auto).as_deref(),
        Some("127.0.0.1:17070")
    );
    assert_eq!(
        host("http://sim.internal:80/v1", HttpProtocol::Auto).as_deref(),
        Some("sim.internal")
    );
    assert_eq!(
        host(
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            HttpProtocol::Http1
        )
        .as_deref(),
        Some("bedrock-runtime.us-east-1.amazonaws.com")
    );
    assert_eq!(
        host("https://example.com:8443", HttpProtocol::Http1).as_deref(),
        Some("example.com:8443")
    );
    assert_eq!(
        host("http://[::1]:9000", HttpProtocol::Http1).as_deref(),
        Some("[::1]:9000")
    );
    // Where ALPN may choose HTTP/2, or HTTP/2 is asked for, the request
    // carries its authority as `:authority` instead.
    assert_eq!(
        host(
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            HttpProtocol::Auto
        ),
        None
    );
    assert_eq!(host("http://127.0.0.1:17070", HttpProtocol::Http2), None);
}
