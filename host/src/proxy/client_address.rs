//! The client's address behind trusted proxies (`proxy.trusted-proxies`).
//!
//! Spawner never believes a client's `X-Forwarded-For` (it could name any
//! address), so behind a TLS terminator, a load balancer or an Ingress
//! controller every backend saw that proxy's address. When the TCP peer is
//! one of the trusted proxies, the client is read from the header the way
//! nginx's `real_ip_recursive` does: from the right, past every trusted
//! address, the first address that is not trusted. Only that one address
//! goes on to the backend (`X-Forwarded-For`, `X-Real-IP`): the entries to
//! its left are whatever the client sent, and a backend that read the
//! leftmost would be fooled.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use serde::Deserialize;

/// Addresses and ranges whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TrustedProxies(Vec<IpNet>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    fn try_from(items: Vec<String>) -> Result<Self, String> {
        items.iter().filter(|i| !i.trim().is_empty()).map(|i| parse(i.trim())).collect::<Result<_, _>>().map(TrustedProxies)
    }
}

/// One address (`10.1.2.3`, a range of one) or range (`10.0.0.0/8`).
fn parse(item: &str) -> Result<IpNet, String> {
    item.parse::<IpNet>()
        .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{item:?} is neither an address nor a range of them (10.0.0.0/8, 192.168.1.10, fd00::/8)"))
}

impl TrustedProxies {
    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why these are too wide to be only the proxies in front, if they
    /// are: every address (anyone can say who they are), or the loopback
    /// address every local process connects from (backends included, in
    /// local mode) when the proxy does too.
    pub fn too_wide(&self) -> Option<String> {
        if self.0.iter().any(|net| net.prefix_len() == 0) {
            return Some("trusted-proxies holds every address (/0): any client can then say who it is in X-Forwarded-For; name only the proxies in front".into());
        }
        let loopback = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
        loopback.iter().any(|ip| self.trusts(*ip)).then(|| {
            "trusted-proxies holds 127.0.0.1 (or ::1), which every process on this machine connects from, backends included: any of them can then tell backends any client address; have the proxy in front connect from an address of its own (nginx: proxy_bind 127.0.0.2;) and trust only that".into()
        })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer`'s own unless `peer` is trusted, else
    /// the nearest untrusted address `X-Forwarded-For` names (the farthest
    /// one it names when all are trusted; `peer` when it names none that
    /// parses before the first that does not).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        // Several headers are one list, in order (RFC 9110, 5.3). Split as
        // bytes: a proxy appends its entry to the client's on one line, and
        // a byte that is not ASCII in the client's part must not cost the
        // whole line (the walk would then end at the trusted peer).
        let listed: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .collect();
        for entry in listed.iter().rev() {
            match std::str::from_utf8(entry).ok().and_then(address) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // Garbage from here leftwards is the client's doing.
                None => break,
            }
        }
        client
    }
}

/// An entry's address: `1.2.3.4`, `2001:db8::1`, or with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:5678`), which some proxies add.
fn address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.trim_start_matches('[').trim_end_matches(']').parse().ok())
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(items: &[&str]) -> TrustedProxies {
        TrustedProxies::try_from(items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn client(t: &TrustedProxies, peer: &str, xff: &[&str]) -> String {
        client_of_bytes(t, peer, &xff.iter().map(|v| v.as_bytes()).collect::<Vec<_>>())
    }

    fn client_of_bytes(t: &TrustedProxies, peer: &str, xff: &[&[u8]]) -> String {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", http::HeaderValue::from_bytes(v).unwrap());
        }
        t.client(peer.parse().unwrap(), &h).to_string()
    }

    /// A byte that is not ASCII in the client's part of the line (nginx
    /// appends to it) cost the whole line once, and with it the address
    /// the proxy appended: the backend was told the proxy's own address.
    #[test]
    fn bytes_the_client_wrote_do_not_hide_what_the_proxy_appended() {
        let t = trusted(&["127.0.0.0/8"]);
        assert_eq!(client_of_bytes(&t, "127.0.0.1", &[b"\xc3\xa9, 8.8.8.8"]), "8.8.8.8");
        assert_eq!(client_of_bytes(&t, "127.0.0.1", &[b"8.8.8.8, \xff"]), "127.0.0.1", "garbage nearest: the peer");
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_only_up_to_the_first_untrusted_address() {
        let none = TrustedProxies::default();
        assert_eq!(client(&none, "10.0.0.5", &["6.6.6.6"]), "10.0.0.5", "nothing trusted: the peer");
        let t = trusted(&["10.0.0.0/8", "192.168.1.10"]);
        assert_eq!(client(&t, "203.0.113.9", &["6.6.6.6"]), "203.0.113.9", "an untrusted peer's header is not read");
        assert_eq!(client(&t, "10.0.0.5", &["198.51.100.7"]), "198.51.100.7");
        // The client wrote 6.6.6.6 itself; the terminator appended what it saw.
        assert_eq!(client(&t, "10.0.0.5", &["6.6.6.6, 198.51.100.7"]), "198.51.100.7", "the nearest untrusted");
        assert_eq!(client(&t, "10.0.0.5", &["6.6.6.6, 198.51.100.7, 10.2.3.4"]), "198.51.100.7", "past trusted hops");
        assert_eq!(client(&t, "10.0.0.5", &["6.6.6.6", "198.51.100.7, 192.168.1.10"]), "198.51.100.7", "headers are one list");
        assert_eq!(client(&t, "10.0.0.5", &["10.9.9.9, 10.8.8.8"]), "10.9.9.9", "all trusted: the farthest");
        assert_eq!(client(&t, "10.0.0.5", &[]), "10.0.0.5", "no header: the peer");
        assert_eq!(client(&t, "10.0.0.5", &["6.6.6.6, junk"]), "10.0.0.5", "garbage stops the walk");
        assert_eq!(client(&t, "10.0.0.5", &["junk, 198.51.100.7"]), "198.51.100.7", "after the client's address");
        assert_eq!(client(&t, "10.0.0.5", &["198.51.100.7:4711"]), "198.51.100.7", "with a port");
        assert_eq!(client(&t, "10.0.0.5", &["[2001:db8::1]:4711"]), "2001:db8::1");
        assert_eq!(client(&t, "::ffff:10.0.0.5", &["198.51.100.7"]), "198.51.100.7", "a v4 peer on a v6 listener");
    }

    #[test]
    fn entries_are_addresses_or_ranges() {
        assert_eq!(trusted(&["10.1.2.3/8", " 127.0.0.1 ", ""]), trusted(&["10.0.0.0/8", "127.0.0.1/32"]));
        let e = TrustedProxies::try_from(vec!["10.0.0.0/33".to_string()]).unwrap_err();
        assert!(e.contains("\"10.0.0.0/33\" is neither an address nor a range"), "{e}");
    }
}
