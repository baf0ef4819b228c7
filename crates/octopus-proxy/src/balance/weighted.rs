use super::{Member, MemberSet};

/// Smooth weighted round robin (the interleaving nginx uses): each pick adds every
/// member's weight to its running score, takes the highest, and subtracts the total
/// from the winner. Weights 3:1 give a b a a, a a b a ... never a burst of the heavy
/// member longer than its share. The running scores live in the member set and are
/// guarded by a per-cluster mutex held for O(members) integer work.
#[derive(Debug, Default)]
pub struct SmoothWeighted;

impl SmoothWeighted {
    pub fn pick<'a>(&self, set: &'a MemberSet) -> Option<&'a Member> {
        let available = set.available();
        if available.is_empty() {
            return None;
        }
        let mut scores = set.swrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best = 0usize;
        for (i, m) in available.iter().enumerate() {
            let w = i64::from(m.weight);
            scores[i] += w;
            total += w;
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        available.get(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{index_of, members};

    #[tokio::test(start_paused = true)]
    async fn interleaves_by_weight_without_bursts() {
        let all = members(&[3, 1, 0]);
        let set = MemberSet::new(all.clone());
        let p = SmoothWeighted;
        let picks: Vec<usize> = (0..4000)
            .map(|_| index_of(&all, p.pick(&set).unwrap()))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3000);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1000);
        assert_eq!(
            picks.iter().filter(|&&i| i == 2).count(),
            0,
            "weight 0 drains"
        );
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .filter(|run| run[0] == 0)
            .map(<[usize]>::len)
            .max();
        assert!(
            longest_run <= Some(3),
            "heavy member ran {longest_run:?} times in a row"
        );
        assert_eq!(&picks[..8], &[0, 0, 1, 0, 0, 0, 1, 0]);
    }
}
