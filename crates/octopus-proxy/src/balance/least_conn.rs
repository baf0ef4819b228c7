use super::Member;

/// Clusters up to this size are scanned in full; larger ones use power of two choices
/// so a pick stays O(1).
const FULL_SCAN_MAX: usize = 16;

/// Fewest in-flight requests wins; ties are broken at random so equal endpoints share
/// load instead of the first one taking every burst.
#[derive(Debug, Default)]
pub struct LeastConnections;

impl LeastConnections {
    pub fn pick<'a>(&self, available: &'a [Member]) -> Option<&'a Member> {
        match available.len() {
            0 => None,
            1 => available.first(),
            n if n <= FULL_SCAN_MAX => {
                let mut best: Option<(&Member, usize)> = None;
                let mut ties = 0u32;
                for m in available {
                    let load = m.endpoint.in_flight();
                    match best {
                        Some((_, b)) if load > b => {}
                        Some((_, b)) if load == b => {
                            // Reservoir sampling: each of k tied members ends up with 1/k.
                            ties += 1;
                            if fastrand::u32(0..ties) == 0 {
                                best = Some((m, load));
                            }
                        }
                        _ => {
                            best = Some((m, load));
                            ties = 1;
                        }
                    }
                }
                best.map(|(m, _)| m)
            }
            n => {
                let a = fastrand::usize(0..n);
                let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
                let (ma, mb) = (&available[a], &available[b]);
                let (la, lb) = (ma.endpoint.in_flight(), mb.endpoint.in_flight());
                Some(if la < lb || (la == lb && fastrand::bool()) {
                    ma
                } else {
                    mb
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{index_of, members};

    #[tokio::test(start_paused = true)]
    async fn prefers_the_least_loaded_and_spreads_ties() {
        let set = members(&[1, 1, 1]);
        // Load endpoints 0 and 2 with fake in-flight requests.
        let _busy: Vec<_> = [0, 0, 2]
            .iter()
            .map(|&i| set[i].endpoint.test_hold())
            .collect();
        let lc = LeastConnections;
        for _ in 0..50 {
            assert_eq!(index_of(&set, lc.pick(&set).unwrap()), 1);
        }
        drop(_busy);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[index_of(&set, lc.pick(&set).unwrap())] += 1;
        }
        assert!(
            counts.iter().all(|&c| c > 800),
            "ties spread at random: {counts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn power_of_two_choices_avoids_the_loaded_member() {
        let set = members(&[1; 100]);
        let _busy: Vec<_> = (0..10).map(|_| set[7].endpoint.test_hold()).collect();
        let lc = LeastConnections;
        let picks = (0..10_000)
            .filter(|_| index_of(&set, lc.pick(&set).unwrap()) == 7)
            .count();
        // Member 7 only wins when drawn twice, which P2C never does: it is never picked.
        assert_eq!(picks, 0);
    }
}
