//! The access log: one JSON line per request, written off the request path.
//!
//! The handler hands a [`Record`] to the listener's [`AccessLog`] when the response
//! body ends (or the client goes away); a bounded queue carries it to a writer thread
//! that formats and writes it. When the queue is full the line is dropped and counted
//! (`octopus_access_log_dropped_total`): traffic never waits for a log line, and a
//! slow disk never blocks the runtime (the writer is an OS thread of its own).
//!
//! Files are reopened on `SIGUSR1` (logrotate's `postrotate`), and renamed to
//! `PATH.1` and reopened once they pass `max_bytes`. A writer (its thread, its file)
//! is live state kept across reloads while its path and size limit are unchanged.

use crate::error::CompileError;
use octopus_config::AccessLogConfig;
use prometheus::IntCounter;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most; beyond, lines are dropped and counted.
const QUEUE: usize = 8192;
/// Bytes formatted before they are written out.
const WRITE_AT: usize = 256 * 1024;
/// While lines keep coming, the writer takes them every TICK instead of being woken
/// per line (a blocked receiver costs the sender a futex wake and a context switch for
/// every line); a line waits at most this long. When idle it blocks, so an idle proxy
/// does not wake up.
const TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// One request as the access log records it.
#[derive(Debug)]
pub struct Record {
    pub start: SystemTime,
    pub direction: &'static str,
    pub route: Arc<str>,
    pub cluster: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub client: SocketAddr,
    pub method: http::Method,
    pub authority: Option<http::uri::Authority>,
    pub path: Option<http::uri::PathAndQuery>,
    pub protocol: http::Version,
    pub status: u16,
    /// octopus' error kind (`x-octopus-error`), when octopus answered for itself.
    pub error: Option<&'static str>,
    /// Whose fault the failure was: `client`, `octopus` or `upstream`.
    pub fault: Option<&'static str>,
    pub attempts: u32,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: Option<http::HeaderValue>,
    pub trace_id: Option<String>,
    pub peer_identity: Option<Arc<str>>,
}

/// The JSON shape of a line; field names are part of the operator contract
/// (docs/observability.md).
#[derive(Serialize)]
struct Line<'a> {
    start: String,
    direction: &'a str,
    route: &'a str,
    cluster: Option<&'a str>,
    endpoint: Option<String>,
    client: String,
    method: &'a str,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    protocol: &'a str,
    status: u16,
    error: Option<&'a str>,
    fault: Option<&'a str>,
    attempts: u32,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    request_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    peer_identity: Option<&'a str>,
}

impl Record {
    fn write_json(&self, include_query: bool, out: &mut Vec<u8>) {
        let path = self
            .path
            .as_ref()
            .map(|p| if include_query { p.as_str() } else { p.path() });
        let line = Line {
            start: rfc3339(self.start),
            direction: self.direction,
            route: &self.route,
            cluster: self.cluster.as_deref(),
            endpoint: self.endpoint.map(|e| e.to_string()),
            client: self.client.to_string(),
            method: self.method.as_str(),
            authority: self.authority.as_ref().map(|a| a.as_str()),
            path,
            protocol: version_name(self.protocol),
            status: self.status,
            error: self.error,
            fault: self.fault,
            attempts: self.attempts,
            duration_ms: millis(self.duration),
            upstream_ms: self.upstream.map(millis),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            trace_id: self.trace_id.as_deref(),
            peer_identity: self.peer_identity.as_deref(),
        };
        push_line(out, &line);
    }
}

/// Appends `line` as one JSON line. Serialising plain strings and numbers into a Vec
/// cannot fail.
fn push_line(out: &mut Vec<u8>, line: &impl Serialize) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

/// One opaque TCP connection as the access log records it: written when it ends.
#[derive(Debug)]
pub struct TcpRecord {
    pub start: SystemTime,
    pub direction: &'static str,
    pub route: Arc<str>,
    pub cluster: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub client: SocketAddr,
    /// Where the client was connecting (the original destination when captured).
    pub destination: Option<SocketAddr>,
    /// `ok`, `connect_failed` or `refused` (as `octopus_tcp_connections_total`).
    pub result: &'static str,
    /// Why it was not carried, for the two failures.
    pub error: Option<String>,
    pub duration: Duration,
    /// Bytes from the client, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub peer_identity: Option<Arc<str>>,
}

/// The JSON shape of a TCP line: the HTTP line's names where they mean the same, and
/// `protocol: "tcp"` to tell them apart.
#[derive(Serialize)]
struct TcpLine<'a> {
    start: String,
    direction: &'a str,
    route: &'a str,
    cluster: Option<&'a str>,
    endpoint: Option<String>,
    client: String,
    destination: Option<String>,
    protocol: &'a str,
    result: &'a str,
    error: Option<&'a str>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    peer_identity: Option<&'a str>,
}

impl TcpRecord {
    fn write_json(&self, out: &mut Vec<u8>) {
        let line = TcpLine {
            start: rfc3339(self.start),
            direction: self.direction,
            route: &self.route,
            cluster: self.cluster.as_deref(),
            endpoint: self.endpoint.map(|e| e.to_string()),
            client: self.client.to_string(),
            destination: self.destination.map(|d| d.to_string()),
            protocol: "tcp",
            result: self.result,
            error: self.error.as_deref(),
            duration_ms: millis(self.duration),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            peer_identity: self.peer_identity.as_deref(),
        };
        push_line(out, &line);
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// `2026-12-06T10:55:01.123Z`: UTC with milliseconds.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A listener's access log, compiled from its config. Cloned per logged request (one
/// reference count), so a response body can write its line after the handler ends.
#[derive(Clone)]
pub struct AccessLog(Arc<Inner>);

struct Inner {
    spec: AccessLogConfig,
    sink: Arc<Sink>,
    lines: IntCounter,
}

impl AccessLog {
    /// Builds the log for one listener, taking over a writer of `reusable` (the
    /// previous snapshot's logs, and this one's already built) that writes to the same
    /// place, so a reload neither reopens the file nor starts a thread.
    pub fn compile<'a>(
        spec: &AccessLogConfig,
        direction: &'static str,
        reusable: impl IntoIterator<Item = &'a AccessLog>,
        metrics: &octopus_metrics::Metrics,
    ) -> Result<AccessLog, CompileError> {
        let same =
            |l: &&AccessLog| l.0.spec.path == spec.path && l.0.spec.max_bytes == spec.max_bytes;
        let sink = match reusable.into_iter().find(same) {
            Some(l) => l.0.sink.clone(),
            None => Sink::start(spec, metrics.access_log_dropped_total.clone())?,
        };
        Ok(AccessLog(Arc::new(Inner {
            spec: spec.clone(),
            sink,
            lines: metrics
                .access_log_lines_total
                .with_label_values(&[direction]),
        })))
    }

    /// Whether this request is to be logged (`sample`).
    pub fn sampled(&self) -> bool {
        let sample = self.0.spec.sample;
        sample >= 1.0 || (sample > 0.0 && fastrand::f64() < sample)
    }

    /// Queues a line; never waits. A full queue drops it and counts the drop.
    pub fn write(&self, record: Record) {
        let msg = Msg::Line {
            record: Box::new(record),
            include_query: self.0.spec.include_query,
        };
        match self.0.sink.tx.try_send(msg) {
            Ok(()) => self.0.lines.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.0.sink.dropped.inc();
            }
        }
    }

    /// Queues a TCP connection's line; never waits (as [`AccessLog::write`]).
    pub fn write_tcp(&self, record: TcpRecord) {
        match self.0.sink.tx.try_send(Msg::Tcp(Box::new(record))) {
            Ok(()) => self.0.lines.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.0.sink.dropped.inc();
            }
        }
    }

    /// Reopens the file (after logrotate moved it); stdout needs nothing.
    pub fn reopen(&self) {
        self.0.sink.reopen.store(true, Ordering::Release);
        // Wake the writer; if its queue is full it sees the flag with the next batch.
        let _ = self.0.sink.tx.try_send(Msg::Wake);
    }
}

enum Msg {
    Line {
        record: Box<Record>,
        include_query: bool,
    },
    Tcp(Box<TcpRecord>),
    Wake,
}

/// One writer: a queue and the thread that drains it into stdout or a file. The
/// thread ends when the last `AccessLog` using it is dropped (its queue closes).
struct Sink {
    tx: SyncSender<Msg>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
}

enum Out {
    Stdout,
    File {
        path: String,
        file: std::fs::File,
        written: u64,
        max_bytes: Option<u64>,
    },
}

impl Sink {
    fn start(spec: &AccessLogConfig, dropped: IntCounter) -> Result<Arc<Sink>, CompileError> {
        let out = if spec.path == "stdout" {
            Out::Stdout
        } else {
            let file = open(&spec.path).map_err(|e| {
                CompileError(format!("access log: cannot open `{}`: {e}", spec.path))
            })?;
            let written = file.metadata().map(|m| m.len()).unwrap_or(0);
            Out::File {
                path: spec.path.clone(),
                file,
                written,
                max_bytes: spec.max_bytes,
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("octopus-access-log".into())
            .spawn(move || drain(rx, out, &flag))
            .map_err(|e| CompileError(format!("access log: cannot start its writer: {e}")))?;
        Ok(Arc::new(Sink {
            tx,
            reopen,
            dropped,
        }))
    }
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer thread: takes what is queued, formats it into one buffer, writes it.
fn drain(rx: Receiver<Msg>, mut out: Out, reopen: &AtomicBool) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut pending = match rx.recv() {
        Ok(first) => Some(first),
        Err(_) => return,
    };
    loop {
        let mut taken = 0;
        let mut closed = false;
        loop {
            let msg = match pending.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                },
            };
            taken += 1;
            match msg {
                Msg::Line {
                    record,
                    include_query,
                } => record.write_json(include_query, &mut buf),
                Msg::Tcp(record) => record.write_json(&mut buf),
                Msg::Wake => {}
            }
            if buf.len() >= WRITE_AT {
                out.write(&buf);
                buf.clear();
            }
        }
        if reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        out.write(&buf);
        buf.clear();
        if closed {
            return;
        }
        if taken == 0 {
            // Idle: block until the next line (or the last sender goes).
            match rx.recv() {
                Ok(m) => pending = Some(m),
                Err(_) => return,
            }
        } else {
            std::thread::sleep(TICK);
        }
    }
}

impl Out {
    fn write(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        let result = match self {
            Out::Stdout => {
                let mut s = std::io::stdout().lock();
                s.write_all(buf).and_then(|()| s.flush())
            }
            Out::File { file, written, .. } => {
                *written += buf.len() as u64;
                file.write_all(buf)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "access log write failed");
        }
        if let Out::File {
            path,
            written,
            max_bytes: Some(max),
            ..
        } = self
        {
            if *written >= *max {
                // One old file is kept: PATH.1 (replaced each time).
                if let Err(e) = std::fs::rename(&*path, format!("{path}.1")) {
                    tracing::warn!(error = %e, %path, "access log rotation failed");
                }
                self.reopen();
            }
        }
    }

    fn reopen(&mut self) {
        if let Out::File {
            path,
            file,
            written,
            ..
        } = self
        {
            match open(path) {
                Ok(f) => {
                    *written = f.metadata().map(|m| m.len()).unwrap_or(0);
                    *file = f;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %path, "cannot reopen the access log; writing to the old file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_554_501_123);
        assert_eq!(rfc3339(t), "2026-12-06T10:55:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn a_line_is_one_json_object_with_the_query_optional() {
        let rec = Record {
            start: UNIX_EPOCH,
            direction: "outbound",
            route: "r".into(),
            cluster: Some("c".into()),
            endpoint: Some("127.0.0.1:80".parse().unwrap()),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: http::Method::POST,
            authority: Some("svc".parse().unwrap()),
            path: Some("/a/b?token=secret".parse().unwrap()),
            protocol: http::Version::HTTP_11,
            status: 502,
            error: Some("connect_failed"),
            fault: Some("upstream"),
            attempts: 2,
            duration: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(250)),
            bytes_in: 3,
            bytes_out: 20,
            request_id: Some(http::HeaderValue::from_static("id-1")),
            trace_id: None,
            peer_identity: None,
        };
        let mut buf = Vec::new();
        rec.write_json(false, &mut buf);
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"], "connect_failed");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_ms"], 0.25);
        assert_eq!(v["endpoint"], "127.0.0.1:80");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert!(v["trace_id"].is_null());
        buf.clear();
        rec.write_json(true, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/a/b?token=secret");
    }
}
