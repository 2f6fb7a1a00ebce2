//! Debian's pebble ACME test CA and pebble-challtestsrv on loopback, as
//! `shared/stack.md` §4 describes. Ports are fixed by pebble's config, so tests using it
//! must not run at the same time: [`Pebble::start_with`] takes a process-wide lock
//! held until the pebble is dropped, and cargo runs test binaries one after another.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::pki::{KeyKind, LeafSpec, TestPki};
use crate::servers::wait_for_port;

/// How to run pebble.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// `externalAccountBindingRequired` with these key ids and base64url HMAC keys.
    pub eab_keys: Vec<(String, String)>,
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces rejected (pebble's default 5).
    pub nonce_reject_percent: Option<u8>,
    /// The DNS server pebble resolves with (default: challtestsrv on 127.0.0.1:8053).
    pub dns_server: Option<SocketAddr>,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// A running pebble and challtestsrv, killed on drop.
pub struct Pebble {
    children: Vec<Child>,
    _serial: MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    /// The directory URL.
    pub directory: String,
    /// PEM file of the CA behind pebble's own HTTPS listener.
    pub listener_ca: PathBuf,
    /// A dns-01 hook script (`set|clear NAME VALUE`) that talks to challtestsrv.
    pub dns_hook: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    pub fn start() -> Result<Pebble> {
        Self::start_with(&PebbleOptions::default())
    }

    pub fn start_with(opts: &PebbleOptions) -> Result<Pebble> {
        // A test that panicked while holding the lock has still stopped its pebble.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new()?;
        let listener = pki.leaf(
            &LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]),
        )?;
        let listener_ca = dir.path().join("listener-ca.pem");
        std::fs::write(&listener_ca, &pki.root.cert_pem)?;
        let cfg = dir.path().join("pebble.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"pebble":{{"listenAddress":"127.0.0.1:14000","managementListenAddress":"127.0.0.1:15000","certificate":"{}","privateKey":"{}","httpPort":5002,"tlsPort":5001,"ocspResponderURL":"","externalAccountBindingRequired":{},"externalAccountMACKeys":{{{}}},"certificateValidityPeriod":7776000}}}}"#,
                listener.chain_path.display(),
                listener.key_path.display(),
                !opts.eab_keys.is_empty(),
                opts.eab_keys
                    .iter()
                    .map(|(kid, key)| format!("\"{kid}\":\"{key}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )?;
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-management",
                "127.0.0.1:8055",
                "-dns01",
                "127.0.0.1:8053",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pebble-challtestsrv (Debian package pebble)")?;
        let dns = opts
            .dns_server
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8053)));
        let log = std::fs::File::create(dir.path().join("pebble.log"))?;
        let mut pebble_cmd = Command::new("pebble");
        pebble_cmd
            .arg("-config")
            .arg(&cfg)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(p) = opts.nonce_reject_percent {
            pebble_cmd.env("PEBBLE_WFE_NONCEREJECT", p.to_string());
        }
        let pebble_process = pebble_cmd
            .spawn()
            .context("starting pebble (Debian package pebble)")?;
        let mut pebble = Pebble {
            children: vec![challtestsrv, pebble_process],
            _serial: serial,
            dir,
            directory: "https://127.0.0.1:14000/dir".into(),
            listener_ca,
            dns_hook: PathBuf::new(),
        };
        for port in [8055u16, 14000, 15000] {
            wait_for_port(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(20),
            )?;
        }
        let hook = pebble.dir.path().join("dns-hook.sh");
        std::fs::write(
            &hook,
            "#!/bin/sh\n# dns-01 hook for tests: set|clear NAME VALUE through pebble-challtestsrv\nset -e\n\
             case \"$1\" in\n\
             set) curl -fsS -X POST -d \"{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}\" http://127.0.0.1:8055/set-txt ;;\n\
             clear) curl -fsS -X POST -d \"{\\\"host\\\":\\\"$2\\\"}\" http://127.0.0.1:8055/clear-txt ;;\n\
             *) exit 2 ;;\nesac\n",
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        }
        pebble.dns_hook = hook;
        Ok(pebble)
    }

    /// What pebble logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root that signs pebble's issued certificates (regenerated at every start).
    pub fn issuing_root_pem(&self) -> Result<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(&self.listener_ca)
            .arg("https://127.0.0.1:15000/roots/0")
            .output()?;
        anyhow::ensure!(out.status.success(), "fetching pebble's root failed");
        Ok(String::from_utf8(out.stdout)?)
    }
}
