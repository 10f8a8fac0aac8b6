//! Where the destination listens when the two hosts run in network namespaces.
//!
//! `hybridmig migrate --src-netns A --dst-netns B` starts each host under `ip netns exec`.
//! Loopback is private to a namespace, so a destination in B listening on `127.0.0.1` cannot
//! be reached from A. This module takes the `--listen` option (or its absence) and the two
//! namespace names, checks the namespaces exist, and returns the address the destination
//! must bind: the given one, or the first global IPv4 address inside B (what
//! `bench-env/netns` puts there) when none was given.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

/// Errors of choosing the destination's listening address.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The named namespace is not in /run/netns.
    #[error("network namespace `{ns}` does not exist (bench-env/netns up veth creates hm-src and hm-dst)")]
    Missing {
        /// The namespace.
        ns: String,
    },
    /// `--listen` is not host:port.
    #[error("--listen `{listen}` is not an IP:port address: {detail}")]
    BadListen {
        /// The option's value.
        listen: String,
        /// The parser's complaint.
        detail: String,
    },
    /// `--listen` is a loopback or wildcard address, unreachable from the other namespace.
    #[error("--listen {listen} cannot be reached from another namespace: the destination runs in `{dst_ns}`, whose loopback is its own; leave --listen out to use `{dst_ns}`'s address, or pass it (e.g. --listen 10.77.0.2:0)")]
    Unreachable {
        /// The option's value.
        listen: SocketAddr,
        /// The destination's namespace.
        dst_ns: String,
    },
    /// Running `ip -n NS addr` failed.
    #[error("listing the addresses of namespace `{ns}` with `ip`: {source}")]
    ListAddresses {
        /// The namespace.
        ns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The namespace has no global IPv4 address.
    #[error("namespace `{ns}` has no global IPv4 address to listen on (pass --listen ADDR:0)")]
    NoAddress {
        /// The namespace.
        ns: String,
    },
}

/// The loopback address the destination uses when both hosts share a namespace.
pub const LOOPBACK_LISTEN: &str = "127.0.0.1:0";

/// Checks that `ns`, if given, exists as a named namespace.
pub fn check_exists(ns: Option<&str>) -> Result<(), NetnsError> {
    match ns {
        Some(ns) if !Path::new("/run/netns").join(ns).exists() => {
            Err(NetnsError::Missing { ns: ns.to_string() })
        }
        _ => Ok(()),
    }
}

/// The address the destination listens on.
///
/// `listen` is the `--listen` option if given. The hosts are apart when the destination has a
/// namespace and the source does not share it; then a loopback or wildcard `listen` is an
/// error, and a missing one becomes port 0 on the destination namespace's first global IPv4
/// address.
pub fn dest_listen_addr(
    listen: Option<&str>,
    src_ns: Option<&str>,
    dst_ns: Option<&str>,
) -> Result<SocketAddr, NetnsError> {
    check_exists(src_ns)?;
    check_exists(dst_ns)?;
    let apart = dst_ns.filter(|d| Some(*d) != src_ns);
    choose(listen, apart, first_global_ipv4)
}

/// [`dest_listen_addr`] once the namespaces are known to exist; `apart` is the destination's
/// namespace when the source is not in it, and `lookup` finds a namespace's address.
fn choose(
    listen: Option<&str>,
    apart: Option<&str>,
    lookup: impl Fn(&str) -> Result<std::net::Ipv4Addr, NetnsError>,
) -> Result<SocketAddr, NetnsError> {
    let Some(listen) = listen else {
        return match apart {
            Some(ns) => Ok(SocketAddr::new(IpAddr::V4(lookup(ns)?), 0)),
            None => parse(LOOPBACK_LISTEN),
        };
    };
    let addr = parse(listen)?;
    match apart {
        Some(ns) if addr.ip().is_loopback() || addr.ip().is_unspecified() => {
            Err(NetnsError::Unreachable { listen: addr, dst_ns: ns.to_string() })
        }
        _ => Ok(addr),
    }
}

fn parse(listen: &str) -> Result<SocketAddr, NetnsError> {
    listen.parse().map_err(|e: std::net::AddrParseError| NetnsError::BadListen {
        listen: listen.to_string(),
        detail: e.to_string(),
    })
}

fn first_global_ipv4(ns: &str) -> Result<std::net::Ipv4Addr, NetnsError> {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map_err(|source| NetnsError::ListAddresses { ns: ns.to_string(), source })?;
    parse_first_ipv4(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| NetnsError::NoAddress { ns: ns.to_string() })
}

/// The first `inet A/len` address in `ip -o addr` output.
fn parse_first_ipv4(ip_output: &str) -> Option<std::net::Ipv4Addr> {
    ip_output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_o_addr() {
        let out = "2: hm-veth1    inet 10.77.0.2/24 scope global hm-veth1\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(parse_first_ipv4(out), Some("10.77.0.2".parse().unwrap()));
        assert_eq!(parse_first_ipv4(""), None);
        assert_eq!(parse_first_ipv4("2: x inet6 fe80::1/64 scope link"), None);
    }

    #[test]
    fn loopback_without_namespaces() {
        assert_eq!(dest_listen_addr(None, None, None).unwrap(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            dest_listen_addr(Some("127.0.0.1:4000"), None, None).unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert!(matches!(
            dest_listen_addr(Some("localhost"), None, None),
            Err(NetnsError::BadListen { .. })
        ));
    }

    #[test]
    fn apart_hosts_need_a_routable_address() {
        let lookup = |_: &str| Ok("10.77.0.2".parse().unwrap());
        assert_eq!(choose(None, Some("d"), lookup).unwrap(), "10.77.0.2:0".parse().unwrap());
        for l in ["127.0.0.1:0", "0.0.0.0:0", "[::1]:0"] {
            assert!(
                matches!(choose(Some(l), Some("d"), lookup), Err(NetnsError::Unreachable { .. })),
                "{l}"
            );
        }
        assert_eq!(
            choose(Some("10.77.0.2:5000"), Some("d"), lookup).unwrap(),
            "10.77.0.2:5000".parse().unwrap()
        );
        // Both hosts in one namespace share its loopback.
        assert_eq!(choose(None, None, lookup).unwrap(), "127.0.0.1:0".parse().unwrap());
        let none = |ns: &str| Err(NetnsError::NoAddress { ns: ns.to_string() });
        assert!(matches!(choose(None, Some("d"), none), Err(NetnsError::NoAddress { .. })));
    }

    #[test]
    fn missing_namespace_is_named() {
        let err = dest_listen_addr(None, None, Some("hm-no-such-namespace-xyz")).unwrap_err();
        assert!(err.to_string().contains("hm-no-such-namespace-xyz"), "{err}");
    }
}
