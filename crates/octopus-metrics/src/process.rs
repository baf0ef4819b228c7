//! Standard `process_*` metrics read from /proc/self on each scrape (Linux only; on
//! other systems the gauges stay 0). Done by hand to avoid the procfs dependency tree.

use prometheus::core::Collector;
use prometheus::{Counter, Gauge, IntGauge};

/// Kernel clock ticks per second; 100 on every Linux architecture octopus targets.
const CLK_TCK: f64 = 100.0;

pub(crate) struct ProcessMetrics {
    cpu: Counter,
    rss: IntGauge,
    vsize: IntGauge,
    fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start: Gauge,
    /// Serialises scrapes so two concurrent ones cannot both add the same CPU delta.
    refreshing: std::sync::Mutex<()>,
}

impl ProcessMetrics {
    pub(crate) fn new() -> Self {
        let g = |n: &str, h: &str| Gauge::new(n, h).expect("static metric definition");
        let i = |n: &str, h: &str| IntGauge::new(n, h).expect("static metric definition");
        let m = ProcessMetrics {
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .expect("static metric definition"),
            rss: i(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            vsize: i(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            fds: i("process_open_fds", "Number of open file descriptors."),
            max_fds: i(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            threads: i("process_threads", "Number of OS threads in the process."),
            start: g(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
            refreshing: std::sync::Mutex::new(()),
        };
        m.refresh();
        m
    }

    pub(crate) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.cpu.clone()),
            Box::new(self.rss.clone()),
            Box::new(self.vsize.clone()),
            Box::new(self.fds.clone()),
            Box::new(self.max_fds.clone()),
            Box::new(self.threads.clone()),
            Box::new(self.start.clone()),
        ]
    }

    pub(crate) fn refresh(&self) {
        let _guard = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; the name may contain spaces.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                // Indices are the proc(5) field numbers minus 3.
                // The kernel keeps the total; the counter catches up by the difference.
                let cpu = (num(11) + num(12)) / CLK_TCK;
                let seen = self.cpu.get();
                if cpu > seen {
                    self.cpu.inc_by(cpu - seen);
                }
                self.threads.set(num(17) as i64);
                self.vsize.set(num(20) as i64);
                if let Some(boot) = boot_time() {
                    self.start.set(boot + num(19) / CLK_TCK);
                }
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            {
                self.rss.set(kb * 1024);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(v) = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<i64>().ok())
            {
                self.max_fds.set(v);
            }
        }
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
