//! Real TLS servers on loopback for tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Wait until something accepts TCP connections on `addr`, or fail after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listened on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `openssl s_server` process, killed on drop.
pub struct OpensslServer {
    child: Child,
    pub port: u16,
}

impl OpensslServer {
    /// Start `openssl s_server -www` on a free loopback port with the given
    /// certificate, key, optional extra chain file and extra arguments.
    pub fn start(cert: &Path, key: &Path, chain: Option<&Path>, extra: &[&str]) -> Result<Self> {
        Self::start_at(None, cert, key, chain, extra)
    }

    /// Like [`OpensslServer::start`], on a given address (e.g. a well-known port on a
    /// loopback address of its own) instead of a free port on 127.0.0.1.
    pub fn start_at(
        at: Option<SocketAddr>,
        cert: &Path,
        key: &Path,
        chain: Option<&Path>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut last_err = None;
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..5 {
            let (ip, port) = match at {
                Some(a) => (a.ip(), a.port()),
                None => (std::net::IpAddr::from([127, 0, 0, 1]), free_port()?),
            };
            let mut cmd = Command::new("openssl");
            cmd.arg("s_server")
                .arg("-accept")
                .arg(SocketAddr::new(ip, port).to_string())
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .arg("-www")
                .arg("-quiet");
            if let Some(c) = chain {
                cmd.arg("-cert_chain").arg(c);
            }
            cmd.args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().context("starting openssl s_server")?;
            let addr = SocketAddr::new(ip, port);
            match wait_for_child_port(&mut child, addr) {
                Ok(()) => return Ok(OpensslServer { child, port }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("s_server did not start")))
    }
}

/// Wait for `child` to listen on `addr`; fail at once with its stderr if it exits.
fn wait_for_child_port(child: &mut Child, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("openssl s_server exited with {status}: {err}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listened on {addr} within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
