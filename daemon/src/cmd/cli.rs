//! The `coalitiond` command line: one binary, one subcommand per job.

use crate::clock::Clock;
use crate::config::Config;
use crate::devsetup::{cert_stem, certs_init, revoke, write_pair};
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
    Bench(crate::cmd::bench::BenchArgs),
    /// Clear one generated cycle of many allocations and time it against a bare SQL aggregate.
    BenchClearing(crate::cmd::bench::ClearingBenchArgs),
    /// One partner floods at 10x its quota while another runs at half of its own: compare p99s.
    BenchLimits(crate::cmd::bench::LimitsBenchArgs),
    /// Finance: run, show, finalize and export settlements, and partner statements (over mTLS,
    /// with the finance certificate).
    Clearing {
        /// What to do.
        #[command(subcommand)]
        command: crate::cmd::finance::ClearingCommand,
    },
    /// Operators: partners, live limits, quota changes, suspension, certificate reload (over
    /// mTLS, with the operator certificate).
    Ops {
        /// What to do.
        #[command(subcommand)]
        command: crate::cmd::ops::OpsCommand,
    },
    /// A partner's integrator: the partner API with a partner certificate (over mTLS); `ingest`
    /// sends a day file of offline tills.
    Partner {
        /// What to do.
        #[command(subcommand)]
        command: crate::cmd::partner::PartnerCommand,
    },
    /// The programme team: campaigns (over mTLS, with the programme or an operator certificate).
    Programme {
        /// What to do.
        #[command(subcommand)]
        command: crate::cmd::programme::ProgrammeCommand,
    },
    /// Managers: programme KPIs and cohorts as a table, CSV, JSON or an HTML page (over mTLS,
    /// with the finance certificate, or a partner's for its own).
    Report {
        /// What to report.
        #[command(subcommand)]
        command: crate::cmd::report::ReportCommand,
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
        Command::Demo { dir } => crate::cmd::demo::run(dir).await,
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
            let (store, _backend) = crate::store::open(&config.database_url, 1).await?;
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
            let (store, _backend) = crate::store::open(&config.database_url, 1).await?;
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
        Command::Bench(args) => crate::cmd::bench::run(args).await,
        Command::BenchClearing(args) => crate::cmd::bench::clearing(args).await,
        Command::BenchLimits(args) => crate::cmd::bench::limits(args).await,
        Command::Clearing { command } => crate::cmd::finance::run(command).await,
        Command::Programme { command } => crate::cmd::programme::run(command).await,
        Command::Ops { command } => crate::cmd::ops::run(command).await,
        Command::Partner { command } => crate::cmd::partner::run(command).await,
        Command::Report { command } => crate::cmd::report::run(command).await,
    }
}
