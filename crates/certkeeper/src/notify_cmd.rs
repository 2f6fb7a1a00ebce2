//! `certkeeper notify …` and `certkeeper tickets …`: what would be notified and why,
//! running the notifications now, test messages, the delivery log, and the local
//! ticket records.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::Output;
use crate::admin::Remote;

/// `certkeeper notify …`
#[derive(Subcommand)]
pub enum NotifyCommand {
    /// What each policy would notify about (for now, or --at a date), through which
    /// channel, with which ticket action, and why every other certificate is left out.
    Preview {
        /// YYYY-MM-DD (09:00 UTC) or an RFC 3339 time.
        #[arg(long, env = "CERTKEEPER_AT")]
        at: Option<String>,
        /// Explain one certificate (SHA-256), however far from expiry.
        #[arg(long, env = "CERTKEEPER_CERTIFICATE")]
        certificate: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run the expiry notifications and reports now, with the tickets they cause,
    /// and print what was done.
    Run {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send a test message through a channel: email, syslog, webhook, slack, pagerduty.
    Test {
        channel: String,
        /// For email: the address to send to (default: the [email] to list).
        #[arg(long, env = "CERTKEEPER_TO")]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// The delivery log: every delivery with its state, attempts and last error.
    Deliveries {
        /// pending, leased, sent or failed.
        #[arg(long, env = "CERTKEEPER_STATE")]
        state: Option<String>,
        /// Show one delivery with all its attempts.
        #[arg(long, env = "CERTKEEPER_DELIVERY")]
        id: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `certkeeper tickets …`
#[derive(Subcommand)]
pub enum TicketsCommand {
    /// The local ticket records with their last known status.
    List {
        /// servicenow, servicedesk_plus, jira or rt.
        #[arg(long, env = "CERTKEEPER_SYSTEM")]
        system: Option<String>,
        /// expiry or vulnerability.
        #[arg(long, env = "CERTKEEPER_KIND")]
        kind: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check a ticketing system's URL and credentials without creating anything.
    Test {
        system: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub async fn run_notify(cmd: NotifyCommand) -> Result<ExitCode> {
    match cmd {
        NotifyCommand::Preview {
            at,
            certificate,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let mut q = Vec::new();
            if let Some(a) = at {
                q.push(("at", a));
            }
            if let Some(c) = certificate {
                q.push(("certificate", c));
            }
            let v = api.get("/api/v1/notifications/preview", &q).await?;
            if output == Output::Json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("at {}", s(&v["at"]));
            for p in v["policies"].as_array().into_iter().flatten() {
                println!(
                    "\n{} policy {:?} ({}, period from {})",
                    s(&p["kind"]),
                    s(&p["name"]),
                    s(&p["schedule"]),
                    s(&p["period"])
                );
                let notify = p["notify"].as_array().cloned().unwrap_or_default();
                if notify.is_empty() {
                    println!("  notifies about nothing");
                }
                for n in notify {
                    println!(
                        "  NOTIFY {} [{}] {} ({} days left){}",
                        s(&n["name"]),
                        s(&n["stage"]),
                        s(&n["sha256"]),
                        s(&n["days_left"]),
                        if n["escalated"] == true {
                            " ESCALATED"
                        } else {
                            ""
                        }
                    );
                    for c in n["channels"].as_array().into_iter().flatten() {
                        println!(
                            "    {} to {}: {}{}",
                            s(&c["channel"]),
                            s(&c["recipient"]),
                            s(&c["status"]),
                            c["sent_at"]
                                .as_str()
                                .map(|t| format!(" at {t}"))
                                .unwrap_or_default()
                        );
                    }
                    for t in n["tickets"].as_array().into_iter().flatten() {
                        println!(
                            "    ticket {} at {}: {} ({})",
                            s(&t["system"]),
                            s(&t["ip"]),
                            s(&t["action"]),
                            s(&t["reason"])
                        );
                    }
                }
                for l in p["left_out"].as_array().into_iter().flatten() {
                    println!(
                        "  LEFT OUT {} {}: {}",
                        s(&l["name"]),
                        s(&l["sha256"]),
                        s(&l["reason"])
                    );
                }
                println!("  ({})", s(&p["beyond_horizon"]));
            }
        }
        NotifyCommand::Run { output, remote } => {
            let api = remote.connect()?;
            let v = api.post("/api/v1/notifications/run", &json!({})).await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                for p in v["run"]["policies"].as_array().into_iter().flatten() {
                    println!(
                        "{} {:?}: {} due, {} new messages in {} deliveries, {} ticket actions, {} renewed followed up",
                        s(&p["kind"]),
                        s(&p["name"]),
                        s(&p["due"]),
                        s(&p["new_messages"]),
                        s(&p["deliveries_queued"]),
                        s(&p["ticket_work_queued"]),
                        s(&p["renewed_followed_up"])
                    );
                }
                let d = &v["deliveries"];
                println!(
                    "deliveries: {} sent, {} will be retried, {} failed",
                    s(&d["sent"]),
                    s(&d["will_retry"]),
                    s(&d["failed"])
                );
                let t = &v["tickets"];
                println!(
                    "tickets: {} done, {} will be retried, {} failed",
                    s(&t["done"]),
                    s(&t["will_retry"]),
                    s(&t["failed"])
                );
            }
            let failed = v["deliveries"]["failed"].as_u64().unwrap_or(0)
                + v["tickets"]["failed"].as_u64().unwrap_or(0);
            return Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        NotifyCommand::Test {
            channel,
            to,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let v = api
                .post(
                    "/api/v1/notifications/test",
                    &json!({"channel": channel, "to": to}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                for r in v["results"].as_array().into_iter().flatten() {
                    println!(
                        "{} to {}: {} (delivery {})",
                        s(&v["channel"]),
                        s(&r["recipient"]),
                        s(&r["outcome"]),
                        s(&r["delivery"])
                    );
                }
            }
        }
        NotifyCommand::Deliveries {
            state,
            id,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            if let Some(id) = id {
                let v = api
                    .get(&format!("/api/v1/notifications/deliveries/{id}"), &[])
                    .await?;
                if output == Output::Json {
                    println!("{v}");
                } else {
                    print_delivery(&v);
                    for a in v["attempts_log"].as_array().into_iter().flatten() {
                        println!(
                            "  attempt {} at {}: {} {}",
                            s(&a["attempt"]),
                            s(&a["at"]),
                            s(&a["outcome"]),
                            a["error"].as_str().unwrap_or("")
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut q = Vec::new();
            if let Some(st) = state {
                q.push(("state", st));
            }
            let v = api.get("/api/v1/notifications/deliveries", &q).await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                for d in v["items"].as_array().into_iter().flatten() {
                    print_delivery(d);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_delivery(d: &Value) {
    println!(
        "{} {} {} to {} ({}): {} after {} attempts{}",
        s(&d["created_at"]),
        s(&d["id"]),
        s(&d["channel"]),
        s(&d["recipient"]),
        s(&d["policy"]),
        s(&d["state"]),
        s(&d["attempts"]),
        d["last_error"]
            .as_str()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
}

pub async fn run_tickets(cmd: TicketsCommand) -> Result<ExitCode> {
    match cmd {
        TicketsCommand::List {
            system,
            kind,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let mut q = Vec::new();
            if let Some(x) = system {
                q.push(("system", x));
            }
            if let Some(k) = kind {
                q.push(("kind", k));
            }
            let v = api.get("/api/v1/tickets", &q).await?;
            if output == Output::Json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("SYSTEM\tNUMBER\tSTATUS\tPRIORITY\tKIND\tIP\tSERIAL\tDOMAIN\tLAST ACTION");
            for t in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s(&t["system"]),
                    s(&t["ticket_number"]),
                    s(&t["status"]),
                    s(&t["priority"]),
                    s(&t["kind"]),
                    s(&t["ip"]),
                    s(&t["serial"]),
                    s(&t["domain"]),
                    s(&t["last_action"])
                );
            }
        }
        TicketsCommand::Test { system, remote } => {
            let api = remote.connect()?;
            api.post(&format!("/api/v1/ticketing/{system}/test"), &json!({}))
                .await?;
            println!("{system}: the URL and credentials work (nothing was created)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
