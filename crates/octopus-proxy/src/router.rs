//! Route matching: the first route whose host, path prefix, method and headers all
//! match wins. Matchers are compiled once per config; matching allocates nothing.

use http::{HeaderName, HeaderValue, Method, Request};
use octopus_config::MatchConfig;

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain, not the bare name.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct Matcher {
    host: HostMatch,
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    /// Compiles a validated match block (validation already rejected bad names).
    pub fn compile(m: &MatchConfig) -> Result<Self, String> {
        let host = match m.host.as_deref() {
            None | Some("*") => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let method = m
            .method
            .as_deref()
            .map(|s| {
                Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("bad method `{s}`"))
            })
            .transpose()?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("bad header name `{k}`"))?;
                let value =
                    HeaderValue::from_str(v).map_err(|_| format!("bad header value for `{k}`"))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Matcher {
            host,
            path_prefix: m.path_prefix.clone(),
            method,
            headers,
        })
    }

    /// `host` is the request's host without port, in any case.
    pub fn matches<B>(&self, host: Option<&str>, req: &Request<B>) -> bool {
        let host_ok = match (&self.host, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(want), Some(h)) => want.eq_ignore_ascii_case(h),
            (HostMatch::Suffix(suffix), Some(h)) => {
                h.len() > suffix.len()
                    && h.as_bytes()[h.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            (_, None) => false,
        };
        host_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| req.uri().path().starts_with(p))
            && self.method.as_ref().is_none_or(|m| req.method() == m)
            && self
                .headers
                .iter()
                .all(|(name, value)| req.headers().get_all(name).iter().any(|v| v == value))
    }
}

/// An ordered route table; `T` is whatever a matched route resolves to.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(Matcher, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: Vec<(Matcher, T)>) -> Self {
        Router { routes }
    }

    pub fn find<B>(&self, host: Option<&str>, req: &Request<B>) -> Option<&T> {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(host, req))
            .map(|(_, t)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn m(
        host: Option<&str>,
        prefix: Option<&str>,
        method: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Matcher {
        Matcher::compile(&MatchConfig {
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            method: method.map(Into::into),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        })
        .unwrap()
    }

    fn req(path: &str, method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(path).method(method);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn first_match_wins_with_all_conditions() {
        let router = Router::new(vec![
            (
                m(Some("payments"), None, None, &[("x-canary", "true")]),
                "canary",
            ),
            (
                m(Some("payments"), Some("/admin"), Some("post"), &[]),
                "admin-post",
            ),
            (m(Some("payments"), None, None, &[]), "stable"),
            (m(Some("*.shop.local"), None, None, &[]), "wildcard"),
            (m(None, None, None, &[]), "default"),
        ]);
        let find = |host: Option<&str>, r: &Request<()>| *router.find(host, r).unwrap();
        assert_eq!(
            find(Some("payments"), &req("/", "GET", &[("x-canary", "true")])),
            "canary"
        );
        assert_eq!(
            find(Some("payments"), &req("/", "GET", &[("x-canary", "false")])),
            "stable"
        );
        assert_eq!(
            find(Some("payments"), &req("/admin/x", "POST", &[])),
            "admin-post"
        );
        assert_eq!(
            find(Some("payments"), &req("/admin/x", "GET", &[])),
            "stable"
        );
        assert_eq!(
            find(Some("a.b.shop.local"), &req("/", "GET", &[])),
            "wildcard"
        );
        assert_eq!(find(Some("shop.local"), &req("/", "GET", &[])), "default");
        assert_eq!(
            find(Some("A.Shop.LOCAL"), &req("/", "GET", &[])),
            "wildcard"
        );
        assert_eq!(find(Some("PAYMENTS"), &req("/", "GET", &[])), "stable");
        assert_eq!(find(None, &req("/", "GET", &[])), "default");
    }

    #[test]
    fn no_match_is_none() {
        let router = Router::new(vec![(m(Some("a"), None, None, &[]), 1)]);
        assert!(router.find(Some("b"), &req("/", "GET", &[])).is_none());
        assert!(router.find(None, &req("/", "GET", &[])).is_none());
    }
}
