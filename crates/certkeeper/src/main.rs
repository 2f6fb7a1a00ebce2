//! `certkeeper`: the one binary. A thin layer over the library crates: parse the
//! command line (flags, `CERTKEEPER_*` environment, `--config` TOML), then call in.

mod admin;
mod agent;
mod client;
mod csr;
mod jobs;
mod notify_cfg;
mod notify_cmd;
mod server_cmd;
mod vulnscan;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "certkeeper",
    version,
    about = "Find, inventory and watch every TLS certificate",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: inventory, REST API.
    Server(server_cmd::ServerArgs),
    /// Agent commands: enroll, configure discovery, scan, run, jobs.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Administration: enrollment tokens, agents.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Query the certificate inventory.
    #[command(subcommand)]
    Certs(admin::CertsCommand),
    /// Import a certificate (with key and chain, or a PKCS#12 file) into the inventory.
    Import(Box<admin::ImportArgs>),
    /// Export a certificate, its chain, or a PKCS#12 file.
    Export(admin::ExportArgs),
    /// Certificate requests whose keys the server makes and keeps.
    #[command(subcommand)]
    Request(admin::RequestCommand),
    /// Internal certificate authorities.
    #[command(subcommand)]
    Ca(admin::CaCommand),
    /// Deploy managed certificates to files on agents' hosts, reloaded and confirmed served.
    #[command(subcommand)]
    Deploy(admin::DeployCommand),
    /// Vulnerability scans run by the server, and their findings.
    #[command(subcommand)]
    Scan(admin::ScanCommand),
    /// Expiry notifications: preview (why was I, or was I not, notified), run now,
    /// test a channel, the delivery log.
    #[command(subcommand)]
    Notify(notify_cmd::NotifyCommand),
    /// Tickets opened in ServiceNow, ServiceDesk Plus, Jira or Request Tracker.
    #[command(subcommand)]
    Tickets(notify_cmd::TicketsCommand),
    /// Keys and certificate signing requests, locally.
    #[command(subcommand)]
    Csr(csr::CsrCommand),
}

/// A command line that cannot be acted on (a missing or malformed flag value): exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand: a usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Output format of commands that list or report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Output format of `certs list`, the one listing with a CSV export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ListOutput {
    #[default]
    Text,
    Json,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = std::env::var("CERTKEEPER_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // One crypto provider for every rustls user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A scan is thousands of small handshakes: one thread avoids cross-thread wake-ups
    // and leaves the other cores to the machine (OpenSSL retries run on the blocking
    // pool). Everything else gets the multi-threaded runtime.
    let single = matches!(&cli.command, Command::Agent(agent::AgentCommand::Scan(_)))
        || std::env::var("CERTKEEPER_SINGLE_THREAD").is_ok_and(|v| v == "1");
    let built = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(args).await,
            Command::Agent(cmd) => agent::run(cmd).await,
            Command::Admin(cmd) => admin::run_admin(cmd).await,
            Command::Certs(cmd) => admin::run_certs(cmd).await,
            Command::Csr(cmd) => csr::run(cmd),
            Command::Scan(cmd) => admin::run_scan(cmd).await,
            Command::Import(args) => admin::run_import(*args).await,
            Command::Request(cmd) => admin::run_request(cmd).await,
            Command::Ca(cmd) => admin::run_ca(cmd).await,
            Command::Export(args) => admin::run_export(args).await,
            Command::Deploy(cmd) => admin::run_deploy(cmd).await,
            Command::Notify(cmd) => notify_cmd::run_notify(cmd).await,
            Command::Tickets(cmd) => notify_cmd::run_tickets(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e:#}");
            eprintln!("(see --help)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
