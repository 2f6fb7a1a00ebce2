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

/// A TLS server that can only bind every interface (`gnutls-serv`), run in a network
/// namespace of its own (`unshare -n`) so it is reachable from nowhere but here:
/// inside, `socat` bridges its port to a UNIX socket; outside, a forwarder on
/// 127.0.0.1 carries each connection to that socket. Killed (whole process group)
/// on drop. Needs root, `unshare`, `ip` and `socat`.
pub struct IsolatedServer {
    child: Child,
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl IsolatedServer {
    /// `gnutls-serv` with a certificate, key and GnuTLS priority string.
    pub fn gnutls(cert: &Path, key: &Path, priority: &str) -> Result<Self> {
        let cmd = format!(
            "gnutls-serv --port 4433 --x509certfile '{}' --x509keyfile '{}' --priority '{}' \
             --disable-client-cert --http >/dev/null 2>&1 &",
            cert.display(),
            key.display(),
            priority
        );
        Self::start(&cmd, 4433)
    }

    /// Run `server` (a shell command that starts the server in the background,
    /// listening on `inner_port`) in a fresh network namespace.
    pub fn start(server: &str, inner_port: u16) -> Result<Self> {
        Self::start_on(server, inner_port, None)
    }

    /// Like [`IsolatedServer::start`], forwarding from a listener bound beforehand
    /// (when the port must be known before the server starts, e.g. to be written
    /// into certificates it serves).
    pub fn start_on(server: &str, inner_port: u16, outer: Option<TcpListener>) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("bridge.sock");
        let script = format!(
            "ip link set lo up || exit 1; {server}\n\
             for i in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/{inner_port}) 2>/dev/null && break; sleep 0.05; done\n\
             exec socat UNIX-LISTEN:'{}',fork TCP:127.0.0.1:{inner_port}",
            sock.display()
        );
        let mut child = Command::new("unshare")
            .args(["-n", "bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting unshare -n (needs root)")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("isolated server exited with {status}: {err}");
            }
            if Instant::now() > deadline {
                bail!("isolated server did not come up within 15s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let listener = match outer {
            Some(l) => l,
            None => TcpListener::bind("127.0.0.1:0")?,
        };
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || forward(listener, sock, flag));
        Ok(IsolatedServer {
            child,
            port,
            stop,
            _dir: dir,
        })
    }
}

fn forward(
    listener: TcpListener,
    sock: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let Ok(unix) = std::os::unix::net::UnixStream::connect(&sock) else {
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pipe(tcp, unix2));
                std::thread::spawn(move || pipe(unix, tcp2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copy one direction until either side closes, then shut both down.
fn pipe(mut from: impl std::io::Read + Shut, mut to: impl std::io::Write + Shut) {
    let _ = std::io::copy(&mut from, &mut to);
    from.shut();
    to.shut();
}

trait Shut {
    fn shut(&self);
}
impl Shut for TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}
impl Shut for std::os::unix::net::UnixStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for IsolatedServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// A tlslite-ng server (PyPI `tlslite-ng`, on `python3`'s path) speaking `min`..`max`
/// of ssl3, tls1.0, tls1.1, tls1.2 with AES, 3DES and RC4 suites: the one way left to
/// run an SSLv3 server. Killed on drop.
pub struct TlsliteServer {
    child: Child,
    pub port: u16,
    _script: tempfile::TempDir,
}

impl TlsliteServer {
    pub fn start(cert: &Path, key: &Path, min: &str, max: &str) -> Result<Self> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("tlslite_server.py");
        std::fs::write(&script, include_str!("tlslite_server.py"))?;
        let python = std::env::var("CERTKEEPER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(&script)
            .arg(cert)
            .arg(key)
            .arg(min)
            .arg(max)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the tlslite-ng server (python3 with tlslite-ng)")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            bail!("the tlslite-ng server did not start (is tlslite-ng installed?): {err}");
        };
        Ok(TlsliteServer {
            child,
            port,
            _script: dir,
        })
    }
}

impl Drop for TlsliteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx (Debian's) serving one TLS site on a free loopback port from its own prefix,
/// with extra directives for the `server` block (protocols, ciphers …). Killed on drop.
pub struct NginxServer {
    child: Child,
    pub port: u16,
    _prefix: tempfile::TempDir,
}

impl NginxServer {
    /// `fullchain_pem`: the leaf then its intermediates.
    pub fn start(fullchain_pem: &str, key_pem: &str, directives: &str) -> Result<Self> {
        let prefix = tempfile::tempdir()?;
        let p = prefix.path().display().to_string();
        std::fs::write(prefix.path().join("fullchain.pem"), fullchain_pem)?;
        std::fs::write(prefix.path().join("site.key"), key_pem)?;
        let port = free_port()?;
        std::fs::write(
            prefix.path().join("nginx.conf"),
            format!(
                "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name localhost;\n\
                 ssl_certificate {p}/fullchain.pem;\n    ssl_certificate_key {p}/site.key;\n    {directives}\n\
                 location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
            ),
        )?;
        let mut child = Command::new("nginx")
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (Debian nginx-light)")?;
        wait_for_child_port(&mut child, SocketAddr::from(([127, 0, 0, 1], port)))?;
        Ok(NginxServer {
            child,
            port,
            _prefix: prefix,
        })
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
