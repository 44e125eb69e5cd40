//! SSRF guard for every outbound request the gateway makes to a user-supplied URL (webhooks now, media fetch
//! later): resolve, check every address, then connect only to checked addresses. The check runs inside the
//! HTTP client's resolver, so there is no window between the check and the connect (no DNS rebinding), and a
//! literal-IP URL is checked before the request. Redirects are never followed (the client has none).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// An address block, e.g. `127.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| format!("{s:?} is not an address block (like 127.0.0.0/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(Cidr { net, prefix })
    }

    /// A comma-separated list; empty entries are ignored.
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Cidr::parse)
            .collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<Cidr>,
    /// The setting named in refusals (None: the webhook one).
    setting: Option<&'static str>,
}

/// The address is IPv4 in disguise (mapped `::ffff:a.b.c.d`, or NAT64 `64:ff9b::a.b.c.d`): check the IPv4.
fn unwrap_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            ip
        }
        v4 => v4,
    }
}

/// Why an address is refused by default, or None when it is a public address.
fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() {
                Some("private")
            } else if a.is_link_local() {
                // 169.254.169.254 (cloud metadata) is here.
                Some("link-local")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("carrier-grade NAT")
            } else if a.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if a.is_broadcast() || a.is_multicast() || o[0] >= 240 {
                Some("reserved")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("IETF protocol assignments")
            } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
                Some("benchmarking")
            } else if a.is_documentation() {
                Some("documentation")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_unspecified() {
                Some("unspecified")
            } else if (s0 & 0xfe00) == 0xfc00 {
                // fd00:ec2::254 (cloud metadata over IPv6) is here.
                Some("unique-local")
            } else if (s0 & 0xffc0) == 0xfe80 || (s0 & 0xffc0) == 0xfec0 {
                Some("link-local")
            } else if a.is_multicast() {
                Some("reserved")
            } else if a.segments()[..6] == [0, 0, 0, 0, 0, 0] {
                // IPv4-compatible (deprecated) addresses: no legitimate receiver uses them.
                Some("IPv4-compatible")
            } else if s0 == 0x2001 && a.segments()[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

impl Guard {
    pub fn new(allow: Vec<Cidr>) -> Guard {
        Guard {
            allow,
            setting: None,
        }
    }

    /// Names `setting` (e.g. WHATISUP_MEDIA_ALLOW_CIDRS) in refusals.
    pub fn for_setting(mut self, setting: &'static str) -> Guard {
        self.setting = Some(setting);
        self
    }

    /// Ok when requests may go to `ip`; otherwise why not.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let real = unwrap_v4(ip);
        if self
            .allow
            .iter()
            .any(|c| c.contains(real) || c.contains(ip))
        {
            return Ok(());
        }
        match refused_kind(real) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address (allow it with {})",
                self.setting.unwrap_or("WHATISUP_WEBHOOK_ALLOW_CIDRS")
            )),
        }
    }

    /// Checks a URL's form and, when its host is a literal address, that address. Names are checked when they
    /// are resolved (`resolve`).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err("only http and https URLs are allowed".into());
        }
        let host = literal_or_name(&u).ok_or("the URL has no host")?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(u)
    }

    /// Resolves `host` and keeps only the addresses requests may go to; an error when none is left.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, 0)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("{host} could not be resolved: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        let mut refused = None;
        let ok: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (ok.is_empty(), refused) {
            (true, Some(e)) => Err(format!("{host} resolves to a refused address: {e}")),
            (true, None) => Err(format!("{host} resolves to no address")),
            _ => Ok(ok),
        }
    }

    /// Checks a URL completely (form, then every address its host resolves to), as at endpoint creation.
    pub async fn check_url_resolved(&self, url: &str) -> Result<reqwest::Url, String> {
        let u = self.check_url(url)?;
        if let Some(host) = literal_or_name(&u)
            && host.parse::<IpAddr>().is_err()
        {
            self.resolve(host).await?;
        }
        Ok(u)
    }
}

/// The HTTP client's resolver: hands reqwest only addresses the guard accepted, so the connection goes to a
/// checked address.
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = guard
                .resolve(&host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The URL's host without IPv6 brackets.
fn literal_or_name(u: &reqwest::Url) -> Option<&str> {
    u.host_str()
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(g: &Guard, s: &str) -> bool {
        g.check_ip(s.parse().expect("ip")).is_err()
    }

    #[test]
    fn refuses_internal_addresses_by_default() {
        let g = Guard::default();
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(refused(&g, a), "{a} must be refused");
        }
        for a in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(!refused(&g, a), "{a} is public");
        }
    }

    #[test]
    fn allowlist_opens_blocks_including_mapped_forms() {
        let g = Guard::new(Cidr::parse_list("127.0.0.0/8, fd00::/8").expect("cidrs"));
        assert!(!refused(&g, "127.0.0.1"));
        assert!(!refused(&g, "127.9.9.9"));
        assert!(!refused(&g, "::ffff:127.0.0.1"));
        assert!(!refused(&g, "fd12::1"));
        assert!(refused(&g, "10.0.0.1"));
        assert!(refused(&g, "::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
    }

    #[test]
    fn urls() {
        let g = Guard::default();
        assert!(g.check_url("ftp://example.com/").is_err());
        assert!(g.check_url("http://[::1]:8080/").is_err());
        assert!(g.check_url("http://[::ffff:127.0.0.1]/").is_err());
        assert!(g.check_url("http://169.254.169.254/latest").is_err());
        assert!(g.check_url("https://example.com/hook").is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_refused() {
        let g = Guard::default();
        assert!(g.check_url_resolved("http://localhost:1/").await.is_err());
    }
}
