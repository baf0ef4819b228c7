//! Stamps the git revision into `octopus_build_info{revision}`: `OCTOPUS_REVISION` from
//! the environment when a release build sets it, else `git rev-parse` of the checkout,
//! else `unknown` (a source tarball).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=OCTOPUS_REVISION");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let revision = std::env::var("OCTOPUS_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OCTOPUS_REVISION={revision}");
}
