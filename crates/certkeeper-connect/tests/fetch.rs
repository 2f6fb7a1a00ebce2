//! The AIA fetcher against a real HTTP server (axum) on loopback: each fetch rule gives
//! its own error, and an allowed fetch returns the body.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use certkeeper_connect::fetch::{FetchError, FetchPolicy, fetch};

const CERT: &[u8] = b"pretend this is DER";

async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/ca.crt", get(|| async { CERT }))
        .route(
            "/elsewhere",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://ca.example.net/ca.crt")],
                )
            }),
        )
        .route(
            "/same-host",
            get(|| async {
                (
                    StatusCode::MOVED_PERMANENTLY,
                    [(header::LOCATION, "/ca.crt")],
                )
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        // 10 MiB announced up front.
        .route("/huge-declared", get(|| async { vec![0u8; 10 << 20] }))
        // An endless chunked body: no Content-Length to refuse it by.
        .route(
            "/huge-streamed",
            get(|| async {
                let chunks = futures_util::stream::repeat_with(|| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 64 * 1024]))
                });
                Response::new(Body::from_stream(chunks))
            }),
        )
        // Headers never come.
        .route(
            "/stall-headers",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        // Headers and one chunk, then nothing.
        .route(
            "/stall-body",
            get(|| async {
                let first = futures_util::stream::once(async {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"0123"))
                });
                let never = futures_util::stream::pending();
                use futures_util::StreamExt;
                Body::from_stream(first.chain(never)).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn loopback_allowed() -> FetchPolicy {
    FetchPolicy {
        allow_private: vec!["127.0.0.0/8".parse().unwrap()],
        max_bytes: 64 * 1024,
        timeout: Duration::from_secs(2),
        extra_roots: Vec::new(),
    }
}

#[tokio::test]
async fn an_allowed_fetch_returns_the_body() {
    let addr = serve().await;
    let body = fetch(&format!("http://{addr}/ca.crt"), &loopback_allowed())
        .await
        .unwrap();
    assert_eq!(body, CERT);
    // By name too: localhost resolves to loopback, which the allow-list admits.
    let body = fetch(
        &format!("http://localhost:{}/ca.crt", addr.port()),
        &loopback_allowed(),
    )
    .await;
    // localhost may resolve to ::1 first on some hosts, which 127.0.0.0/8 does not cover.
    match body {
        Ok(b) => assert_eq!(b, CERT),
        Err(e) => assert_eq!(e.code(), "fetch_private_address", "{e}"),
    }
}

#[tokio::test]
async fn private_addresses_are_refused_without_the_allow_list() {
    let addr = serve().await;
    let policy = FetchPolicy::default();
    for url in [
        format!("http://{addr}/ca.crt"),
        format!("http://localhost:{}/ca.crt", addr.port()),
        format!("http://[::1]:{}/ca.crt", addr.port()),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.1/ca.crt".to_string(),
    ] {
        let e = fetch(&url, &policy).await.unwrap_err();
        assert!(matches!(e, FetchError::PrivateAddress { .. }), "{url}: {e}");
        assert_eq!(e.code(), "fetch_private_address");
    }
    // An allow-list for another range does not admit loopback.
    let other = FetchPolicy {
        allow_private: vec!["10.0.0.0/8".parse().unwrap()],
        ..FetchPolicy::default()
    };
    let e = fetch(&format!("http://{addr}/ca.crt"), &other)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "fetch_private_address");
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let addr = serve().await;
    let e = fetch(&format!("http://{addr}/elsewhere"), &loopback_allowed())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        FetchError::Redirect {
            url: format!("http://{addr}/elsewhere"),
            location: "http://ca.example.net/ca.crt".into()
        }
    );
    assert_eq!(e.code(), "fetch_redirect_refused");
    // Not even to the same host: the rule is "none at all".
    let e = fetch(&format!("http://{addr}/same-host"), &loopback_allowed())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "fetch_redirect_refused", "{e}");
}

#[tokio::test]
async fn huge_answers_are_cut_off() {
    let addr = serve().await;
    for path in ["huge-declared", "huge-streamed"] {
        let started = Instant::now();
        let e = fetch(&format!("http://{addr}/{path}"), &loopback_allowed())
            .await
            .unwrap_err();
        assert!(
            matches!(e, FetchError::TooLarge { max: 65536, .. }),
            "{path}: {e}"
        );
        assert_eq!(e.code(), "fetch_too_large");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
}

#[tokio::test]
async fn stalled_answers_time_out() {
    let addr = serve().await;
    let policy = FetchPolicy {
        timeout: Duration::from_millis(700),
        ..loopback_allowed()
    };
    for path in ["stall-headers", "stall-body"] {
        let started = Instant::now();
        let e = fetch(&format!("http://{addr}/{path}"), &policy)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "fetch_timeout", "{path}: {e}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{path}: {took:?}"
        );
    }
}

#[tokio::test]
async fn other_schemes_bad_urls_and_error_statuses() {
    let addr = serve().await;
    let p = loopback_allowed();
    for (url, code) in [
        (
            "ldap://ldap.example.com/cn=CA?cACertificate".to_string(),
            "fetch_scheme_not_allowed",
        ),
        ("file:///etc/passwd".to_string(), "fetch_scheme_not_allowed"),
        (
            "ftp://ftp.example.com/ca.crt".to_string(),
            "fetch_scheme_not_allowed",
        ),
        ("not a url".to_string(), "fetch_bad_url"),
        (format!("http://user:pw@{addr}/ca.crt"), "fetch_bad_url"),
        (format!("http://{addr}/missing"), "fetch_http_status"),
        (
            "http://no-such-host.invalid/ca.crt".to_string(),
            "fetch_unresolvable",
        ),
    ] {
        let e = fetch(&url, &p).await.unwrap_err();
        assert_eq!(e.code(), code, "{url}: {e}");
    }
    // Nothing listens on a freshly closed port.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    let e = fetch(&format!("http://{closed}/ca.crt"), &p)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "fetch_failed", "{e}");
}

/// An https AIA server with a certificate from a test CA: trusted only when the
/// operator names that CA (`[fetch] ca_files`), and the other rules hold over https.
#[tokio::test]
async fn https_fetches_trust_the_operators_ca_files_and_keep_the_rules() {
    use certkeeper_testkit::https::HttpsServer;
    use certkeeper_testkit::pki::{KeyKind, LeafSpec, TestPki};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let leaf = pki
        .leaf(&LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]))
        .unwrap();
    let app = Router::new()
        .route("/ca.crt", get(|| async { CERT }))
        .route(
            "/elsewhere",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "https://ca.example.net/ca.crt")],
                )
            }),
        );
    let server = HttpsServer::start(app, &leaf.chain_path, &leaf.key_path)
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{}/ca.crt", server.addr.port());

    // The platform's roots do not know the test CA: a TLS error of its own.
    let e = fetch(&url, &loopback_allowed()).await.unwrap_err();
    assert_eq!(e.code(), "fetch_tls_untrusted", "{e}");
    assert!(e.to_string().contains("[fetch] ca_files"), "{e}");

    // Trusted through ca_files: the body.
    let ca = pki.dir().join("aia-ca.pem");
    std::fs::write(&ca, &pki.root.cert_pem).unwrap();
    let trusting = FetchPolicy {
        extra_roots: certkeeper_connect::fetch::read_ca_files(&[ca]).unwrap(),
        ..loopback_allowed()
    };
    assert_eq!(fetch(&url, &trusting).await.unwrap(), CERT);
    // Redirects are refused over https too.
    let moved = format!("https://127.0.0.1:{}/elsewhere", server.addr.port());
    let e = fetch(&moved, &trusting).await.unwrap_err();
    assert_eq!(e.code(), "fetch_redirect_refused", "{e}");
    // A trusted CA does not open private addresses.
    let strict = FetchPolicy {
        allow_private: Vec::new(),
        ..trusting.clone()
    };
    let e = fetch(&url, &strict).await.unwrap_err();
    assert_eq!(e.code(), "fetch_private_address", "{e}");
    // A ca_files entry that holds no certificate is a clear error.
    let junk = pki.dir().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = certkeeper_connect::fetch::read_ca_files(&[junk]).unwrap_err();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}
