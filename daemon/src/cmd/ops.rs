//! `coalitiond ops …`: the on-call operator's command line, a client of the operator API over mTLS
//! with the operator certificate.

use crate::client::{ClientPem, connect};
use crate::config::Config;
use anyhow::Context;
use clap::{Args, Subcommand};
use coalition_proto::v1 as pb;
use coalition_proto::v1::operator_service_client::OperatorServiceClient;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// Where the daemon is and who we are.
#[derive(Debug, Args)]
pub struct Connection {
    /// The config file (its `listen` address and certificate folder are used).
    #[arg(long, default_value = "coalition.toml")]
    pub config: PathBuf,
    /// host:port of the daemon, if not the config's `listen`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Stem of the operator certificate in the certificate folder.
    #[arg(long, default_value = "operator")]
    pub identity: String,
}

/// `coalitiond ops …`
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Partners with their status and limits.
    Partners {
        #[command(flatten)]
        conn: Connection,
    },
    /// Live limit state per partner: a refreshing table in a terminal, one table when piped.
    Limits {
        #[command(flatten)]
        conn: Connection,
        /// Refresh interval in seconds (terminal only).
        #[arg(long, default_value_t = 2)]
        every: u64,
        /// Print once and exit, even in a terminal.
        #[arg(long)]
        once: bool,
    },
    /// Change a partner's quota (takes effect at once, persists).
    SetLimit {
        #[command(flatten)]
        conn: Connection,
        /// Partner id.
        #[arg(long)]
        partner: String,
        /// Requests per second.
        #[arg(long)]
        per_second: u32,
        /// Burst.
        #[arg(long)]
        burst: u32,
    },
    /// Suspend a partner: its calls get PERMISSION_DENIED and nothing it sends is applied.
    Suspend {
        #[command(flatten)]
        conn: Connection,
        /// Partner id.
        #[arg(long)]
        partner: String,
    },
    /// Resume a suspended partner.
    Resume {
        #[command(flatten)]
        conn: Connection,
        /// Partner id.
        #[arg(long)]
        partner: String,
    },
    /// Let the scheduler clear a catch-up longer than `clearing.max_catch_up_cycles`, through a
    /// cycle (check the first cycle it names in its log first: a typo'd date writes settlements
    /// finance must sign off).
    ConfirmCatchUp {
        #[command(flatten)]
        conn: Connection,
        /// The last cycle it may clear (YYYY-MM-DD).
        #[arg(long)]
        through: String,
    },
    /// Partners' webhooks: where each delivers, how far behind it is, whether it fails or is
    /// paused; `--set` a partner's (URL, and secret or a new one), `--resume` a paused one.
    Webhooks {
        #[command(flatten)]
        conn: Connection,
        /// The partner to set or resume.
        #[arg(long, requires = "action")]
        partner: Option<String>,
        /// Set its webhook to this URL (a secret is made unless `--secret` gives one).
        #[arg(long, group = "action")]
        set: Option<String>,
        /// The signing secret (`whsec_…`) to set with `--set`.
        #[arg(long, requires = "set")]
        secret: Option<String>,
        /// Resume its paused webhook.
        #[arg(long, group = "action")]
        resume: bool,
    },
    /// Price versions of every partner (or one), oldest first; `*` marks the one in force.
    Prices {
        #[command(flatten)]
        conn: Connection,
        /// One partner only.
        #[arg(long)]
        partner: Option<String>,
    },
    /// A new version of a partner's prices, from the next cycle's opening or from --effective.
    SetPrices {
        #[command(flatten)]
        conn: Connection,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// Money per point paid to it for each point burned there (unchanged if left out).
        #[arg(long)]
        redemption_rate: Option<String>,
        /// Money per point it pays the operator for each point it issues (unchanged if left out).
        #[arg(long)]
        issuance_fee: Option<String>,
        /// RFC 3339 instant, at least 60 s ahead (default: the next cycle's opening).
        #[arg(long)]
        effective: Option<String>,
    },
    /// Forget a member at its request: its id becomes a keyed pseudonym everywhere, its points
    /// are forfeited (breakage of their issuers at the next clearing), later calls naming the id
    /// are refused (MEMBER_FORGOTTEN). Safe to repeat.
    Forget {
        #[command(flatten)]
        conn: Connection,
        /// The member's id.
        #[arg(long)]
        member: String,
        /// Why (a ticket, "member's request"); kept with the record.
        #[arg(long)]
        reason: String,
    },
    /// Re-read the server certificate, CA and CRL (as SIGHUP does).
    ReloadCerts {
        #[command(flatten)]
        conn: Connection,
    },
}

async fn client(c: &Connection) -> anyhow::Result<OperatorServiceClient<Channel>> {
    Ok(OperatorServiceClient::new(
        channel(&c.config, c.addr.as_deref(), &c.identity).await?,
    ))
}

/// A channel to the daemon of the config at `config` (or at `addr`), presenting the certificate
/// `<identity>.pem` of the config's certificate folder.
pub async fn channel(
    config: &std::path::Path,
    addr: Option<&str>,
    identity: &str,
) -> anyhow::Result<Channel> {
    let config = Config::load(config)?;
    let addr = addr.map_or_else(|| config.listen.to_string(), str::to_string);
    let dir = config
        .ca_cert
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let pem = ClientPem::from_dir(&dir, identity)
        .with_context(|| format!("reading {}/{identity}.pem", dir.display()))?;
    connect(&addr, &pem)
        .await
        .with_context(|| format!("connecting to {addr}"))
}

fn print_partners(ps: &[pb::PartnerInfo]) {
    println!(
        "{:<12} {:<28} {:<12} {:<10} {:>10} {:>8}",
        "partner", "name", "kind", "status", "per_second", "burst"
    );
    for p in ps {
        println!(
            "{:<12} {:<28} {:<12} {:<10} {:>10} {:>8}",
            p.id, p.name, p.kind, p.status, p.per_second, p.burst
        );
    }
}

/// The limits table.
pub fn limits_table(ls: &[pb::LimitState]) -> String {
    let mut out = format!(
        "{:<12} {:>9} {:>7} {:<9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "partner",
        "quota/s",
        "burst",
        "status",
        "rate/s",
        "allowed1m",
        "thrott1m",
        "thrott5m",
        "thrott1h",
        "use%"
    );
    if let Some(l) = ls.first()
        && l.daemons > 1
    {
        out += &format!(
            "(limits shared by {} live daemons, each letting through its share; traffic summed over them)\n",
            l.daemons
        );
    }
    for l in ls {
        let usage = if l.per_second == 0 {
            0.0
        } else {
            100.0 * (l.allowed_1m as f64 / 60.0) / l.per_second as f64
        };
        out += &format!(
            "{:<12} {:>9} {:>7} {:<9} {:>9.1} {:>10} {:>10} {:>10} {:>10} {:>9.1}%\n",
            l.partner,
            l.per_second,
            l.burst,
            if l.suspended { "SUSPENDED" } else { "active" },
            l.recent_rate,
            l.allowed_1m,
            l.throttled_1m,
            l.throttled_5m,
            l.throttled_1h,
            usage
        );
    }
    out
}

/// Runs an `ops` subcommand.
pub async fn run(cmd: OpsCommand) -> anyhow::Result<()> {
    match cmd {
        OpsCommand::Partners { conn } => {
            print_partners(
                &client(&conn)
                    .await?
                    .list_partners(pb::ListPartnersRequest {})
                    .await?
                    .into_inner()
                    .partners,
            );
        }
        OpsCommand::Limits { conn, every, once } => {
            let mut c = client(&conn).await?;
            let live = std::io::stdout().is_terminal() && !once;
            loop {
                let ls = c
                    .get_limits(pb::GetLimitsRequest::default())
                    .await?
                    .into_inner()
                    .limits;
                if live {
                    // Clear the screen and home the cursor, then redraw.
                    print!(
                        "\x1b[2J\x1b[H{}",
                        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC  (Ctrl-C to stop)\n\n")
                    );
                }
                print!("{}", limits_table(&ls));
                if !live {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(every.max(1))).await;
            }
        }
        OpsCommand::SetLimit {
            conn,
            partner,
            per_second,
            burst,
        } => {
            let p = client(&conn)
                .await?
                .set_limit(pb::SetLimitRequest {
                    partner,
                    per_second,
                    burst,
                })
                .await?
                .into_inner();
            print_partners(&[p]);
        }
        OpsCommand::Forget {
            conn,
            member,
            reason,
        } => {
            let f = client(&conn)
                .await?
                .forget_member(pb::ForgetMemberRequest {
                    member_id: member,
                    reason,
                })
                .await?
                .into_inner();
            println!(
                "{} {} at {}: {} points forfeited (breakage at the next clearing)",
                if f.newly_forgotten {
                    "forgotten as"
                } else {
                    "already forgotten as"
                },
                f.pseudonym,
                f.forgotten_at,
                f.points_forfeited
            );
        }
        OpsCommand::Suspend { conn, partner } => {
            print_partners(&[client(&conn)
                .await?
                .suspend_partner(pb::PartnerRequest { partner })
                .await?
                .into_inner()]);
        }
        OpsCommand::Resume { conn, partner } => {
            print_partners(&[client(&conn)
                .await?
                .resume_partner(pb::PartnerRequest { partner })
                .await?
                .into_inner()]);
        }
        OpsCommand::ConfirmCatchUp { conn, through } => {
            let r = client(&conn)
                .await?
                .confirm_catch_up(pb::ConfirmCatchUpRequest { through })
                .await?
                .into_inner();
            println!(
                "confirmed: the scheduler clears {} cycle(s) through {}",
                r.cycles, r.through
            );
        }
        OpsCommand::Webhooks {
            conn,
            partner,
            set,
            secret,
            resume,
        } => {
            let mut c = client(&conn).await?;
            let shown = match (partner, set, resume) {
                (Some(partner), Some(url), _) => vec![
                    c.set_webhook(pb::SetWebhookRequest {
                        partner,
                        url,
                        secret: secret.unwrap_or_default(),
                    })
                    .await?
                    .into_inner(),
                ],
                (Some(partner), None, true) => vec![
                    c.resume_webhook(pb::PartnerRequest { partner })
                        .await?
                        .into_inner(),
                ],
                _ => {
                    c.list_webhooks(pb::ListWebhooksRequest {})
                        .await?
                        .into_inner()
                        .webhooks
                }
            };
            print!("{}", webhooks_table(&shown));
        }
        OpsCommand::Prices { conn, partner } => {
            let r = client(&conn)
                .await?
                .list_prices(pb::ListPricesRequest {
                    partner: partner.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!(
                "  {:<16} {:<28} {:>16} {:>14}  SET BY",
                "PARTNER", "EFFECTIVE FROM", "REDEMPTION RATE", "ISSUANCE FEE"
            );
            for v in r.versions {
                println!(
                    "{:<2}{:<16} {:<28} {:>16} {:>14}  {}",
                    if v.in_force { "*" } else { "" },
                    v.partner,
                    v.effective_from,
                    v.redemption_rate,
                    v.issuance_fee,
                    v.set_by
                );
            }
        }
        OpsCommand::SetPrices {
            conn,
            partner,
            redemption_rate,
            issuance_fee,
            effective,
        } => {
            let v = client(&conn)
                .await?
                .set_prices(pb::SetPricesRequest {
                    partner,
                    redemption_rate: redemption_rate.unwrap_or_default(),
                    issuance_fee: issuance_fee.unwrap_or_default(),
                    effective_from: effective.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!(
                "{}: redemption rate {}, issuance fee {} from {} (set by {})",
                v.partner, v.redemption_rate, v.issuance_fee, v.effective_from, v.set_by
            );
        }
        OpsCommand::ReloadCerts { conn } => {
            let r = client(&conn)
                .await?
                .reload_certificates(pb::ReloadCertificatesRequest {})
                .await?
                .into_inner();
            println!(
                "certificates reloaded; the CRL lists {} revoked certificate(s)",
                r.revoked
            );
        }
    }
    Ok(())
}

/// Webhooks as a table (a secret the daemon just made is shown once, below it).
pub fn webhooks_table(ws: &[pb::WebhookStatus]) -> String {
    let mut out = format!(
        "  {:<16} {:>10} {:>10} {:>8} {:>8}  {:<8} URL\n",
        "PARTNER", "DELIVERED", "HEAD", "LAG S", "FAILS", "STATE"
    );
    for w in ws {
        let state = if !w.paused_at.is_empty() {
            "paused"
        } else if w.failures > 0 {
            "failing"
        } else {
            "ok"
        };
        out.push_str(&format!(
            "  {:<16} {:>10} {:>10} {:>8} {:>8}  {:<8} {}\n",
            w.partner,
            w.delivered_sequence,
            w.head_sequence,
            w.lag_seconds,
            w.failures,
            state,
            w.url
        ));
        if !w.last_error.is_empty() {
            out.push_str(&format!("      last error: {}\n", w.last_error));
        }
        if !w.secret.is_empty() {
            out.push_str(&format!(
                "      signing secret (shown once; give it to the partner): {}\n",
                w.secret
            ));
        }
    }
    out
}
