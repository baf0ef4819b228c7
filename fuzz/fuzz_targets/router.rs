//! Route tables and requests from arbitrary input: compiling and matching never
//! panic, and the first match agrees with a plain reference reading of the rules
//! (first route whose host, path prefix, method and headers all match).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use octopus_config::MatchConfig;
use octopus_proxy::router::{Matcher, Router};

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<Rule>,
    host: Option<String>,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Arbitrary)]
struct Rule {
    host: Option<String>,
    path_prefix: Option<String>,
    method: Option<String>,
    headers: Vec<(String, String)>,
}

impl Rule {
    fn config(&self) -> MatchConfig {
        MatchConfig {
            host: self.host.clone().map(Into::into),
            path_prefix: self.path_prefix.clone(),
            method: self.method.clone(),
            headers: self.headers.iter().cloned().collect(),
        }
    }

    /// The rules as the docs state them, written without the matcher's shortcuts.
    fn admits(&self, host: Option<&str>, req: &http::Request<()>) -> bool {
        let host_ok = match self.host.as_deref() {
            None | Some("*") => true,
            Some(want) => match host {
                None => false,
                Some(h) => {
                    // A trailing dot on the request's host (a fully qualified name) and
                    // on the pattern is the same name.
                    let h = h.to_ascii_lowercase();
                    let h = h.strip_suffix('.').unwrap_or(&h);
                    match want.strip_prefix('*') {
                        Some(suffix) => {
                            let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
                            h.len() > suffix.len() && h.ends_with(&suffix)
                        }
                        None => {
                            let want = want.trim_end_matches('.').to_ascii_lowercase();
                            // `svc.ns` also names `svc.ns.svc[.cluster.local]`.
                            let qualified = want.matches('.').count() == 1
                                && (h == format!("{want}.svc")
                                    || h == format!("{want}.svc.cluster.local"));
                            h == want || qualified
                        }
                    }
                }
            },
        };
        let path_ok = self
            .path_prefix
            .as_deref()
            .is_none_or(|p| req.uri().path().starts_with(p));
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| req.method().as_str() == m.to_ascii_uppercase());
        let config = self.config();
        let headers_ok = config.headers.iter().all(|(k, v)| {
            req.headers()
                .get_all(k.to_ascii_lowercase().as_str())
                .iter()
                .any(|have| have.as_bytes() == v.as_bytes())
        });
        host_ok && path_ok && method_ok && headers_ok
    }
}

fuzz_target!(|input: Input| {
    let mut compiled = Vec::new();
    let mut rules = Vec::new();
    for (i, rule) in input.routes.iter().enumerate().take(16) {
        // Validation refuses what does not compile; such a route never exists.
        if let Ok(m) = Matcher::compile(&rule.config()) {
            compiled.push((m, i));
            rules.push((rule, i));
        }
    }
    let router = Router::new(compiled);

    let mut b = http::Request::builder()
        .method(input.method.as_str())
        .uri(input.path.as_str());
    for (k, v) in &input.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    let host = input.host.as_deref();
    let got = router.find(host, &req).copied();
    let want = rules
        .iter()
        .find(|(rule, _)| rule.admits(host, &req))
        .map(|(_, i)| *i);
    assert_eq!(got, want, "router and reference disagree for {input:?}");
});
