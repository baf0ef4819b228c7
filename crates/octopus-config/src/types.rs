//! Scalar value types of the control file, each parsed from its string form with a
//! message that says what was expected.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A duration written with a unit: `250ms`, `2s`, `1.5s`, `1m`, `1h`, or Go-style
/// sums of them (`1m30s`, `1h2m`, `2s500ms`), as `kubectl` and Prometheus users write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid duration `{s}`: expected a number with a unit (ms, s, m, h), e.g. `250ms`, `2s` or `1m30s`")
        };
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut secs = 0.0;
        while !rest.is_empty() {
            let split = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (num, tail) = rest.split_at(split);
            if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
                return Err(bad());
            }
            let value: f64 = num.parse().map_err(|_| bad())?;
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let scale = match &tail[..unit_len] {
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            secs += value * scale;
            rest = &tail[unit_len..];
        }
        if !secs.is_finite() || secs > 365.0 * 24.0 * 3600.0 {
            return Err(format!("invalid duration `{s}`: too large"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Implements `Deserialize` via `FromStr` (the value must be a string) and `Serialize`
/// via `Display`, so every scalar type reads and prints in the file's own notation.
macro_rules! string_serde {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

string_serde!(Duration, "a duration such as `250ms` or `2s`");
string_serde!(HostPort, "an address `host:port`");
string_serde!(HashOn, "`header:NAME` or `cookie:NAME`");

/// `host:port`, where host is an IP literal (IPv6 in brackets) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The IP when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.ip().map(|ip| std::net::SocketAddr::new(ip, self.port))
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid address `{s}`: {why}");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected `[ipv6]:port`"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address"))?;
            (h, p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| bad("expected `host:port`"))?;
            if h.contains(':') {
                return Err(bad("IPv6 addresses are written `[addr]:port`"));
            }
            (h, p)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number 0-65535"))?;
        // A fully qualified name may end with a dot (`catalog.shop.svc.cluster.local.`):
        // the resolver then skips the search domains.
        let name = host.strip_suffix('.').unwrap_or(host);
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if host.parse::<IpAddr>().is_err() && !valid_name {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How octopus speaks to an upstream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), or negotiated by ALPN under TLS.
    Http2,
    /// Opaque TCP: bytes carried both ways unchanged, for `tcp_routes` (databases,
    /// brokers). With `tls`, the stream is wrapped in mTLS to the peer's sidecar.
    Tcp,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastConnections,
    Weighted,
}

/// The key a sticky split hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
}

impl FromStr for HashOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("header", name)) if http_token(name) => {
                Ok(HashOn::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if http_token(name) => Ok(HashOn::Cookie(name.to_string())),
            _ => Err(format!(
                "invalid hash_on `{s}`: expected `header:NAME` or `cookie:NAME`"
            )),
        }
    }
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::Header(n) => write!(f, "header:{n}"),
            HashOn::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// A condition under which a failed try is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (refused, timed out).
    ConnectFailure,
    /// The connection broke after the request was sent, or the per-try timeout fired.
    Reset,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The upstream answered this status.
    Status(u16),
}

impl RetryOn {
    pub fn matches_status(&self, status: u16) -> bool {
        match self {
            RetryOn::GatewayError => matches!(status, 502..=504),
            RetryOn::Status(s) => *s == status,
            _ => false,
        }
    }
}

impl FromStr for RetryOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "gateway-error" => Ok(RetryOn::GatewayError),
            code => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(RetryOn::Status(c)),
                _ => Err(format!(
                    "invalid retry_on `{s}`: expected connect-failure, reset, gateway-error or a status code 100-599"
                )),
            },
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::GatewayError => f.write_str("gateway-error"),
            RetryOn::Status(c) => write!(f, "{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect-failure, reset, gateway-error or a status code")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// JSON Schema for the string-typed scalars, so editors check them as they are typed.
macro_rules! string_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

string_schema!(Duration, "Duration", {
    "type": "string",
    "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
    "description": "A duration with a unit: 250ms, 2s, 1.5s, 1m, 1h, or a sum such as 1m30s",
    "examples": ["250ms", "2s", "1m30s"]
});
string_schema!(HostPort, "Address", {
    "type": "string",
    "pattern": "^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9._-]+):[0-9]{1,5}$",
    "description": "host:port; IPv6 as [addr]:port; a DNS name is resolved where allowed",
    "examples": ["127.0.0.1:15001", "payments.shop.svc:8080"]
});
string_schema!(HashOn, "HashOn", {
    "type": "string",
    "pattern": "^(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
    "description": "Sticky split key: header:NAME or cookie:NAME",
    "examples": ["header:x-user-id", "cookie:session"]
});
string_schema!(RetryOn, "RetryOn", {
    "description": "connect-failure, reset, gateway-error (502/503/504) or a status code",
    "anyOf": [
        { "enum": ["connect-failure", "reset", "gateway-error"] },
        { "type": "string", "pattern": "^[1-5][0-9][0-9]$" },
        { "type": "integer", "minimum": 100, "maximum": 599 }
    ]
});

/// `match.host`: one host pattern or a list of them (`host: payments` or
/// `host: [payments, payments-alt]`); printed back the way it was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hosts(pub Vec<String>);

impl From<&str> for Hosts {
    fn from(s: &str) -> Self {
        Hosts(vec![s.to_string()])
    }
}

impl From<String> for Hosts {
    fn from(s: String) -> Self {
        Hosts(vec![s])
    }
}

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_or_many(
            d,
            "a host name or a list of host names",
            "an empty list matches nothing; leave `host` out to match any host",
        )
        .map(Hosts)
    }
}

impl Serialize for Hosts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_one_or_many(&self.0, s)
    }
}

/// One value or a non-empty list of them (`host: a`, `host: [a, b]`), as a list;
/// `empty` says why an empty list is refused.
fn one_or_many<'de, D, T>(
    d: D,
    expecting: &'static str,
    empty: &'static str,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        expecting: &'static str,
        empty: &'static str,
        item: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|t| vec![t])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<T>()? {
                items.push(item);
            }
            if items.is_empty() {
                return Err(de::Error::custom(self.empty));
            }
            Ok(items)
        }
    }
    d.deserialize_any(V {
        expecting,
        empty,
        item: std::marker::PhantomData,
    })
}

/// Prints a list the way it was most likely written: one value bare, more as a list.
fn serialize_one_or_many<S: Serializer, T: Serialize>(
    items: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    match items {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

impl schemars::JsonSchema for Hosts {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Hosts".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A host name (exact, `*.suffix` or `*`) or a list of them; a Kubernetes service name also matches its namespace-qualified forms",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}

/// An RFC 9110 token: header names, methods and cookie names are tokens.
pub(crate) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
        assert_eq!("2s".parse::<Duration>().unwrap().get().as_secs(), 2);
        assert_eq!("1.5s".parse::<Duration>().unwrap().get().as_millis(), 1500);
        assert_eq!("1m".parse::<Duration>().unwrap().get().as_secs(), 60);
        assert_eq!("1m30s".parse::<Duration>().unwrap().get().as_secs(), 90);
        assert_eq!("1h2m3s".parse::<Duration>().unwrap().get().as_secs(), 3723);
        assert_eq!(
            "2s500ms".parse::<Duration>().unwrap().get().as_millis(),
            2500
        );
        for bad in [
            "", "5", "s", "5x", "-1s", "1.s", ".5s", "1e3s", "5 s", "1m30", "1m 30s", "1mx",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
        assert_eq!(Duration::from_millis(2000).to_string(), "2s");
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
    }

    #[test]
    fn addresses() {
        let a: HostPort = "10.0.0.1:8080".parse().unwrap();
        assert_eq!(a.socket_addr().unwrap().to_string(), "10.0.0.1:8080");
        let b: HostPort = "[::1]:80".parse().unwrap();
        assert_eq!(b.to_string(), "[::1]:80");
        let c: HostPort = "Payments.svc:80".parse().unwrap();
        assert_eq!(c.host, "payments.svc");
        assert!(c.ip().is_none());
        for bad in [
            "10.0.0.1",
            "10.0.0.1:http",
            "::1:80",
            "a b:80",
            ":80",
            "x:70000",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_on() {
        assert_eq!(
            "header:X-User".parse::<HashOn>().unwrap(),
            HashOn::Header("x-user".into())
        );
        assert_eq!(
            "cookie:sid".parse::<HashOn>().unwrap(),
            HashOn::Cookie("sid".into())
        );
        assert!("query:x".parse::<HashOn>().is_err());
        assert!("header:".parse::<HashOn>().is_err());
    }
}

/// An IP network `addr/prefix` (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32
/// (or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid network `{s}`: {why}");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IP address such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0-{max}")))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

string_serde!(Cidr, "a network such as `10.0.0.0/8`");
string_schema!(Cidr, "Cidr", {
    "description": "An IP network `addr/prefix`, e.g. 10.0.0.0/8 or fd00::/8",
    "type": "string"
});

/// `match.destination` of a TCP route: one network or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cidrs(pub Vec<Cidr>);

impl Cidrs {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl<'de> Deserialize<'de> for Cidrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_or_many(
            d,
            "a network such as 10.0.0.0/8, or a list of them",
            "an empty list matches nothing; leave `destination` out to match any",
        )
        .map(Cidrs)
    }
}

impl Serialize for Cidrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_one_or_many(&self.0, s)
    }
}

impl schemars::JsonSchema for Cidrs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidrs".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An IP network (10.0.0.0/8) or a list of them",
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" }, "minItems": 1 }
            ]
        })
    }
}
