//! Deployment end to end: the real binary as server, admin CLI and agent, and a real
//! nginx (own config, prefix and pid file, on a free loopback port) whose certificate
//! files the agent replaces and which it reloads with `nginx -s reload`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certkeeper_testkit::{Issued, KeyKind, LeafSpec, TestPki, free_port};
use serde_json::{Value, json};

mod common;
use common::*;

/// nginx serving one TLS site from `tls/fullchain.pem` + `tls/site.key` under its prefix.
struct Nginx {
    child: Child,
    prefix: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(prefix: &Path, cert: &Issued, chain: &str) -> Nginx {
        let tls = prefix.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(
            tls.join("fullchain.pem"),
            format!("{}{chain}", cert.cert_pem),
        )
        .unwrap();
        std::fs::write(tls.join("site.key"), &cert.key_pem).unwrap();
        let port = free_port().unwrap();
        let p = prefix.display();
        std::fs::write(
            prefix.join("nginx.conf"),
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name localhost;\n\
                 ssl_certificate {p}/tls/fullchain.pem;\n    ssl_certificate_key {p}/tls/site.key;\n\
                 location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-p", &p.to_string(), "-c", &format!("{p}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        certkeeper_testkit::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10))
            .expect("nginx listens");
        // The pid file is written once the master is up; reload needs it.
        for _ in 0..200 {
            if prefix.join("nginx.pid").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Nginx {
            child,
            prefix: prefix.to_path_buf(),
            port,
        }
    }

    fn reload_command(&self) -> String {
        let p = self.prefix.display();
        format!("nginx -p {p} -c {p}/nginx.conf -s reload")
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SHA-256 of the leaf nginx serves now, as `openssl s_client` sees it.
    fn served(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
                self.port
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or("")
            .replace(':', "")
            .to_lowercase()
    }
}

struct Env {
    work: tempfile::TempDir,
    server: Server,
    pki: TestPki,
    agent: PathBuf,
    agent_id: String,
}

impl Env {
    fn new() -> Env {
        Env::on(None)
    }

    /// On a given database (`None`: SQLite in the data dir).
    fn on(database_url: Option<&str>) -> Env {
        let work = tempfile::tempdir().unwrap();
        let server = start_server(
            &work.path().join("data"),
            free_port().unwrap(),
            database_url,
        );
        let agent = work.path().join("agent");
        enroll(&server, &agent);
        let agent_id = agent_id(&agent);
        Env {
            work,
            server,
            pki: TestPki::new().unwrap(),
            agent,
            agent_id,
        }
    }

    fn leaf(&self) -> Issued {
        self.pki
            .leaf(
                &LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]),
            )
            .unwrap()
    }

    fn nginx(&self, name: &str, cert: &Issued) -> Nginx {
        Nginx::start(
            &self.work.path().join(name),
            cert,
            &self.pki.intermediate.cert_pem,
        )
    }

    /// Allow deployments into `dirs` with `commands` (appended to agent.toml).
    fn allow(&self, dirs: &[&Path], commands: &[&str]) {
        let path = self.agent.join("agent.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "\n[deploy]\nallowed_dirs = {}\nallowed_commands = {}\nconfirm_seconds = 3\n",
            toml_list(dirs.iter().map(|d| d.display().to_string())),
            toml_list(commands.iter().map(|c| c.to_string())),
        ));
        std::fs::write(path, text).unwrap();
    }

    fn import(&self, cert: &Issued) -> String {
        let mut args = vec![
            "import",
            "--output",
            "json",
            "--cert",
            cert.cert_path.to_str().unwrap(),
            "--key",
            cert.key_path.to_str().unwrap(),
            "--chain",
            self.pki.intermediate.cert_path.to_str().unwrap(),
        ];
        args.extend(admin_args(&self.server));
        let v: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
        v["sha256"].as_str().unwrap().to_string()
    }

    fn deploy(&self, sha: &str, extra: &[&str]) -> Value {
        let mut args = vec![
            "deploy",
            "create",
            sha,
            "--agent",
            &self.agent_id,
            "--output",
            "json",
        ];
        args.extend(extra);
        args.extend(admin_args(&self.server));
        serde_json::from_str(&ok(ck(&args))).unwrap()
    }

    fn deployment(&self, id: &str) -> Value {
        let mut args = vec!["deploy", "show", id, "--output", "json"];
        args.extend(admin_args(&self.server));
        serde_json::from_str(&ok(ck(&args))).unwrap()
    }

    /// `agent jobs` once: (exit success, the JSON it printed).
    fn jobs(&self, agent: &Path) -> (bool, Value) {
        let out = ck(&[
            "agent",
            "jobs",
            "--output",
            "json",
            "--config-dir",
            agent.to_str().unwrap(),
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "agent jobs printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// An API call with curl (TLS checked against the server's certificate).
    fn api(&self, method: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
            .arg(self.work.path().join("data/server.crt"))
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data",
                &body.to_string(),
            ])
            .arg(format!("{}{path}", self.server.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn credential(&self, agent: &Path) -> String {
        std::fs::read_to_string(agent.join("credential")).unwrap()
    }
}

fn toml_list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.map(|s| format!("{s:?}")).collect();
    format!("[{}]", v.join(", "))
}

fn agent_id(dir: &Path) -> String {
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("agent.toml")).unwrap()).unwrap();
    cfg["agent_id"].as_str().unwrap().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn backups(dir: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_str().unwrap();
            f.starts_with(&format!("{name}.")) && f.ends_with(".bak")
        })
        .collect()
}

#[test]
fn a_certificate_is_deployed_to_nginx_reloaded_and_confirmed_served() {
    deployed_and_confirmed(Env::new());
    // The same on PostgreSQL, when a server is configured.
    if let Some(pg) = certkeeper_testkit::db::postgres().unwrap() {
        deployed_and_confirmed(Env::on(Some(&pg.url)));
    }
}

fn deployed_and_confirmed(env: Env) {
    let a = env.leaf();
    let b = env.leaf();
    let nginx = env.nginx("site", &a);
    let tls = nginx.prefix.join("tls");
    let a_sha = certkeeper_pki::sha256(&a.der).to_string();
    assert_eq!(nginx.served(), a_sha, "nginx starts with A");
    env.allow(&[&tls], &[&nginx.reload_command()]);

    let b_sha = env.import(&b);
    let fullchain = tls.join("fullchain.pem");
    let key = tls.join("site.key");
    // As root, hand the files to another user (by name) and group (by number); else
    // to ourselves, which exercises the same lookups.
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let root = id("-u") == "0";
    let (owner, group) = if root {
        ("nobody".to_string(), "65534".to_string())
    } else {
        (id("-un"), id("-g"))
    };
    let (want_uid, want_gid) = if root {
        (65534, 65534)
    } else {
        (id("-u").parse().unwrap(), id("-g").parse().unwrap())
    };
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &nginx.endpoint(),
            "--fullchain-path",
            fullchain.to_str().unwrap(),
            "--key-path",
            key.to_str().unwrap(),
            "--cert-path",
            tls.join("cert.pem").to_str().unwrap(),
            "--chain-path",
            tls.join("chain.pem").to_str().unwrap(),
            "--mode",
            "0640",
            "--owner",
            &owner,
            "--group",
            &group,
            "--reload",
            &nginx.reload_command(),
        ],
    );
    assert_eq!(d["status"], "pending", "{d}");
    let id = d["id"].as_str().unwrap().to_string();

    // Another agent neither gets the job nor may report on it.
    let other = env.work.path().join("other-agent");
    enroll(&env.server, &other);
    let (_, none) = env.jobs(&other);
    assert_eq!(none["jobs"], json!([]), "{none}");
    let job_id = d["job_id"].as_str().unwrap();
    let (code, v) = env.api(
        "POST",
        &format!("/api/v1/agent/jobs/{job_id}/result"),
        &env.credential(&other),
        &json!({"lease": "x", "status": "succeeded"}),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // Nor may the administrator claim jobs.
    let (code, _) = env.api(
        "POST",
        "/api/v1/agent/jobs/claim",
        &env.server.admin,
        &json!({}),
    );
    assert_eq!(code, 403);

    let (success, run) = env.jobs(&env.agent);
    assert!(success, "{run}");
    assert_eq!(run["jobs"][0]["state"], "succeeded", "{run}");
    assert_eq!(nginx.served(), b_sha, "nginx serves B after the reload");
    let d = env.deployment(&id);
    assert_eq!(d["status"], "done", "{d}");
    assert_eq!(d["deployed_sha256"], b_sha.as_str());
    assert_eq!(d["attempts"], 1);

    // The files: B's key 0600, certificates 0640, the old ones backed up.
    assert_eq!(std::fs::read_to_string(&key).unwrap(), b.key_pem);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&fullchain), 0o640);
    assert_eq!(
        std::fs::read_to_string(tls.join("cert.pem")).unwrap(),
        b.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(tls.join("chain.pem")).unwrap(),
        env.pki.intermediate.cert_pem
    );
    assert!(
        std::fs::read_to_string(&fullchain)
            .unwrap()
            .starts_with(&b.cert_pem)
    );
    let old = backups(&tls, "site.key");
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(std::fs::read_to_string(&old[0]).unwrap(), a.key_pem);
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (want_uid, want_gid));

    // The rescan went through the report path: the inventory shows B served there.
    let mut args = vec!["certs", "show", &b_sha, "--output", "json"];
    args.extend(admin_args(&env.server));
    let shown: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    assert!(
        shown["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["port"] == nginx.port),
        "{shown}"
    );
    // The key went to the agent: audited, never logged.
    let log = std::fs::read_to_string(log_path(&env.work.path().join("data"))).unwrap();
    let key_body = b.key_pem.lines().nth(1).unwrap();
    assert!(!log.contains(key_body), "the key is in the server log");
    let (_, audit) = env.api("GET", "/api/v1/audit", &env.server.admin, &Value::Null);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "deploy_key" && e["subject"] == b_sha.as_str()),
        "{audit}"
    );
}

#[test]
fn failures_are_recorded_retried_and_refusals_touch_nothing() {
    let env = Env::new();
    let a = env.leaf();
    let b = env.leaf();
    let nginx = env.nginx("site", &a);
    let tls = nginx.prefix.join("tls");
    let a_sha = certkeeper_pki::sha256(&a.der).to_string();
    let b_sha = env.import(&b);
    let p = nginx.prefix.display().to_string();
    // A reload that fails until its config exists.
    let broken = format!("nginx -p {p} -c {p}/later.conf -s reload");
    let outside = env.work.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    env.allow(&[&tls], &[&nginx.reload_command(), &broken]);
    let fullchain = tls.join("fullchain.pem");
    let key = tls.join("site.key");
    let files = [
        "--fullchain-path",
        fullchain.to_str().unwrap(),
        "--key-path",
        key.to_str().unwrap(),
    ];

    // 1. The reload command fails: recorded with its reason, due again later.
    let endpoint = nginx.endpoint();
    let mut args = vec!["--endpoint", &endpoint, "--reload", &broken];
    args.extend(files);
    let d = env.deploy(&b_sha, &args);
    let id = d["id"].as_str().unwrap().to_string();
    let (success, run) = env.jobs(&env.agent);
    assert!(!success, "{run}");
    let d = env.deployment(&id);
    assert_eq!(d["status"], "retrying", "{d}");
    assert_eq!(d["last_error"]["code"], "reload_failed", "{d}");
    let msg = d["last_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("exited with") && msg.contains("later.conf"),
        "{msg}"
    );
    assert!(d["next_attempt_at"].as_str().unwrap() > d["updated_at"].as_str().unwrap());
    assert_eq!(nginx.served(), a_sha, "the running nginx still has A");
    // Not due yet: the next run has nothing to do.
    let (_, run) = env.jobs(&env.agent);
    assert_eq!(run["jobs"], json!([]), "{run}");
    // The operator fixes the cause and retries now: done.
    std::fs::copy(
        nginx.prefix.join("nginx.conf"),
        nginx.prefix.join("later.conf"),
    )
    .unwrap();
    let mut retry = vec!["deploy", "retry", &id, "--output", "json"];
    retry.extend(admin_args(&env.server));
    let r: Value = serde_json::from_str(&ok(ck(&retry))).unwrap();
    assert_eq!(r["status"], "pending", "{r}");
    let (success, run) = env.jobs(&env.agent);
    assert!(success, "{run}");
    assert_eq!(env.deployment(&id)["status"], "done");
    assert_eq!(nginx.served(), b_sha);

    // 2. A path outside the allowed directories: refused by the agent, nothing written.
    let evil = outside.join("stolen.key");
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &endpoint,
            "--key-path",
            evil.to_str().unwrap(),
            "--fullchain-path",
            tls.join("other.pem").to_str().unwrap(),
        ],
    );
    let (success, _) = env.jobs(&env.agent);
    assert!(!success);
    let d = env.deployment(d["id"].as_str().unwrap());
    assert_eq!(d["status"], "failed", "refusals are not retried: {d}");
    assert_eq!(d["last_error"]["code"], "path_not_allowed");
    assert!(
        d["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowed_dirs")
    );
    assert!(!evil.exists());
    assert!(
        !tls.join("other.pem").exists(),
        "nothing written on a refusal"
    );
    // A symlinked directory does not lead out either.
    std::os::unix::fs::symlink(&outside, tls.join("link")).unwrap();
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &endpoint,
            "--key-path",
            tls.join("link/x.key").to_str().unwrap(),
        ],
    );
    env.jobs(&env.agent);
    assert_eq!(
        env.deployment(d["id"].as_str().unwrap())["last_error"]["code"],
        "path_not_allowed"
    );
    assert!(!outside.join("x.key").exists());

    // 3. A command the agent does not allow: refused, nothing run or written.
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &endpoint,
            "--cert-path",
            tls.join("never.pem").to_str().unwrap(),
            "--reload",
            &format!("touch {}", outside.join("ran").display()),
        ],
    );
    env.jobs(&env.agent);
    let d = env.deployment(d["id"].as_str().unwrap());
    assert_eq!(d["last_error"]["code"], "command_not_allowed", "{d}");
    assert!(!outside.join("ran").exists() && !tls.join("never.pem").exists());

    // 4. Written and reloaded, but the endpoint still serves the old certificate (the
    //    files are not the ones nginx reads): not done.
    let c = env.leaf();
    let c_sha = env.import(&c);
    let d = env.deploy(
        &c_sha,
        &[
            "--endpoint",
            &endpoint,
            "--fullchain-path",
            tls.join("unused.pem").to_str().unwrap(),
            "--reload",
            &nginx.reload_command(),
        ],
    );
    let (success, run) = env.jobs(&env.agent);
    assert!(!success, "{run}");
    let d = env.deployment(d["id"].as_str().unwrap());
    assert_eq!(d["status"], "retrying", "{d}");
    assert_eq!(d["last_error"]["code"], "old_certificate_served", "{d}");
    assert!(
        d["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains(&b_sha)
    );
    assert!(d["deployed_sha256"].is_null());

    // Every attempt is in the listing, none dropped.
    let mut list = vec!["deploy", "list", "--output", "json"];
    list.extend(admin_args(&env.server));
    let all: Value = serde_json::from_str(&ok(ck(&list))).unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 5, "{all}");
}

#[test]
fn a_job_whose_agent_died_is_leased_again() {
    let env = Env::new();
    let a = env.leaf();
    let b = env.leaf();
    let nginx = env.nginx("site", &a);
    let tls = nginx.prefix.join("tls");
    env.allow(&[&tls], &[&nginx.reload_command()]);
    let b_sha = env.import(&b);
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &nginx.endpoint(),
            "--fullchain-path",
            tls.join("fullchain.pem").to_str().unwrap(),
            "--key-path",
            tls.join("site.key").to_str().unwrap(),
            "--reload",
            &nginx.reload_command(),
        ],
    );
    let id = d["id"].as_str().unwrap();
    // The agent claims the job (with a one-second lease) and dies before reporting.
    let (code, claimed) = env.api(
        "POST",
        "/api/v1/agent/jobs/claim",
        &env.credential(&env.agent),
        &json!({"lease_seconds": 1}),
    );
    assert_eq!(code, 200, "{claimed}");
    assert_eq!(claimed["jobs"].as_array().unwrap().len(), 1);
    let lease = claimed["jobs"][0]["lease"].as_str().unwrap().to_string();
    assert_eq!(env.deployment(id)["status"], "in_progress");
    // The lease ends (the server's clock decides; wait for it).
    std::thread::sleep(Duration::from_millis(2100));
    let d = env.deployment(id);
    assert_eq!(d["status"], "retrying", "{d}");
    assert_eq!(d["last_error"]["code"], "lease_expired");
    // The restarted agent gets it again and finishes it; the dead lease no longer counts.
    let (success, run) = env.jobs(&env.agent);
    assert!(success, "{run}");
    let d = env.deployment(id);
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_u64()),
        (Some("done"), Some(2)),
        "{d}"
    );
    let job = claimed["jobs"][0]["id"].as_str().unwrap();
    let (code, v) = env.api(
        "POST",
        &format!("/api/v1/agent/jobs/{job}/result"),
        &env.credential(&env.agent),
        &json!({"lease": lease, "status": "failed", "error": {"code": "write_failed", "message": "late"}}),
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("lease_lost")),
        "{v}"
    );
    assert_eq!(nginx.served(), b_sha);
}

#[test]
fn a_renewed_certificate_is_deployed_to_the_same_targets() {
    let env = Env::new();
    let a = env.leaf();
    let nginx = env.nginx("site", &a);
    let tls = nginx.prefix.join("tls");
    env.allow(&[&tls], &[&nginx.reload_command()]);
    let adm = admin_args(&env.server);
    let mut args = vec!["ca", "create", "deploy-ca", "--cn", "Deploy Test CA"];
    args.extend(adm.iter().copied());
    ok(ck(&args));
    let mut args = vec![
        "request",
        "new",
        "--cn",
        "localhost",
        "--san",
        "localhost",
        "--key-type",
        "p256",
        "--output",
        "json",
    ];
    args.extend(adm.iter().copied());
    let r: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    let mut args = vec![
        "ca",
        "issue",
        "deploy-ca",
        "--request",
        r["id"].as_str().unwrap(),
        "--output",
        "json",
    ];
    args.extend(adm.iter().copied());
    let issued: Value = serde_json::from_str(&ok(ck(&args))).unwrap();
    let first = issued["sha256"].as_str().unwrap().to_string();
    let d = env.deploy(
        &first,
        &[
            "--endpoint",
            &nginx.endpoint(),
            "--fullchain-path",
            tls.join("fullchain.pem").to_str().unwrap(),
            "--key-path",
            tls.join("site.key").to_str().unwrap(),
            "--reload",
            &nginx.reload_command(),
        ],
    );
    let id = d["id"].as_str().unwrap();
    assert!(env.jobs(&env.agent).0);
    assert_eq!(nginx.served(), first);

    let (code, renewed) = env.api(
        "POST",
        &format!("/api/v1/certificates/{first}/renew"),
        &env.server.admin,
        &json!({}),
    );
    assert_eq!(code, 201, "{renewed}");
    let second = renewed["certificate"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    let d = env.deployment(id);
    assert_eq!(d["certificate_sha256"], second.as_str(), "{d}");
    assert_eq!(d["status"], "pending");
    let (success, run) = env.jobs(&env.agent);
    assert!(success, "{run}");
    assert_eq!(
        nginx.served(),
        second,
        "nginx serves the renewed certificate"
    );
    let d = env.deployment(id);
    assert_eq!(
        (d["status"].as_str(), d["deployed_sha256"].as_str()),
        (Some("done"), Some(second.as_str()))
    );
}

#[test]
fn agent_run_does_the_jobs_the_server_gives_it() {
    let env = Env::new();
    let a = env.leaf();
    let b = env.leaf();
    let nginx = env.nginx("site", &a);
    let tls = nginx.prefix.join("tls");
    env.allow(&[&tls], &[&nginx.reload_command()]);
    let b_sha = env.import(&b);
    let mut agent = Command::new(BIN)
        .args([
            "agent",
            "run",
            "--interval",
            "1h",
            "--poll",
            "1s",
            "--config-dir",
        ])
        .arg(&env.agent)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = env.deploy(
        &b_sha,
        &[
            "--endpoint",
            &nginx.endpoint(),
            "--fullchain-path",
            tls.join("fullchain.pem").to_str().unwrap(),
            "--key-path",
            tls.join("site.key").to_str().unwrap(),
            "--reload",
            &nginx.reload_command(),
        ],
    );
    let id = d["id"].as_str().unwrap();
    // The running agent picks it up on its next poll.
    let mut status = String::new();
    for _ in 0..300 {
        status = env.deployment(id)["status"].as_str().unwrap().to_string();
        if status == "done" || status == "failed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(status, "done");
    assert_eq!(nginx.served(), b_sha);
}
