//! Any bytes given as a config file: the loader returns a config or located errors,
//! never panics, and valid configs survive a serialise/load round trip (the checks
//! live in `octopus_config::fuzzing`, shared with the corpus replay test).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| octopus_config::fuzzing::check_loader(data));
