//! A real rsyslog (Debian's) on loopback, listening on UDP and TCP, writing each
//! message back field by field (`PRI|TIMESTAMP|HOSTNAME|APP-NAME|PROCID|MSGID|SD|MSG`),
//! so what arrives is what a collector parses.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Rsyslog {
    child: Child,
    pub udp: u16,
    pub tcp: u16,
    pub out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start rsyslogd in the foreground with its own config; ready when TCP accepts.
pub fn rsyslog() -> Rsyslog {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (udp, tcp) = (crate::free_port().unwrap(), crate::free_port().unwrap());
    let out = dir.path().join("out.log");
    std::fs::write(
        dir.path().join("rsyslog.conf"),
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\")\n\
             template(name=\"fields\" type=\"string\" string=\"%PRI%|%TIMESTAMP:::date-rfc3339%|%HOSTNAME%|%APP-NAME%|%PROCID%|%MSGID%|%STRUCTURED-DATA%|%msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{}\" template=\"fields\")\n",
            out.display()
        ),
    )
    .unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(dir.path().join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.path().join("pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd (apt-get install rsyslog)");
    crate::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], tcp)),
        Duration::from_secs(10),
    )
    .unwrap();
    Rsyslog {
        child,
        udp,
        tcp,
        out,
        _dir: dir,
    }
}

/// The lines written so far, waiting up to 10 s for at least `want`.
pub fn lines(path: &Path, want: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        if l.len() >= want || Instant::now() > until {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
