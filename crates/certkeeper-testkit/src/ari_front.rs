//! An "ARI front" for Debian's pebble: an in-process HTTPS reverse proxy that adds
//! ACME Renewal Information (RFC 9773) in front of a real pebble. Debian's pebble 2.4
//! has no `renewalInfo` in its directory, so without this the ARI path of the client
//! could never run against a real CA.
//!
//! Every ACME request is forwarded to pebble unchanged (same method, path, body and
//! JWS; the `Host` header is the front's, so pebble's own URLs and its check of the
//! JWS `url` both name the front): pebble does all the issuance. The front only
//! - adds `renewalInfo` to the directory and answers `GET {renewalInfo}/{certID}`
//!   with a `suggestedWindow` the test sets, and a `Retry-After`;
//! - records the `replaces` field of each newOrder payload (pebble 2.4 ignores it), and
//!   reflects it in the order objects, as RFC 9773 §5 asks of a server that accepts it;
//! - answers a newOrder with a rate-limit problem (429, `Retry-After`, a fresh
//!   `Replay-Nonce`) when the test asks, without forwarding it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use time::OffsetDateTime;

use crate::https::HttpsServer;
use crate::pebble::Pebble;
use crate::pki::{KeyKind, LeafSpec, TestPki};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A newOrder the front saw.
#[derive(Debug, Clone)]
pub struct OrderSeen {
    /// When it arrived.
    pub at: OffsetDateTime,
    /// Its `replaces` (an ARI certificate identifier), if any.
    pub replaces: Option<String>,
    /// The status answered (201 from pebble, or the front's 429).
    pub status: u16,
}

struct Inner {
    default_window: (OffsetDateTime, OffsetDateTime),
    windows: HashMap<String, (OffsetDateTime, OffsetDateTime)>,
    retry_after_secs: u64,
    rate_limits: VecDeque<u64>,
    orders: Vec<OrderSeen>,
    renewal_info_asked: Vec<(String, OffsetDateTime)>,
    /// Order URL → its `replaces`.
    replaces_of: HashMap<String, String>,
}

struct Shared {
    upstream: String,
    base: String,
    host: String,
    new_order_path: String,
    new_nonce_path: String,
    client: reqwest::Client,
    inner: Mutex<Inner>,
}

/// A running ARI front, stopped on drop.
pub struct AriFront {
    /// The directory URL, to configure the client with.
    pub directory: String,
    /// PEM of the CA behind the front's HTTPS listener.
    pub ca_file: PathBuf,
    shared: Arc<Shared>,
    _server: HttpsServer,
    _pki: TestPki,
}

impl AriFront {
    /// A front for `pebble` on a free loopback port. The default window is 10 to 11
    /// days from now; the default Retry-After of renewal information one hour.
    pub async fn start(pebble: &Pebble) -> Result<AriFront> {
        let pki = TestPki::new()?;
        let leaf = pki.leaf(
            &LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]),
        )?;
        let ca_file = pki.dir().join("ari-front-ca.pem");
        std::fs::write(&ca_file, &pki.root.cert_pem)?;
        let upstream = pebble
            .directory
            .trim_end_matches("/dir")
            .trim_end_matches('/')
            .to_string();
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&pebble.listener_ca)?;
        for c in
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
                &pem,
            )
        {
            roots.add(c?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;

        // The port first (the Host header and the URLs depend on it), then the app.
        let slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let app = {
            let slot = slot.clone();
            axum::Router::new().fallback(move |req: Request| {
                let shared = slot.lock().unwrap().clone();
                async move {
                    match shared {
                        Some(s) => handle(State(s), req).await,
                        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            })
        };
        let server = HttpsServer::start(app, &leaf.chain_path, &leaf.key_path).await?;
        let host = format!("127.0.0.1:{}", server.addr.port());
        let base = format!("https://{host}");
        let dir: serde_json::Value = client
            .get(format!("{upstream}/dir"))
            .header(header::HOST, &host)
            .send()
            .await
            .context("pebble's directory")?
            .json()
            .await?;
        let path_of = |key: &str| -> Result<String> {
            let url = dir[key]
                .as_str()
                .with_context(|| format!("no {key} in pebble's directory"))?;
            Ok(reqwest::Url::parse(url)?.path().to_string())
        };
        let now = OffsetDateTime::now_utc();
        let shared = Arc::new(Shared {
            new_order_path: path_of("newOrder")?,
            new_nonce_path: path_of("newNonce")?,
            upstream,
            base: base.clone(),
            host,
            client,
            inner: Mutex::new(Inner {
                default_window: (
                    now + time::Duration::days(10),
                    now + time::Duration::days(11),
                ),
                windows: HashMap::new(),
                retry_after_secs: 3600,
                rate_limits: VecDeque::new(),
                orders: Vec::new(),
                renewal_info_asked: Vec::new(),
                replaces_of: HashMap::new(),
            }),
        });
        *slot.lock().unwrap() = Some(shared.clone());
        Ok(AriFront {
            directory: format!("{base}/dir"),
            ca_file,
            shared,
            _server: server,
            _pki: pki,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The window answered for certificates without a window of their own.
    pub fn set_default_window(&self, start: OffsetDateTime, end: OffsetDateTime) {
        self.inner().default_window = (start, end);
    }

    /// The window answered for the certificate with ARI identifier `cert_id`.
    pub fn set_window(&self, cert_id: &str, start: OffsetDateTime, end: OffsetDateTime) {
        self.inner()
            .windows
            .insert(cert_id.to_string(), (start, end));
    }

    /// The Retry-After (seconds) of renewal information answers.
    pub fn set_retry_after(&self, secs: u64) {
        self.inner().retry_after_secs = secs;
    }

    /// Answer the next newOrder with 429 rateLimited and `Retry-After: secs`.
    pub fn rate_limit_next_order(&self, secs: u64) {
        self.inner().rate_limits.push_back(secs);
    }

    /// The newOrders seen so far.
    pub fn orders(&self) -> Vec<OrderSeen> {
        self.inner().orders.clone()
    }

    /// The certificate identifiers renewal information was asked for, and when.
    pub fn renewal_info_asked(&self) -> Vec<(String, OffsetDateTime)> {
        self.inner().renewal_info_asked.clone()
    }
}

/// The ARI certificate identifier of `der` (RFC 9773 §4.1), computed with OpenSSL:
/// base64url(authority key identifier) "." base64url(serial number DER content).
pub fn cert_id(der: &[u8]) -> Result<String> {
    let x = openssl::x509::X509::from_der(der)?;
    let aki = x
        .authority_key_id()
        .context("the certificate has no authority key identifier")?;
    let mut serial = x.serial_number().to_bn()?.to_vec();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        serial.insert(0, 0);
    }
    Ok(format!(
        "{}.{}",
        B64.encode(aki.as_slice()),
        B64.encode(&serial)
    ))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    match proxy(&s, req).await {
        Ok(r) => r,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("ARI front: {e:#}")).into_response(),
    }
}

async fn proxy(s: &Shared, req: Request) -> Result<Response> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await?;

    if method == Method::GET
        && let Some(id) = path.strip_prefix("/renewal-info/")
    {
        let (window, retry) = {
            let mut i = s.inner.lock().unwrap_or_else(|e| e.into_inner());
            i.renewal_info_asked
                .push((id.to_string(), OffsetDateTime::now_utc()));
            (
                i.windows.get(id).copied().unwrap_or(i.default_window),
                i.retry_after_secs,
            )
        };
        let doc = serde_json::json!({"suggestedWindow": {"start": rfc3339(window.0), "end": rfc3339(window.1)}});
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (header::RETRY_AFTER, retry.to_string()),
            ],
            doc.to_string(),
        )
            .into_response());
    }

    let mut replaces = None;
    if method == Method::POST && path == s.new_order_path {
        replaces = jws_payload(&body).and_then(|p| {
            p.get("replaces")
                .and_then(|r| r.as_str())
                .map(str::to_string)
        });
        let limited = {
            let mut i = s.inner.lock().unwrap_or_else(|e| e.into_inner());
            let limited = i.rate_limits.pop_front();
            if limited.is_some() {
                i.orders.push(OrderSeen {
                    at: OffsetDateTime::now_utc(),
                    replaces: replaces.clone(),
                    status: 429,
                });
            }
            limited
        };
        if let Some(secs) = limited {
            return rate_limited(s, secs).await;
        }
    }

    let mut up = s
        .client
        .request(method.clone(), format!("{}{path_q}", s.upstream))
        .header(header::HOST, &s.host)
        .body(body);
    for name in [header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT] {
        if let Some(v) = headers.get(&name) {
            up = up.header(name, v);
        }
    }
    let rsp = up.send().await.context("forwarding to pebble")?;
    let status = rsp.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in rsp.headers() {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        let v = value
            .to_str()
            .map(|v| v.replace(&s.upstream, &s.base))
            .ok()
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .unwrap_or_else(|| value.clone());
        out_headers.append(name.clone(), v);
    }
    let is_json = rsp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let location = rsp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.replace(&s.upstream, &s.base));
    let mut bytes: Bytes = rsp.bytes().await?;
    if is_json {
        let text = String::from_utf8_lossy(&bytes).replace(&s.upstream, &s.base);
        let mut doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if method == Method::GET && path == "/dir" && doc.is_object() {
            doc["renewalInfo"] = format!("{}/renewal-info", s.base).into();
        }
        let mut i = s.inner.lock().unwrap_or_else(|e| e.into_inner());
        if method == Method::POST && path == s.new_order_path {
            i.orders.push(OrderSeen {
                at: OffsetDateTime::now_utc(),
                replaces: replaces.clone(),
                status: status.as_u16(),
            });
            if let (Some(r), Some(url)) = (&replaces, &location) {
                i.replaces_of.insert(url.clone(), r.clone());
            }
        }
        // Reflect `replaces` in the order object (RFC 9773 §5).
        let url = format!("{}{path}", s.base);
        let reflected = match (&replaces, i.replaces_of.get(&url)) {
            (Some(r), _) if status.is_success() => Some(r.clone()),
            (_, Some(r)) => Some(r.clone()),
            _ => None,
        };
        drop(i);
        if let Some(r) = reflected
            && doc.is_object()
            && doc.get("replaces").is_none()
        {
            doc["replaces"] = r.into();
        }
        bytes = if doc.is_null() {
            Bytes::from(text)
        } else {
            Bytes::from(doc.to_string())
        };
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    Ok(out)
}

/// The decoded payload of a flattened JWS (`{"protected","payload","signature"}`).
fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = B64.decode(jws.get("payload")?.as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// A rate-limit refusal as a CA sends it (RFC 8555 §6.6): 429, a problem document,
/// `Retry-After`, a fresh nonce and the directory link.
async fn rate_limited(s: &Shared, secs: u64) -> Result<Response> {
    let nonce = s
        .client
        .head(format!("{}{}", s.upstream, s.new_nonce_path))
        .header(header::HOST, &s.host)
        .send()
        .await?
        .headers()
        .get("replay-nonce")
        .cloned();
    let doc = serde_json::json!({
        "type": "urn:ietf:params:acme:error:rateLimited",
        "detail": "too many new orders recently: retry after the time in Retry-After",
        "status": 429,
    });
    let mut rsp = (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "application/problem+json".to_string()),
            (header::RETRY_AFTER, secs.to_string()),
            (header::LINK, format!("<{}/dir>;rel=\"index\"", s.base)),
        ],
        doc.to_string(),
    )
        .into_response();
    if let Some(n) = nonce {
        rsp.headers_mut().insert("replay-nonce", n);
    }
    Ok(rsp)
}
