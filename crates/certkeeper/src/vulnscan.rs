//! `certkeeper agent vulnscan HOST:PORT…`: a one-off vulnerability scan run here and
//! printed, like sslyze or testssl would: protocols, accepted suites, the wire-level
//! checks, and the certificate and chain findings of every address a name has.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use certkeeper_core::findings::{RevocationStatus, Severity};
use certkeeper_probe::{Target, VulnConfig};
use certkeeper_server::vulnscans::{CertJudgement, EndpointReport, scan_endpoint};
use clap::Args;
use futures_util::future::join_all;
use time::OffsetDateTime;

use crate::admin::clean;
use crate::{Output, usage};

#[derive(Debug, Args)]
pub struct VulnscanArgs {
    /// Endpoints: HOST:PORT, [IPv6]:PORT, or HOST (port 443).
    #[arg(required = true, value_name = "HOST:PORT")]
    endpoints: Vec<String>,
    /// Connect to this address instead of resolving the names (SNI and the name
    /// check still use the name).
    #[arg(long, env = "CERTKEEPER_IP")]
    ip: Option<IpAddr>,
    /// Per-connection timeout in milliseconds.
    #[arg(long, default_value_t = 3000, env = "CERTKEEPER_TIMEOUT_MS")]
    timeout_ms: u64,
    /// Connections open at once to one endpoint.
    #[arg(long, default_value_t = 4, env = "CERTKEEPER_PER_HOST_CONNECTIONS")]
    per_host_connections: usize,
    /// Connections open at once over the whole run.
    #[arg(long, default_value_t = 32, env = "CERTKEEPER_CONCURRENCY")]
    concurrency: usize,
    /// New connections per second over the whole run, 0 for no limit.
    #[arg(long, default_value_t = 0, env = "CERTKEEPER_RATE")]
    rate: u32,
    /// A CA certificate (PEM) to trust besides the system roots; repeatable.
    #[arg(long = "ca-file", env = "CERTKEEPER_CA_FILES", value_delimiter = ',')]
    ca_files: Vec<PathBuf>,
    /// Trust only the --ca-file CAs, not the system roots.
    #[arg(long, env = "CERTKEEPER_NO_SYSTEM_ROOTS")]
    no_system_roots: bool,
    /// A certificate expiring within this many days is reported.
    #[arg(long, default_value_t = 30, env = "CERTKEEPER_EXPIRING_WITHIN_DAYS")]
    expiring_within_days: u32,
    /// Longest validity the policy allows, in days.
    #[arg(long, default_value_t = 398, env = "CERTKEEPER_MAX_VALIDITY_DAYS")]
    max_validity_days: u32,
    /// Do not ask OCSP responders or fetch CRLs (a stapled response is still judged).
    #[arg(long, env = "CERTKEEPER_NO_REVOCATION")]
    no_revocation: bool,
    /// Time limit of one OCSP or CRL fetch, in milliseconds.
    #[arg(long, default_value_t = 5000, env = "CERTKEEPER_FETCH_TIMEOUT_MS")]
    fetch_timeout_ms: u64,
    /// Let OCSP and CRL fetches reach this private, loopback or link-local network
    /// (CIDR); repeatable. Refused by default.
    #[arg(
        long,
        value_name = "CIDR",
        env = "CERTKEEPER_ALLOW_PRIVATE",
        value_delimiter = ','
    )]
    allow_private: Vec<ipnet::IpNet>,
    /// Exit 1 when a finding of this severity or worse is found.
    #[arg(long, value_enum, env = "CERTKEEPER_FAIL_ON")]
    fail_on: Option<FailOn>,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FailOn {
    Low,
    Medium,
    High,
    Critical,
}

impl FailOn {
    fn severity(self) -> Severity {
        match self {
            FailOn::Low => Severity::Low,
            FailOn::Medium => Severity::Medium,
            FailOn::High => Severity::High,
            FailOn::Critical => Severity::Critical,
        }
    }
}

/// Split `HOST:PORT`, `[v6]:PORT` or `HOST`.
fn split_endpoint(s: &str) -> Result<(String, u16)> {
    let bad = || usage(format!("endpoint '{s}': expected HOST:PORT"));
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 443,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s.to_string(), 443));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None if !s.is_empty() => Ok((s.to_string(), 443)),
        None => Err(bad()),
    }
}

pub async fn run(args: VulnscanArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    for f in &args.ca_files {
        let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let ders = certkeeper_pki::pem_to_ders(&pem)
            .with_context(|| format!("{}: not a PEM certificate", f.display()))?;
        extra.extend(ders);
    }
    let roots = certkeeper_pki::trust::TrustRoots {
        system: !args.no_system_roots,
        extra,
    };
    let mut targets = Vec::new();
    for e in &args.endpoints {
        let (host, port) = split_endpoint(e)?;
        let ips: Vec<IpAddr> = match (args.ip, host.parse::<IpAddr>()) {
            (Some(ip), _) | (None, Ok(ip)) => vec![ip],
            (None, Err(_)) => tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{host}: name lookup timed out"))?
            .with_context(|| format!("{host}: name lookup failed"))?
            .map(|a: SocketAddr| a.ip())
            .collect(),
        };
        let mut seen = Vec::new();
        for ip in ips {
            if seen.contains(&ip) {
                continue;
            }
            seen.push(ip);
            let named = host.parse::<IpAddr>().is_err();
            targets.push(Target {
                host: host.clone(),
                ip,
                port,
                sni: named.then(|| host.clone()),
                named: true,
            });
        }
    }
    let cfg = VulnConfig {
        timeout: Duration::from_millis(args.timeout_ms),
        per_host_connections: args.per_host_connections,
        host_slots: Default::default(),
        global: Some(Arc::new(tokio::sync::Semaphore::new(
            args.concurrency.max(1),
        ))),
        limiter: (args.rate > 0).then(|| Arc::new(certkeeper_probe::RateLimiter::new(args.rate))),
        revocation: (!args.no_revocation).then(|| certkeeper_probe::fetch::FetchPolicy {
            timeout: Duration::from_millis(args.fetch_timeout_ms.max(100)),
            allow_private: args.allow_private.clone(),
            ..Default::default()
        }),
    };
    let judge = CertJudgement {
        roots: &roots,
        expiring_within_days: args.expiring_within_days,
        max_validity_days: args.max_validity_days,
        now: OffsetDateTime::now_utc(),
    };
    // All endpoints together; the limits in `cfg` bound the connections.
    let reports = join_all(targets.iter().map(|t| scan_endpoint(t, &cfg, &judge))).await;
    let worst = reports
        .iter()
        .flat_map(|r| r.findings.iter().map(|f| f.severity))
        .max();
    let failed = reports.iter().any(|r| r.error.is_some());
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "endpoints": reports }))?
        );
    } else {
        for r in &reports {
            print_text(r);
        }
    }
    let over = match (args.fail_on, worst) {
        (Some(f), Some(w)) => w >= f.severity(),
        _ => false,
    };
    Ok(if failed || over {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(r: &EndpointReport) {
    println!("{}@{}:{}", clean(&r.host), r.ip, r.port);
    if let Some(e) = &r.error {
        println!("  error: {}", clean(e));
    }
    if let Some(f) = &r.facts {
        for p in &f.protocols {
            let order = match p.server_order {
                Some(true) => " (server order)",
                Some(false) => " (client order)",
                None => "",
            };
            if p.supported {
                println!(
                    "  {} yes, {} suites{order}",
                    p.protocol.name(),
                    p.suites.len()
                );
                for s in &p.suites {
                    println!(
                        "    0x{:04x} {:<50} {}",
                        s.id,
                        s.iana,
                        s.openssl.as_deref().unwrap_or("-")
                    );
                }
            } else {
                println!("  {} no", p.protocol.name());
            }
        }
        println!("  connections: {}", f.connections);
        for note in &f.incomplete {
            println!("  not finished: {}", clean(note));
        }
    }
    for c in &r.chain {
        println!(
            "  cert {} (expires {}, {})",
            clean(&c.subject),
            c.not_after,
            c.signature_algorithm
        );
    }
    if let Some(rv) = &r.revocation {
        let stapling = match rv.stapling {
            Some(true) => "stapled",
            Some(false) => "not stapled",
            None => "stapling not tested",
        };
        println!("  ocsp: {stapling}");
        for c in &rv.checks {
            let status = match &c.status {
                RevocationStatus::Good => "good".to_string(),
                RevocationStatus::Revoked { .. } => "revoked".to_string(),
                RevocationStatus::Unknown { reason } => format!("unknown ({})", clean(reason)),
                RevocationStatus::Unreachable { reason } => {
                    format!("unreachable ({})", clean(reason))
                }
            };
            let url = c.url.as_deref().map(clean).unwrap_or_default();
            println!("  revocation {} {url}: {status}", c.source.as_str());
        }
        if let Some(n) = &rv.not_tested {
            println!("  revocation not tested: {}", clean(n));
        }
    }
    if r.findings.is_empty() && r.error.is_none() {
        println!("  no findings");
    }
    for f in &r.findings {
        println!(
            "  [{}] {}: {}",
            f.severity.as_str(),
            f.title,
            clean(&f.evidence)
        );
        println!("      fix: {}", f.fix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_port_and_ipv6() {
        assert_eq!(
            split_endpoint("www.example.com:8443").unwrap(),
            ("www.example.com".into(), 8443)
        );
        assert_eq!(
            split_endpoint("www.example.com").unwrap(),
            ("www.example.com".into(), 443)
        );
        assert_eq!(split_endpoint("[::1]:993").unwrap(), ("::1".into(), 993));
        assert_eq!(split_endpoint("::1").unwrap(), ("::1".into(), 443));
        assert!(split_endpoint("host:notaport").is_err());
        assert!(split_endpoint(":443").is_err());
    }
}
