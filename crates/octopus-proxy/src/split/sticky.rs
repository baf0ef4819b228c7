//! The sticky-split key and its hash. The hash is fixed (FNV-1a with a 64-bit
//! finaliser) rather than std's, so a user stays on their side across octopus
//! restarts and versions.

use http::{header, Request};
use octopus_config::HashOn;

/// The request's key for `hash_on`, if it carries one.
pub(super) fn key<'a, B>(hash_on: &HashOn, req: &'a Request<B>) -> Option<&'a [u8]> {
    match hash_on {
        HashOn::Header(name) => req.headers().get(name.as_str()).map(|v| v.as_bytes()),
        HashOn::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (k == name.as_bytes()).then(|| &v[1..])
            }),
    }
}

pub(super) fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone leaves similar keys ("user-1", "user-2") close together; the splitmix64
    // finaliser spreads them over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_header_and_cookie_keys() {
        let req = Request::builder()
            .header("x-user", "alice")
            .header("cookie", "theme=dark; session=abc123")
            .header("cookie", "other=1")
            .body(())
            .unwrap();
        assert_eq!(
            key(&"header:X-User".parse().unwrap(), &req),
            Some(&b"alice"[..])
        );
        assert_eq!(
            key(&"cookie:session".parse().unwrap(), &req),
            Some(&b"abc123"[..])
        );
        assert_eq!(key(&"cookie:other".parse().unwrap(), &req), Some(&b"1"[..]));
        assert_eq!(key(&"cookie:sess".parse().unwrap(), &req), None);
        assert_eq!(key(&"header:x-none".parse().unwrap(), &req), None);
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: changing the hash would move every sticky user on upgrade.
        // Values from an independent implementation of FNV-1a + splitmix64.
        assert_eq!(hash(b"alice"), 0xc5d1_556d_6677_4a5c);
        assert_eq!(hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(hash(b"user-1"), hash(b"user-2"));
    }
}
