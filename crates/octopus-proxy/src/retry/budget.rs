//! The retry budget: over the last 10 seconds, retries may not exceed `ratio` x
//! requests plus `min_per_second` x 10. A failing cluster then sees at most
//! (1 + ratio) times its normal load instead of `attempts` times. Lock-free: one
//! counter slot per second, reused round-robin.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    slots: [Slot; WINDOW_SECS as usize],
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Budget {
            ratio,
            min_per_second,
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        // +1 so that no live slot is ever stamped 0, the stamp of an unused slot.
        self.start.elapsed().as_secs() + 1
    }

    fn current(&self) -> &Slot {
        let now = self.now();
        let slot = &self.slots[(now % WINDOW_SECS) as usize];
        let stamp = slot.second.load(Ordering::Acquire);
        if stamp != now
            && slot
                .second
                .compare_exchange(stamp, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Release);
            slot.retries.store(0, Ordering::Release);
        }
        slot
    }

    /// Counts one original request.
    pub fn deposit(&self) {
        self.current().requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes room for one retry, or says there is none.
    pub fn try_withdraw(&self) -> bool {
        let slot = self.current();
        let now = self.now();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let stamp = s.second.load(Ordering::Acquire);
            if stamp != 0 && stamp + WINDOW_SECS > now {
                requests += s.requests.load(Ordering::Acquire);
                retries += s.retries.load(Ordering::Acquire);
            }
        }
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * WINDOW_SECS as f64;
        if (retries + 1) as f64 <= allowed {
            slot.retries.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn caps_retries_at_ratio_plus_floor_and_recovers() {
        let b = Budget::new(0.2, 1);
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.try_withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 200 + 10);
        // Ten seconds later the window has moved on: fresh room.
        tokio::time::advance(Duration::from_secs(11)).await;
        b.deposit();
        assert!(b.try_withdraw());
    }
}
