//! The loader's invariants, checked by the `config` fuzz target and by replaying its
//! corpus in the tests: one definition, so both check the same thing.

/// Loads arbitrary bytes as a config file. Panics (the fuzzer's signal) only if an
/// invariant breaks: a valid config must serialise, load again and compare equal
/// (what `/config` and reload comparisons rely on), and every error must render.
pub fn check_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::digest(data);
    match crate::load_str(text, "fuzz.yaml") {
        Ok(config) => {
            let again = serde_yaml::to_string(&config)
                .unwrap_or_else(|e| panic!("a loaded config does not serialise: {e}"));
            let reloaded = crate::load_str(&again, "fuzz-again.yaml").unwrap_or_else(|e| {
                panic!("a serialised valid config fails to load: {e}\n{again}")
            });
            assert_eq!(config, reloaded, "the round trip changed the config");
        }
        Err(e) => {
            for err in &e.errors {
                let _ = err.to_string();
            }
        }
    }
}
