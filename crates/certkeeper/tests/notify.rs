//! End to end with the real binary: a server configured by TOML for e-mail (Debian's
//! aiosmtpd) and ServiceNow (the simulator), an agent that finds a certificate
//! expiring in ten days on a real `openssl s_server`, and the CLI: `tickets test`,
//! `notify preview`, `notify run`, `tickets list`, `notify deliveries`, `notify test`.
//! The ServiceNow password never reaches the CLI's output or the server's debug log.

mod common;

use certkeeper_testkit::servicenow_sim::{self, SnOptions, SnUser};
use certkeeper_testkit::smtp::{SinkOptions, SmtpSink};
use certkeeper_testkit::{KeyKind, LeafSpec, OpensslServer, TestPki};
use common::*;
use serde_json::Value;

const PASSWORD: &str = "sn-integration-secret-pw";

#[test]
fn the_cli_previews_runs_tests_and_lists_notifications_and_tickets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(servicenow_sim::start(SnOptions {
            users: vec![SnUser::itil("certkeeper", PASSWORD)],
            ..Default::default()
        }))
        .unwrap();
    let sink = SmtpSink::start(&SinkOptions::default()).unwrap();
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("soon.example.test", KeyKind::EcdsaP256).valid_days(-80, 90))
        .unwrap();
    let tls = OpensslServer::start(
        &leaf.cert_path,
        &leaf.key_path,
        Some(&pki.intermediate.cert_path),
        &[],
    )
    .unwrap();

    let work = tempfile::tempdir().unwrap();
    let pw = work.path().join("sn.pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let config = work.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "external_url = \"https://ck.example.test:8443\"\n\
             [email]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"certkeeper@example.test\"\nto = [\"ops@example.test\"]\n\
             [ticketing.servicenow]\nurl = \"{}\"\nusername = \"certkeeper\"\npassword_file = {:?}\ncreate_for = [\"expiry\"]\n",
            sink.port(),
            sim.url(),
            pw.display().to_string()
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
    let agent = work.path().join("agent");
    enroll(&server, &agent);
    let a = agent.to_str().unwrap();
    let port = tls.port.to_string();
    ok(ck(&[
        "agent",
        "discover",
        "--ips",
        "127.0.0.1",
        "--ports",
        &port,
        "--config-dir",
        a,
    ]));
    ok(ck(&["agent", "scan", "--config-dir", a]));
    let cli = |args: &[&str]| -> std::process::Output {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(admin_args(&server));
        ck(&full)
    };

    // The ticketing system's URL and credentials, nothing created.
    let out = ok(cli(&["tickets", "test", "servicenow"]));
    assert!(out.contains("work"), "{out}");
    assert!(sim.incidents().is_empty());

    // Why will it be notified? Through e-mail, with a ticket to create.
    let v: Value =
        serde_json::from_str(&ok(cli(&["notify", "preview", "--output", "json"]))).unwrap();
    let n = &v["policies"][0]["notify"];
    assert_eq!(n.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(n[0]["name"], "soon.example.test");
    assert_eq!(n[0]["stage"], "14d");
    assert_eq!(n[0]["channels"][0]["channel"], "email");
    assert_eq!(n[0]["channels"][0]["status"], "would_send");
    assert_eq!(n[0]["tickets"][0]["system"], "servicenow");
    assert_eq!(n[0]["tickets"][0]["action"], "create");
    let text = ok(cli(&["notify", "preview"]));
    assert!(text.contains("NOTIFY soon.example.test [14d]"), "{text}");

    // Run now: the digest goes out, the ticket is opened.
    let out = ok(cli(&["notify", "run"]));
    assert!(out.contains("deliveries: 1 sent"), "{out}");
    assert!(out.contains("tickets: 1 done"), "{out}");
    let mails = sink.messages().unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].header("Subject"),
        Some("certkeeper: 1 certificate expiring soon")
    );
    let incidents = sim.incidents();
    assert_eq!(incidents.len(), 1);
    assert_eq!(
        incidents[0]["short_description"],
        "SSL Certificate soon.example.test expiry"
    );
    // Again: nothing new.
    let out = ok(cli(&["notify", "run"]));
    assert!(out.contains("0 new messages"), "{out}");
    assert_eq!(sim.incidents().len(), 1);
    assert_eq!(sink.messages().unwrap().len(), 1);

    let v: Value =
        serde_json::from_str(&ok(cli(&["tickets", "list", "--output", "json"]))).unwrap();
    assert_eq!(
        v["items"][0]["ticket_number"],
        incidents[0]["number"].as_str()
    );
    assert_eq!(v["items"][0]["ip"], "127.0.0.1");
    assert_eq!(v["items"][0]["status"], "active");
    let table = ok(cli(&["tickets", "list"]));
    assert!(table.contains(incidents[0]["number"].as_str()), "{table}");
    let v: Value =
        serde_json::from_str(&ok(cli(&["notify", "deliveries", "--output", "json"]))).unwrap();
    assert_eq!(v["items"][0]["state"], "sent");
    let id = v["items"][0]["id"].as_str().unwrap().to_string();
    let one = ok(cli(&["notify", "deliveries", "--id", &id]));
    assert!(one.contains("attempt 1") && one.contains("sent"), "{one}");

    // A test message.
    ok(cli(&["notify", "test", "email", "--to", "me@example.test"]));
    let mails = sink.messages().unwrap();
    assert_eq!(
        mails.last().unwrap().to,
        vec!["me@example.test".to_string()]
    );
    // A channel that is not configured is a clear failure.
    let out = cli(&["notify", "test", "slack"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not configured"));

    // The instance changes the password: the check fails, naming the cause, never the password.
    sim.configure(|o| o.users = vec![SnUser::itil("certkeeper", "rotated")]);
    let out = cli(&["tickets", "test", "servicenow"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    drop(server);
    let log = std::fs::read_to_string(log_path(&data)).unwrap();
    assert!(
        !log.contains(PASSWORD),
        "the password reached the server log"
    );
    assert!(!err.contains(PASSWORD));
}
