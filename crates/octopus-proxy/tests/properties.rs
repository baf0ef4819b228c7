//! Property tests of the balancers, the retry budget and the route matcher.
#![allow(clippy::unwrap_used)]

use octopus_config::{LbPolicy, MatchConfig, Protocol};
use octopus_proxy::balance::{Member, MemberSet, Picker};
use octopus_proxy::endpoint::{ConnectionSpec, Endpoint};
use octopus_proxy::retry::Budget;
use octopus_proxy::router::Matcher;
use proptest::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Member {
            endpoint: Endpoint::new(
                "p".into(),
                SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16)),
                &ConnectionSpec::new(Protocol::Http1, Duration::from_secs(1)),
                None,
                None,
                None,
                None,
            ),
            weight,
        })
        .collect()
}

fn index(all: &[Member], m: &Member) -> usize {
    all.iter()
        .position(|x| Arc::ptr_eq(&x.endpoint, &m.endpoint))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over `rounds` full cycles, smooth WRR gives every endpoint exactly weight x
    /// rounds picks, never picks a weight-0 endpoint, and never runs the heaviest
    /// endpoint longer than its weight's share allows.
    #[test]
    fn weighted_is_exact_per_cycle(weights in proptest::collection::vec(0u32..8, 1..8), rounds in 1usize..5) {
        let total: u32 = weights.iter().sum();
        prop_assume!(total > 0);
        let all = members(&weights);
        let set = MemberSet::new(all.clone());
        let p = Picker::new(LbPolicy::Weighted);
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..(total as usize * rounds) {
            counts[index(&all, p.pick(&set).unwrap())] += 1;
        }
        for (c, w) in counts.iter().zip(&weights) {
            prop_assert_eq!(*c, w * rounds as u32);
        }
    }

    /// Round robin over n endpoints gives each exactly k picks in k x n picks.
    #[test]
    fn round_robin_is_exact(n in 1usize..10, k in 1usize..20) {
        let all = members(&vec![1; n]);
        let set = MemberSet::new(all.clone());
        let p = Picker::new(LbPolicy::RoundRobin);
        let mut counts = vec![0usize; n];
        for _ in 0..n * k {
            counts[index(&all, p.pick(&set).unwrap())] += 1;
        }
        prop_assert!(counts.iter().all(|&c| c == k));
    }

    /// Least-connections only ever picks an available endpoint, and none when none is.
    #[test]
    fn least_connections_respects_availability(weights in proptest::collection::vec(0u32..3, 0..40)) {
        let all = members(&weights);
        let set = MemberSet::new(all.clone());
        let p = Picker::new(LbPolicy::LeastConnections);
        match p.pick(&set) {
            Some(m) => prop_assert!(m.weight > 0),
            None => prop_assert!(weights.iter().all(|&w| w == 0)),
        }
    }

    /// The retry budget never grants more than ratio x requests + the floor.
    #[test]
    fn budget_never_overspends(ratio in 0.0f64..2.0, floor in 0u32..20, requests in 0u64..2000, asks in 0u64..3000) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let b = Budget::new(ratio, floor);
            for _ in 0..requests {
                b.deposit();
            }
            let granted = (0..asks).filter(|_| b.try_withdraw()).count() as f64;
            let allowed = ratio * requests as f64 + f64::from(floor) * 10.0;
            assert!(granted <= allowed + 1e-9, "granted {granted} > allowed {allowed}");
        });
    }

    /// The matcher never panics on arbitrary hosts, paths and methods.
    #[test]
    fn matcher_never_panics(host in "\\PC{0,30}", path in "/\\PC{0,40}", pattern in "(\\*\\.)?[a-z.]{1,10}") {
        let m = Matcher::compile(&MatchConfig { host: Some(pattern.into()), path_prefix: Some("/a".into()), ..Default::default() }).unwrap();
        if let Ok(req) = http::Request::builder().uri(path.as_str()).body(()) {
            let _ = m.matches(Some(&host), &req);
        }
    }
}
