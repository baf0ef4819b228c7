//! Active HTTP health checks: every `interval`, each endpoint gets `GET path`; a 2xx
//! within `timeout` is a pass. `unhealthy_threshold` failures in a row take an
//! endpoint out of rotation, `healthy_threshold` passes bring it back.

use crate::balance::Membership;
use octopus_config::HealthCheckConfig;
use std::sync::Arc;

pub(super) struct Checker {
    pub cluster: Arc<str>,
    pub spec: HealthCheckConfig,
    pub members: Arc<Membership>,
}

impl Checker {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.spec.interval.get());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let set = self.members.load();
            let checks = set.all().iter().map(|m| {
                let ep = m.endpoint.clone();
                let (path, timeout) = (self.spec.path.as_str(), self.spec.timeout.get());
                async move {
                    let ok = ep.probe(path, timeout).await;
                    (
                        ep.clone(),
                        ep.record_check(
                            ok,
                            self.spec.healthy_threshold,
                            self.spec.unhealthy_threshold,
                        ),
                    )
                }
            });
            let mut changed = false;
            for (ep, flip) in futures_util::future::join_all(checks).await {
                match flip {
                    Some(true) => {
                        tracing::info!(cluster = %self.cluster, endpoint = %ep.addr(), "health check: endpoint is healthy again")
                    }
                    Some(false) => {
                        tracing::warn!(cluster = %self.cluster, endpoint = %ep.addr(), path = %self.spec.path, "health check: endpoint is unhealthy; no more traffic")
                    }
                    None => continue,
                }
                changed = true;
            }
            if changed {
                self.members.refresh();
            }
        }
    }
}
