//! Debian's BIND9 (`named`) on a free loopback port with one dynamic zone that a TSIG
//! key may update (TXT records only), for RFC 2136 tests. Every name in the zone has
//! an A record 127.0.0.1 (a wildcard), so an ACME test CA resolving through it finds
//! the loopback.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::servers::{free_port, wait_for_port};

/// A running `named -g`, killed on drop.
pub struct Bind {
    child: Child,
    pub dir: tempfile::TempDir,
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// The key's secret, base64 (as in `secret "…";`).
    pub secret_b64: String,
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bind {
    /// Start named for `zone` with the TSIG key `key_name` (hmac-sha256, `secret_b64`).
    pub fn start(zone: &str, key_name: &str, secret_b64: &str) -> Result<Bind> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        let port = free_port()?;
        std::fs::write(
            dir.path().join("zone.db"),
            format!(
                "$ORIGIN {zone}.\n$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n\
                 @ IN NS ns\nns IN A 127.0.0.1\n@ IN A 127.0.0.1\n* IN A 127.0.0.1\n"
            ),
        )?;
        let conf = dir.path().join("named.conf");
        std::fs::write(
            &conf,
            format!(
                r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret_b64}"; }};
zone "{zone}" {{
  type primary;
  file "{d}/zone.db";
  update-policy {{ grant {key_name} zonesub TXT; }};
}};
"#
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("named.log"))?;
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting named (Debian package bind9)")?;
        let mut bind = Bind {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: zone.to_string(),
            key_name: key_name.to_string(),
            secret_b64: secret_b64.to_string(),
        };
        if let Err(e) = wait_for_port(bind.addr, Duration::from_secs(20)) {
            let _ = bind.child.kill();
            bail!("named did not start: {e}\n{}", bind.log());
        }
        // Listening on TCP comes before the zone is loaded; wait for its SOA.
        for _ in 0..100 {
            if bind.dig(zone, "SOA")?.contains("hostmaster") {
                return Ok(bind);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("named did not load {zone}:\n{}", bind.log())
    }

    /// `dig +short` of `name` and `rtype` at this server (over UDP, as resolvers ask).
    pub fn dig(&self, name: &str, rtype: &str) -> Result<String> {
        let out = Command::new("dig")
            .arg(format!("@{}", self.addr.ip()))
            .args([
                "-p",
                &self.addr.port().to_string(),
                "+short",
                "+time=2",
                "+tries=1",
            ])
            .args([name, rtype])
            .output()
            .context("running dig (Debian package bind9-dnsutils)")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// What named logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}
