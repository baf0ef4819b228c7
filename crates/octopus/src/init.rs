//! `octopus init`: the traffic-capture rules of a pod, written by an init container
//! with `NET_ADMIN` and `NET_RAW` before the app starts.
//!
//! Outbound TCP of the pod goes to the outbound listener, inbound TCP to the inbound
//! listener, through chains of octopus' own in the `nat` table (`OCTOPUS_OUTPUT`,
//! `OCTOPUS_REDIRECT`, `OCTOPUS_INBOUND`, `OCTOPUS_IN_REDIRECT`). Excluded: traffic of
//! the proxy's own UID (or octopus would capture itself), loopback destinations, the
//! configured ports and CIDRs. Running it again changes nothing: the chains are
//! flushed and refilled, and the jumps into them are added only when missing.
//! `--remove` takes everything out again.
//!
//! Rules go through the `iptables`/`ip6tables` commands (iptables-nft or
//! iptables-legacy, whichever holds the host's rules), so the kernel's own tooling
//! validates them.

use crate::cli::InitArgs;
use std::process::{Command, ExitCode};

const OUTPUT: &str = "OCTOPUS_OUTPUT";
const REDIRECT: &str = "OCTOPUS_REDIRECT";
const INBOUND: &str = "OCTOPUS_INBOUND";
const IN_REDIRECT: &str = "OCTOPUS_IN_REDIRECT";
const CHAINS: [&str; 4] = [OUTPUT, REDIRECT, INBOUND, IN_REDIRECT];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// One iptables invocation (arguments after the command name, `-t nat` included).
type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    ["-t", "nat"]
        .iter()
        .chain(parts)
        .map(|s| s.to_string())
        .collect()
}

/// The rules octopus' chains hold, for one address family, in order.
pub fn chain_rules(a: &InitArgs, family: Family) -> Vec<Rule> {
    let (outbound, inbound, uid) = (
        a.outbound_port.to_string(),
        a.inbound_port.to_string(),
        a.proxy_uid.to_string(),
    );
    let mut r = vec![
        rule(&[
            "-A",
            REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &outbound,
        ]),
        rule(&[
            "-A",
            IN_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inbound,
        ]),
    ];
    // Inbound: everything but the skipped ports goes to the inbound listener.
    r.extend(a.skip_inbound_ports.iter().map(|p| skip_port(INBOUND, *p)));
    r.push(rule(&["-A", INBOUND, "-p", "tcp", "-j", IN_REDIRECT]));
    // Outbound: not octopus' own connections, not loopback, not skipped ports or CIDRs.
    r.push(rule(&[
        "-A",
        OUTPUT,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    r.push(rule(&["-A", OUTPUT, "-o", "lo", "-j", "RETURN"]));
    r.push(rule(&[
        "-A",
        OUTPUT,
        "-d",
        family.loopback(),
        "-j",
        "RETURN",
    ]));
    r.extend(a.skip_outbound_ports.iter().map(|p| skip_port(OUTPUT, *p)));
    for cidr in a
        .skip_cidrs
        .iter()
        .filter(|c| c.is_v6() == (family == Family::V6))
    {
        r.push(rule(&[
            "-A",
            OUTPUT,
            "-d",
            &cidr.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    r.push(rule(&["-A", OUTPUT, "-p", "tcp", "-j", REDIRECT]));
    r
}

/// Leaves TCP to destination `port` alone in `chain`.
fn skip_port(chain: &str, port: u16) -> Rule {
    rule(&[
        "-A",
        chain,
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "-j",
        "RETURN",
    ])
}

/// The jumps from the built-in chains into octopus' chains (added only when missing).
fn jumps() -> Vec<Rule> {
    vec![
        rule(&["PREROUTING", "-p", "tcp", "-j", INBOUND]),
        rule(&["OUTPUT", "-p", "tcp", "-j", OUTPUT]),
    ]
}

/// A CIDR from `--skip-cidrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}`: expected an address/prefix such as 169.254.169.254/32"))?;
        let max = if addr.is_ipv6() { 128 } else { 32 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix must be 0-{max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which iptables commands to use for a family: the variant (nft or legacy) that
/// already holds rules, else the one present, else plain `iptables`.
fn command_for(family: Family) -> Option<String> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let count = |cmd: &str| -> Option<usize> {
        let out = Command::new(format!("{cmd}-save")).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count()
        })
    };
    let nft = format!("{base}-nft");
    let legacy = format!("{base}-legacy");
    match (count(&nft), count(&legacy)) {
        (Some(n), Some(l)) if l > n => Some(legacy),
        (Some(_), _) => Some(nft),
        (None, Some(_)) => Some(legacy),
        (None, None) => exists(base).then(|| base.to_string()),
    }
}

fn exists(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn families(a: &InitArgs) -> Vec<Family> {
    let mut f = vec![Family::V4];
    if !a.no_ipv6 && std::path::Path::new("/proc/net/if_inet6").exists() {
        f.push(Family::V6);
    }
    f
}

pub fn run(a: &InitArgs) -> ExitCode {
    for family in families(a) {
        let Some(cmd) = (if a.dry_run {
            Some(match family {
                Family::V4 => "iptables".to_string(),
                Family::V6 => "ip6tables".to_string(),
            })
        } else {
            command_for(family)
        }) else {
            if family == Family::V6 {
                eprintln!("octopus init: ip6tables not found; IPv6 traffic is not captured");
                continue;
            }
            eprintln!("octopus init: no iptables command found (install iptables: iptables-nft or iptables-legacy)");
            return ExitCode::FAILURE;
        };
        let result = if a.remove {
            remove(&cmd, a.dry_run)
        } else {
            install(&cmd, a, family)
        };
        if let Err(e) = result {
            eprintln!("octopus init: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Runs (or with `--dry-run` prints) one command; `Ok(false)` when it ran and failed in
/// a way the caller tolerates (`tolerate`).
fn exec(cmd: &str, args: &[String], dry_run: bool, tolerate: bool) -> Result<bool, String> {
    if dry_run {
        println!("{cmd} {}", args.join(" "));
        return Ok(true);
    }
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        return Ok(true);
    }
    if tolerate {
        return Ok(false);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stderr.contains("Permission denied") || stderr.contains("Operation not permitted")
    {
        " (the init container needs the NET_ADMIN and NET_RAW capabilities)"
    } else {
        ""
    };
    Err(format!(
        "{cmd} {} failed: {}{hint}",
        args.join(" "),
        stderr.trim()
    ))
}

fn install(cmd: &str, a: &InitArgs, family: Family) -> Result<(), String> {
    for chain in CHAINS {
        // A chain that exists already is flushed and refilled: a second run changes
        // nothing.
        exec(cmd, &rule(&["-N", chain]), a.dry_run, true)?;
        exec(cmd, &rule(&["-F", chain]), a.dry_run, false)?;
    }
    for r in chain_rules(a, family) {
        exec(cmd, &r, a.dry_run, false)?;
    }
    for j in jumps() {
        let mut check = j.clone();
        check.insert(2, "-C".into());
        let present = !a.dry_run && exec(cmd, &check, false, true)?;
        if !present {
            let mut add = j;
            add.insert(2, "-A".into());
            exec(cmd, &add, a.dry_run, false)?;
        }
    }
    Ok(())
}

fn remove(cmd: &str, dry_run: bool) -> Result<(), String> {
    for j in jumps() {
        let mut del = j;
        del.insert(2, "-D".into());
        if dry_run {
            exec(cmd, &del, true, true)?;
            continue;
        }
        // Every copy of the jump goes (bounded: a jump cannot repeat forever).
        for _ in 0..64 {
            if !exec(cmd, &del, false, true)? {
                break;
            }
        }
    }
    for chain in CHAINS {
        exec(cmd, &rule(&["-F", chain]), dry_run, true)?;
    }
    for chain in CHAINS {
        exec(cmd, &rule(&["-X", chain]), dry_run, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InitArgs {
        InitArgs {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 2102,
            skip_outbound_ports: vec![22, 443],
            skip_inbound_ports: vec![9901],
            skip_cidrs: vec![
                "169.254.169.254/32".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            dry_run: true,
            remove: false,
            no_ipv6: false,
        }
    }

    fn text(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn the_rules_exclude_the_proxy_loopback_and_skips() {
        let v4 = text(&chain_rules(&args(), Family::V4));
        assert_eq!(
            v4,
            [
                "-t nat -A OCTOPUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-t nat -A OCTOPUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-t nat -A OCTOPUS_INBOUND -p tcp --dport 9901 -j RETURN",
                "-t nat -A OCTOPUS_INBOUND -p tcp -j OCTOPUS_IN_REDIRECT",
                "-t nat -A OCTOPUS_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -o lo -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -p tcp --dport 22 -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -p tcp --dport 443 -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-t nat -A OCTOPUS_OUTPUT -p tcp -j OCTOPUS_REDIRECT",
            ]
        );
        let v6 = text(&chain_rules(&args(), Family::V6));
        assert!(v6.contains(&"-t nat -A OCTOPUS_OUTPUT -d ::1/128 -j RETURN".to_string()));
        assert!(v6.contains(&"-t nat -A OCTOPUS_OUTPUT -d fd00::/8 -j RETURN".to_string()));
        assert!(!v6.iter().any(|r| r.contains("169.254")), "{v6:?}");
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
    }
}
