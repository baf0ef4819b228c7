//! Protocol detection for captured connections: HTTP/1.x, the HTTP/2 preface, a TLS
//! ClientHello, or anything else (opaque TCP), read from the client's first bytes
//! without consuming them (`peek`), so whichever path serves the connection sees
//! them.
//!
//! Server-speaks-first protocols (MySQL, SMTP, NATS, ...) would hang any scheme that
//! only waits for the client: the client waits for the server's greeting. So when a
//! connection could be opaque, the caller hands [`sniff`] a connect to its opaque
//! destination, which starts at once; the moment that server says something, the
//! connection is opaque and the greeting is already in hand. Only a connection on
//! which neither side speaks waits for `detect_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    Opaque,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token taken for HTTP/1 (`VERSION-CONTROL` is 15).
const MAX_METHOD: usize = 20;
/// Empty-line bytes (CR, LF) taken before a request line; more is not HTTP.
const MAX_BLANK: usize = 8;
/// Enough for every decision `classify` makes.
pub const PEEK: usize = 40;

/// What `bytes` (the start of a client's stream) are, or `None` while more bytes are
/// needed to tell. HTTP/1 is a method token, a space, and a request target that HTTP
/// allows (`/path`, `*`, `http://...`, or CONNECT's `host:port`), so a Redis inline
/// `GET key` or a text protocol's greeting is not mistaken for HTTP.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    let first = *bytes.first()?;
    if first == 0x16 {
        // A TLS handshake record: content type 22, then version 3.x.
        return match bytes {
            [_, 3, minor, ..] if *minor <= 4 => Some(Protocol::Tls),
            [_, 3] | [_] => None,
            _ => Some(Protocol::Opaque),
        };
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // RFC 9112 2.2: servers ignore empty lines before a request line, and many apps'
    // parsers do, so they must not hide HTTP from octopus.
    let blank = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if blank > MAX_BLANK {
        return Some(Protocol::Opaque);
    }
    let bytes = &bytes[blank..];
    if bytes.is_empty() {
        return None;
    }
    let Some(space) = bytes.iter().position(|&b| b == b' ') else {
        let token = bytes.len() <= MAX_METHOD && bytes.iter().all(|b| method_char(*b));
        return if token { None } else { Some(Protocol::Opaque) };
    };
    let method = &bytes[..space];
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|b| method_char(*b)) {
        return Some(Protocol::Opaque);
    }
    let target = &bytes[space + 1..];
    let &t = target.first()?;
    let http = match t {
        b'/' | b'*' => true,
        _ if method == b"CONNECT" => t.is_ascii_alphanumeric() || t == b'[',
        _ => {
            // Absolute form: only http:// and https:// are proxied requests.
            let scheme = b"http";
            let m = target.len().min(scheme.len());
            if !target[..m].eq_ignore_ascii_case(&scheme[..m]) {
                false
            } else if target.len() < scheme.len() + 1 {
                return None;
            } else {
                matches!(target[4], b':' | b's' | b'S')
            }
        }
    };
    Some(if http {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// An RFC 9110 token character: methods are tokens, in any case (parsers such as Go's
/// take `get` as a method).
fn method_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The client's protocol, from bytes it has sent (not consumed); `None` when it closed
/// (or failed) before saying enough.
pub async fn client_protocol(stream: &TcpStream) -> Option<Protocol> {
    let mut buf = [0u8; PEEK];
    let mut seen = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(p) = classify(&buf[..n]) {
            return Some(p);
        }
        if n == buf.len() {
            return Some(Protocol::Opaque);
        }
        if n == seen {
            // Part of a token arrived and peek returns it again at once: wait for the
            // rest without spinning, backing off (1 ms up to 64 ms) so a client that
            // stops mid-token costs a few wake-ups, not a thousand a second.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(64));
        } else {
            pause = Duration::from_millis(1);
        }
        seen = n;
    }
}

/// Who spoke first on recent connections to a destination, so octopus dials ahead only
/// where a server may speak first. Dialling ahead for a client that speaks HTTP a
/// moment after connecting costs the destination an accepted-and-closed connection
/// (on a peer's strict mTLS listener, a handshake that never started); once a
/// destination is known to wait for its clients, its connections wait for theirs.
/// A timeout or a server speaking flips it back, so a misjudged destination costs one
/// `detect_timeout`, once.
///
/// Lock-free and bounded: 4096 slots of one atomic word (a tag of the destination's
/// hash and what was seen); a collision only costs an unneeded early dial.
pub struct FirstSpeakers {
    slots: Box<[std::sync::atomic::AtomicU64]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Client = 1,
    Server = 2,
}

const SPEAKER_SLOTS: usize = 4096;

impl Default for FirstSpeakers {
    fn default() -> Self {
        FirstSpeakers {
            slots: (0..SPEAKER_SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }
}

impl FirstSpeakers {
    fn slot(&self, dst: std::net::SocketAddr) -> (&std::sync::atomic::AtomicU64, u64) {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(dst);
        (&self.slots[(h as usize) % SPEAKER_SLOTS], h & !3)
    }

    pub fn get(&self, dst: std::net::SocketAddr) -> Option<Speaker> {
        let (slot, tag) = self.slot(dst);
        let v = slot.load(std::sync::atomic::Ordering::Relaxed);
        match (v & !3 == tag, v & 3) {
            (true, 1) => Some(Speaker::Client),
            (true, 2) => Some(Speaker::Server),
            _ => None,
        }
    }

    pub fn set(&self, dst: std::net::SocketAddr, who: Speaker) {
        let (slot, tag) = self.slot(dst);
        slot.store(tag | who as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

pub type Connecting<U, E> = Pin<Box<dyn Future<Output = Result<U, E>> + Send>>;

/// An opaque destination's connection, however far it got while the client was being
/// read.
pub enum Pending<U, E> {
    /// No opaque destination was dialled.
    None,
    Done(Result<U, E>),
    Dialling(Connecting<U, E>),
}

impl<U, E> Pending<U, E> {
    /// The connection, waiting for a dial still in progress.
    pub async fn finish(self) -> Option<Result<U, E>> {
        match self {
            Pending::None => None,
            Pending::Done(r) => Some(r),
            Pending::Dialling(f) => Some(f.await),
        }
    }
}

/// How a captured connection turned out.
pub enum Sniffed<U, E> {
    /// The client spoke first.
    Client(Protocol, Pending<U, E>),
    /// The opaque destination spoke first: the connection, and what it said.
    Server(U, Vec<u8>),
    /// Neither side spoke within the timeout.
    Timeout(Pending<U, E>),
    /// The client closed (or failed) before saying anything.
    ClientClosed,
}

/// Waits for the first of: the client's first bytes, the opaque destination's first
/// bytes (when `dial` is given: it starts at once), or `timeout`.
pub async fn sniff<U, E>(
    client: &TcpStream,
    dial: Option<Connecting<U, E>>,
    timeout: Duration,
) -> Sniffed<U, E>
where
    U: AsyncRead + Unpin + Send,
{
    let deadline = tokio::time::sleep(timeout);
    let said = client_protocol(client);
    tokio::pin!(deadline, said);
    let mut dialling = dial;
    let mut upstream: Option<Result<U, E>> = None;
    let mut greeting = [0u8; 4096];
    let pending = |upstream: Option<Result<U, E>>, dialling: Option<Connecting<U, E>>| match (
        upstream, dialling,
    ) {
        (Some(r), _) => Pending::Done(r),
        (None, Some(f)) => Pending::Dialling(f),
        (None, None) => Pending::None,
    };
    loop {
        let reading = matches!(upstream, Some(Ok(_)));
        tokio::select! {
            // Client bytes win a tie: an HTTP client is the common case.
            biased;
            p = &mut said => {
                return match p {
                    Some(p) => Sniffed::Client(p, pending(upstream, dialling)),
                    None => Sniffed::ClientClosed,
                };
            }
            r = async {
                match dialling.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if dialling.is_some() => {
                dialling = None;
                upstream = Some(r);
            }
            n = async {
                match upstream.as_mut() {
                    Some(Ok(u)) => u.read(&mut greeting).await,
                    _ => std::future::pending().await,
                }
            }, if reading => {
                match (n, upstream.take()) {
                    (Ok(n), Some(Ok(u))) if n > 0 => {
                        return Sniffed::Server(u, greeting[..n].to_vec());
                    }
                    // The destination closed (or failed) the connection dialled ahead:
                    // that says nothing about the client, which may still speak HTTP.
                    // Keep waiting for it; an opaque client gets a fresh dial.
                    _ => {}
                }
            }
            _ = &mut deadline => return Sniffed::Timeout(pending(upstream, dialling)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;

    #[test]
    fn tells_protocols_apart_from_their_first_bytes() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Http1)),
            (b"POST /charge HTTP/1.1", Some(Http1)),
            (b"OPTIONS * HTTP/1.1", Some(Http1)),
            (b"GET http://payments/ HTTP/1.1", Some(Http1)),
            (b"CONNECT payments:443 HTTP/1.1", Some(Http1)),
            (b"M-SEARCH * HTTP/1.1", Some(Http1)),
            (H2_PREFACE, Some(Http2)),
            (b"\x16\x03\x01\x02\x00\x01", Some(Tls)),
            (b"\x16\x03\x03", Some(Tls)),
            // Redis RESP, a Redis inline command, a PostgreSQL startup, SMTP-ish text.
            (b"*2\r\n$3\r\nGET\r\n", Some(Opaque)),
            (b"GET key\r\n", Some(Opaque)),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Opaque)),
            (b"PING\r\n", Some(Opaque)),
            (b"\x16\x01", Some(Opaque)),
            // Empty lines before the request line, and methods in any case, are HTTP
            // to lenient parsers, so they are HTTP here.
            (b"\r\nGET / HTTP/1.1", Some(Http1)),
            (b"get / HTTP/1.1", Some(Http1)),
            (b"\r\n\r\n\r\n\r\n\r\nGET /", Some(Opaque)),
            (b"GET httpx", Some(Opaque)),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn waits_for_enough_bytes_to_tell() {
        for bytes in [
            &b""[..],
            b"G",
            b"GET",
            b"GET ",
            b"PRI * HTTP/2.0\r\n",
            b"\x16",
            b"\x16\x03",
            b"GET htt",
        ] {
            assert_eq!(
                classify(bytes),
                None,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A method token too long to be one is not waited on.
        assert_eq!(classify(&[b'A'; MAX_METHOD + 1]), Some(Opaque));
    }

    #[test]
    fn every_prefix_of_a_request_is_undecided_or_right() {
        for whole in [
            &b"GET /index.html HTTP/1.1\r\n"[..],
            H2_PREFACE,
            b"\x16\x03\x01\x00\xa5\x01",
        ] {
            let full = classify(whole);
            for i in 0..whole.len() {
                let got = classify(&whole[..i]);
                assert!(got.is_none() || got == full, "{i}: {got:?} vs {full:?}");
            }
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_server_that_speaks_first_decides_without_waiting() {
        use tokio::io::AsyncWriteExt;
        let (_client, accepted) = pair().await;
        let (mut server_side, upstream) = pair().await;
        server_side.write_all(b"220 smtp ready\r\n").await.unwrap();
        let dial: Connecting<TcpStream, std::io::Error> = Box::pin(async move { Ok(upstream) });
        // A timeout far longer than the test may take: only the greeting can end it.
        match sniff(&accepted, Some(dial), Duration::from_secs(3600)).await {
            Sniffed::Server(_, said) => assert_eq!(said, b"220 smtp ready\r\n"),
            _ => panic!("expected the server's greeting"),
        }
    }

    #[tokio::test]
    async fn the_client_speaking_first_keeps_the_dial() {
        use tokio::io::AsyncWriteExt;
        let (mut client, accepted) = pair().await;
        let (_server_side, upstream) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let dial: Connecting<TcpStream, std::io::Error> = Box::pin(async move { Ok(upstream) });
        match sniff(&accepted, Some(dial), Duration::from_secs(3600)).await {
            Sniffed::Client(Http1, pending) => {
                assert!(matches!(pending.finish().await, Some(Ok(_))));
            }
            _ => panic!("expected HTTP/1 from the client"),
        }
        // Peeked, not consumed: the bytes are still there for the HTTP server.
        let mut buf = [0u8; 16];
        assert_eq!(accepted.peek(&mut buf).await.unwrap(), 16);
    }

    #[test]
    fn first_speakers_remember_each_destination() {
        let seen = FirstSpeakers::default();
        let a: std::net::SocketAddr = "10.0.0.1:3306".parse().unwrap();
        let b: std::net::SocketAddr = "10.0.0.2:8080".parse().unwrap();
        assert_eq!(seen.get(a), None);
        seen.set(a, Speaker::Server);
        seen.set(b, Speaker::Client);
        assert_eq!(seen.get(a), Some(Speaker::Server));
        assert_eq!(seen.get(b), Some(Speaker::Client));
        seen.set(b, Speaker::Server);
        assert_eq!(seen.get(b), Some(Speaker::Server));
    }

    #[tokio::test]
    async fn silence_on_both_sides_times_out() {
        let (_client, accepted) = pair().await;
        let out: Sniffed<TcpStream, std::io::Error> =
            sniff(&accepted, None, Duration::from_millis(20)).await;
        assert!(matches!(out, Sniffed::Timeout(Pending::None)));
    }
}
