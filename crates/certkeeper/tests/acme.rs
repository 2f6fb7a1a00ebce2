//! End to end with the real binary: `certkeeper server` configured by TOML and
//! environment for an ACME CA that requires external account binding (Debian's pebble),
//! http-01 answered by the server and dns-01 through RFC 2136 updates to BIND9; the
//! CLI orders certificates both ways. Secrets never reach the (debug) log.

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
