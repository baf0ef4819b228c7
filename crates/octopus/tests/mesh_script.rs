//! `deploy/mesh/mesh.sh`, the playground behind `make mesh`, works end to end: `up`
//! builds its pods (network namespaces), certificates, configs, apps and sidecars;
//! `canary 50` hot-reloads the frontend's split; `try` shows captured HTTP reaching
//! both payments versions over mTLS and a server-speaks-first TCP exchange with the
//! ledger; `down` leaves no namespace, process or state dir behind.
//!
//! The script runs with this build's octopus, a state dir of its own, the namespace
//! prefix `omt<pid>-` and the subnet 10.202.0.0/24, so it cannot collide with a
//! developer's running `make mesh` (`omesh-*`, 10.201.0.0/24) or with the mesh test
//! (`om<pid>*`, 10.200.0.0/24).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_octopus");
const NET: &str = "10.202.0";
/// `mesh.sh`'s exit code for a missing prerequisite.
const EXIT_PREREQ: i32 = 3;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mesh/mesh.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tool(name: &str, arg: &str) -> bool {
    Command::new(name)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn namespaces() -> String {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The playground under test; `down` whatever happens (a failed assertion included).
struct Mesh {
    dir: PathBuf,
    prefix: String,
}

impl Mesh {
    fn run(&self, args: &[&str]) -> Output {
        let o = Command::new(script())
            .args(args)
            .env("OCTOPUS", BIN)
            .env("MESH_DIR", &self.dir)
            .env("MESH_PREFIX", &self.prefix)
            .env("MESH_NET", NET)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!("$ mesh.sh {}\n{}", args.join(" "), text(&o));
        o
    }

    fn must(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "mesh.sh {args:?} failed ({}): {}\nlogs in {}",
            o.status,
            text(&o),
            self.dir.display()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn ours(&self) -> Vec<String> {
        namespaces()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.prefix))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// The count on a `try` line such as `  payments-v1: 11`.
fn count(out: &str, app: &str) -> u32 {
    let prefix = format!("{app}:");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn make_mesh_script_brings_up_a_canary_over_mtls_and_takes_it_down() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("SKIPPED: mesh.sh needs root (network namespaces, iptables)");
        return;
    }
    for (t, arg) in [
        ("ip", "-V"),
        ("iptables", "--version"),
        ("openssl", "version"),
        ("curl", "--version"),
        ("setpriv", "--version"),
        ("/usr/bin/python3", "--version"),
    ] {
        if !tool(t, arg) {
            eprintln!("SKIPPED: {t} is not installed (apt-get install iproute2 iptables openssl python3 curl)");
            return;
        }
    }
    let pid = std::process::id() % 100_000;
    let mesh = Mesh {
        dir: std::env::temp_dir().join(format!("octopus-mesh-test-{pid}")),
        prefix: format!("omt{pid}-"),
    };

    let up = mesh.run(&["up"]);
    if up.status.code() == Some(EXIT_PREREQ)
        && text(&up).contains("refused to create a network namespace")
    {
        eprintln!("SKIPPED: this kernel refuses to create network namespaces");
        return;
    }
    assert!(
        up.status.success(),
        "mesh.sh up: {}\nlogs in {}",
        text(&up),
        mesh.dir.display()
    );
    let ns = mesh.ours();
    for pod in ["node", "frontend", "payments-v1", "payments-v2", "ledger"] {
        let name = format!("{}{pod}", mesh.prefix);
        assert!(ns.contains(&name), "{name} missing: {ns:?}");
    }
    let up = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.contains(&format!("ip netns exec {}frontend setpriv", mesh.prefix)),
        "{up}"
    );
    assert!(up.contains("canary"), "{up}");

    // A second `up` replaces the first mesh instead of failing on its leftovers.
    let again = mesh.must(&["up"]);
    assert!(again.contains("removing the previous mesh"), "{again}");

    let status = mesh.must(&["status"]);
    assert_eq!(status.matches("ready").count(), 4, "{status}");
    assert!(
        status.contains("payments-v1 90%, payments-v2 10%"),
        "{status}"
    );

    // The canary: 50/50 through a hot reload, then both versions answer.
    let canary = mesh.must(&["canary", "50"]);
    assert!(canary.contains("payments-v2 50%"), "{canary}");
    assert!(canary.contains("reloaded"), "{canary}");
    let yaml = std::fs::read_to_string(mesh.dir.join("frontend.yaml")).unwrap();
    assert!(
        yaml.contains("{ cluster: payments-v1, weight: 50 }"),
        "{yaml}"
    );
    assert!(
        yaml.contains("{ cluster: payments-v2, weight: 50 }"),
        "{yaml}"
    );

    let out = mesh.must(&["try"]);
    let (v1, v2) = (count(&out, "payments-v1"), count(&out, "payments-v2"));
    assert_eq!(v1 + v2, 20, "{out}");
    assert!(
        v1 > 0 && v2 > 0,
        "both versions must answer at 50/50: {out}"
    );
    assert!(!out.contains("failed"), "{out}");
    assert!(
        out.contains("spiffe://cluster.local/ns/shop/sa/frontend"),
        "the apps must see the verified caller: {out}"
    );
    assert!(out.contains("greeting: 220 ledger ready"), "{out}");
    assert!(out.contains("echo:     ledger:hello-ledger"), "{out}");
    assert!(
        out.contains(
            r#"octopus_requests_total{cluster="payments-v2",code="200",direction="outbound",route="payments"}"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"octopus_tcp_connections_total{result="ok",route="ledger"} 1"#),
        "{out}"
    );

    // Down: the processes, the namespaces and the state dir are gone; twice is fine.
    let pids: Vec<String> = std::fs::read_to_string(mesh.dir.join("pids"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(pids.len(), 7, "3 apps and 4 sidecars: {pids:?}");
    mesh.must(&["down"]);
    assert!(mesh.ours().is_empty(), "left behind: {}", namespaces());
    assert!(!mesh.dir.exists(), "{} was not removed", mesh.dir.display());
    for pid in &pids {
        // Gone, or a zombie waiting for init to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "pid {pid} still runs: {stat}"
        );
    }
    mesh.must(&["down"]);
}
