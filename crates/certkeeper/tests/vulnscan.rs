//! `certkeeper agent vulnscan` end to end: the real binary against real servers
//! (`openssl s_server`) with certificates of every shape, each finding present where
//! it must be and absent everywhere else.

mod common;

use std::path::Path;
use std::process::Command;

use certkeeper_testkit::{KeyKind, LeafSpec, OpensslServer, TestPki};
use common::BIN;
use serde_json::Value;

/// Scan `name:port` (connecting to 127.0.0.1) trusting only `root`; the JSON report
/// of the one endpoint, and the exit status.
fn vulnscan(name: &str, port: u16, root: Option<&Path>, extra: &[&str]) -> (Value, i32) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "vulnscan",
        &format!("{name}:{port}"),
        "--ip",
        "127.0.0.1",
    ])
    .args([
        "--output",
        "json",
        "--no-system-roots",
        "--timeout-ms",
        "2000",
    ])
    .args(extra);
    if let Some(r) = root {
        cmd.arg("--ca-file").arg(r);
    }
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v["endpoints"][0].clone(), out.status.code().unwrap())
}

fn kinds(e: &Value) -> Vec<String> {
    let mut k: Vec<String> = e["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

fn serve(
    pki: &TestPki,
    leaf: &certkeeper_testkit::Issued,
    with_intermediate: bool,
    extra: &[&str],
) -> OpensslServer {
    let chain = with_intermediate.then_some(pki.intermediate.cert_path.as_path());
    OpensslServer::start(&leaf.cert_path, &leaf.key_path, chain, extra).unwrap()
}

#[test]
fn a_good_endpoint_has_no_findings_and_exits_zero() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = serve(&pki, &leaf, true, &[]);
    let (e, code) = vulnscan(
        "www.test",
        srv.port,
        Some(&pki.root.cert_path),
        &["--fail-on", "low"],
    );
    assert_eq!(kinds(&e), Vec::<String>::new(), "{e:#}");
    assert_eq!(code, 0);
    assert_eq!(e["trust"]["verdict"], "trusted");
    assert_eq!(e["host"], "www.test");
    assert_eq!(e["chain"].as_array().unwrap().len(), 2);
    let protos: Vec<&str> = e["facts"]["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["supported"] == true)
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protos, ["TLSv1.2", "TLSv1.3"]);
    let tls12 = e["facts"]["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["protocol"] == "TLSv1.2")
        .unwrap();
    let suite = &tls12["suites"][0];
    assert!(
        suite["iana"]
            .as_str()
            .unwrap()
            .starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{suite}"
    );
    assert!(
        suite["openssl"]
            .as_str()
            .unwrap()
            .starts_with("ECDHE-ECDSA-"),
        "{suite}"
    );

    // The same endpoint scanned under another name: only the name is wrong.
    let (e, code) = vulnscan(
        "other.test",
        srv.port,
        Some(&pki.root.cert_path),
        &["--fail-on", "high"],
    );
    assert_eq!(kinds(&e), ["hostname_mismatch"]);
    assert_eq!(code, 1, "a high finding with --fail-on high");
    // And without the root: an untrusted CA, nothing else.
    let (e, _) = vulnscan("www.test", srv.port, None, &[]);
    assert_eq!(kinds(&e), ["cert_untrusted"]);
}

#[test]
fn certificate_problems_are_each_a_finding_of_their_own() {
    let pki = TestPki::new().unwrap();
    let root = Some(pki.root.cert_path.as_path());
    // Expired, self-signed and for another name: three findings, not one "untrusted".
    let bad = pki
        .self_signed(&LeafSpec::new("old.test", KeyKind::EcdsaP256).valid_days(-400, 30))
        .unwrap();
    let srv = serve(&pki, &bad, false, &[]);
    let (e, _) = vulnscan("www.test", srv.port, root, &[]);
    assert_eq!(
        kinds(&e),
        ["cert_expired", "cert_self_signed", "hostname_mismatch"]
    );

    // Missing intermediate.
    let leaf = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256))
        .unwrap();
    let srv = serve(&pki, &leaf, false, &[]);
    let (e, _) = vulnscan("www.test", srv.port, root, &[]);
    assert_eq!(kinds(&e), ["chain_incomplete"]);

    // Expiring within the window, and a validity longer than the policy.
    let soon = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256).valid_days(-500, 510))
        .unwrap();
    let srv = serve(&pki, &soon, true, &[]);
    let (e, _) = vulnscan("www.test", srv.port, root, &[]);
    assert_eq!(kinds(&e), ["cert_expiring_soon", "validity_too_long"]);
    let (e, _) = vulnscan(
        "www.test",
        srv.port,
        root,
        &["--expiring-within-days", "5", "--max-validity-days", "825"],
    );
    assert_eq!(kinds(&e), Vec::<String>::new());

    // Not yet valid.
    let later = pki
        .leaf(&LeafSpec::new("www.test", KeyKind::EcdsaP256).valid_days(3, 60))
        .unwrap();
    let srv = serve(&pki, &later, true, &[]);
    let (e, _) = vulnscan("www.test", srv.port, root, &[]);
    assert_eq!(kinds(&e), ["cert_not_yet_valid"]);

    // Misordered: the intermediate first.
    let chain = pki.dir().join("misordered.pem");
    std::fs::write(
        &chain,
        format!("{}{}", pki.intermediate.cert_pem, leaf.cert_pem),
    )
    .unwrap();
    let srv = OpensslServer::start(&leaf.cert_path, &leaf.key_path, Some(&chain), &[]).unwrap();
    let (e, _) = vulnscan("www.test", srv.port, root, &[]);
    assert!(kinds(&e).contains(&"chain_misordered".to_string()), "{e:#}");
}

/// RSA-1024 leaves signed with SHA-1 and MD5, made by OpenSSL (rcgen will not).
#[test]
fn weak_keys_and_signatures_from_openssl() {
    let dir = tempfile::tempdir().unwrap();
    for (md, want) in [("sha1", "weak_signature"), ("md5", "weak_signature")] {
        let key = dir.path().join(format!("{md}.key"));
        let crt = dir.path().join(format!("{md}.crt"));
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:1024",
                "-nodes",
                "-days",
                "30",
                &format!("-{md}"),
            ])
            .args([
                "-subj",
                "/CN=www.test",
                "-addext",
                "subjectAltName=DNS:www.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let srv = OpensslServer::start(&crt, &key, None, &["-cipher", "ALL:@SECLEVEL=0"]).unwrap();
        // Trust it as a CA of its own so only the key and signature remain.
        let (e, _) = vulnscan("www.test", srv.port, Some(&crt), &[]);
        let k = kinds(&e);
        assert!(k.contains(&want.to_string()), "{md}: {k:?}");
        assert!(k.contains(&"weak_key".to_string()), "{md}: {k:?}");
        assert!(!k.contains(&"cert_untrusted".to_string()), "{md}: {k:?}");
        let f = e["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "weak_signature")
            .unwrap();
        assert!(
            f["evidence"].as_str().unwrap().to_lowercase().contains(md),
            "{f}"
        );
    }
}

#[test]
fn unreachable_endpoints_fail_with_a_clear_error() {
    let port = certkeeper_testkit::free_port().unwrap();
    let (e, code) = vulnscan("www.test", port, None, &[]);
    assert_eq!(code, 1);
    assert!(e["error"].as_str().unwrap().contains("refused"), "{e}");
    let out = Command::new(BIN)
        .args(["agent", "vulnscan", "host:notaport"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn json_of(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `scan now` without waiting: the server's answer (id, who scans what).
fn scan_start(s: &common::Server, endpoint: &str) -> Value {
    let mut args = vec!["scan", "now", "--endpoint", endpoint, "--output", "json"];
    args.extend(common::admin_args(s));
    json_of(common::ck(&args))
}

fn scan_show(s: &common::Server, id: &str) -> Value {
    let mut args = vec!["scan", "show", id, "--output", "json"];
    args.extend(common::admin_args(s));
    json_of(common::ck(&args))
}

/// `scan now --wait`: the finished scan.
fn scan_now(s: &common::Server, endpoint: &str) -> Value {
    let mut args = vec![
        "scan",
        "now",
        "--endpoint",
        endpoint,
        "--wait",
        "--wait-seconds",
        "60",
        "--output",
        "json",
    ];
    args.extend(common::admin_args(s));
    json_of(common::ck(&args))
}

fn result_kinds(v: &Value, field: &str) -> Vec<String> {
    let r = &v["results"][0];
    let mut k: Vec<String> = match field {
        "findings" => r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_string())
            .collect(),
        _ => r[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect(),
    };
    k.sort();
    k
}

/// An endpoint of the inventory is scanned on request by the agent that discovered it
/// (a job it picks up), or by the server once no active agent owns it; the findings
/// are stored and a later scan tells what was fixed and what is still there.
#[test]
fn scans_from_the_server_store_findings_and_tell_what_was_fixed() {
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("127.0.0.1", KeyKind::Rsa2048).names(&["127.0.0.1"]))
        .unwrap();
    let legacy = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &["-min_protocol", "TLSv1", "-cipher", "ALL:@SECLEVEL=0"],
    )
    .unwrap();
    let port = legacy.port;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[vulnscan]\nsystem_roots = false\nca_files = [\"{}\"]\ntimeout_ms = 2000\nallow_local = [\"127.0.0.0/8\"]\n",
            pki.root.cert_path.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = common::start_server_env(
        &data,
        certkeeper_testkit::free_port().unwrap(),
        None,
        &[("CERTKEEPER_CONFIG", config.to_str().unwrap())],
    );
    let agent = dir.path().join("agent");
    common::enroll(&s, &agent);
    let a = agent.to_str().unwrap();
    common::ok(common::ck(&[
        "agent",
        "discover",
        "--ips",
        "127.0.0.1",
        "--ports",
        &port.to_string(),
        "--config-dir",
        a,
    ]));
    common::ok(common::ck(&["agent", "scan", "--config-dir", a]));

    let endpoint = format!("127.0.0.1:{port}");
    let started = scan_start(&s, &endpoint);
    assert_eq!(started["by_server"], 0, "{started:#}");
    assert_eq!(started["by_agents"][0]["endpoints"], 1, "{started:#}");
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(scan_show(&s, &id)["status"], "running");
    // The agent takes its job, scans from where it stands, sends the results.
    common::ok(common::ck(&["agent", "jobs", "--config-dir", a]));
    let first = scan_show(&s, &id);
    assert_eq!(first["status"], "done", "{first:#}");
    assert_eq!(first["endpoints"], 1);
    let found = result_kinds(&first, "findings");
    for k in [
        "protocol_tls10",
        "protocol_tls11",
        "cipher_static_rsa",
        "cipher_cbc_legacy",
    ] {
        assert!(found.contains(&k.to_string()), "{k} missing from {found:?}");
    }
    assert!(!found.contains(&"cert_untrusted".to_string()), "{found:?}");
    assert_eq!(result_kinds(&first, "new"), found);
    assert_eq!(result_kinds(&first, "fixed"), Vec::<String>::new());

    // The agent is revoked: the next scan is the server's own. The same port is now a
    // TLS 1.2+ server: the old protocols are fixed, RSA key exchange (in OpenSSL's
    // default list) is still there.
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(agent.join("agent.toml")).unwrap()).unwrap();
    let agent_id = cfg["agent_id"].as_str().unwrap().to_string();
    let mut args = vec!["admin", "agents", "revoke", &agent_id];
    args.extend(common::admin_args(&s));
    common::ok(common::ck(&args));
    drop(legacy);
    let _modern = OpensslServer::start_at(
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &[],
    )
    .unwrap();
    let second = scan_now(&s, &endpoint);
    let fixed = result_kinds(&second, "fixed");
    for k in ["protocol_tls10", "protocol_tls11", "cipher_cbc_legacy"] {
        assert!(fixed.contains(&k.to_string()), "{k} not fixed: {second:#}");
    }
    assert!(result_kinds(&second, "findings").contains(&"cipher_static_rsa".to_string()));
    assert_eq!(result_kinds(&second, "new"), Vec::<String>::new());

    let list = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "scan",
            "findings",
            "--output",
            "json",
            "--endpoint",
            &endpoint,
        ];
        args.extend(extra);
        args.extend(common::admin_args(&s));
        let v: Value = serde_json::from_str(&common::ok(common::ck(&args))).unwrap();
        let mut k: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{}:{}",
                    f["kind"].as_str().unwrap(),
                    f["status"].as_str().unwrap()
                )
            })
            .collect();
        k.sort();
        k
    };
    let open = list(&[]);
    assert!(
        open.contains(&"cipher_static_rsa:open".to_string()),
        "{open:?}"
    );
    assert!(
        !open.iter().any(|k| k.starts_with("protocol_tls10")),
        "{open:?}"
    );
    assert_eq!(
        list(&["--kind", "protocol_tls10", "--status", "all"]),
        ["protocol_tls10:fixed"]
    );
    assert_eq!(list(&["--severity", "critical"]), Vec::<String>::new());

    // Bad requests: an endpoint not in the inventory, a severity that does not exist.
    let mut args = vec!["scan", "now", "--endpoint", "nowhere.test:443"];
    args.extend(common::admin_args(&s));
    let out = common::ck(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec!["scan", "findings", "--severity", "severe"];
    args.extend(common::admin_args(&s));
    let out = common::ck(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_request"));
}

/// The checks a report made, as `source status` strings.
fn revocation_checks(e: &Value) -> Vec<String> {
    e["revocation"]["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        c["source"].as_str().unwrap(),
                        c["status"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn revocation_is_checked_stapled_online_and_by_crl_with_private_addresses_only_when_allowed() {
    use certkeeper_testkit::revocation::{HttpBehaviour, HttpFixture, OpensslCa};
    let ca = OpensslCa::new().unwrap();
    let ocsp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crl = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ocsp_url = format!("http://{}/", ocsp.local_addr().unwrap());
    let crl_url = format!("http://{}/ca.crl", crl.local_addr().unwrap());
    let good = ca.leaf("good.test", &ocsp_url, &crl_url).unwrap();
    let revoked = ca.leaf("revoked.test", &ocsp_url, &crl_url).unwrap();
    ca.revoke(&revoked, "keyCompromise").unwrap();
    let staple = ca.ocsp_response_file(&good).unwrap();
    let _crl = HttpFixture::start_on(crl, HttpBehaviour::Body(ca.crl_der().unwrap())).unwrap();
    let _responder = ca.responder(ocsp).unwrap();
    let root = Some(ca.cert_path.as_path());
    let allow = ["--allow-private", "127.0.0.0/8"];

    // Revoked, no stapling: critical, from both online sources.
    let srv = OpensslServer::start(
        &revoked.cert_path,
        &revoked.key_path,
        Some(&ca.cert_path),
        &[],
    )
    .unwrap();
    let (e, code) = vulnscan(
        "revoked.test",
        srv.port,
        root,
        &[&allow[..], &["--fail-on", "critical"]].concat(),
    );
    assert_eq!(
        kinds(&e),
        ["cert_revoked", "ocsp_stapling_missing"],
        "{e:#}"
    );
    assert_eq!(code, 1);
    assert_eq!(revocation_checks(&e), ["ocsp revoked", "crl revoked"]);
    assert_eq!(e["revocation"]["checks"][0]["reason"], "keyCompromise");
    assert!(
        e["revocation"]["checks"][1]["revoked_at"]
            .as_str()
            .is_some()
    );
    let f = &e["findings"][0];
    assert_eq!(f["severity"], "critical");
    assert!(
        f["evidence"].as_str().unwrap().contains("keyCompromise"),
        "{f}"
    );

    // The same without the allow-list: the loopback sources are refused, said why.
    let (e, _) = vulnscan("revoked.test", srv.port, root, &[]);
    assert_eq!(
        kinds(&e),
        ["ocsp_stapling_missing", "revocation_unreachable"],
        "{e:#}"
    );
    assert_eq!(
        revocation_checks(&e),
        ["ocsp unreachable", "crl unreachable"]
    );
    assert!(
        e["revocation"]["checks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is a loopback address and not in the allow-list")
    );
    // Turned off: nothing fetched, nothing found about it.
    let (e, _) = vulnscan("revoked.test", srv.port, root, &["--no-revocation"]);
    assert_eq!(kinds(&e), ["ocsp_stapling_missing"], "{e:#}");
    assert_eq!(revocation_checks(&e), Vec::<String>::new());
    drop(srv);

    // Good and stapled: no revocation finding, three good answers.
    let srv = OpensslServer::start(
        &good.cert_path,
        &good.key_path,
        Some(&ca.cert_path),
        &["-status_file", staple.to_str().unwrap()],
    )
    .unwrap();
    let (e, code) = vulnscan(
        "good.test",
        srv.port,
        root,
        &[&allow[..], &["--fail-on", "low"]].concat(),
    );
    assert_eq!(kinds(&e), Vec::<String>::new(), "{e:#}");
    assert_eq!(code, 0);
    assert_eq!(e["revocation"]["stapling"], true);
    assert_eq!(
        revocation_checks(&e),
        ["stapled good", "ocsp good", "crl good"]
    );
}

/// Scans run by an agent (a job) and by the server both check revocation under the
/// server's `[vulnscan]` fetch settings: the allow-list travels with the job.
#[test]
fn scans_from_the_server_and_its_agents_check_revocation_under_the_servers_allow_list() {
    use certkeeper_testkit::revocation::{HttpBehaviour, HttpFixture, OpensslCa};
    let ca = OpensslCa::new().unwrap();
    let ocsp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crl = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ocsp_url = format!("http://{}/", ocsp.local_addr().unwrap());
    let crl_url = format!("http://{}/ca.crl", crl.local_addr().unwrap());
    let revoked = ca.leaf("revoked.test", &ocsp_url, &crl_url).unwrap();
    ca.revoke(&revoked, "keyCompromise").unwrap();
    let _crl = HttpFixture::start_on(crl, HttpBehaviour::Body(ca.crl_der().unwrap())).unwrap();
    let _responder = ca.responder(ocsp).unwrap();
    let srv = OpensslServer::start(
        &revoked.cert_path,
        &revoked.key_path,
        Some(&ca.cert_path),
        &[],
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[vulnscan]\nsystem_roots = false\nca_files = [\"{}\"]\ntimeout_ms = 2000\n\
             fetch_allow_private = [\"127.0.0.0/8\"]\nallow_local = [\"127.0.0.0/8\"]\nfetch_timeout_ms = 3000\n",
            ca.cert_path.display()
        ),
    )
    .unwrap();
    let s = common::start_server_env(
        &dir.path().join("data"),
        certkeeper_testkit::free_port().unwrap(),
        None,
        &[("CERTKEEPER_CONFIG", config.to_str().unwrap())],
    );
    let agent = dir.path().join("agent");
    common::enroll(&s, &agent);
    let a = agent.to_str().unwrap();
    let port = srv.port.to_string();
    common::ok(common::ck(&[
        "agent",
        "discover",
        "--ips",
        "127.0.0.1",
        "--ports",
        &port,
        "--config-dir",
        a,
    ]));
    common::ok(common::ck(&["agent", "scan", "--config-dir", a]));
    let endpoint = format!("127.0.0.1:{port}");

    let started = scan_start(&s, &endpoint);
    assert_eq!(started["by_agents"][0]["endpoints"], 1, "{started:#}");
    let id = started["id"].as_str().unwrap().to_string();
    common::ok(common::ck(&["agent", "jobs", "--config-dir", a]));
    let by_agent = scan_show(&s, &id);
    let found = result_kinds(&by_agent, "findings");
    assert!(found.contains(&"cert_revoked".to_string()), "{by_agent:#}");
    assert!(
        found.contains(&"ocsp_stapling_missing".to_string()),
        "{found:?}"
    );
    assert!(
        !found.contains(&"revocation_unreachable".to_string()),
        "{found:?}"
    );

    // The server's own scan (the agent revoked) finds the same, and nothing new.
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(agent.join("agent.toml")).unwrap()).unwrap();
    let agent_id = cfg["agent_id"].as_str().unwrap().to_string();
    let mut args = vec!["admin", "agents", "revoke", &agent_id];
    args.extend(common::admin_args(&s));
    common::ok(common::ck(&args));
    let by_server = scan_now(&s, &endpoint);
    assert!(
        result_kinds(&by_server, "findings").contains(&"cert_revoked".to_string()),
        "{by_server:#}"
    );
    assert_eq!(result_kinds(&by_server, "new"), Vec::<String>::new());
    let mut args = vec![
        "scan",
        "findings",
        "--output",
        "json",
        "--endpoint",
        &endpoint,
        "--kind",
        "cert_revoked",
    ];
    args.extend(common::admin_args(&s));
    let v: Value = serde_json::from_str(&common::ok(common::ck(&args))).unwrap();
    let item = &v["items"][0];
    assert_eq!(item["severity"], "critical", "{v:#}");
    assert!(
        item["evidence"].as_str().unwrap().contains("keyCompromise"),
        "{item}"
    );
}
