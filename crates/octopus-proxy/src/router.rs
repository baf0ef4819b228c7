//! Route matching: the first route whose host, path prefix, method and headers all
//! match wins. Matchers are compiled once per config; matching allocates nothing.
//!
//! Kubernetes service names: in namespace `shop`, a host `payments` also matches
//! `payments.shop`, `payments.shop.svc` and `payments.shop.svc.cluster.local` (the
//! names a pod's resolver search list makes of it), and `payments.shop` also matches
//! `payments.shop.svc[.cluster.local]`. A trailing dot on the request's host (a fully
//! qualified name) is ignored; the port never counts.

use http::{HeaderName, HeaderValue, Method, Request};
use octopus_config::MatchConfig;

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain, not the bare name.
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, h: &str) -> bool {
        match self {
            HostMatch::Exact(want) => want.eq_ignore_ascii_case(h),
            HostMatch::Suffix(suffix) => {
                h.len() > suffix.len()
                    && h.as_bytes()[h.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// How short service names expand: the pod's namespace (if known) and the cluster's
/// DNS domain.
#[derive(Debug, Clone)]
pub struct Names {
    pub namespace: Option<String>,
    pub cluster_domain: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            namespace: None,
            cluster_domain: "cluster.local".into(),
        }
    }
}

impl Names {
    pub fn of(config: &octopus_config::Config) -> Names {
        Names {
            namespace: config.effective_namespace(),
            cluster_domain: config.cluster_domain.trim_end_matches('.').to_string(),
        }
    }

    /// `name` and the qualified forms it stands for in this namespace.
    fn expand(&self, name: &str) -> Vec<String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let d = &self.cluster_domain;
        let mut out = vec![name.clone()];
        match (name.matches('.').count(), &self.namespace) {
            (0, Some(ns)) => out.extend([
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.{d}"),
            ]),
            (1, _) => out.extend([format!("{name}.svc"), format!("{name}.svc.{d}")]),
            _ => {}
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    /// Empty: any host.
    hosts: Vec<HostMatch>,
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    /// Compiles a validated match block (validation already rejected bad names), with no
    /// namespace to expand service names in.
    pub fn compile(m: &MatchConfig) -> Result<Self, String> {
        Self::compile_in(m, &Names::default())
    }

    /// [`Matcher::compile`], expanding service names as `names` says.
    pub fn compile_in(m: &MatchConfig, names: &Names) -> Result<Self, String> {
        let patterns = m.host.as_ref().map_or(&[][..], |h| h.0.as_slice());
        let hosts = if patterns.iter().any(|h| h == "*") {
            Vec::new()
        } else {
            patterns
                .iter()
                .flat_map(|h| match h.strip_prefix('*') {
                    Some(suffix) => vec![HostMatch::Suffix(
                        suffix.trim_end_matches('.').to_ascii_lowercase(),
                    )],
                    None => names.expand(h).into_iter().map(HostMatch::Exact).collect(),
                })
                .collect()
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
            hosts,
            path_prefix: m.path_prefix.clone(),
            method,
            headers,
        })
    }

    /// `host` is the request's host without port, in any case.
    pub fn matches<B>(&self, host: Option<&str>, req: &Request<B>) -> bool {
        let host_ok = self.hosts.is_empty()
            || host.is_some_and(|h| {
                let h = h.strip_suffix('.').unwrap_or(h);
                self.hosts.iter().any(|m| m.matches(h))
            });
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
    fn kubernetes_service_names_and_lists() {
        let names = Names {
            namespace: Some("shop".into()),
            cluster_domain: "cluster.local".into(),
        };
        let compile = |hosts: &[&str]| {
            Matcher::compile_in(
                &MatchConfig {
                    host: Some(octopus_config::Hosts(
                        hosts.iter().map(|h| h.to_string()).collect(),
                    )),
                    ..Default::default()
                },
                &names,
            )
            .unwrap()
        };
        let r = req("/", "GET", &[]);
        let pay = compile(&["payments", "payments-alt"]);
        for host in [
            "payments",
            "payments.shop",
            "payments.shop.svc",
            "payments.shop.svc.cluster.local",
            "Payments.Shop.Svc.Cluster.Local.",
            "payments-alt.shop.svc.cluster.local",
        ] {
            assert!(pay.matches(Some(host), &r), "{host}");
        }
        for host in [
            "payments.other",
            "payments.shop.svc.example.com",
            "payment",
            "xpayments",
        ] {
            assert!(!pay.matches(Some(host), &r), "{host}");
        }
        // Another namespace, written out: its .svc forms.
        let other = compile(&["catalog.other"]);
        assert!(other.matches(Some("catalog.other.svc.cluster.local."), &r));
        assert!(!other.matches(Some("catalog"), &r));
        // Without a namespace, a short name matches itself only.
        let plain = Matcher::compile(&MatchConfig {
            host: Some("payments".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(plain.matches(Some("payments."), &r));
        assert!(!plain.matches(Some("payments.shop"), &r));
        // Wildcards ignore a trailing dot too; `*` in a list matches anything.
        let wild = compile(&["*.internal"]);
        assert!(wild.matches(Some("a.internal."), &r));
        assert!(compile(&["x", "*"]).matches(Some("anything"), &r));
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
