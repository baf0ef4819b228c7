//! Property tests: the config loader never panics, whatever text it is given, and
//! every rejection names a location.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

/// Fragments of real control files, shuffled into plausible and broken documents.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("admin:\n  listen: 127.0.0.1:9901\n".to_string()),
        Just("outbound:\n  listen: 127.0.0.1:15001\n  routes:\n".to_string()),
        Just("    - name: r\n      match: { host: a }\n      cluster: c\n".to_string()),
        Just("      split:\n        - { cluster: c, weight: 0 }\n".to_string()),
        Just("      retry: { attempts: 3, retry_on: [reset, 503] }\n".to_string()),
        Just(
            "clusters:\n  c:\n    endpoints: [127.0.0.1:1, { address: x.y:2, weight: 3 }]\n"
                .to_string()
        ),
        Just("    health_check: { path: /h, interval: 1s }\n".to_string()),
        Just("inbound:\n  listen: 0.0.0.0:15006\n  forward_to: 127.0.0.1:8080\n".to_string()),
        "[ -~\n]{0,40}",
        "[{}\\[\\]:,\"'&*!|>%@`-]{0,10}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn loading_never_panics(parts in proptest::collection::vec(fragment(), 0..8)) {
        let text: String = parts.concat();
        if let Err(e) = octopus_config::load_str(&text, "prop.yaml") {
            prop_assert!(!e.errors.is_empty());
            for err in &e.errors {
                prop_assert!(!err.message.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in "\\PC{0,200}") {
        let _ = octopus_config::load_str(&text, "prop.yaml");
    }
}
