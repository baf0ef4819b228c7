//! Replays the `config` fuzz target's corpus (fuzz/corpus/config: seeds plus every
//! input the fuzzer kept for new coverage) through the same checks, so `make test`
//! catches a regression on any input the fuzzer ever found interesting.

#[test]
fn config_fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the committed corpus exists") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| octopus_config::fuzzing::check_loader(&data));
        assert!(outcome.is_ok(), "corpus input {} fails", path.display());
        replayed += 1;
    }
    assert!(
        replayed >= 100,
        "only {replayed} corpus inputs in {}",
        dir.display()
    );
}
