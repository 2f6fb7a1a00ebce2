//! Revocation fixtures: a CA run with `openssl ca` (index.txt, serials, CRLs),
//! leaves that carry AIA OCSP and CRL distribution point URLs, revocation with a
//! reason, an `openssl ocsp` responder on that index (in a network namespace of
//! its own, since it binds every interface), DER OCSP responses for stapling
//! (`openssl ocsp -respout`), and a small HTTP server that serves a body, stalls,
//! answers garbage or redirects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::servers::{IsolatedServer, wait_for_port};

/// A CA managed by `openssl ca` in a temp dir.
pub struct OpensslCa {
    dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: Vec<u8>,
    responses: std::sync::atomic::AtomicU32,
}

/// A leaf issued by [`OpensslCa`].
#[derive(Debug, Clone)]
pub struct CaLeaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: Vec<u8>,
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn pem_to_der(pem_path: &Path) -> Result<Vec<u8>> {
    run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pem_path))
}

const CONFIG: &str = r#"
[req]
distinguished_name = req_dn
[req_dn]
[ca]
default_ca = ca_default
[ca_default]
dir = DIR
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 7
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
[leaf_ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:${ENV::LEAF_NAME}
authorityInfoAccess = OCSP;URI:${ENV::LEAF_OCSP}
crlDistributionPoints = URI:${ENV::LEAF_CRL}
[ocsp_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, OCSPSigning
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"#;

impl OpensslCa {
    /// A self-signed ECDSA P-256 CA.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::create_dir(d.join("newcerts"))?;
        std::fs::write(d.join("index.txt"), "")?;
        std::fs::write(d.join("serial"), "1000\n")?;
        std::fs::write(d.join("crlnumber"), "01\n")?;
        std::fs::write(
            d.join("ca.cnf"),
            CONFIG.replace("DIR", &d.display().to_string()),
        )?;
        let (cert_path, key_path) = (d.join("ca.crt"), d.join("ca.key"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-days", "365"])
            .args(["-subj", "/O=certkeeper tests/CN=certkeeper revocation CA"])
            .arg("-config")
            .arg(d.join("ca.cnf"))
            .args(["-extensions", "ca_ext", "-keyout"])
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .env("LEAF_NAME", "x")
            .env("LEAF_OCSP", "x")
            .env("LEAF_CRL", "x"))?;
        let der = pem_to_der(&cert_path)?;
        Ok(OpensslCa {
            dir,
            cert_path,
            key_path,
            der,
            responses: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn ca(&self) -> Command {
        let mut c = Command::new("openssl");
        c.arg("ca")
            .arg("-config")
            .arg(self.dir().join("ca.cnf"))
            .arg("-batch")
            .env("LEAF_NAME", "x")
            .env("LEAF_OCSP", "x")
            .env("LEAF_CRL", "x");
        c
    }

    /// A leaf for `name` whose AIA names `ocsp_url` and whose CRL DP is `crl_url`.
    pub fn leaf(&self, name: &str, ocsp_url: &str, crl_url: &str) -> Result<CaLeaf> {
        let d = self.dir();
        let n = std::fs::read_to_string(d.join("serial"))?
            .trim()
            .to_string();
        let key_path = d.join(format!("leaf-{n}.key"));
        let csr = d.join(format!("leaf-{n}.csr"));
        let cert_path = d.join(format!("leaf-{n}.crt"));
        run(Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key_path)
            .arg("-out")
            .arg(&csr))?;
        run(self
            .ca()
            .args(["-extensions", "leaf_ext", "-days", "90", "-notext", "-in"])
            .arg(&csr)
            .arg("-out")
            .arg(&cert_path)
            .env("LEAF_NAME", name)
            .env("LEAF_OCSP", ocsp_url)
            .env("LEAF_CRL", crl_url))?;
        let der = pem_to_der(&cert_path)?;
        Ok(CaLeaf {
            cert_path,
            key_path,
            der,
        })
    }

    /// `openssl ca -revoke` with a CRL reason such as `keyCompromise`.
    pub fn revoke(&self, leaf: &CaLeaf, reason: &str) -> Result<()> {
        run(self
            .ca()
            .arg("-revoke")
            .arg(&leaf.cert_path)
            .args(["-crl_reason", reason]))?;
        Ok(())
    }

    /// A fresh CRL (DER) from the index.
    pub fn crl_der(&self) -> Result<Vec<u8>> {
        let pem = self.dir().join("ca.crl.pem");
        run(self.ca().arg("-gencrl").arg("-out").arg(&pem))?;
        run(Command::new("openssl")
            .args(["crl", "-outform", "DER", "-in"])
            .arg(&pem))
    }

    /// A delegated OCSP responder certificate (EKU OCSPSigning) issued by the CA.
    pub fn responder_cert(&self) -> Result<CaLeaf> {
        let d = self.dir();
        let (key_path, csr, cert_path) = (
            d.join("responder.key"),
            d.join("responder.csr"),
            d.join("responder.crt"),
        );
        run(Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-subj", "/CN=certkeeper test OCSP responder", "-keyout"])
            .arg(&key_path)
            .arg("-out")
            .arg(&csr))?;
        run(self
            .ca()
            .args(["-extensions", "ocsp_ext", "-days", "90", "-notext", "-in"])
            .arg(&csr)
            .arg("-out")
            .arg(&cert_path))?;
        let der = pem_to_der(&cert_path)?;
        Ok(CaLeaf {
            cert_path,
            key_path,
            der,
        })
    }

    /// A DER OCSP response about `leaf`, signed by the CA, made from the index
    /// (`openssl ocsp -reqout`, then `-reqin … -respout`), for `s_server -status_file`.
    pub fn ocsp_response_file(&self, leaf: &CaLeaf) -> Result<PathBuf> {
        self.ocsp_response_signed(leaf, &self.cert_path, &self.key_path)
    }

    /// Like [`OpensslCa::ocsp_response_file`], signed by `signer` (a delegated
    /// responder, or anyone else's key).
    pub fn ocsp_response_signed(
        &self,
        leaf: &CaLeaf,
        signer_cert: &Path,
        signer_key: &Path,
    ) -> Result<PathBuf> {
        let d = self.dir();
        let n = self.responses.fetch_add(1, Ordering::Relaxed);
        let stem = leaf
            .cert_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let req = d.join(format!("{stem}.ocspreq"));
        let resp = d.join(format!("{stem}.{n}.ocsp.der"));
        run(Command::new("openssl")
            .arg("ocsp")
            .arg("-issuer")
            .arg(&self.cert_path)
            .arg("-cert")
            .arg(&leaf.cert_path)
            .arg("-no_nonce")
            .arg("-reqout")
            .arg(&req))?;
        run(Command::new("openssl")
            .arg("ocsp")
            .arg("-index")
            .arg(d.join("index.txt"))
            .arg("-rsigner")
            .arg(signer_cert)
            .arg("-rkey")
            .arg(signer_key)
            .arg("-CA")
            .arg(&self.cert_path)
            .args(["-ndays", "1", "-reqin"])
            .arg(&req)
            .arg("-respout")
            .arg(&resp))?;
        Ok(resp)
    }

    /// An `openssl ocsp` responder on this CA's index, answering on the address
    /// of `outer` (bound beforehand so leaves can name it). `-multi 3`: OpenSSL
    /// 3.0's responder hangs on a connection closed without a request (as the
    /// readiness probe does), so more than one worker is needed.
    pub fn responder(&self, outer: TcpListener) -> Result<IsolatedServer> {
        let d = self.dir();
        let cmd = format!(
            "openssl ocsp -index '{}' -port 8080 -rsigner '{}' -rkey '{}' -CA '{}' -ndays 1 -multi 3 \
             -ignore_err >/dev/null 2>&1 &",
            d.join("index.txt").display(),
            self.cert_path.display(),
            self.key_path.display(),
            self.cert_path.display()
        );
        IsolatedServer::start_on(&cmd, 8080, Some(outer))
    }
}

/// What [`HttpFixture`] does with each request.
#[derive(Debug, Clone)]
pub enum HttpBehaviour {
    /// 200 with this body.
    Body(Vec<u8>),
    /// A redirect to this location.
    Redirect(String),
    /// Read the request, then say nothing (until the fixture is dropped).
    Stall,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 (one thread per connection), stopped on drop.
pub struct HttpFixture {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HttpFixture {
    pub fn start(behaviour: HttpBehaviour) -> Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0")?, behaviour)
    }

    pub fn start_on(listener: TcpListener, behaviour: HttpBehaviour) -> Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (b, f) = (behaviour.clone(), flag.clone());
                        std::thread::spawn(move || answer(s, b, f));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        wait_for_port(addr, Duration::from_secs(5))?;
        Ok(HttpFixture { addr, stop })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn answer(mut s: std::net::TcpStream, b: HttpBehaviour, stop: Arc<AtomicBool>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    // Headers, then as much body as Content-Length says.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if req.len() >= end + 4 + len {
                break;
            }
        }
    }
    let reply = match b {
        HttpBehaviour::Body(body) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        }
        HttpBehaviour::Redirect(to) => format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
        HttpBehaviour::Stall => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let _ = s.write_all(&reply);
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
