//! `octopus init` on the real kernel: inside a network namespace this test creates (and
//! deletes), the capture rules are written, a second run changes nothing, and
//! `--remove` takes them all out. The host's own rules are never touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_octopus");

/// A network namespace of this test's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        let name = format!("octopus-init-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    fn run(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, cmd])
            .args(args)
            .output()
            .unwrap()
    }

    /// The `nat` table as the given save command prints it, without its timestamped
    /// comments and packet counters.
    fn nat(&self, save: &str) -> String {
        let out = self.run(save, &["-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn init_writes_idempotent_capture_rules_and_removes_them() {
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool("iptables") || !ip {
        eprintln!("SKIPPED: iptables or iproute2 is not installed (.ci/run installs them)");
        return;
    }
    let Some(ns) = Netns::create() else {
        eprintln!("SKIPPED: this kernel refuses to create network namespaces");
        return;
    };
    let init = |extra: &[&str]| {
        let mut args = vec![
            "init",
            "--skip-outbound-ports",
            "22,443",
            "--skip-inbound-ports",
            "9902",
            "--skip-cidrs",
            "169.254.169.254/32,fd00::/8",
        ];
        args.extend_from_slice(extra);
        let out = ns.run(BIN, &args);
        assert!(
            out.status.success(),
            "octopus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    init(&[]);
    // Whichever iptables variant init chose holds the rules.
    let save = ["iptables-nft-save", "iptables-legacy-save", "iptables-save"]
        .into_iter()
        .find(|s| tool(s) && ns.nat(s).contains("OCTOPUS_OUTPUT"))
        .expect("no iptables variant shows octopus' chains");
    let first = ns.nat(save);
    for rule in [
        "-A PREROUTING -p tcp -j OCTOPUS_INBOUND",
        "-A OUTPUT -p tcp -j OCTOPUS_OUTPUT",
        "-A OCTOPUS_INBOUND -p tcp -m tcp --dport 9902 -j RETURN",
        "-A OCTOPUS_INBOUND -p tcp -j OCTOPUS_IN_REDIRECT",
        "-A OCTOPUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OCTOPUS_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A OCTOPUS_OUTPUT -o lo -j RETURN",
        "-A OCTOPUS_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-A OCTOPUS_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
        "-A OCTOPUS_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A OCTOPUS_OUTPUT -p tcp -j OCTOPUS_REDIRECT",
        "-A OCTOPUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(first.contains(rule), "missing `{rule}` in:\n{first}");
    }
    // Idempotent: a second run leaves the same table (no duplicated jumps).
    init(&[]);
    assert_eq!(ns.nat(save), first);
    assert_eq!(first.matches("-j OCTOPUS_INBOUND").count(), 1);
    // IPv6 gets the same chains with its own loopback, where the kernel has IPv6.
    let save6 = save.replace("iptables", "ip6tables");
    if std::path::Path::new("/proc/net/if_inet6").exists() && tool(&save6) {
        let v6 = ns.nat(&save6);
        assert!(
            v6.contains("-A OCTOPUS_OUTPUT -d ::1/128 -j RETURN"),
            "{v6}"
        );
        assert!(
            v6.contains("-A OCTOPUS_OUTPUT -d fd00::/8 -j RETURN"),
            "{v6}"
        );
        assert!(!v6.contains("169.254"), "{v6}");
    }
    // --remove takes every chain and jump out.
    init(&["--remove"]);
    let after = ns.nat(save);
    assert!(!after.contains("OCTOPUS"), "{after}");
    if tool(&save6) {
        assert!(!ns.nat(&save6).contains("OCTOPUS"));
    }
}

#[test]
fn init_dry_run_prints_the_rules_and_changes_nothing() {
    let out = Command::new(BIN)
        .args(["init", "--dry-run", "--no-ipv6", "--outbound-port", "16001"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("iptables -t nat -A OCTOPUS_REDIRECT -p tcp -j REDIRECT --to-ports 16001"),
        "{text}"
    );
    assert!(
        text.contains("iptables -t nat -A OUTPUT -p tcp -j OCTOPUS_OUTPUT"),
        "{text}"
    );
    assert!(!text.contains("ip6tables"), "{text}");
    // A bad CIDR is refused with a clear message.
    let out = Command::new(BIN)
        .args(["init", "--dry-run", "--skip-cidrs", "10.0.0.0/40"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the prefix must be 0-32"));
}
