//! Default runtime size: a sidecar shares its node with the service it serves, so it
//! sizes itself from its own CPU quota rather than the node's core count.

/// Worker threads for a cgroup v2 `cpu.max` quota: quota/period rounded up, else 1.
pub fn default_worker_threads() -> usize {
    std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|s| from_cpu_max(&s))
        .unwrap_or(1)
}

fn from_cpu_max(s: &str) -> Option<usize> {
    let mut parts = s.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?; // "max" (no quota) fails here
    let period: f64 = parts.next()?.parse().ok()?;
    if quota <= 0.0 || period <= 0.0 {
        return None;
    }
    Some(((quota / period).ceil() as usize).clamp(1, 64))
}

#[cfg(test)]
mod tests {
    use super::from_cpu_max;

    #[test]
    fn parses_cpu_max() {
        assert_eq!(from_cpu_max("max 100000\n"), None);
        assert_eq!(from_cpu_max("50000 100000\n"), Some(1));
        assert_eq!(from_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(from_cpu_max("400000 100000"), Some(4));
        assert_eq!(from_cpu_max("garbage"), None);
    }
}
