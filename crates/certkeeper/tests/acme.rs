//! End to end with the real binary: `certkeeper server` configured by TOML and
//! environment for an ACME CA that requires external account binding (Debian's pebble),
//! http-01 answered by the server and dns-01 through RFC 2136 updates to BIND9; the
//! CLI orders certificates both ways; and http-01 answered by an agent on the host
//! (`agent run` with `[acme] http01_listen`). Secrets never reach the (debug) log.

mod common;

use certkeeper_testkit::bind::Bind;
use certkeeper_testkit::pebble::{Pebble, PebbleOptions};
use common::*;
use serde_json::Value;

#[test]
fn server_orders_by_http01_and_rfc2136_with_eab_from_its_config() {
    const TSIG: &str = "Zs8HqX0l3Sx1PvqRwrn5Q8dJdU6b0yP0a1mHqH5a3TU=";
    const EAB_KEY: &str = "HjudV5qnbreN-n9WyFSH-t4HcXWUuRSSrNzBh7tE8u5P1ilYjJpEi2gZbdmlC6zE";
    let bind = Bind::start("e2e.test", "certkeeper", TSIG)
        .expect("named (Debian package bind9) must be installed; .ci/run installs it");
    // Pebble resolves through BIND: its wildcard A record points every name at the
    // loopback, where the server's http-01 responder listens on pebble's httpPort.
    let pebble = Pebble::start_with(&PebbleOptions {
        eab_keys: vec![("kid-e2e".into(), EAB_KEY.into())],
        dns_server: Some(bind.addr),
        ..Default::default()
    })
    .expect("pebble (Debian package `pebble`) must be installed; .ci/run installs it");

    let work = tempfile::tempdir().unwrap();
    let secret_file = work.path().join("tsig.key");
    std::fs::write(
        &secret_file,
        format!("key \"certkeeper\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{TSIG}\";\n}};\n"),
    )
    .unwrap();
    let config = work.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"[acme]
directory_url = "{dir}"
root_ca_file = {root:?}
contact = ["mailto:pki@example.com"]
challenge = "http-01"
http01_listen = "127.0.0.1:5002"
eab_kid = "kid-e2e"
attempts = 3

[acme.rfc2136]
server = "{dns}"
zone = "e2e.test"
key_name = "certkeeper"
algorithm = "hmac-sha256"
secret_file = {secret:?}
"#,
            dir = pebble.directory,
            root = pebble.listener_ca.display().to_string(),
            dns = bind.addr,
            secret = secret_file.display().to_string(),
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let port = certkeeper_testkit::free_port().unwrap();
    let config_path = config.display().to_string();
    let server = start_server_env(
        &data,
        port,
        None,
        &[
            ("CERTKEEPER_CONFIG", config_path.as_str()),
            // The HMAC key from the environment, not the file.
            ("CERTKEEPER_ACME_EAB_HMAC_KEY", EAB_KEY),
        ],
    );
    let with = |args: &[&str]| -> Value {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(admin_args(&server));
        full.extend(["--output", "json"]);
        serde_json::from_str(&ok(ck(&full))).unwrap()
    };
    let order = |cn: &str, challenge: Option<&str>| -> Value {
        let req = with(&["request", "new", "--cn", cn, "--key-type", "p256"]);
        let id = req["id"].as_str().unwrap().to_string();
        let mut args = vec!["request", "acme", id.as_str()];
        if let Some(c) = challenge {
            args.extend(["--challenge", c]);
        }
        with(&args)
    };
    let by_http = order("www.e2e.test", None);
    assert_eq!(by_http["challenge"], "http-01", "{by_http}");
    let by_dns = order("*.e2e.test", Some("dns-01"));
    assert_eq!(by_dns["challenge"], "dns-01", "{by_dns}");
    assert_eq!(bind.dig("_acme-challenge.e2e.test.", "TXT").unwrap(), "");

    // Neither secret is ever logged, even at debug level.
    drop(server);
    let log = std::fs::read_to_string(log_path(&data)).unwrap();
    assert!(log.contains("certificate ordered over ACME"), "{log}");
    assert!(
        !log.contains(EAB_KEY) && !log.contains(TSIG),
        "a secret in the log"
    );
}

/// `GET path` on plain HTTP at `addr`: the status, or `None` when nothing listens.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: www.agent.test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn agent_id_of(dir: &std::path::Path) -> String {
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("agent.toml")).unwrap()).unwrap();
    cfg["agent_id"].as_str().unwrap().to_string()
}

/// A child process killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_on_the_host_answers_http01_for_orders_that_name_it() {
    let pebble = Pebble::start_with(&PebbleOptions::default())
        .expect("pebble (Debian package `pebble`) must be installed; .ci/run installs it");
    let work = tempfile::tempdir().unwrap();
    // The server answers no http-01 itself (no http01_listen): dns-01 by default.
    let config = work.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[acme]\ndirectory_url = \"{}\"\nroot_ca_file = {:?}\ndns_hook = {:?}\nhttp01_agent_wait_secs = 4\nattempts = 3\n",
            pebble.directory,
            pebble.listener_ca.display().to_string(),
            pebble.dns_hook.display().to_string(),
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let config_path = config.display().to_string();
    let server = start_server_env(
        &data,
        certkeeper_testkit::free_port().unwrap(),
        None,
        &[("CERTKEEPER_CONFIG", config_path.as_str())],
    );
    // Agent "web" answers on pebble's http-01 port; agent "idle" never runs.
    let web = work.path().join("web");
    enroll(&server, &web);
    let mut text = std::fs::read_to_string(web.join("agent.toml")).unwrap();
    text.push_str("\n[acme]\nhttp01_listen = \"127.0.0.1:5002\"\n");
    std::fs::write(web.join("agent.toml"), text).unwrap();
    let idle = work.path().join("idle");
    enroll(&server, &idle);
    let (web_id, idle_id) = (agent_id_of(&web), agent_id_of(&idle));
    let agent_log = work.path().join("agent.log");
    let _agent = Running(
        std::process::Command::new(BIN)
            .args([
                "agent",
                "run",
                "--poll",
                "1s",
                "--interval",
                "1d",
                "--no-push",
            ])
            .arg("--config-dir")
            .arg(&web)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let cli = |args: &[&str]| -> std::process::Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(admin_args(&server));
        full.extend(["--output", "json"]);
        ck(&full)
    };
    let request = |cn: &str| -> String {
        let v: Value = serde_json::from_str(&ok(cli(&[
            "request",
            "new",
            "--cn",
            cn,
            "--key-type",
            "p256",
        ])))
        .unwrap();
        v["id"].as_str().unwrap().to_string()
    };

    // Request → http01 job → the agent serves the token → pebble validates → issued.
    let id = request("www.agent.test");
    let issued: Value = serde_json::from_str(&ok(cli(&[
        "request",
        "acme",
        &id,
        "--http01-agent",
        &web_id,
    ])))
    .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&agent_log).unwrap()));
    assert_eq!(issued["challenge"], "http-01", "{issued}");
    assert!(
        issued["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let log = pebble.log();
    let tokens: Vec<String> = log
        .split("/.well-known/acme-challenge/")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .next()
        })
        .filter(|t| t.len() >= 16)
        .map(str::to_string)
        .collect();
    assert!(
        !tokens.is_empty(),
        "pebble fetched a token from the agent: {log}"
    );
    let agent_said = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        agent_said.contains("serving a token on 127.0.0.1:5002"),
        "{agent_said}"
    );
    // The job ended with the order: the agent stops serving its token (it looks once a
    // second), and answers 404 for unknown tokens and anything else.
    let responder = "127.0.0.1:5002";
    for t in &tokens {
        let path = format!("/.well-known/acme-challenge/{t}");
        let mut status = http_status(responder, &path);
        for _ in 0..50 {
            if status == Some(404) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            status = http_status(responder, &path);
        }
        assert_eq!(status, Some(404), "token {t} still answered");
    }
    for path in [
        "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
        "/.well-known/acme-challenge/..%2f..%2fetc%2fpasswd",
        "/",
        "/api/v1/agent/jobs/claim",
    ] {
        assert_eq!(http_status(responder, path), Some(404), "{path}");
    }
    // The job is over on the server's side too: nothing left for the agent.
    let out: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "jobs",
        "--output",
        "json",
        "--config-dir",
        web.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(out["jobs"], serde_json::json!([]), "{out}");

    // An agent that never takes the job: a clear error after the wait, no hang.
    let id = request("idle.agent.test");
    let began = std::time::Instant::now();
    let out = cli(&["request", "acme", &id, "--http01-agent", &idle_id]);
    let took = began.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("http01_agent_unavailable")
            && err.contains(&idle_id)
            && err.contains("did not take its http-01 job within 4 s"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    // Its job was ended: when the agent does come, it finds nothing to serve.
    let out: Value = serde_json::from_str(&ok(ck(&[
        "agent",
        "jobs",
        "--output",
        "json",
        "--config-dir",
        idle.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(out["jobs"], serde_json::json!([]), "{out}");

    // Bad orders are refused before anything reaches the CA.
    let out = cli(&["request", "acme", &id, "--http01-agent", "no-such-agent"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("unknown_agent"), "{err}");
    let out = cli(&[
        "request",
        "acme",
        &id,
        "--http01-agent",
        &web_id,
        "--challenge",
        "dns-01",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("does not go with dns-01"), "{err}");
}
