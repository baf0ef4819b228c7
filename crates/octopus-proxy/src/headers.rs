//! Header rules applied at the proxy hop, in the order the handler applies them:
//! hop-by-hop removal (RFC 9110 section 7.6.1) first, underscore look-alikes next,
//! then octopus' own headers are set, so nothing a client sends can remove or forge
//! them. Also: which `Upgrade` offers may pass, and the request's authority, checked.

use crate::error::ProxyError;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use octopus_config::UnderscoreHeaders;
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (`TE` is handled apart).
/// `HTTP2-Settings` belongs to an `h2c` upgrade (RFC 9113 section 3.1 of RFC 7540),
/// which never passes.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Prefix of the headers octopus itself sets (peer identity, shadow mark, attempts).
pub const OWN_PREFIX: &str = "x-octopus-";
pub const FORWARDED_FOR: &str = "x-forwarded-for";
/// The request's correlation id: kept when the client sent a usable one, else set.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-sent request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 200;

/// Names a client may not make octopus remove by listing them in `Connection`, nor
/// imitate with underscores: what the app is told to trust, and what routing used.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(OWN_PREFIX) || name == FORWARDED_FOR || name == "host"
}

/// What one pass over a request's headers found: which rules have work to do, so
/// the common request (one `Host`, nothing hop-by-hop, nothing suspect) costs no
/// hashed look-up beyond routing's.
#[derive(Debug, Default)]
pub struct Scan {
    /// The `Host` value, when there is exactly one.
    pub host: Option<HeaderValue>,
    pub hosts: usize,
    /// `Connection`, `Upgrade`, `TE`, `Transfer-Encoding` or another hop-by-hop name.
    pub hop_by_hop: bool,
    pub transfer_encoding: bool,
    pub upgrade: bool,
    /// A name with `_`, or one in octopus' own `x-octopus-` namespace.
    pub suspect: bool,
    /// The `x-request-id` value, when there is exactly one.
    pub request_id: Option<HeaderValue>,
    pub request_ids: usize,
}

pub fn scan(headers: &HeaderMap) -> Scan {
    let mut s = Scan::default();
    for (name, value) in headers {
        if name == header::HOST {
            s.hosts += 1;
            s.host = (s.hosts == 1).then(|| value.clone());
        } else if name == header::TE || is_hop_by_hop(name) {
            s.hop_by_hop = true;
            s.transfer_encoding |= name == header::TRANSFER_ENCODING;
            s.upgrade |= name == header::UPGRADE;
        } else if name == REQUEST_ID {
            s.request_ids += 1;
            s.request_id = (s.request_ids == 1).then(|| value.clone());
        } else {
            let n = name.as_str();
            s.suspect |= n.contains('_') || n.starts_with(OWN_PREFIX);
        }
    }
    if s.hosts > 1 {
        s.host = None;
    }
    s
}

/// The request's id: the client's `x-request-id` when it sent exactly one of at most
/// 200 visible ASCII characters (it correlates the client's own logs with ours), else
/// a new random UUID v4. Not a security token: uniqueness is all it needs, so the
/// random bits come from a fast thread-local generator, not the OS.
pub fn request_id(scan: &Scan) -> RequestId {
    if let Some(v) = &scan.request_id {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic()) {
            return RequestId::Client(v.clone());
        }
    }
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text);
    RequestId::Made(text)
}

/// A request's id, as text kept where it costs nothing: the client's header value (a
/// view of the bytes hyper read) or the id octopus made, on the stack. A header value
/// is built from it where one is needed: once for the request forwarded, and again
/// only for an error response or a log line (a copy of a made value would allocate).
#[derive(Debug, Clone)]
pub enum RequestId {
    Client(HeaderValue),
    Made([u8; uuid::fmt::Hyphenated::LENGTH]),
}

impl RequestId {
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Client(v) => v.to_str().unwrap_or("-"),
            RequestId::Made(b) => std::str::from_utf8(b).unwrap_or("-"),
        }
    }

    pub fn to_value(&self) -> HeaderValue {
        match self {
            RequestId::Client(v) => v.clone(),
            RequestId::Made(b) => {
                HeaderValue::from_bytes(b).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
            }
        }
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names, except
/// reserved ones (a `Connection: x-octopus-peer-identity` is ignored, not honoured).
/// With `keep_upgrade` set to the offer that may pass, the `Connection: upgrade` /
/// `Upgrade` pair is kept with that value, so a WebSocket handshake reaches the
/// upstream; any other `Upgrade` is removed and the request proxied as usual.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: Option<HeaderValue>) {
    // Most messages carry none of these: one pass over the names is cheaper than
    // hashing each hop-by-hop name for a removal (measured: ~800 instructions saved
    // per request, callgrind).
    if !headers.keys().any(|n| n == header::TE || is_hop_by_hop(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !is_reserved(n.as_str()))
        .collect();
    // `TE: trailers` is kept: gRPC requires it end to end, and it promises nothing about
    // this connection that the next hop could misread. Any other TE is dropped.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(u) = keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// Removes what a client may not send: every `x-octopus-*` header (octopus sets
/// its own afterwards; `keep` names one a peer's octopus may legitimately send, the
/// shadow mark), and names that equal a reserved one once `_` reads as `-`
/// (`x_octopus_peer_identity`): CGI/WSGI apps see both spellings as one variable.
/// Other names with `_` follow the listener's `action`.
pub fn strip_untrusted(
    headers: &mut HeaderMap,
    action: UnderscoreHeaders,
    keep: Option<&str>,
) -> Result<(), ProxyError> {
    let suspect = |n: &HeaderName| {
        let s = n.as_str();
        s.contains('_') || (s.starts_with(OWN_PREFIX) && Some(s) != keep)
    };
    // The common case: nothing to remove, one pass over the names, no allocation.
    if !headers.keys().any(suspect) {
        return Ok(());
    }
    let mut doomed = Vec::new();
    for name in headers.keys().filter(|n| suspect(n)) {
        let s = name.as_str();
        if !s.contains('_') || is_reserved(&s.replace('_', "-")) {
            doomed.push(name.clone());
            continue;
        }
        match action {
            UnderscoreHeaders::Allow => {}
            UnderscoreHeaders::Drop => doomed.push(name.clone()),
            UnderscoreHeaders::Reject => {
                return Err(ProxyError::BadRequest("header name with an underscore"))
            }
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
    Ok(())
}

/// The part of the request's `Upgrade` offer that `allowed` permits (protocol names,
/// case-insensitive; `websocket/13` matches `websocket`), or `None` when the request is
/// not an HTTP/1.1 upgrade or offers nothing allowed.
pub fn allowed_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    let offer = req.headers().get(header::UPGRADE)?.to_str().ok()?;
    let kept: Vec<&str> = offer
        .split(',')
        .map(str::trim)
        .filter(|p| {
            let name = p.split('/').next().unwrap_or_default();
            allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
        .collect();
    match kept.as_slice() {
        [] => None,
        [one] if *one == offer => req.headers().get(header::UPGRADE).cloned(),
        _ => HeaderValue::from_str(&kept.join(", ")).ok(),
    }
}

/// Whether a 101 switches to a protocol from `offered` (the offer octopus passed on).
pub fn upgrade_matches<B>(resp: &Response<B>, offered: &HeaderValue) -> bool {
    let Some(chosen) = resp
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let chosen = chosen.split('/').next().unwrap_or_default().trim();
    offered.to_str().unwrap_or_default().split(',').any(|p| {
        p.trim()
            .split('/')
            .next()
            .unwrap_or_default()
            .eq_ignore_ascii_case(chosen)
    })
}

pub fn is_upgrade_response<B>(resp: &Response<B>) -> bool {
    resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a message's `Transfer-Encoding` names a coding other than `chunked`. hyper
/// removes the chunked framing and octopus re-frames the body, so any other coding
/// would reach the next hop as bytes nothing marks (RFC 9112 section 6.1).
pub fn has_foreign_transfer_coding(headers: &HeaderMap) -> bool {
    // A scan of the names first: most messages have none, and it needs no hashing.
    if !headers.keys().any(|n| n == header::TRANSFER_ENCODING) {
        return false;
    }
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
}

/// A client address as an `x-forwarded-for` element, formatted once per connection
/// rather than once per request.
#[derive(Debug, Clone)]
pub struct ForwardedFor(HeaderValue);

impl ForwardedFor {
    pub fn new(client: IpAddr) -> Self {
        // An IP address is always a valid header value.
        ForwardedFor(
            HeaderValue::from_maybe_shared(bytes::Bytes::from(client.to_string()))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        )
    }
}

/// Appends the client address to `x-forwarded-for`, keeping earlier hops.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &ForwardedFor) {
    let xff = HeaderName::from_static(FORWARDED_FOR);
    let mut earlier = headers.get_all(&xff).iter().peekable();
    if earlier.peek().is_none() {
        // The common case: the first hop; the value is shared, not copied.
        headers.insert(xff, client.0.clone());
        return;
    }
    // Several header lines form one comma-separated list (RFC 9110 section 5.3).
    let mut value = String::new();
    for prev in earlier.filter_map(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            value.push_str(prev.trim());
            value.push_str(", ");
        }
    }
    value.push_str(client.0.to_str().unwrap_or("unknown"));
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
}

/// The authority octopus routes on and the upstream will see: the URI's (absolute
/// form, HTTP/2 `:authority`) wins over `Host` (RFC 9112 section 3.2.2, RFC 9113
/// section 8.3.1). `None` when neither is present. A second `Host` line, userinfo, or
/// a port that is not a number 0-65535 is a bad request, in either place.
pub fn authority<B>(
    req: &Request<B>,
    scan: &Scan,
) -> Result<Option<http::uri::Authority>, ProxyError> {
    if scan.hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let host = match &scan.host {
        Some(v) => {
            let a: http::uri::Authority = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyError::BadRequest("invalid Host header"))?;
            check_authority(&a)?;
            Some(a)
        }
        None => None,
    };
    match req.uri().authority() {
        Some(a) => {
            check_authority(a)?;
            Ok(Some(a.clone()))
        }
        None => Ok(host),
    }
}

fn check_authority(a: &http::uri::Authority) -> Result<(), ProxyError> {
    let s = a.as_str();
    if s.contains('@') {
        return Err(ProxyError::BadRequest("userinfo in the request authority"));
    }
    // What follows the host: nothing, or `:` and a port (RFC 3986 allows it empty).
    let after_host = match s.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, p)| p),
        None => s.find(':').map_or("", |i| &s[i..]),
    };
    let port = after_host.strip_prefix(':').unwrap_or(after_host);
    let valid = port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok());
    if !valid || a.host().is_empty() {
        return Err(ProxyError::BadRequest(
            "invalid port or host in the request authority",
        ));
    }
    Ok(())
}

/// Host name for routing, without port or IPv6 brackets; matching ignores case, so
/// no lower-cased copy is made per request.
pub fn route_host(authority: &http::uri::Authority) -> &str {
    authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_usable_and_made_otherwise() {
        let id_of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(REQUEST_ID, HeaderValue::from_str(v).unwrap());
            }
            let id = request_id(&scan(&h));
            assert_eq!(id.as_str(), id.to_value().to_str().unwrap());
            id.as_str().to_string()
        };
        assert_eq!(id_of(&["abc-123"]), "abc-123");
        let made = id_of(&[]);
        assert_eq!(made.len(), 36);
        assert_eq!(&made[14..15], "4", "UUID version 4: {made}");
        assert_ne!(made, id_of(&[]), "each request gets its own");
        // Two values, an empty one, spaces or an overlong one: replaced.
        for bad in [
            vec!["a", "b"],
            vec![""],
            vec!["a b"],
            vec![&*"x".repeat(201)],
        ] {
            let got = id_of(&bad);
            assert_eq!(got.len(), 36, "{bad:?} -> {got}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(
            h[header::TE],
            "trailers",
            "gRPC needs TE: trailers end to end"
        );
    }

    #[test]
    fn keeps_upgrade_pair_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, Some(HeaderValue::from_static("websocket")));
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let ip = |s: &str| ForwardedFor::new(s.parse().unwrap());
        append_forwarded_for(&mut h, &ip("10.0.0.1"));
        append_forwarded_for(&mut h, &ip("::1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        h.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        append_forwarded_for(&mut h, &ip("10.0.0.2"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1, 10.9.9.9, 10.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn authority_and_host() {
        let req = Request::builder()
            .uri("/x")
            .header("host", "Payments:8080")
            .body(())
            .unwrap();
        let a = authority(&req, &scan(req.headers())).unwrap().unwrap();
        assert_eq!(route_host(&a), "Payments");
        let v6: http::uri::Authority = "[::1]:80".parse().unwrap();
        assert_eq!(route_host(&v6), "::1");
    }

    #[test]
    fn connection_cannot_remove_reserved_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-octopus-peer-identity, X-Forwarded-For, host, x-other"),
        );
        h.insert(
            "x-octopus-peer-identity",
            HeaderValue::from_static("spiffe://a"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("host", HeaderValue::from_static("svc"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h["x-octopus-peer-identity"], "spiffe://a");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["host"], "svc");
        assert!(!h.contains_key("x-other"), "named non-reserved headers go");
    }

    #[test]
    fn h2c_offers_never_pass_and_websocket_does() {
        let req = |upgrade: &'static str| {
            Request::get("/")
                .header("connection", "Upgrade, HTTP2-Settings")
                .header("upgrade", upgrade)
                .header("http2-settings", "AAMAAABkAAQAAP__")
                .body(())
                .unwrap()
        };
        let ws = vec!["websocket".to_string()];
        assert_eq!(allowed_upgrade(&req("h2c"), &ws), None);
        assert_eq!(
            allowed_upgrade(&req("h2c, websocket"), &ws).unwrap(),
            "websocket"
        );
        assert_eq!(
            allowed_upgrade(&req("WebSocket/13"), &ws).unwrap(),
            "WebSocket/13"
        );
        assert_eq!(allowed_upgrade(&req("websocket"), &[]), None);
        let mut r = req("h2c");
        strip_hop_by_hop(r.headers_mut(), None);
        assert!(r.headers().is_empty(), "{:?}", r.headers());
        let resp = Response::builder()
            .status(101)
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert!(!upgrade_matches(
            &resp,
            &HeaderValue::from_static("websocket")
        ));
    }

    #[test]
    fn underscore_rules() {
        let mut h = HeaderMap::new();
        h.insert(
            "x_octopus_peer_identity",
            HeaderValue::from_static("forged"),
        );
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x_app_thing", HeaderValue::from_static("1"));
        h.insert(
            "x-octopus-peer-identity",
            HeaderValue::from_static("forged"),
        );
        h.insert("x-octopus-shadow", HeaderValue::from_static("true"));
        let mut allow = h.clone();
        strip_untrusted(
            &mut allow,
            UnderscoreHeaders::Allow,
            Some("x-octopus-shadow"),
        )
        .unwrap();
        assert_eq!(allow.len(), 2, "{allow:?}");
        assert!(allow.contains_key("x_app_thing"));
        assert!(allow.contains_key("x-octopus-shadow"));
        let mut drop = h.clone();
        strip_untrusted(&mut drop, UnderscoreHeaders::Drop, None).unwrap();
        assert!(drop.is_empty(), "{drop:?}");
        assert!(strip_untrusted(&mut h, UnderscoreHeaders::Reject, None).is_err());
    }

    #[test]
    fn authority_is_checked_and_the_uri_wins() {
        let req = |uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        let auth = |r: &Request<()>| authority(r, &scan(r.headers()));
        let a = auth(&req("http://svc/x", &["evil.example"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.as_str(), "svc");
        assert!(auth(&req("/", &["svc", "evil"])).is_err());
        for bad in ["evil@svc", "svc:abc", "svc:99999", "svc:-1"] {
            assert!(auth(&req("/", &[bad])).is_err(), "{bad}");
        }
        assert!(auth(&req("http://evil@svc/", &[])).is_err());
        for good in ["svc", "svc:8080", "[::1]:80", "svc:"] {
            assert!(auth(&req("/", &[good])).unwrap().is_some(), "{good}");
        }
        assert!(auth(&req("/", &[])).unwrap().is_none());
    }

    #[test]
    fn foreign_transfer_codings_are_seen() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!has_foreign_transfer_coding(&h));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(has_foreign_transfer_coding(&h));
    }
}
