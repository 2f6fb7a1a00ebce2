//! Outbound fetches of public objects (CA-issuer certificates from AIA URLs), under
//! rules that keep a certificate's URL from pointing the server somewhere it should
//! not go:
//!
//! - `http` and `https` only;
//! - no redirects at all: a 3xx answer is an error naming where it pointed (a
//!   same-host redirect would be harmless, but CA-issuer URLs are plain, stable paths
//!   and refusing every redirect leaves nothing to get wrong);
//! - the host is resolved once, every address is checked against the private,
//!   loopback, link-local and reserved ranges (unless an allow-list names it), and the
//!   connection is pinned to the checked addresses; the address actually connected to
//!   is checked again on the response (no DNS-rebinding gap);
//! - the body is cut off past `max_bytes`, the whole fetch past `timeout`;
//! - https is verified against the platform's trust store plus the operator's
//!   `[fetch] ca_files` (an internal CA's AIA server); an untrusted certificate is its
//!   own error (`fetch_tls_untrusted`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// What a fetch may do. Passed as a value from the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Ranges that would otherwise be refused as private (say `127.0.0.0/8` in tests,
    /// or an internal CA's `10.1.2.0/24`).
    pub allow_private: Vec<IpNet>,
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
    /// Longest time for one fetch: resolution, connection, headers and body.
    pub timeout: Duration,
    /// Roots trusted for https besides the platform's (`[fetch] ca_files`).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            allow_private: Vec::new(),
            max_bytes: 256 * 1024,
            timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
        }
    }
}

/// The certificates of PEM files (`[fetch] ca_files`), each file holding at least one.
pub fn read_ca_files(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for path in paths {
        let before = out.len();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("[fetch] ca_files: {}: {e}", path.display()))?;
        for c in certs {
            out.push(c.map_err(|e| format!("[fetch] ca_files: {}: {e}", path.display()))?);
        }
        if out.len() == before {
            return Err(format!(
                "[fetch] ca_files: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// Why a fetch was refused or failed. Each case has a stable code for the API.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FetchError {
    /// Not a URL, or no host.
    #[error("{url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    /// A scheme other than http or https.
    #[error("{url}: only http and https URLs are fetched, not {scheme}")]
    SchemeNotAllowed { url: String, scheme: String },
    /// The host resolves to (or is) an address in a refused range.
    #[error(
        "{url}: {addr} is a private, loopback, link-local or reserved address (allow it with [fetch] allow_private)"
    )]
    PrivateAddress { url: String, addr: IpAddr },
    /// The host does not resolve.
    #[error("{url}: the host does not resolve: {reason}")]
    Resolve { url: String, reason: String },
    /// The server answered with a redirect; redirects are never followed.
    #[error("{url}: redirected to {location}; redirects are not followed")]
    Redirect { url: String, location: String },
    /// The server answered with an error status.
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    /// The body is larger than allowed.
    #[error("{url}: the answer is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    /// The fetch took longer than allowed.
    #[error("{url}: no complete answer within {secs:.1} s")]
    Timeout { url: String, secs: f64 },
    /// The https server's certificate does not chain to a trusted root.
    #[error(
        "{url}: the server's TLS certificate is not trusted ({reason}); trust its CA with [fetch] ca_files"
    )]
    TlsUntrusted { url: String, reason: String },
    /// Connection or protocol failure.
    #[error("{url}: {reason}")]
    Connect { url: String, reason: String },
}

impl FetchError {
    /// The stable error code the API sends.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "fetch_bad_url",
            FetchError::SchemeNotAllowed { .. } => "fetch_scheme_not_allowed",
            FetchError::PrivateAddress { .. } => "fetch_private_address",
            FetchError::Resolve { .. } => "fetch_unresolvable",
            FetchError::Redirect { .. } => "fetch_redirect_refused",
            FetchError::Status { .. } => "fetch_http_status",
            FetchError::TooLarge { .. } => "fetch_too_large",
            FetchError::Timeout { .. } => "fetch_timeout",
            FetchError::TlsUntrusted { .. } => "fetch_tls_untrusted",
            FetchError::Connect { .. } => "fetch_failed",
        }
    }
}

/// Whether `ip` is in a range an outbound fetch must not reach by default: private
/// (RFC 1918, unique local), loopback, link-local, shared (CGNAT), unspecified,
/// multicast, broadcast, benchmarking and other reserved space.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 could reach anything
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        }
    }
}

impl FetchPolicy {
    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        !is_private(ip) || self.allow_private.iter().any(|n| n.contains(&ip))
    }
}

/// Fetch `url` under `policy`; the body on a 2xx answer.
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Vec<u8>, FetchError> {
    let secs = policy.timeout.as_secs_f64();
    match tokio::time::timeout(policy.timeout, fetch_inner(url, policy)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout {
            url: url.to_string(),
            secs,
        }),
    }
}

async fn fetch_inner(url: &str, policy: &FetchPolicy) -> Result<Vec<u8>, FetchError> {
    let u = url.to_string();
    let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::BadUrl {
        url: u.clone(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(FetchError::SchemeNotAllowed {
                url: u,
                scheme: other.to_string(),
            });
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FetchError::BadUrl {
            url: u,
            reason: "credentials in the URL".into(),
        });
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    let connect_err = |e: reqwest::Error| {
        let chain = error_chain(&e);
        // The rustls error, or (when a layer of hyper-util or reqwest boxes it away
        // from `source()`) its message "invalid peer certificate: …".
        let untrusted = match rustls_error(&e) {
            Some(rustls::Error::InvalidCertificate(c)) => Some(c.to_string()),
            _ => chain
                .split_once("invalid peer certificate: ")
                .map(|(_, r)| r.to_string()),
        };
        match untrusted {
            Some(reason) => FetchError::TlsUntrusted {
                url: u.clone(),
                reason,
            },
            None => FetchError::Connect {
                url: u.clone(),
                reason: chain,
            },
        }
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&policy.extra_roots).map_err(|reason| {
            FetchError::Connect {
                url: u.clone(),
                reason,
            }
        })?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout);
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| FetchError::BadUrl {
            url: u.clone(),
            reason: "no host".into(),
        })?
        .to_string();
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    let allowed: Vec<SocketAddr> = match literal {
        Some(ip) => vec![check(&u, policy, ip, port)?],
        None => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| FetchError::Resolve {
                    url: u.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            if addrs.is_empty() {
                return Err(FetchError::Resolve {
                    url: u,
                    reason: "no addresses".into(),
                });
            }
            // Every address must pass: a name that mixes public and private addresses
            // is refused rather than half-trusted.
            for a in &addrs {
                check(&u, policy, a.ip(), port)?;
            }
            // Pin the connection to exactly the addresses checked.
            builder = builder.resolve_to_addrs(&host, &addrs);
            addrs
        }
    };
    let client = builder.build().map_err(connect_err)?;
    let mut resp = client
        .get(parsed.clone())
        .header(
            reqwest::header::ACCEPT,
            "application/pkix-cert, application/pkcs7-mime, */*",
        )
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout {
                    url: u.clone(),
                    secs: policy.timeout.as_secs_f64(),
                }
            } else {
                connect_err(e)
            }
        })?;
    // The address connected to, checked again.
    if let Some(remote) = resp.remote_addr()
        && (!policy.allows(remote.ip()) || !allowed.iter().any(|a| a.ip() == remote.ip()))
    {
        return Err(FetchError::PrivateAddress {
            url: u,
            addr: remote.ip(),
        });
    }
    let status = resp.status();
    if status.is_redirection() {
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(no Location)")
            .to_string();
        return Err(FetchError::Redirect { url: u, location });
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: u,
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: u.clone(),
        max: policy.max_bytes,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > policy.max_bytes as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        if e.is_timeout() {
            FetchError::Timeout {
                url: u.clone(),
                secs: policy.timeout.as_secs_f64(),
            }
        } else {
            connect_err(e)
        }
    })? {
        if body.len() + chunk.len() > policy.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The rustls error behind a failed request, if TLS failed (io::Error hides its
/// inner error from `source()`, so it is opened with `get_ref`).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

/// HTTPS: the platform's trust store plus `extra_roots`, through the process's
/// rustls provider (or aws-lc-rs when none is installed).
fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    use std::sync::Arc;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        provider.clone(),
    )
    .map_err(|e| e.to_string())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

fn check(url: &str, policy: &FetchPolicy, ip: IpAddr, port: u16) -> Result<SocketAddr, FetchError> {
    if policy.allows(ip) {
        Ok(SocketAddr::new(ip, port))
    } else {
        Err(FetchError::PrivateAddress {
            url: url.to_string(),
            addr: ip,
        })
    }
}

/// An error with its sources, for messages ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(good.parse().unwrap()), "{good}");
        }
        let p = FetchPolicy {
            allow_private: vec!["127.0.0.0/8".parse().unwrap()],
            ..FetchPolicy::default()
        };
        assert!(p.allows("127.0.0.2".parse().unwrap()));
        assert!(p.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.allows("10.0.0.1".parse().unwrap()));
    }
}
