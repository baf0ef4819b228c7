use octopus_config::RateLimitConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket kept as one atomic, by the generic cell rate algorithm: `tat` is
/// the moment the bucket would be full again. A request at `now` is admitted while
/// `tat - now` stays within the burst tolerance, and moves `tat` on by one interval.
/// One compare-and-swap per request, no lock, no timer.
#[derive(Debug)]
pub struct Bucket {
    spec: RateLimitConfig,
    /// Nanoseconds between two tokens.
    interval: u64,
    /// How far ahead of `now` `tat` may run: `(burst - 1)` intervals.
    tolerance: u64,
    start: Instant,
    /// Nanoseconds after `start`.
    tat: AtomicU64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(spec: RateLimitConfig) -> Arc<Self> {
        let interval = (1e9 / spec.requests_per_second).round().max(1.0) as u64;
        let tolerance = interval.saturating_mul(u64::from(spec.capacity().max(1) - 1));
        Arc::new(Bucket {
            spec,
            interval,
            tolerance,
            start: Instant::now(),
            tat: AtomicU64::new(0),
        })
    }

    /// The bucket of a previous config when its limit is unchanged (it keeps its
    /// tokens: a reload is no free burst), else a new, full one.
    pub fn reuse(previous: Option<&Arc<Bucket>>, spec: &RateLimitConfig) -> Arc<Self> {
        match previous {
            Some(b) if &b.spec == spec => b.clone(),
            _ => Bucket::new(spec.clone()),
        }
    }

    pub fn spec(&self) -> &RateLimitConfig {
        &self.spec
    }

    /// Takes a token, or says how long until the next one.
    pub fn try_take(&self) -> Result<(), Duration> {
        self.try_take_at(self.start.elapsed().as_nanos() as u64)
    }

    fn try_take_at(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let ahead = base - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                base + self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rps: f64, burst: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rps,
            burst,
        }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_the_rate() {
        let b = Bucket::new(spec(10.0, Some(3)));
        let t = SEC;
        assert!((0..3).all(|_| b.try_take_at(t).is_ok()), "a full bucket");
        let wait = b.try_take_at(t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one token per 100 ms");
        assert!(b.try_take_at(t + 100_000_000).is_ok());
        assert!(b.try_take_at(t + 100_000_000).is_err());
        // Idle for a long time: never more than `burst` saved up.
        let later = t + 60 * SEC;
        assert_eq!((0..10).filter(|_| b.try_take_at(later).is_ok()).count(), 3);
    }

    #[test]
    fn admits_the_rate_over_time() {
        let b = Bucket::new(spec(100.0, Some(1)));
        let admitted = (0..1000u64)
            .filter(|i| b.try_take_at(SEC + i * 2_000_000).is_ok()) // every 2 ms, for 2 s
            .count();
        assert_eq!(admitted, 200, "100/s for 2 s");
    }

    #[test]
    fn burst_defaults_to_one_second_and_reuse_keeps_tokens() {
        let b = Bucket::new(spec(5.0, None));
        assert_eq!((0..10).filter(|_| b.try_take_at(SEC).is_ok()).count(), 5);
        let same = Bucket::reuse(Some(&b), &spec(5.0, None));
        assert!(Arc::ptr_eq(&same, &b));
        assert!(
            same.try_take_at(SEC).is_err(),
            "the reload gave no new tokens"
        );
        let changed = Bucket::reuse(Some(&b), &spec(6.0, None));
        assert!(!Arc::ptr_eq(&changed, &b));
    }
}
