//! `coalitiond clearing …`: finance's command line, a client of the finance API over mTLS with the
//! finance certificate. Prints readable tables; writes files with `--out`.

use crate::client::{ClientPem, connect};
use crate::config::Config;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use coalition_proto::v1 as pb;
use coalition_proto::v1::finance_service_client::FinanceServiceClient;
use std::path::PathBuf;
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
    /// Stem of the finance certificate in the certificate folder.
    #[arg(long, default_value = "finance")]
    pub identity: String,
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One row per participant and a TOTAL row.
    Csv,
    /// The whole settlement.
    Json,
    /// ISO 20022 pain.001.001.09 payouts (final settlements only).
    Pain001,
    /// Who must pay in, how much, by when, with the reference to quote.
    Payins,
}

/// `coalitiond clearing …`
#[derive(Debug, Subcommand)]
pub enum ClearingCommand {
    /// Clear a closed cycle (expire lots, settle) into a draft settlement.
    Run {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
    },
    /// Show a settlement, or list recent ones without --cycle.
    Show {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: Option<String>,
    },
    /// Finalize a draft settlement; a final settlement never changes. Refused while a partner's
    /// reconciliation has open breaks, unless `--accept-breaks --reason …`.
    Finalize {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// Finalize with open breaks; they and the reason are kept with the settlement.
        #[arg(long, requires = "reason")]
        accept_breaks: bool,
        /// Why the open breaks are accepted.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Match a partner's CSV of a cycle (README, "Reconciliation") against the ledger and store
    /// the report; prints it.
    Reconcile {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// The partner whose file it is.
        #[arg(long)]
        partner: String,
        /// The CSV.
        #[arg(long)]
        file: PathBuf,
    },
    /// The reconciliations of a cycle and their breaks; `--out` writes the breaks as CSV.
    Breaks {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// One partner (default: every one).
        #[arg(long)]
        partner: Option<String>,
        /// Write the breaks as CSV here (`-` for stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mark a break resolved with a note.
    Resolve {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// The break's number (`clearing breaks` lists them).
        #[arg(long = "break")]
        break_id: i64,
        /// Why it is resolved.
        #[arg(long)]
        note: String,
    },
    /// Export a settlement as CSV, JSON or pain.001.
    Export {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// File format.
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Write here (default: the server's file name in the current folder; `-` for stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The points liability (IFRS 15) per issuer and month of issue, in points and money, as of
    /// now or as of the close of a business day (`--as-of 2026-10-31`).
    Liability {
        #[command(flatten)]
        conn: Connection,
        /// YYYY-MM-DD: as of the close of that business day.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// A partner's statement for a cycle (every allocation behind its amounts).
    Statement {
        #[command(flatten)]
        conn: Connection,
        /// Business date, YYYY-MM-DD.
        #[arg(long)]
        cycle: String,
        /// Partner id.
        #[arg(long)]
        partner: String,
        /// Write the CSV here instead of printing a table.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

async fn client(c: &Connection) -> anyhow::Result<FinanceServiceClient<Channel>> {
    let config = Config::load(&c.config)?;
    let addr = c.addr.clone().unwrap_or_else(|| config.listen.to_string());
    let dir = config
        .ca_cert
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let pem = ClientPem::from_dir(&dir, &c.identity)
        .with_context(|| format!("reading {}/{}.pem", dir.display(), c.identity))?;
    let channel = connect(&addr, &pem)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(FinanceServiceClient::new(channel))
}

fn status(s: i32) -> &'static str {
    match pb::SettlementStatus::try_from(s).unwrap_or_default() {
        pb::SettlementStatus::Draft => "draft",
        pb::SettlementStatus::Final => "final",
        pb::SettlementStatus::Unspecified => "?",
    }
}

/// Prints a settlement as a table: who pays, who receives, how much, and the control totals.
pub fn print_settlement(s: &pb::Settlement) {
    println!(
        "Settlement of cycle {} ({}), {}",
        s.cycle,
        status(s.status),
        s.currency
    );
    println!("  digest {} (of its content)", s.digest);
    if !s.ledger_head.is_empty() {
        println!("  ledger head at seal {}", s.ledger_head);
    }
    if !s.seal.is_empty() {
        println!("  seal {} (digest and ledger head)", s.seal);
    }
    println!(
        "  previous {}",
        if s.previous_digest.is_empty() {
            "(first settlement)"
        } else {
            &s.previous_digest
        }
    );
    println!(
        "  {:<12} {:>12} {:>12} {:>10} {:>12}  payment",
        "participant", "receivable", "payable", "fees", "net"
    );
    for p in &s.positions {
        let pay = s.payments.iter().find(|x| x.participant == p.participant);
        let what = match pay {
            Some(x) if x.direction == "pays_in" => format!("pays {} {}", x.amount, s.currency),
            Some(x) => format!("receives {} {}", x.amount, s.currency),
            None => "-".to_string(),
        };
        println!(
            "  {:<12} {:>12} {:>12} {:>10} {:>12}  {what}",
            p.participant, p.receivable, p.payable, p.fees, p.net
        );
    }
    if let Some(a) = &s.accepted {
        println!(
            "  finalized with {} open break(s) accepted by {} at {}: {}",
            a.breaks.len(),
            a.accepted_by,
            a.accepted_at,
            a.reason
        );
        for b in &a.breaks {
            println!(
                "    {} #{} {} {} {}",
                b.partner, b.id, b.kind, b.transaction_id, b.detail
            );
        }
    }
    for a in &s.responses {
        println!(
            "  {} {} at {} by {}{}",
            a.partner,
            a.state,
            a.answered_at,
            a.answered_by,
            if a.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", a.reason)
            }
        );
    }
    if !s.gross.is_empty() {
        println!(
            "  gross: {}",
            s.gross
                .iter()
                .map(|c| format!("{}→{} {} pts {}", c.issuer, c.redeemer, c.points, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if !s.fees.is_empty() {
        println!(
            "  fees: {}",
            s.fees
                .iter()
                .map(|f| format!(
                    "{} {} pts × {} = {}",
                    f.issuer, f.points, f.fee_rate, f.value
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if let Some(t) = &s.totals {
        println!(
            "  control: {} transactions, earned {}, burned {}, burns reversed {}, earns reversed {}, expired {}, {} allocations, gross {}, fees {}, settled {}",
            t.transactions,
            t.earned,
            t.burned,
            t.burns_reversed,
            t.earns_reversed,
            t.expired,
            t.allocations,
            t.gross_value,
            t.fees,
            t.settled
        );
    }
}

/// Prints a partner's reconciliation: the counts, then one line per break.
pub fn print_reconciliation(r: &pb::Reconciliation) {
    println!(
        "Reconciliation of {} for cycle {} ({} by {} at {}): {} records, {} in the ledger, {} matched, {} open break(s)",
        r.partner,
        r.cycle,
        r.source,
        r.submitted_by,
        r.submitted_at,
        r.records,
        r.ledger_records,
        r.matched,
        r.open_breaks
    );
    for b in &r.breaks {
        let state = if b.resolved_at.is_empty() {
            "open".to_string()
        } else {
            format!(
                "resolved by {} at {}: {}",
                b.resolved_by, b.resolved_at, b.note
            )
        };
        let line = if b.line > 0 {
            format!(" line {}", b.line)
        } else {
            String::new()
        };
        let fields = if b.fields.is_empty() {
            String::new()
        } else {
            format!(" [{}]", b.fields.join(","))
        };
        println!(
            "  #{:<4} {:<18} {:<16}{fields}{line}  {}  — {state}",
            b.id, b.kind, b.transaction_id, b.detail
        );
    }
}

fn write_out(out: &Option<PathBuf>, default: &str, content: &[u8]) -> anyhow::Result<()> {
    match out {
        Some(p) if p.as_os_str() == "-" => {
            use std::io::Write;
            std::io::stdout().write_all(content)?;
        }
        Some(p) => {
            std::fs::write(p, content).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => {
            std::fs::write(default, content).with_context(|| format!("writing {default}"))?;
            eprintln!("wrote {default}");
        }
    }
    Ok(())
}

/// Runs a `clearing` subcommand.
pub async fn run(cmd: ClearingCommand) -> anyhow::Result<()> {
    match cmd {
        ClearingCommand::Run { conn, cycle } => {
            let s = client(&conn)
                .await?
                .run_clearing(pb::CycleRequest { cycle })
                .await?
                .into_inner();
            print_settlement(&s);
        }
        ClearingCommand::Show {
            conn,
            cycle: Some(cycle),
        } => {
            print_settlement(
                &client(&conn)
                    .await?
                    .get_settlement(pb::CycleRequest { cycle })
                    .await?
                    .into_inner(),
            );
        }
        ClearingCommand::Show { conn, cycle: None } => {
            let list = client(&conn)
                .await?
                .list_settlements(pb::ListSettlementsRequest::default())
                .await?
                .into_inner();
            println!(
                "{:<12} {:<6} {:>12} {:>8}  digest",
                "cycle", "status", "settled", "txns"
            );
            for s in list.settlements {
                let t = s.totals.unwrap_or_default();
                println!(
                    "{:<12} {:<6} {:>12} {:>8}  {}",
                    s.cycle,
                    status(s.status),
                    t.settled,
                    t.transactions,
                    s.digest
                );
            }
        }
        ClearingCommand::Finalize {
            conn,
            cycle,
            accept_breaks,
            reason,
        } => {
            let s = client(&conn)
                .await?
                .finalize_settlement(pb::FinalizeSettlementRequest {
                    cycle,
                    accept_breaks,
                    reason: reason.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_settlement(&s);
        }
        ClearingCommand::Reconcile {
            conn,
            cycle,
            partner,
            file,
        } => {
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let chunks: Vec<pb::PartnerFileChunk> = data
                .chunks(32 << 10)
                .enumerate()
                .map(|(i, c)| pb::PartnerFileChunk {
                    cycle: if i == 0 { cycle.clone() } else { String::new() },
                    partner: if i == 0 {
                        partner.clone()
                    } else {
                        String::new()
                    },
                    data: c.to_vec(),
                })
                .collect();
            let chunks = if chunks.is_empty() {
                vec![pb::PartnerFileChunk {
                    cycle,
                    partner,
                    data: vec![],
                }]
            } else {
                chunks
            };
            let r = client(&conn)
                .await?
                .reconcile_partner_file(tokio_stream::iter(chunks))
                .await?
                .into_inner();
            print_reconciliation(&r);
        }
        ClearingCommand::Breaks {
            conn,
            cycle,
            partner,
            out,
        } => {
            let req = pb::ReconciliationsRequest {
                cycle,
                partner: partner.unwrap_or_default(),
            };
            let mut c = client(&conn).await?;
            if out.is_some() {
                let f = c.export_breaks(req).await?.into_inner();
                return write_out(&out, &f.filename, &f.content);
            }
            let list = c.list_reconciliations(req).await?.into_inner();
            if list.reconciliations.is_empty() {
                println!("no partner has submitted records for this cycle");
            }
            for r in &list.reconciliations {
                print_reconciliation(r);
            }
        }
        ClearingCommand::Resolve {
            conn,
            cycle,
            partner,
            break_id,
            note,
        } => {
            let b = client(&conn)
                .await?
                .resolve_break(pb::ResolveBreakRequest {
                    cycle,
                    partner,
                    break_id,
                    note,
                })
                .await?
                .into_inner();
            println!(
                "break {} of {} ({} {}) resolved by {} at {}: {}",
                b.id, b.partner, b.kind, b.transaction_id, b.resolved_by, b.resolved_at, b.note
            );
        }
        ClearingCommand::Export {
            conn,
            cycle,
            format,
            out,
        } => {
            let format = match format {
                Format::Csv => pb::ExportFormat::Csv,
                Format::Json => pb::ExportFormat::Json,
                Format::Pain001 => pb::ExportFormat::Pain001,
                Format::Payins => pb::ExportFormat::Payins,
            };
            let f = client(&conn)
                .await?
                .export_settlement(pb::ExportRequest {
                    cycle,
                    format: format as i32,
                })
                .await?
                .into_inner();
            write_out(&out, &f.filename, &f.content)?;
        }
        ClearingCommand::Liability { conn, as_of } => {
            let r = client(&conn)
                .await?
                .get_liability_report(pb::LiabilityReportRequest {
                    as_of: as_of.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("Points liability as of {}", r.as_of);
            println!(
                "{:<12} {:<8} {:>12} {:>12} {:>10} {:>10} {:>12} {:>10} {:>14}",
                "issuer",
                "month",
                "issued",
                "redeemed",
                "reversed",
                "expired",
                "outstanding",
                "per point",
                "value"
            );
            for x in r.rows {
                println!(
                    "{:<12} {:<8} {:>12} {:>12} {:>10} {:>10} {:>12} {:>10} {:>14}",
                    x.issuer,
                    x.month,
                    x.issued,
                    x.redeemed,
                    x.reversed,
                    x.expired,
                    x.outstanding,
                    x.value_per_point,
                    x.outstanding_value
                );
            }
            println!(
                "total outstanding value: {} {}",
                r.total_outstanding_value, r.currency
            );
        }
        ClearingCommand::Statement {
            conn,
            cycle,
            partner,
            out,
        } => {
            let st = client(&conn)
                .await?
                .get_statement(pb::StatementRequest { cycle, partner })
                .await?
                .into_inner();
            if out.is_some() {
                return write_out(&out, "", st.csv.as_bytes());
            }
            let p = st.position.unwrap_or_default();
            println!(
                "Statement of {} for cycle {} ({}): receivable {}, payable {}, fees {}, net {}",
                st.partner,
                st.cycle,
                status(st.status),
                p.receivable,
                p.payable,
                p.fees,
                p.net
            );
            println!(
                "  {:>8} {:>3} {:<16} {:<10} {:<10} {:>7} {:>8} {:>10}",
                "ledger", "seq", "your txn id", "issuer", "redeemer", "points", "rate", "value"
            );
            for l in st.lines {
                println!(
                    "  {:>8} {:>3} {:<16} {:<10} {:<10} {:>7} {:>8} {:>10}",
                    l.ledger_id,
                    l.seq,
                    l.transaction_id,
                    l.issuer,
                    l.redeemer,
                    l.points,
                    l.rate,
                    l.value
                );
            }
        }
    }
    Ok(())
}
