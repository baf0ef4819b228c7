//! A plain HTTP/1.1 keep-alive server on raw TCP, so a test decides exactly when a
//! connection closes: after it idled a while, right after its n-th answer without
//! announcing it (the keep-alive race), or instead of answering a request it read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// When a [`KeepAliveServer`] closes its connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAlive {
    /// Closes a connection that waited this long for its next request.
    pub idle_close: Option<Duration>,
    /// Closes each connection right after this many answers, with no
    /// `Connection: close` to warn the client.
    pub answers_per_connection: Option<usize>,
    /// Waits this long before each answer.
    pub delay: Duration,
}

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    /// The next this-many requests are read and answered with a close.
    drop_next: AtomicUsize,
    /// Each request's method, target and body, in arrival order.
    log: Mutex<Vec<(String, Vec<u8>)>>,
}

pub struct KeepAliveServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl KeepAliveServer {
    pub async fn start(how: KeepAlive) -> KeepAliveServer {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ephemeral port");
        let addr = l.local_addr().expect("bound listener has an address");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let id = s.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                s.open.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    serve(stream, id, how, &s).await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        KeepAliveServer { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.seen.open.load(Ordering::SeqCst)
    }

    /// Requests read so far (answered or not).
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Each request received: `METHOD target` and its body.
    pub fn log(&self) -> Vec<(String, Vec<u8>)> {
        self.seen
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next `n` requests are read in full and then met with a close, no answer.
    pub fn drop_next(&self, n: usize) {
        self.seen.drop_next.store(n, Ordering::SeqCst);
    }
}

impl Drop for KeepAliveServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, id: usize, how: KeepAlive, seen: &Seen) {
    let mut buf = Vec::with_capacity(4096);
    let mut answers = 0;
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = s.read(&mut chunk);
            let n = match how.idle_close {
                Some(t) if buf.is_empty() => match tokio::time::timeout(t, read).await {
                    Ok(r) => r,
                    Err(_) => return,
                },
                _ => read.await,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let line = head.lines().next().unwrap_or_default();
        let target = line.rsplit_once(' ').map_or(line, |(a, _)| a).to_string();
        let n = seen.requests.fetch_add(1, Ordering::SeqCst) + 1;
        seen.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((target, body));
        let dropped = seen
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok();
        if dropped {
            return;
        }
        tokio::time::sleep(how.delay).await;
        let text = format!("connection {id} request {n}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-connection: {id}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        answers += 1;
        if how.answers_per_connection.is_some_and(|max| answers >= max) {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
