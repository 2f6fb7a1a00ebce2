//! E-mail to a real SMTP server (aiosmtpd, Debian's python3-aiosmtpd) on loopback:
//! STARTTLS with AUTH, implicit TLS, plain; what arrives is parsed by Python's
//! `email` package, not by us. Failures: a wrong password, 451 and 550 answers,
//! nothing listening, a certificate nobody trusts.

use std::path::PathBuf;

use certkeeper_connect::notify::ChannelError;
use certkeeper_connect::notify::email::{self, Attachment, Email, SmtpConfig, SmtpTls};
use certkeeper_testkit::smtp::{Failure, SinkOptions, SinkTls, SmtpSink};

const USER: &str = "certkeeper";
const PASSWORD: &str = "Pa55-w0rd-not-for-logs";

fn sink(tls: SinkTls, auth: bool) -> SmtpSink {
    SmtpSink::start(&SinkOptions {
        tls,
        auth: auth.then(|| (USER.to_string(), PASSWORD.to_string())),
        ..Default::default()
    })
    .expect("the aiosmtpd sink (apt-get install python3-aiosmtpd)")
}

/// A config for `sink`, trusting its CA (written to `dir`).
fn config(sink: &SmtpSink, tls: SmtpTls, dir: &tempfile::TempDir, auth: bool) -> SmtpConfig {
    let ca: PathBuf = dir.path().join("relay-ca.pem");
    std::fs::write(&ca, sink.ca_pem()).unwrap();
    SmtpConfig {
        host: "127.0.0.1".into(),
        port: sink.port(),
        tls,
        username: auth.then(|| USER.to_string()),
        password: auth.then(|| PASSWORD.to_string()),
        from: "Certkeeper <certkeeper@example.com>".into(),
        ca_file: Some(ca),
        timeout_secs: 10,
    }
}

const CSV: &str = "name,ip,expires\nwww.example.com,192.0.2.10,2026-12-01\nmail.example.com,192.0.2.11,2026-12-03\n";

fn digest() -> Email {
    Email {
        to: vec!["ops@example.com".into(), "secops@example.org".into()],
        subject: "Zertifikate laufen ab: 2 in 7 Tagen — www.example.com".into(),
        text: "Zwei Zertifikate laufen bald ab.\nwww.example.com: 7 Tage\n".into(),
        html: Some("<p>Zwei Zertifikate laufen <b>bald</b> ab: www.example.com</p>".into()),
        attachment: Some(Attachment {
            filename: "certificates.csv".into(),
            content_type: "text/csv; charset=utf-8".into(),
            bytes: CSV.as_bytes().to_vec(),
        }),
        message_id: "cm1-0123456789abcdef0123456789abcdef.2@certkeeper.local".into(),
        in_reply_to: Some("cm1-0123456789abcdef0123456789abcdef@certkeeper.local".into()),
    }
}

fn assert_no_password(e: &ChannelError) {
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(PASSWORD), "the password leaked: {shown}");
}

#[tokio::test]
async fn starttls_with_auth_delivers_text_html_and_the_csv_threaded() {
    let sink = sink(SinkTls::StartTls, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sink, SmtpTls::StartTls, &dir, true);
    email::test_connection(&cfg).await.unwrap();
    assert!(sink.messages().unwrap().is_empty(), "a test sends no mail");

    let mail = digest();
    email::send(&cfg, &mail).await.unwrap();
    let got = sink.messages().unwrap();
    assert_eq!(got.len(), 1, "one message for all recipients");
    let m = &got[0];
    assert!(
        m.tls && m.authenticated,
        "TLS {} AUTH {}",
        m.tls,
        m.authenticated
    );
    assert_eq!(m.from, "certkeeper@example.com");
    assert_eq!(m.to, vec!["ops@example.com", "secops@example.org"]);

    assert_eq!(
        m.header("Message-ID"),
        Some("<cm1-0123456789abcdef0123456789abcdef.2@certkeeper.local>")
    );
    let parent = "<cm1-0123456789abcdef0123456789abcdef@certkeeper.local>";
    assert_eq!(m.header("In-Reply-To"), Some(parent));
    assert_eq!(m.header("References"), Some(parent));
    assert_eq!(m.header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(m.header("Subject"), Some(mail.subject.as_str()));
    assert_eq!(
        m.header("From"),
        Some("Certkeeper <certkeeper@example.com>")
    );
    let to = m.header("To").unwrap();
    assert!(
        to.contains("ops@example.com") && to.contains("secops@example.org"),
        "{to}"
    );
    let date = m.header("Date").expect("a Date header");
    assert!(date.contains(" +0000") || date.contains("GMT"), "{date}");
    // The raw subject is encoded (RFC 2047), not 8-bit.
    let raw = String::from_utf8_lossy(&m.raw);
    assert!(
        raw.contains("Subject: ") && raw.contains("=?utf-8?"),
        "{raw}"
    );

    let kinds: Vec<&str> = m.parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "text/csv"
        ]
    );
    let text = m.part("text/plain").unwrap();
    assert_eq!(text.charset.as_deref(), Some("utf-8"));
    assert_eq!(
        text.content.replace("\r\n", "\n").trim_end(),
        mail.text.trim_end()
    );
    let html = m.part("text/html").unwrap();
    assert_eq!(html.content.trim_end(), mail.html.as_deref().unwrap());
    let csv = m.part("text/csv").unwrap();
    assert_eq!(csv.filename.as_deref(), Some("certificates.csv"));
    assert_eq!(csv.disposition.as_deref(), Some("attachment"));
    assert_eq!(csv.content.replace("\r\n", "\n"), CSV);
}

#[tokio::test]
async fn implicit_tls_delivers_and_text_alone_is_one_utf8_part() {
    let sink = sink(SinkTls::Implicit, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sink, SmtpTls::Implicit, &dir, true);
    email::test_connection(&cfg).await.unwrap();
    let mail = Email {
        to: vec!["ops@example.com".into()],
        html: None,
        attachment: None,
        in_reply_to: None,
        ..digest()
    };
    email::send(&cfg, &mail).await.unwrap();
    let got = sink.messages().unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.tls && m.authenticated);
    assert_eq!(m.header("In-Reply-To"), None);
    assert_eq!(m.header("References"), None);
    assert_eq!(m.header("Auto-Submitted"), Some("auto-generated"));
    let kinds: Vec<&str> = m.parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(kinds, ["text/plain"]);
    assert_eq!(m.parts[0].charset.as_deref(), Some("utf-8"));
    assert_eq!(
        m.parts[0].content.replace("\r\n", "\n").trim_end(),
        mail.text.trim_end()
    );
}

#[tokio::test]
async fn plain_smtp_delivers_text_with_the_attachment() {
    let sink = sink(SinkTls::None, false);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sink, SmtpTls::None, &dir, false);
    let mail = Email {
        html: None,
        ..digest()
    };
    email::send(&cfg, &mail).await.unwrap();
    let got = sink.messages().unwrap();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls && !got[0].authenticated);
    let kinds: Vec<&str> = got[0]
        .parts
        .iter()
        .map(|p| p.content_type.as_str())
        .collect();
    assert_eq!(kinds, ["multipart/mixed", "text/plain", "text/csv"]);

    // A password is not sent in the clear: refused before connecting.
    let with_password = SmtpConfig {
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..cfg
    };
    let e = email::send(&with_password, &mail).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("never sent without TLS"), "{e}");
    assert_no_password(&e);
    assert_eq!(sink.messages().unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_never_shown() {
    let sink = sink(SinkTls::StartTls, true);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink, SmtpTls::StartTls, &dir, true);
    cfg.password = Some("Wr0ng-Secret-Passw0rd".into());
    for e in [
        email::send(&cfg, &digest()).await.unwrap_err(),
        email::test_connection(&cfg).await.unwrap_err(),
    ] {
        assert!(!e.is_transient(), "{e}");
        let shown = format!("{e} / {e:?}");
        assert!(shown.contains("authentication failed"), "{shown}");
        assert!(shown.contains("535"), "{shown}");
        assert!(!shown.contains("Wr0ng-Secret-Passw0rd"), "{shown}");
        assert_no_password(&e);
    }
    assert!(format!("{cfg:?}").contains("***"));
    assert!(!format!("{cfg:?}").contains("Wr0ng-Secret-Passw0rd"));
    assert!(sink.messages().unwrap().is_empty());
}

#[tokio::test]
async fn smtp_4xx_is_transient_and_5xx_permanent() {
    let cases = [
        (Some(Failure::Temporary), None, true, "451"),
        (Some(Failure::Permanent), None, false, "550"),
        (None, Some(Failure::Temporary), true, "451"),
        (None, Some(Failure::Permanent), false, "550"),
    ];
    for (fail_rcpt, fail_data, transient, code) in cases {
        let sink = SmtpSink::start(&SinkOptions {
            tls: SinkTls::StartTls,
            auth: Some((USER.into(), PASSWORD.into())),
            fail_rcpt,
            fail_data,
            raw_only: false,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&sink, SmtpTls::StartTls, &dir, true);
        let e = email::send(&cfg, &digest()).await.unwrap_err();
        assert_eq!(
            e.is_transient(),
            transient,
            "{fail_rcpt:?}/{fail_data:?}: {e}"
        );
        assert!(e.to_string().contains(code), "{e}");
        assert_no_password(&e);
        assert!(sink.messages().unwrap().is_empty());
    }
}

#[tokio::test]
async fn nothing_listening_is_transient() {
    let port = certkeeper_testkit::free_port().unwrap();
    let cfg = SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::StartTls,
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        from: "certkeeper@example.com".into(),
        ca_file: None,
        timeout_secs: 5,
    };
    let e = email::send(&cfg, &digest()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert_no_password(&e);
}

#[tokio::test]
async fn a_relay_that_never_answers_times_out_transient() {
    // Accepts the connection and says nothing (no 220 greeting).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cfg = SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::StartTls,
        username: Some(USER.into()),
        password: Some(PASSWORD.into()),
        from: "certkeeper@example.com".into(),
        ca_file: None,
        timeout_secs: 1,
    };
    let started = std::time::Instant::now();
    let e = email::send(&cfg, &digest()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_no_password(&e);
    hold.abort();
}

#[tokio::test]
async fn an_untrusted_certificate_is_permanent_with_a_tls_message() {
    for (sink_tls, tls) in [
        (SinkTls::StartTls, SmtpTls::StartTls),
        (SinkTls::Implicit, SmtpTls::Implicit),
    ] {
        let sink = sink(sink_tls, true);
        let dir = tempfile::tempdir().unwrap();
        // The sink's CA is not given: only the public roots are trusted.
        let cfg = SmtpConfig {
            ca_file: None,
            ..config(&sink, tls, &dir, true)
        };
        let e = email::send(&cfg, &digest()).await.unwrap_err();
        assert!(!e.is_transient(), "{e}");
        let m = e.to_string();
        assert!(m.contains("TLS failed"), "{m}");
        assert!(m.contains("UnknownIssuer"), "{m}");
        assert_no_password(&e);
        assert!(sink.messages().unwrap().is_empty());
    }
}

#[tokio::test]
async fn bad_configuration_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SmtpConfig {
        host: "127.0.0.1".into(),
        port: 1,
        tls: SmtpTls::StartTls,
        username: None,
        password: None,
        from: "certkeeper@example.com".into(),
        ca_file: Some(dir.path().join("missing.pem")),
        timeout_secs: 5,
    };
    let e = email::send(&cfg, &digest()).await.unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("ca_file"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let e = email::send(
        &SmtpConfig {
            ca_file: Some(empty),
            ..cfg.clone()
        },
        &digest(),
    )
    .await
    .unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("ca_file"),
        "{e}"
    );
    let e = email::send(
        &SmtpConfig {
            from: "nobody at all".into(),
            ca_file: None,
            ..cfg
        },
        &digest(),
    )
    .await
    .unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("\"nobody at all\""),
        "{e}"
    );
}
