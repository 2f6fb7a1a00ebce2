//! Bounded outbound HTTP for the revocation checks (OCSP responders, CRL
//! distribution points): http:// only, a time limit over the whole fetch, a size
//! limit on the body, no proxy, redirects followed only to the same host and port
//! (at most three), and every address resolved here, checked, pinned and compared with the
//! address actually connected to. Private, loopback and link-local addresses are
//! refused unless the allow-list names them.
//!
//! Small on purpose, so it can be folded into one fetcher with the AIA chain
//! completion fetcher of `certkeeper-connect`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Limits of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Over resolution, connection, redirects and body together.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Non-public addresses that may be fetched from anyway.
    pub allow_private: Vec<IpNet>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            timeout: Duration::from_secs(5),
            max_bytes: 8 * 1024 * 1024,
            allow_private: Vec::new(),
        }
    }
}

/// Why a fetch gave no body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Not an `http://` URL with a host.
    #[error("not fetched: {0} (only http:// URLs are fetched)")]
    Url(String),
    /// The name did not resolve.
    #[error("name lookup of {host} failed: {reason}")]
    Resolve { host: String, reason: String },
    /// Every address of the host is non-public and none is allowed.
    #[error("{ip} is a {class} address and not in the allow-list")]
    Refused { ip: IpAddr, class: &'static str },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection went somewhere else than the checked address.
    #[error("connected to {got}, not the checked address {want}")]
    AddressChanged { want: SocketAddr, got: String },
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("redirected to another host: {0}")]
    RedirectOffHost(String),
    #[error("more than 3 redirects")]
    TooManyRedirects,
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// GET, or POST with a body of a content type.
#[derive(Debug, Clone)]
pub enum Method<'a> {
    Get,
    Post {
        content_type: &'static str,
        body: &'a [u8],
    },
}

/// What kind of non-public address `ip` is; `None` for a public address.
pub fn address_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_class(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// Whether `policy` lets a fetch connect to `ip`.
fn check_address(ip: IpAddr, policy: &FetchPolicy) -> Result<(), FetchError> {
    match address_class(ip) {
        Some(class) if !policy.allow_private.iter().any(|n| n.contains(&ip)) => {
            Err(FetchError::Refused { ip, class })
        }
        _ => Ok(()),
    }
}

/// Fetch `url` under `policy`, returning the body of a 2xx answer.
pub async fn fetch(
    url: &str,
    method: Method<'_>,
    policy: &FetchPolicy,
) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(policy.timeout, fetch_inner(url, method, policy))
        .await
        .unwrap_or(Err(FetchError::Timeout(policy.timeout)))
}

async fn fetch_inner(
    url: &str,
    method: Method<'_>,
    policy: &FetchPolicy,
) -> Result<Vec<u8>, FetchError> {
    let mut url = reqwest::Url::parse(url).map_err(|e| FetchError::Url(format!("{url}: {e}")))?;
    let first_host = host_of(&url)?;
    for _ in 0..=3 {
        let addr = pinned_address(&url, policy).await?;
        let resp = send(&url, addr, &method, policy).await?;
        match resp.remote_addr() {
            Some(got) if got == addr => {}
            got => {
                return Err(FetchError::AddressChanged {
                    want: addr,
                    got: got.map_or_else(|| "an unknown address".into(), |g| g.to_string()),
                });
            }
        }
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::Status(status.as_u16()))?;
            let next = url
                .join(to)
                .map_err(|_| FetchError::RedirectOffHost(to.to_string()))?;
            if next.scheme() != "http" || host_of(&next)? != first_host {
                return Err(FetchError::RedirectOffHost(next.to_string()));
            }
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        return read_body(resp, policy.max_bytes).await;
    }
    Err(FetchError::TooManyRedirects)
}

/// `host:port` of an http URL, lower-cased.
fn host_of(url: &reqwest::Url) -> Result<String, FetchError> {
    if url.scheme() != "http" {
        return Err(FetchError::Url(url.to_string()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| FetchError::Url(url.to_string()))?;
    Ok(format!(
        "{}:{}",
        host.to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(80)
    ))
}

/// The URL's host: an address literal, or a name to resolve.
fn host_kind(url: &reqwest::Url) -> Option<Result<IpAddr, &str>> {
    let h = url.host_str()?;
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    Some(bare.parse::<IpAddr>().map_err(|_| h))
}

/// Resolve the URL's host and pick the first address the policy allows.
async fn pinned_address(
    url: &reqwest::Url,
    policy: &FetchPolicy,
) -> Result<SocketAddr, FetchError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host_kind(url) {
        Some(Ok(ip)) => vec![SocketAddr::new(ip, port)],
        Some(Err(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| FetchError::Resolve {
                host: name.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
        None => return Err(FetchError::Url(url.to_string())),
    };
    let mut refused = None;
    for a in &addrs {
        match check_address(a.ip(), policy) {
            Ok(()) => return Ok(*a),
            Err(e) => refused = refused.or(Some(e)),
        }
    }
    Err(refused.unwrap_or_else(|| FetchError::Resolve {
        host: url.host_str().unwrap_or_default().to_string(),
        reason: "no addresses".into(),
    }))
}

async fn send(
    url: &reqwest::Url,
    addr: SocketAddr,
    method: &Method<'_>,
    policy: &FetchPolicy,
) -> Result<reqwest::Response, FetchError> {
    // http:// only, so TLS is never used; reqwest still wants a configuration.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FetchError::Connect(e.to_string()))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")));
    if let Some(Err(name)) = host_kind(url) {
        // Connect to the address checked above, not to a second lookup's answer.
        builder = builder.resolve(name, addr);
    }
    let client = builder
        .build()
        .map_err(|e| FetchError::Connect(e.to_string()))?;
    let req = match method {
        Method::Get => client.get(url.clone()),
        Method::Post { content_type, body } => client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, *content_type)
            .body(body.to_vec()),
    };
    req.send().await.map_err(|e| {
        if e.is_timeout() {
            FetchError::Timeout(policy.timeout)
        } else {
            FetchError::Connect(without_url(&e))
        }
    })
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, FetchError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Connect(without_url(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_classified() {
        for (ip, class) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.20.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fd00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("93.184.215.14", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(address_class(ip.parse().unwrap()), class, "{ip}");
        }
        let mut p = FetchPolicy::default();
        assert!(check_address("127.0.0.1".parse().unwrap(), &p).is_err());
        p.allow_private = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(check_address("127.0.0.1".parse().unwrap(), &p).is_ok());
        assert!(check_address("10.0.0.1".parse().unwrap(), &p).is_err());
    }
}
