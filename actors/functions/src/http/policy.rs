//! What `ctx.http.fetch` may reach, decided without any I/O: the manifest's allow rules, the
//! classification of addresses a function must not reach by default (loopback, private,
//! link-local, multicast, cloud metadata…), and the operator's CIDR allowances that open them.
//!
//! The client (`http::client`) applies these to every hop of a request: the allow rules to each
//! URL (the first and every redirect), the address rules to every IP literal and to every address
//! a name resolves to at connect time, so a DNS answer that changes between check and connect
//! cannot slip past them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// One `[http] allow` entry: scheme, host (or `*.domain` for its subdomains), port and path.
/// A path ending in `*` is a prefix; any other path must match exactly; no path allows every path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRule {
    /// The entry as written, for messages.
    pub text: String,
    pub scheme: String,
    /// Lower-case host; with `subdomains`, the domain whose subdomains match (not itself).
    pub host: String,
    pub subdomains: bool,
    pub port: u16,
    pub path: PathRule,
}

/// The path part of an [`AllowRule`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathRule {
    Any,
    Prefix(String),
    Exact(String),
}

impl AllowRule {
    /// Parses `https://api.example.com/v1/*`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} must start with https:// or http://"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(format!(
                "{text:?}: scheme {scheme:?} is not allowed (https or http)"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: user names and passwords are not allowed in URLs"
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!("{text:?}: a rule has no query or fragment"));
        }
        let (subdomains, authority) = match authority.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, authority),
        };
        // The host and port as the URL parser sees them (IDNA, IPv6 brackets, default ports).
        let url = Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| format!("{text:?}: not a valid host and port: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty() && !h.contains('*'))
            .ok_or_else(|| format!("{text:?}: no host (use a name like api.example.com)"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{text:?}: no port"))?;
        let path = match path {
            "" | "/*" | "*" => PathRule::Any,
            p if p.contains('*') && !p.ends_with('*') || p.matches('*').count() > 1 => {
                return Err(format!(
                    "{text:?}: `*` may only end the path (a prefix), as in /v1/*"
                ));
            }
            p => match p.strip_suffix('*') {
                Some(prefix) => PathRule::Prefix(prefix.to_string()),
                None => PathRule::Exact(p.to_string()),
            },
        };
        Ok(Self {
            text: text.to_string(),
            scheme,
            host,
            subdomains,
            port,
            path,
        })
    }

    /// Whether `url` is inside this rule.
    pub fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host_ok = if self.subdomains {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        };
        host_ok
            && url.scheme() == self.scheme
            && url.port_or_known_default() == Some(self.port)
            && match &self.path {
                PathRule::Any => true,
                PathRule::Prefix(prefix) => url.path().starts_with(prefix.as_str()),
                PathRule::Exact(path) => url.path() == path,
            }
    }
}

/// Checks `url` against the allow rules; the refusal names the URL (without its query) and the
/// rules, so the author sees what to add.
pub fn check_url(rules: &[AllowRule], url: &Url) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{}: user names and passwords are not allowed in URLs; send credentials in a header \
             ({{secret: \"NAME\"}})",
            redact(url)
        ));
    }
    if rules.iter().any(|rule| rule.matches(url)) {
        return Ok(());
    }
    let listed = if rules.is_empty() {
        "none".to_string()
    } else {
        rules
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{} is outside the [http] allow list of klf.toml (allowed: {listed})",
        redact(url)
    ))
}

/// The URL as spans, logs and errors show it: no user info, and the query's values replaced by
/// `REDACTED` (query strings carry API keys).
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    if shown.query().is_some() {
        let names: Vec<String> = shown
            .query_pairs()
            .map(|(name, _)| format!("{name}=REDACTED"))
            .collect();
        shown.set_query(Some(&names.join("&")));
    }
    shown.to_string()
}

/// A CIDR block the operator opened (`klf up --http-allow 10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (one host).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR block like 10.0.0.0/8 or ::1/128"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }

    /// Every block in a comma-separated list (`KLF_HTTP_ALLOW`).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// An IPv4 address carried in IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) as the
/// IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Cloud metadata endpoints (AWS, GCP, Azure, OpenStack; ECS task metadata; Alibaba; AWS IPv6).
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why a function may not reach `ip` by default, or `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if METADATA_V4.contains(&v4) {
                Some("cloud metadata")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified (this network)")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || a >= 240 {
                Some("reserved")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("benchmarking")
            } else if a == 192 && b == 0 && v4.octets()[2] == 0 {
                Some("protocol assignments")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6 == METADATA_V6 {
                Some("cloud metadata")
            } else if v6.is_unspecified() {
                Some("unspecified (this network)")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else if first == 0x2001 && v6.segments()[1] == 0xdb8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

/// The operator's allowances: addresses inside any of these blocks may be reached even when
/// [`classify`] says they are not public. Only the node's configuration sets them, never a
/// manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// `Ok` when `ip` may be reached; else what it is and how the operator could open it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|cidr| cidr.contains(ip)) {
            return Ok(());
        }
        let single = if canonical(ip).is_ipv4() { 32 } else { 128 };
        Err(format!(
            "{ip} is a {class} address, which functions may not reach unless the node's \
             operator opens it (klf up --http-allow {}/{single})",
            canonical(ip)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_match_scheme_host_port_and_path_prefix() {
        let rule = AllowRule::parse("https://api.example.com/v1/*").unwrap();
        assert!(rule.matches(&url("https://api.example.com/v1/prices?s=BTC")));
        assert!(rule.matches(&url("https://API.example.com:443/v1/")));
        assert!(!rule.matches(&url("https://api.example.com/v2/prices")));
        assert!(!rule.matches(&url("http://api.example.com/v1/prices")));
        assert!(!rule.matches(&url("https://api.example.com:8443/v1/prices")));
        assert!(!rule.matches(&url("https://api.example.com.evil.net/v1/x")));
        assert!(!rule.matches(&url("https://evilapi.example.com/v1/x")));

        let exact = AllowRule::parse("http://127.0.0.1:8080/feed").unwrap();
        assert!(exact.matches(&url("http://127.0.0.1:8080/feed")));
        assert!(!exact.matches(&url("http://127.0.0.1:8080/feed/more")));

        let any = AllowRule::parse("https://*.example.com").unwrap();
        assert!(any.matches(&url("https://a.b.example.com/anything")));
        assert!(!any.matches(&url("https://example.com/")));
        assert!(!any.matches(&url("https://badexample.com/")));

        let v6 = AllowRule::parse("http://[::1]:9000/*").unwrap();
        assert!(v6.matches(&url("http://[::1]:9000/x")));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, expected) in [
            ("api.example.com", "must start with"),
            ("ftp://x.com/", "not allowed"),
            ("https://user:pw@x.com/", "passwords"),
            ("https://x.com/a*/b", "may only end"),
            ("https://x.com/a?q=1", "no query"),
            ("https:///x", "host"),
        ] {
            let error = AllowRule::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_refusal_names_the_url_without_its_secrets_and_the_rules() {
        let rules = vec![AllowRule::parse("https://api.example.com/v1/*").unwrap()];
        let error = check_url(&rules, &url("https://other.com/x?key=sk-123")).unwrap_err();
        assert!(
            error.contains("https://other.com/x?key=REDACTED"),
            "{error}"
        );
        assert!(
            error.contains("allowed: https://api.example.com/v1/*"),
            "{error}"
        );
        assert!(!error.contains("sk-123"));
        let error = check_url(&rules, &url("https://u:p@api.example.com/v1/x")).unwrap_err();
        assert!(error.contains("passwords"), "{error}");
        assert!(check_url(&rules, &url("https://api.example.com/v1/x")).is_ok());
    }

    #[test]
    fn addresses_are_classified() {
        for (text, class) in [
            ("127.0.0.1", Some("loopback")),
            ("127.8.9.10", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("100.100.100.200", Some("cloud metadata")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified (this network)")),
            ("255.255.255.255", Some("reserved")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified (this network)")),
            ("fd00::1", Some("private (unique local)")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("64:ff9b::10.0.0.1", Some("private")),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(classify(ip(text)), class, "{text}");
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let block = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(block.contains(ip("10.200.1.1")));
        assert!(!block.contains(ip("11.0.0.1")));
        assert!(block.contains(ip("::ffff:10.0.0.1")));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let odd = Cidr::parse("172.16.0.0/12").unwrap();
        assert!(odd.contains(ip("172.31.255.255")) && !odd.contains(ip("172.32.0.0")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert_eq!(Cidr::parse_list("127.0.0.1/32, ::1/128,").unwrap().len(), 2);
    }

    #[test]
    fn only_the_operator_opens_a_private_range() {
        let closed = AddressPolicy::default();
        let error = closed.check(ip("127.0.0.1")).unwrap_err();
        assert!(error.contains("loopback"), "{error}");
        assert!(error.contains("--http-allow 127.0.0.1/32"), "{error}");
        assert!(closed.check(ip("93.184.216.34")).is_ok());
        let open = AddressPolicy::new(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
        assert!(open.check(ip("127.0.0.1")).is_ok());
        assert!(open.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(open.check(ip("169.254.169.254")).is_err());
    }
}
