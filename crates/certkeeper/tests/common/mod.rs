//! Shared by the end-to-end tests: the real binary as server and CLI.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub fingerprint: String,
    pub printed_token: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(data: &Path, port: u16, database_url: Option<&str>) -> Server {
    start_server_env(data, port, database_url, &[])
}

/// Like [`start_server`], with extra environment (e.g. a shared `CERTKEEPER_KEK`).
pub fn start_server_env(
    data: &Path,
    port: u16,
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> Server {
    let mut cmd = Command::new(BIN);
    // Debug logging, appended to <data>.log, so tests can check what never appears in it.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data))
        .unwrap();
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .env_remove("CERTKEEPER_ADMIN_TOKEN")
        .env("CERTKEEPER_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(u) = database_url {
        cmd.args(["--database-url", u]);
    }
    let mut child = cmd.spawn().expect("start the server");
    certkeeper_testkit::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(30),
    )
    .expect("server listens");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap_or_default();
    let pem = std::fs::read(data.join("server.crt")).expect("server.crt");
    let der = certkeeper_pki::pem_to_ders(&pem).unwrap().remove(0);
    let fingerprint = certkeeper_pki::sha256(&der).to_string();
    // The token is printed on stdout by the first start only; read it without blocking
    // on later starts (whose stdout stays empty).
    let printed_token = if admin.is_empty() {
        None
    } else {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx.recv_timeout(Duration::from_millis(500))
            .ok()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    };
    Server {
        child,
        url: format!("https://127.0.0.1:{port}"),
        admin,
        fingerprint,
        printed_token,
    }
}

pub fn log_path(data: &Path) -> PathBuf {
    data.with_extension("log")
}

pub fn ck(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CERTKEEPER_TOKEN")
        .output()
        .expect("run certkeeper")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn admin_args(s: &Server) -> Vec<&str> {
    vec![
        "--server",
        &s.url,
        "--token",
        &s.admin,
        "--ca-fingerprint",
        &s.fingerprint,
    ]
}

pub fn enroll(s: &Server, dir: &Path) {
    let mut args = vec!["admin", "enrollment-token", "create"];
    args.extend(admin_args(s));
    let token = ok(ck(&args)).trim().to_string();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.with_extension("enrollment"), &token).unwrap();
    ok(ck(&[
        "agent",
        "enroll",
        "--server",
        &s.url,
        "--token",
        &token,
        "--ca-fingerprint",
        &s.fingerprint,
        "--config-dir",
        dir.to_str().unwrap(),
    ]));
}
