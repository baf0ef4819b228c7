use super::Member;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Strict rotation over the available members: one shared atomic counter, no lock,
/// O(1) per pick.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn pick<'a>(&self, available: &'a [Member]) -> Option<&'a Member> {
        if available.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % available.len();
        available.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{index_of, members};

    #[tokio::test(start_paused = true)]
    async fn rotates_strictly() {
        let set = members(&[1, 1, 1]);
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..9)
            .map(|_| index_of(&set, rr.pick(&set).unwrap()))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert!(rr.pick(&[]).is_none());
    }
}
