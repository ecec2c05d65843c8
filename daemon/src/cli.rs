//! The `coalitiond` command line: one binary, one subcommand per job.

use crate::clock::Clock;
use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coalition_certs::{Authority, Identity, Role};
use std::path::{Path, PathBuf};

/// The coalition clearing daemon.
#[derive(Debug, Parser)]
#[command(name = "coalitiond", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// The config file.
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
    },
    /// Make dev certificates and a fresh database, start a daemon, and play a day at three partners.
    Demo {
        /// Folder for the demo's certificates and database (default: ./data/demo-<time>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Issue development certificates.
    Certs {
        /// What to issue.
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check the ledger invariants of a database, its hash chain included.
    Audit {
        /// The config file (its database is audited).
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
        /// Only recompute the ledger's hash chain from its rows, naming the first batch whose
        /// rows were changed, inserted or deleted behind the daemon's back.
        #[arg(long)]
        verify_chain: bool,
    },
    /// Rewrite a SQLite ledger file in place (VACUUM) with the daemon stopped: once, for a file
    /// written before every freed byte was zeroed, so that no forgotten member's id is left in
    /// its free space.
    Compact {
        /// The config file (its SQLite database is rewritten).
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
    },
    /// Drive a mixed earn/burn load over mTLS and print throughput and latency.
    Bench(crate::bench::BenchArgs),
    /// Clear one generated cycle of many allocations and time it against a bare SQL aggregate.
    BenchClearing(crate::bench::ClearingBenchArgs),
    /// One partner floods at 10x its quota while another runs at half of its own: compare p99s.
    BenchLimits(crate::bench::LimitsBenchArgs),
    /// Finance: run, show, finalize and export settlements, and partner statements (over mTLS,
    /// with the finance certificate).
    Clearing {
        /// What to do.
        #[command(subcommand)]
        command: crate::finance_cli::ClearingCommand,
    },
    /// Operators: partners, live limits, quota changes, suspension, certificate reload (over
    /// mTLS, with the operator certificate).
    Ops {
        /// What to do.
        #[command(subcommand)]
        command: crate::ops_cli::OpsCommand,
    },
    /// A partner's integrator: the partner API with a partner certificate (over mTLS); `ingest`
    /// sends a day file of offline tills.
    Partner {
        /// What to do.
        #[command(subcommand)]
        command: crate::partner_cli::PartnerCommand,
    },
    /// The programme team: campaigns (over mTLS, with the programme or an operator certificate).
    Programme {
        /// What to do.
        #[command(subcommand)]
        command: crate::programme_cli::ProgrammeCommand,
    },
    /// Managers: programme KPIs and cohorts as a table, CSV, JSON or an HTML page (over mTLS,
    /// with the finance certificate, or a partner's for its own).
    Report {
        /// What to report.
        #[command(subcommand)]
        command: crate::report_cli::ReportCommand,
    },
}

/// `coalitiond certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a dev CA, a server certificate, one certificate per configured partner, and one
    /// finance, one operator and one programme identity, in the folder of the config's `tls.ca_cert`.
    Init {
        /// The config file.
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a client certificate: add its serial to the CRL at the config's `tls.crl`. Send the
    /// daemon SIGHUP (or call ReloadCertificates) to apply it.
    Revoke {
        /// The config file.
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// Issue one more client certificate with the existing CA.
    Issue {
        /// The config file.
        #[arg(long, default_value = "coalition.toml")]
        config: PathBuf,
        /// partner, finance, operator or programme.
        #[arg(long)]
        role: String,
        /// The partner id or identity name.
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// File stem of a client identity's certificate and key.
pub fn cert_stem(id: &Identity) -> String {
    match id.role {
        Role::Partner => format!("partner-{}", id.name),
        Role::Finance | Role::Operator | Role::Programme => id.role.as_str().to_string(),
    }
}

fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{stem}.pem")), cert)?;
    write_private(&dir.join(format!("{stem}.key")), key)
}

fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Adds a certificate's serial to the config's CRL (re-signed by the CA beside `tls.ca_cert`).
/// Returns how many serials the CRL lists.
pub fn revoke(config: &Config, cert_pem: &str) -> anyhow::Result<usize> {
    let crl_path = config
        .crl
        .as_ref()
        .context("config has no tls.crl: set one to revoke certificates")?;
    let dir = config
        .ca_cert
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let ca = Authority::load(
        &std::fs::read_to_string(&config.ca_cert)?,
        &std::fs::read_to_string(dir.join("ca.key"))
            .context("reading ca.key beside tls.ca_cert")?,
    )?;
    let mut serials = match std::fs::read_to_string(crl_path) {
        Ok(pem) => coalition_certs::crl_serials(&pem)?,
        Err(_) => vec![],
    };
    let serial = coalition_certs::serial_of(cert_pem)?;
    if !serials.contains(&serial) {
        serials.push(serial);
    }
    let number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    std::fs::write(crl_path, ca.crl(&serials, number, 30)?)?;
    Ok(serials.len())
}

/// Writes a dev CA, server certificate and all client identities for `config` into `dir`.
pub fn certs_init(config: &Config, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Authority::generate(&format!("{} development CA", config.coalition))?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    write_private(&dir.join("ca.key"), &ca.key_pem)?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
    std::fs::write(&config.server_cert, &server.cert_pem)
        .with_context(|| format!("writing {}", config.server_cert.display()))?;
    write_private(&config.server_key, &server.key_pem)?;
    let mut written = vec![dir.join("ca.pem"), config.server_cert.clone()];
    if let Some(crl) = &config.crl {
        std::fs::write(crl, ca.crl(&[], 1, 30)?)?;
        written.push(crl.clone());
    }
    let mut ids: Vec<Identity> = config
        .partners
        .keys()
        .map(|p| Identity {
            role: Role::Partner,
            name: p.clone(),
        })
        .collect();
    ids.push(Identity {
        role: Role::Finance,
        name: "finance".into(),
    });
    ids.push(Identity {
        role: Role::Operator,
        name: "oncall".into(),
    });
    ids.push(Identity {
        role: Role::Programme,
        name: "programme".into(),
    });
    for id in ids {
        let issued = ca.issue_client(&config.coalition, &id, 365)?;
        let stem = cert_stem(&id);
        write_pair(dir, &stem, &issued.cert_pem, &issued.key_pem)?;
        written.push(dir.join(format!("{stem}.pem")));
    }
    Ok(written)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::client::install_crypto();
    match cli.command {
        Command::Serve { config } => {
            init_logs(cli.log_format);
            crate::server::admission::raise_nofile_limit();
            let config = Config::load(&config)?;
            let daemon = crate::daemon::Daemon::start(config, Clock::default()).await?;
            daemon.run_until_signal().await
        }
        Command::Demo { dir } => crate::demo::run(dir).await,
        Command::Certs {
            command: CertsCommand::Init { config, force },
        } => {
            let config = Config::load(&config)?;
            let dir = config
                .ca_cert
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if config.ca_cert.exists() && !force {
                anyhow::bail!(
                    "{} exists; pass --force to replace the CA and every certificate",
                    config.ca_cert.display()
                );
            }
            for path in certs_init(&config, &dir)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Revoke { config, cert },
        } => {
            let config = Config::load(&config)?;
            let crl = revoke(
                &config,
                &std::fs::read_to_string(&cert)
                    .with_context(|| format!("reading {}", cert.display()))?,
            )?;
            println!(
                "revoked {}; {} now lists {crl} certificate(s); send SIGHUP to the daemon to apply",
                cert.display(),
                config.crl.as_ref().expect("checked").display()
            );
            Ok(())
        }
        Command::Certs {
            command:
                CertsCommand::Issue {
                    config,
                    role,
                    name,
                    days,
                },
        } => {
            let config = Config::load(&config)?;
            let role = Role::parse(&role)
                .context("--role must be partner, finance, operator or programme")?;
            let dir = config
                .ca_cert
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let ca = Authority::load(
                &std::fs::read_to_string(&config.ca_cert)?,
                &std::fs::read_to_string(dir.join("ca.key"))
                    .context("reading ca.key beside tls.ca_cert")?,
            )?;
            let id = Identity { role, name };
            let issued = ca.issue_client(&config.coalition, &id, days)?;
            let stem = cert_stem(&id);
            write_pair(&dir, &stem, &issued.cert_pem, &issued.key_pem)?;
            println!("wrote {}", dir.join(format!("{stem}.pem")).display());
            Ok(())
        }
        Command::Audit {
            config,
            verify_chain: true,
        } => {
            let config = Config::load(&config)?;
            let (store, _backend) = crate::store::open(&config.database_url).await?;
            let report = store.verify_chain().await?;
            println!(
                "chain: {} links recomputed from their rows{}",
                report.links,
                if report.before_chain > 0 {
                    format!("; {} transactions predate the chain", report.before_chain)
                } else {
                    String::new()
                }
            );
            for v in &report.violations {
                println!("VIOLATION: {v}");
            }
            match report.first_bad {
                Some(seq) => anyhow::bail!(
                    "the ledger was changed behind the daemon's back: first at batch #{seq}"
                ),
                None if !report.ok() => anyhow::bail!("the chain does not hold"),
                None => {
                    println!("the chain holds");
                    Ok(())
                }
            }
        }
        Command::Audit { config, .. } => {
            let config = Config::load(&config)?;
            let (store, _backend) = crate::store::open(&config.database_url).await?;
            let report = store
                .audit(Clock::default().now(), &config.clearing_rules())
                .await?;
            println!("{report}");
            if !report.ok() {
                anyhow::bail!("ledger invariants violated");
            }
            Ok(())
        }
        Command::Compact { config } => {
            let config = Config::load(&config)?;
            let (before, after) = crate::store::sqlite::compact(&config.database_url).await?;
            println!("compacted: {before} bytes before, {after} after; its WAL is empty");
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(args).await,
        Command::BenchClearing(args) => crate::bench::clearing(args).await,
        Command::BenchLimits(args) => crate::bench::limits(args).await,
        Command::Clearing { command } => crate::finance_cli::run(command).await,
        Command::Programme { command } => crate::programme_cli::run(command).await,
        Command::Ops { command } => crate::ops_cli::run(command).await,
        Command::Partner { command } => crate::partner_cli::run(command).await,
        Command::Report { command } => crate::report_cli::run(command).await,
    }
}
