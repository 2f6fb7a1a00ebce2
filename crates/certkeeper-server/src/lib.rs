//! The certkeeper server as a library: [`prepare`] opens the inventory, makes or loads
//! the server's certificate and first administrator token; [`Prepared::launch`] serves
//! the REST API on a listener until `shutdown` resolves. Tests bind port 0 in-process.

mod acme_agent;
mod acme_http;
mod api;
mod auth;
mod deploy;
mod error;
mod identity;
mod manage;
pub mod notify;
mod tokens;
mod views;
pub mod vulnscans;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certkeeper_core::Fingerprint;
use certkeeper_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio::net::TcpListener;

pub use api::{OPENAPI_JSON, ROUTE_NEEDS, ROUTES, route_need, router};
pub use auth::Need;
pub use auth::{new_token, token_hash};
pub use error::ApiError;

/// Everything the server needs, already layered (defaults, TOML, environment, flags)
/// by the caller.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// `None`: SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Serve plain HTTP (behind a proxy, or loopback tests).
    pub http: bool,
    /// The address stated in messages and tickets.
    pub external_url: Option<String>,
    /// Preset administrator token (`CERTKEEPER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Extra names for the generated certificate (the listen address is added by the binary).
    pub tls_names: Vec<String>,
    /// Largest report body accepted, in bytes.
    pub max_report_bytes: usize,
    /// Failed authentications allowed per client address per minute.
    pub auth_failures_per_minute: u32,
    /// Largest page size of listings.
    pub max_page_size: u32,
    /// The key-encryption key, base64 (`CERTKEEPER_KEK`); else `kek_file`.
    pub kek: Option<String>,
    /// File holding the KEK [default: DATA_DIR/kek.key, created at first start].
    pub kek_file: Option<PathBuf>,
    /// Earlier KEKs, kept only to re-wrap keys sealed under them (rotation).
    pub previous_kek_files: Vec<PathBuf>,
    /// Rules imported certificates must follow.
    pub policy: certkeeper_core::policy::CertificatePolicy,
    /// An ACME CA to order certificates from (dns-01 through a hook).
    pub acme: Option<certkeeper_connect::acme::AcmeConfig>,
    /// Limits and trust of the vulnerability scans the server runs.
    pub vulnscan: vulnscans::VulnScanSettings,
    /// Rules for outbound fetches (CA-issuer certificates from AIA URLs).
    pub fetch: certkeeper_connect::fetch::FetchPolicy,
    /// Renew with the certificate's existing key instead of a new one.
    pub reuse_key: bool,
    /// How long an order whose http-01 challenges an agent answers waits for the
    /// agent to take each job and report serving the token.
    pub http01_agent_wait: std::time::Duration,
    /// Expiry notifications, reports, channels and ticketing systems.
    pub notify: notify::NotifySettings,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self
                    .database_url
                    .as_deref()
                    .map(certkeeper_store::redact_url),
            )
            .field("http", &self.http)
            .field("external_url", &self.external_url)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("tls_names", &self.tls_names)
            .field("max_report_bytes", &self.max_report_bytes)
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .field("kek", &self.kek.as_ref().map(|_| "***"))
            .field("kek_file", &self.kek_file)
            .field("previous_kek_files", &self.previous_kek_files)
            .field("policy", &self.policy)
            .field("acme", &self.acme)
            .field("vulnscan", &self.vulnscan)
            .field("fetch", &self.fetch)
            .field("reuse_key", &self.reuse_key)
            .field("notify", &self.notify)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            database_url: None,
            http: false,
            external_url: None,
            admin_token: None,
            tls_names: Vec::new(),
            max_report_bytes: 32 * 1024 * 1024,
            auth_failures_per_minute: 20,
            max_page_size: 1000,
            kek: None,
            kek_file: None,
            previous_kek_files: Vec::new(),
            policy: Default::default(),
            acme: None,
            vulnscan: Default::default(),
            fetch: Default::default(),
            reuse_key: false,
            http01_agent_wait: std::time::Duration::from_secs(45),
            notify: notify::NotifySettings::new(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The inventory could not be opened or migrated.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Files in the data directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The server's certificate or key is unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The key-encryption key is missing or malformed.
    #[error("key-encryption key: {0}")]
    Kek(String),
}

/// Shared state of the request handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<ServerConfig>,
    limiter: Arc<auth::AuthLimiter>,
    vault: Arc<certkeeper_pki::vault::Vault>,
    /// The certificate served, when serving HTTPS.
    tls: Option<Arc<identity::SwappableCert>>,
}

/// A server ready to serve.
pub struct Prepared {
    pub state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The administrator token, when this start created it (print it once).
    pub created_admin_token: Option<String>,
    /// SHA-256 of the server's certificate (agents pin it), when serving HTTPS.
    pub certificate_fingerprint: Option<Fingerprint>,
    /// The http-01 responder's listener (`[acme] http01_listen`), bound at prepare.
    http01: Option<TcpListener>,
}

/// Open the inventory, load or create the server identity and the first admin token.
pub async fn prepare(config: ServerConfig) -> Result<Prepared, ServerError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| ServerError::Io { context, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io("creating the data directory"))?;
    #[cfg(unix)]
    {
        // The database holds token hashes and sealed keys: the owner's only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting the data directory"))?;
    }
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| certkeeper_store::sqlite_url_in(&config.data_dir));
    let store = Store::open(&url).await?;
    let now = OffsetDateTime::now_utc();

    let mut created_admin_token = None;
    if let Some(preset) = &config.admin_token {
        store.add_admin_token(&token_hash(preset), now).await?;
    } else {
        // Written before it is claimed (a full disk must not leave a token nobody has),
        // and never over a file another start wrote.
        let path = config.data_dir.join("admin.token");
        let token = new_token("ck_admin_");
        if identity::write_secret_new(&path, token.as_bytes()).map_err(io("writing admin.token"))? {
            if store.init_admin_token(&token_hash(&token), now).await? {
                created_admin_token = Some(token);
            } else {
                // Another server of this database made the token first; ours is void.
                let _ = std::fs::remove_file(&path);
            }
        } else if let Ok(existing) = std::fs::read_to_string(&path)
            && !existing.trim().is_empty()
        {
            // A token file from an earlier start claims a database that has none yet
            // (say, a new PostgreSQL database behind an old data directory).
            store
                .init_admin_token(&token_hash(existing.trim()), now)
                .await?;
        }
    }

    let limiter = Arc::new(auth::AuthLimiter::new(config.auth_failures_per_minute));
    let vault = Arc::new(identity::load_vault(&config)?);
    identity::check_kek(&store, &vault).await?;
    let (tls, resolver, certificate_fingerprint) = if config.http {
        (None, None, None)
    } else {
        let id = identity::load_or_create(&config.data_dir, &config.tls_names, now)?;
        let fp = id.resolver.fingerprint();
        // The server's own certificate is in its inventory, watched like any other.
        if store.sealed_key(&fp).await?.is_none() {
            let cert = certkeeper_pki::parse_der(&id.leaf_der)
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            let sealed = vault
                .seal(&id.key_der, fp.to_string().as_bytes())
                .map_err(|e| ServerError::Kek(e.to_string()))?;
            let key = certkeeper_store::StoredKey {
                kek_id: sealed.kek_id,
                wrapped_dek: sealed.wrapped_dek,
                ciphertext: sealed.ciphertext,
            };
            let parsed = certkeeper_store::ParsedCert {
                facts: cert,
                der: id.leaf_der.clone(),
            };
            store
                .save_import(&[parsed], true, Some(&key), None, "server", now)
                .await?;
        }
        (Some(id.config), Some(id.resolver), Some(fp))
    };
    let mut certificate_fingerprint = certificate_fingerprint;
    if let Some(r) = &resolver
        && let Some(sha) = store.setting("server_certificate").await?
        && let Ok(fp) = sha.parse::<Fingerprint>()
        && fp != r.fingerprint()
    {
        match identity::certified_from_inventory(&store, &vault, &fp).await {
            Ok(ck) => {
                r.swap(ck, fp);
                certificate_fingerprint = Some(fp);
            }
            Err(e) => {
                tracing::warn!(certificate = %fp, error = %e, "cannot serve the configured certificate; serving the generated one")
            }
        }
    }
    if let Some(r) = &resolver {
        // A certificate chosen earlier (or by another replica) takes over, now and later.
        tokio::spawn(identity::follow_setting(
            store.clone(),
            vault.clone(),
            r.clone(),
            Duration::from_secs(30),
        ));
    }
    // Keys sealed under an earlier KEK are re-wrapped in the background; they stay
    // usable throughout, so rotation needs no downtime.
    tokio::spawn(identity::rewrap_all(store.clone(), vault.clone()));
    let state = AppState {
        store,
        config: Arc::new(config),
        limiter,
        vault,
        tls: resolver,
    };
    // Renewal runs on every replica; claims in the database keep it once per certificate.
    let renewer = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            if let Err(e) = manage::renewal_pass(&renewer, OffsetDateTime::now_utc()).await {
                tracing::warn!(error = %e.message, "renewal pass failed");
            }
        }
    });
    // Scheduled vulnerability scans: every replica looks, a claim per occurrence in the
    // database starts each once.
    // and scans whose agents' jobs ended without every result are closed.
    let scheduler = state.clone();
    tokio::spawn(async move {
        loop {
            let now = OffsetDateTime::now_utc();
            if !scheduler.config.vulnscan.schedules.is_empty()
                && let Err(e) = vulnscans::schedule_pass(&scheduler, now).await
            {
                tracing::warn!(error = %e.message, "scan schedule pass failed");
            }
            match scheduler
                .store
                .sweep_scans(now, time::Duration::hours(6))
                .await
            {
                Ok(closed) if !closed.is_empty() => {
                    tracing::info!(?closed, "scans closed by the sweep")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scan sweep failed"),
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    // Notifications and tickets: schedules claimed once per occurrence, deliveries
    // and ticket work claimed with leases, on every replica.
    if state.config.notify.background {
        let notifier = state.clone();
        tokio::spawn(async move {
            loop {
                notify::background_pass(&notifier, OffsetDateTime::now_utc()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
    }
    let http01 = match state.config.acme.as_ref().and_then(|a| a.http01_listen) {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Io {
                    context: format!("cannot listen for http-01 challenges on {addr}"),
                    source,
                })?,
        ),
        None => None,
    };
    Ok(Prepared {
        state,
        tls,
        created_admin_token,
        certificate_fingerprint,
        http01,
    })
}

impl Prepared {
    /// Serve on `listener` until `shutdown` resolves, then finish in-flight requests
    /// (at most 10 s) and return.
    pub async fn launch(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = router(self.state.clone());
        // The http-01 responder lives as long as the API listener.
        let responder = self.http01.map(|l| {
            let app = acme_http::router(self.state.store.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::warn!(error = %e, "the http-01 responder stopped");
                }
            })
        });
        let result = match self.tls {
            None => axum::serve(
                // Small responses must not wait for a delayed ACK (Nagle).
                axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServerError::Io {
                context: "serving HTTP".into(),
                source,
            }),
            Some(tls) => serve_tls(listener, app, tls, shutdown).await,
        };
        if let Some(r) = responder {
            r.abort();
        }
        self.state.store.close().await;
        result
    }
}

async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::ServiceExt;

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait for a delayed ACK (Nagle).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
            let svc =
                app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
