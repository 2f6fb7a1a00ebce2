//! `certkeeper csr new|show`: local key and CSR generation; no server needed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use certkeeper_core::target::split_list;
use certkeeper_pki::csr::{self, CsrRequest, KeyAlgorithm, San};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::Output;

#[derive(Debug, Subcommand)]
pub enum CsrCommand {
    /// Generate a private key and a certificate signing request.
    New(Box<NewArgs>),
    /// Print what a CSR holds and whether its signature is valid.
    Show {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Common name: a host name such as www.example.com (wildcards allowed).
    #[arg(long, env = "CERTKEEPER_CN")]
    cn: Option<String>,
    /// Subject alternative names, comma-separated: DNS names, IP addresses, e-mail addresses.
    #[arg(long, env = "CERTKEEPER_SAN")]
    san: Option<String>,
    /// Two-letter ISO 3166 country code.
    #[arg(long, env = "CERTKEEPER_COUNTRY")]
    country: Option<String>,
    #[arg(long, env = "CERTKEEPER_STATE")]
    state: Option<String>,
    #[arg(long, env = "CERTKEEPER_LOCALITY")]
    locality: Option<String>,
    #[arg(long, env = "CERTKEEPER_ORG")]
    org: Option<String>,
    #[arg(long, env = "CERTKEEPER_ORG_UNIT")]
    org_unit: Option<String>,
    /// rsa2048, rsa3072, rsa4096, p256, p384 or ed25519 [default: rsa2048].
    #[arg(long, env = "CERTKEEPER_KEY_TYPE")]
    key_type: Option<String>,
    /// An OpenSSL request config ([req], [req_distinguished_name], [req_ext], [alt_names]);
    /// flags override what it says.
    #[arg(long, env = "CERTKEEPER_OPENSSL_CONFIG")]
    openssl_config: Option<PathBuf>,
    /// Where to write server.csr and private.key.
    #[arg(long, default_value = ".", env = "CERTKEEPER_OUT_DIR")]
    out_dir: PathBuf,
    /// Protect the key with a passphrase (PKCS#8, AES-256), read from --key-password-file
    /// or CERTKEEPER_KEY_PASSWORD.
    #[arg(long, env = "CERTKEEPER_ENCRYPT_KEY")]
    encrypt_key: bool,
    #[arg(long, env = "CERTKEEPER_KEY_PASSWORD_FILE")]
    key_password_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
}

pub fn run(cmd: CsrCommand) -> Result<ExitCode> {
    match cmd {
        CsrCommand::New(args) => new(*args),
        CsrCommand::Show { file, output } => show(&file, output),
    }
}

fn passphrase(args: &NewArgs) -> Result<Vec<u8>> {
    if let Some(f) = &args.key_password_file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(s.trim_end_matches(['\r', '\n']).as_bytes().to_vec());
    }
    match std::env::var("CERTKEEPER_KEY_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(p.into_bytes()),
        _ => bail!(
            "--encrypt-key needs a passphrase: --key-password-file FILE or CERTKEEPER_KEY_PASSWORD"
        ),
    }
}

/// Move an existing file aside to `NAME.YYYYMMDDTHHMMSSZ.bak` (never overwrite, never delete).
fn back_up(path: &Path) -> Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let target = backup_name(path);
    std::fs::rename(path, &target).with_context(|| format!("backing up {}", path.display()))?;
    Ok(Some(target))
}

/// A free name beside `path` for its backup: `NAME.YYYYMMDDTHHMMSSZ.bak` (then `-1`, `-2`…).
pub(crate) fn backup_name(path: &Path) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut target = path.with_file_name(format!("{name}.{stamp}.bak"));
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        target = path.with_file_name(format!("{name}.{stamp}-{n}.bak"));
        n += 1;
    }
    target
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn new(args: NewArgs) -> Result<ExitCode> {
    let mut req = match &args.openssl_config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            csr::from_openssl_config(&text).with_context(|| p.display().to_string())?
        }
        None => CsrRequest::default(),
    };
    if let Some(cn) = &args.cn {
        req.common_name = cn.clone();
    }
    if req.common_name.is_empty() {
        return Err(crate::usage(
            "give the common name with --cn (or CN in --openssl-config)",
        ));
    }
    if let Some(list) = &args.san {
        req.sans = split_list(list)
            .map(str::parse::<San>)
            .collect::<Result<_, _>>()?;
    }
    for (field, value) in [
        (&mut req.country, &args.country),
        (&mut req.state, &args.state),
        (&mut req.locality, &args.locality),
        (&mut req.organization, &args.org),
        (&mut req.org_unit, &args.org_unit),
    ] {
        if value.is_some() {
            *field = value.clone();
        }
    }
    if let Some(k) = &args.key_type {
        req.key = k.parse::<KeyAlgorithm>()?;
    }
    let secret = if args.encrypt_key {
        Some(passphrase(&args)?)
    } else {
        None
    };
    // Validate everything before touching any file.
    let generated = csr::generate(&req)?;
    let key_pem = match &secret {
        Some(p) => certkeeper_pki::keys::encrypt_pkcs8(&generated.key_pem, p)?,
        None => generated.key_pem.clone(),
    };
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let csr_path = args.out_dir.join("server.csr");
    let key_path = args.out_dir.join("private.key");
    let mut backups = Vec::new();
    for p in [&csr_path, &key_path] {
        if let Some(b) = back_up(p)? {
            backups.push(b);
        }
    }
    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    write_new(&csr_path, generated.csr_pem.as_bytes(), 0o644)?;
    if args.output == Output::Json {
        println!(
            "{}",
            json!({
                "csr": csr_path, "key": key_path, "backups": backups,
                "key_type": req.key.to_string(), "key_encrypted": secret.is_some(),
                "csr_pem": generated.csr_pem,
            })
        );
    } else {
        for b in &backups {
            eprintln!("kept the previous file as {}", b.display());
        }
        eprintln!(
            "wrote {} and {} ({}{})",
            csr_path.display(),
            key_path.display(),
            req.key,
            if secret.is_some() {
                ", passphrase-protected"
            } else {
                ""
            }
        );
        print!("{}", generated.csr_pem);
    }
    Ok(ExitCode::SUCCESS)
}

fn show(file: &Path, output: Output) -> Result<ExitCode> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let info = csr::inspect(&data).with_context(|| file.display().to_string())?;
    let key = match (info.key.bits, &info.key.curve) {
        (_, Some(c)) => format!("{} {c}", info.key.key_type.as_str()),
        (Some(b), None) => format!("{} {b} bit", info.key.key_type.as_str()),
        _ => info.key.key_type.as_str().to_string(),
    };
    if output == Output::Json {
        println!(
            "{}",
            json!({
                "subject": info.subject, "common_name": info.common_name, "sans": info.sans,
                "key_type": info.key.key_type.as_str(), "key_bits": info.key.bits, "key_curve": info.key.curve,
                "signature_algorithm": info.signature_algorithm, "signature_valid": info.signature_valid,
            })
        );
    } else {
        println!("Subject: {}", info.subject);
        println!("Subject Alternative Names: {}", info.sans.join(", "));
        println!("Public Key: {key}");
        println!("Signature Algorithm: {}", info.signature_algorithm);
        println!(
            "Signature: {}",
            if info.signature_valid {
                "valid (self-signature verifies)"
            } else {
                "INVALID"
            }
        );
    }
    Ok(if info.signature_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
