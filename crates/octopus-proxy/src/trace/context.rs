//! W3C trace context (`traceparent`) and B3 single-header (`b3`) parsing, and the
//! `traceparent` octopus sends upstream.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const B3: &str = "b3";

/// The parent a request arrived with: the caller's trace and span, and its sampling
/// decision (`None`: the caller left it to us, B3's "no decision").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: Option<bool>,
}

/// The caller's trace context: `traceparent` when valid, else a `b3` single header.
pub fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut tp = headers.get_all(TRACEPARENT).iter();
    // More than one traceparent is invalid: treat as none (W3C: restart the trace).
    if let (Some(v), None) = (tp.next(), tp.next()) {
        if let Some(p) = parse_traceparent(v.as_bytes()) {
            return Some(p);
        }
    }
    headers.get(B3).and_then(|v| parse_b3(v.as_bytes()))
}

fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    // version "-" trace-id "-" parent-id "-" flags; later versions may append fields.
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = hex_array::<1>(&v[0..2])?;
    if version[0] == 0xff || (version[0] == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex_array::<16>(&v[3..35])?;
    let span_id = hex_array::<8>(&v[36..52])?;
    let flags = hex_array::<1>(&v[53..55])?;
    valid(trace_id, span_id)?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags[0] & 1 == 1),
    })
}

/// `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`; a 64-bit trace id is
/// widened to 128 bits. A bare sampling state (`0`, `1`, `d`) carries no parent.
fn parse_b3(v: &[u8]) -> Option<Parent> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some("1") | Some("d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 => trace_id = hex_array::<16>(trace.as_bytes())?,
        16 => trace_id[8..].copy_from_slice(&hex_array::<8>(trace.as_bytes())?),
        _ => return None,
    }
    let span_id = hex_array::<8>(span.as_bytes())?;
    valid(trace_id, span_id)?;
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

fn valid(trace_id: [u8; 16], span_id: [u8; 8]) -> Option<()> {
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(())
}

fn hex_array<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // W3C: lower-case only
        };
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `00-{trace}-{span}-01`: the context an upstream try continues (always sampled:
/// octopus only sends its own span ids for traces it records).
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> HeaderValue {
    let text = format!("00-{}-{}-01", hex(trace_id), hex(span_id));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// New random ids, never all zeros.
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parent(&headers(&[(TRACEPARENT, tp)])).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.sampled, Some(true));
        let unsampled = tp.replace("-01", "-00");
        assert_eq!(
            parent(&headers(&[(TRACEPARENT, &unsampled)]))
                .unwrap()
                .sampled,
            Some(false)
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(parent(&headers(&[(TRACEPARENT, bad)])), None, "{bad}");
        }
        // A later version may append fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz";
        assert!(parent(&headers(&[(TRACEPARENT, v1)])).is_some());
        // Two traceparents: invalid, and no b3 either.
        assert_eq!(
            parent(&headers(&[(TRACEPARENT, tp), (TRACEPARENT, tp)])),
            None
        );
    }

    #[test]
    fn b3_single_header_is_accepted() {
        let p = parent(&headers(&[(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(hex(&p.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(hex(&p.span_id), "e457b5a2e4d86bd1");
        assert_eq!(p.sampled, Some(true));
        let short = parent(&headers(&[(B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")])).unwrap();
        assert_eq!(hex(&short.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(short.sampled, Some(false));
        let undecided = parent(&headers(&[(B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1")])).unwrap();
        assert_eq!(undecided.sampled, None);
        assert_eq!(parent(&headers(&[(B3, "1")])), None);
        // traceparent wins over b3.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let both = parent(&headers(&[
            (TRACEPARENT, tp),
            (B3, "64fe8b2a57d3eff7-e457b5a2e4d86bd1"),
        ]));
        assert_eq!(hex(&both.unwrap().span_id), "00f067aa0ba902b7");
    }

    #[test]
    fn traceparent_round_trips() {
        let (t, s) = (new_trace_id(), new_span_id());
        let v = traceparent(&t, &s);
        let p = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!((p.trace_id, p.span_id, p.sampled), (t, s, Some(true)));
    }
}
