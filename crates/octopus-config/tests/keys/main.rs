//! Config keys of the adoption work: what each accepts, and that every refusal names
//! the field path (and line).
#![allow(clippy::unwrap_used)]

mod app_probes;
mod tcp;

/// Every error message `text` gets, as an operator reads them.
fn errors(text: &str) -> Vec<String> {
    octopus_config::load_str(text, "t.yaml")
        .unwrap_err()
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}
