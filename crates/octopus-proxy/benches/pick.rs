//! Cost of one load-balancer pick per policy and cluster size.
//! Run: `cargo bench -p octopus-proxy --bench pick`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use octopus_config::{LbPolicy, Protocol};
use octopus_proxy::balance::{Member, MemberSet, Picker};
use octopus_proxy::endpoint::{ConnectionSpec, Endpoint};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

fn set(n: usize) -> MemberSet {
    let members = (0..n)
        .map(|i| Member {
            endpoint: Endpoint::new(
                "bench".into(),
                SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)),
                &ConnectionSpec::new(Protocol::Http1, Duration::from_secs(1)),
                None,
                None,
                None,
                None,
            ),
            weight: 1 + (i % 4) as u32,
        })
        .collect();
    MemberSet::new(members)
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 1000] {
        let members = set(n);
        for (name, policy) in [
            ("round_robin", LbPolicy::RoundRobin),
            ("least_connections", LbPolicy::LeastConnections),
            ("weighted", LbPolicy::Weighted),
        ] {
            let picker = Picker::new(policy);
            group.bench_with_input(BenchmarkId::new(name, n), &members, |b, m| {
                b.iter(|| black_box(picker.pick(black_box(m)).map(|m| m.weight)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
