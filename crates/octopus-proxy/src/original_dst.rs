//! The destination a captured connection was made to. `octopus init`'s iptables
//! REDIRECT rules rewrite a pod's TCP connections to octopus' listeners; conntrack
//! remembers where each was going, and `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6) reads it back (through `nix`: no unsafe code here).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

/// Where the client meant to go, when that is not the listener itself: `None` for a
/// connection made straight to the listener (no REDIRECT applied: conntrack records
/// the listener's own port) or when the kernel keeps no record (conntrack not
/// loaded). Judged by the port alone, so the accept path needs no getsockname: a
/// captured connection to some other host's port equal to the listener's is taken
/// for a direct one (docs/configuration.md asks to keep octopus' ports free in the
/// mesh, as Istio reserves its own).
pub fn original_dst<S: AsFd>(socket: &S, listener: SocketAddr) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
    let v4 = || {
        getsockopt(socket, sockopt::OriginalDst)
            .ok()
            .map(|a| SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(a))))
    };
    let v6 = || {
        getsockopt(socket, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|a| SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(a))))
    };
    // One syscall on an IPv4 listener; an IPv6 (dual-stack) listener's IPv4 clients
    // have their record on the IPv4 side.
    let dst = match listener {
        SocketAddr::V4(_) => v4()?,
        SocketAddr::V6(_) => v6().or_else(v4)?,
    };
    let dst = canonical(dst);
    (dst.port() != listener.port()).then_some(dst)
}

/// `::ffff:a.b.c.d` as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without a REDIRECT the kernel either has no record or names the listener.
        assert_eq!(original_dst(&s, addr), None);
    }
}
