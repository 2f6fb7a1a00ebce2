//! Client-initiated renegotiation needs a finished handshake and then a second one
//! started by the client: the one check of a vulnerability scan that cannot be read
//! off the first flight. OpenSSL does it for us: `openssl s_client`, told `R` once
//! connected, renegotiates; a server that refuses answers with an alert (OpenSSL
//! reports "no renegotiation"), one that allows it runs the second handshake.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use certkeeper_core::findings::Protocol;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// `Some(true)`: the server renegotiated at the client's request; `Some(false)`: it
/// refused; `None`: not tested (no `openssl` binary, no handshake, no answer in time).
pub async fn client_renegotiation(
    addr: SocketAddr,
    sni: Option<&str>,
    protocol: Protocol,
    timeout: Duration,
) -> Option<bool> {
    let flag = match protocol {
        Protocol::Tls10 => "-tls1",
        Protocol::Tls11 => "-tls1_1",
        Protocol::Tls12 => "-tls1_2",
        _ => return None,
    };
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg(flag)
        .args([
            "-cipher",
            "ALL:COMPLEMENTOFALL:@SECLEVEL=0",
            "-legacy_renegotiation",
        ]);
    match sni {
        Some(n) => cmd.arg("-servername").arg(n),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let stdout = child.stdout.take()?;
    let stderr = child.stderr.take()?;
    let verdict = async {
        let mut out = BufReader::new(stdout).lines();
        let mut err = BufReader::new(stderr).lines();
        // Connected once s_client prints the session summary.
        loop {
            let line = out.next_line().await.ok()??;
            if line.starts_with("SSL handshake has read") {
                break;
            }
        }
        stdin.write_all(b"R\n").await.ok()?;
        stdin.flush().await.ok()?;
        let mut renegotiating = false;
        loop {
            tokio::select! {
                line = err.next_line() => {
                    let line = line.ok()??;
                    if line.starts_with("RENEGOTIATING") {
                        renegotiating = true;
                    } else if renegotiating && (line.starts_with("depth=") || line.starts_with("verify return")) {
                        return Some(true);
                    } else if line.contains("no renegotiation") || line.contains("alert") || line.contains(":error:") {
                        return Some(false);
                    }
                }
                line = out.next_line() => {
                    let line = line.ok()?;
                    match line {
                        None => return renegotiating.then_some(false),
                        Some(l) if renegotiating && l.starts_with("depth=") => return Some(true),
                        Some(_) => {}
                    }
                }
            }
        }
    };
    let result = tokio::time::timeout(timeout, verdict).await.ok().flatten();
    let _ = child.kill().await;
    result
}
