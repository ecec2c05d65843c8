//! `coalitiond partner …`: the partner API from the command line, with a partner's certificate.
//! `ingest` sends a day file of offline tills through `IngestBatch` and writes one result per line;
//! `earn`, `burn`, `reverse-earn`, `reverse-burn`, `balance`, `transaction` and `activity` make
//! one call each (`partner_calls`).
//!
//! The day file is CSV with a header; columns by name, in any order, unknown ones ignored:
//!
//! ```text
//! kind,transaction_id,member_id,points,purchase_amount,currency,category,original_transaction_id
//! earn,t-1001,m-42,,23.50,EUR,,
//! earn,t-1002,m-42,200,,,,
//! burn,t-1003,m-42,150,,,,
//! reverse_earn,t-1004,,0,,,,t-1001
//! reverse_burn,t-1005,,50,,,,t-1003
//! ```
//!
//! An earn is a purchase (`purchase_amount`, `currency` — the coalition's by default — and an
//! optional `category`) or a bonus (`points`); a reversal's `points` 0 or empty takes back all that
//! is left. The result file has one row per line, in order:
//! `line,transaction_id,status,reason,message,points,balance_after`. A line that is not CSV of
//! this shape is answered `INVALID_ARGUMENT` / `MALFORMED_LINE` here, naming the line and the
//! column, and never sent; the rest of the file goes on.

use crate::cmd::partner_calls::PartnerConnection;
use anyhow::Context;
use clap::Subcommand;
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;

/// `coalitiond partner …`
#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Send a day file (CSV) through IngestBatch and write a result file (CSV), one row per line.
    /// Sending the same file again after a failure applies nothing twice.
    Ingest {
        #[command(flatten)]
        conn: PartnerConnection,
        /// The day file.
        #[arg(long)]
        file: PathBuf,
        /// The result file (default: the day file's name with `.results.csv`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Your event feed (WatchEvents): the events from `--from` on, then, with `--follow`, new
    /// ones as they commit. One line each (a table row, or with `--json` the event as JSON). A CRM
    /// keeps the last sequence it processed and starts again from the next.
    Events {
        #[command(flatten)]
        opts: crate::cmd::partner_calls::CallOptions,
        /// The first sequence to print (0: the oldest kept).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Only these types (repeatable), e.g. `--type transaction.earned`.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Keep following the feed as new events commit.
        #[arg(long)]
        follow: bool,
    },
    /// One call of the partner API.
    #[command(flatten)]
    Call(crate::cmd::partner_calls::Call),
}

/// How long `partner events` without `--follow` waits for more before it ends.
const QUIET: std::time::Duration = std::time::Duration::from_millis(1500);

/// Prints a partner's events (see [`PartnerCommand::Events`]).
async fn events(
    opts: &crate::cmd::partner_calls::CallOptions,
    from: i64,
    types: Vec<String>,
    follow: bool,
) -> anyhow::Result<()> {
    let (mut api, _) = client(&opts.conn).await?;
    let mut stream = match api
        .watch_events(pb::WatchEventsRequest {
            from_sequence: from,
            types,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => {
            let refused = crate::cmd::partner_calls::refusal(&status);
            if opts.json {
                println!("{}", refused.json);
            } else {
                eprint!("{}", refused.table);
            }
            anyhow::bail!("the call was refused");
        }
    };
    let mut out = std::io::stdout().lock();
    loop {
        let next = if follow {
            stream.message().await
        } else {
            match tokio::time::timeout(QUIET, stream.message()).await {
                Ok(m) => m,
                Err(_) => return Ok(()),
            }
        };
        let event = match next {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(status) => {
                let refused = crate::cmd::partner_calls::refusal(&status);
                eprint!("{}", refused.table);
                anyhow::bail!("the feed ended: {}", status.message());
            }
        };
        let line = if opts.json {
            serde_json::to_string(&event)?
        } else {
            format!(
                "{:>8}  {}  {:<28}  {:<20}  {}",
                event.sequence,
                event.occurred_at,
                event.r#type,
                event.member_id,
                summary(&event)
            )
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}

/// What an event says, in a few words.
fn summary(e: &pb::PartnerEvent) -> String {
    use pb::partner_event::Payload as P;
    match &e.payload {
        Some(P::Transaction(t)) => t.receipt.as_ref().map_or(String::new(), |r| {
            format!(
                "{} {} points, balance {}",
                r.transaction_id, r.points, r.balance_after
            )
        }),
        Some(P::Hold(h)) => h.hold.as_ref().map_or(String::new(), |x| {
            format!("{} {} points", x.authorization_id, x.points)
        }),
        Some(P::Voucher(v)) => v
            .voucher
            .as_ref()
            .map_or(String::new(), |x| format!("{} {}", x.voucher_id, x.what)),
        Some(P::StampCard(c)) => format!("{} completed by {}", c.reward, c.transaction_id),
        Some(P::Tier(t)) => format!("{} -> {}", t.from_tier, t.to_tier),
        Some(P::Settlement(s)) => format!("{} net {} digest {}", s.cycle, s.net, s.digest),
        Some(P::ReconciliationBreak(b)) => {
            format!(
                "{} break {} {} {}",
                b.cycle, b.break_id, b.kind, b.transaction_id
            )
        }
        None => String::new(),
    }
}

/// Makes one call with the partner's certificate: its answer, or its refusal as an answer.
pub async fn one_call(
    call: &crate::cmd::partner_calls::Call,
) -> anyhow::Result<crate::cmd::partner_calls::Answer> {
    let (mut api, config) = client(&call.opts().conn).await?;
    Ok(crate::cmd::partner_calls::call(&mut api, call, config.currency.code).await)
}

async fn client(
    c: &PartnerConnection,
) -> anyhow::Result<(
    PartnerServiceClient<tonic::transport::Channel>,
    crate::config::Config,
)> {
    let config = crate::config::Config::load(&c.config)?;
    let addr = c.addr.clone().unwrap_or_else(|| config.listen.to_string());
    let cert = match (&c.cert, &c.partner) {
        (Some(cert), _) => cert.clone(),
        (None, Some(p)) => config
            .ca_cert
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(format!("partner-{p}.pem")),
        (None, None) => {
            anyhow::bail!("give the partner's certificate: --cert FILE or --partner ID")
        }
    };
    let key = c.key.clone().unwrap_or_else(|| cert.with_extension("key"));
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let pem = crate::client::ClientPem {
        ca: read(&config.ca_cert)?,
        cert: read(&cert)?,
        key: read(&key)?,
    };
    let channel = crate::client::connect(&addr, &pem)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // A day file's results can be many: no message limit beyond the server's own.
    Ok((
        PartnerServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
        config,
    ))
}

/// One CSV row as an `IngestLine`, or why it is not one (the column at fault).
fn parse_line(
    line: u64,
    row: &csv::StringRecord,
    columns: &BTreeMap<String, usize>,
    currency: &str,
) -> Result<pb::IngestLine, String> {
    // What the daemon would refuse the whole stream for (a control character in a text field)
    // is refused here, line by line, naming the column.
    for (name, &i) in columns {
        if let Some(cell) = row.get(i) {
            coalition_proto::codec::check_text(|| name.clone(), cell)
                .map_err(|r| format!("{}: {}", r.field, r.message))?;
        }
    }
    let get = |name: &str| {
        columns
            .get(name)
            .and_then(|&i| row.get(i))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let points = |required: bool| -> Result<i64, String> {
        let p = get("points");
        if p.is_empty() && !required {
            return Ok(0);
        }
        p.parse::<i64>()
            .map_err(|_| format!("points: {p:?} is not a whole number"))
    };
    let id = get("transaction_id");
    use pb::ingest_line::Operation;
    let operation = match get("kind").as_str() {
        "earn" => {
            let amount = get("purchase_amount");
            let grant = if amount.is_empty() {
                pb::earn_request::Grant::BonusPoints(points(true)?)
            } else {
                let c = get("currency");
                pb::earn_request::Grant::Purchase(pb::Money {
                    amount,
                    currency: if c.is_empty() {
                        currency.to_string()
                    } else {
                        c
                    },
                })
            };
            Operation::Earn(pb::EarnRequest {
                transaction_id: id,
                member_id: get("member_id"),
                grant: Some(grant),
                category: get("category"),
            })
        }
        "burn" => Operation::Burn(pb::BurnRequest {
            transaction_id: id,
            member_id: get("member_id"),
            points: points(true)?,
        }),
        "reverse_earn" => Operation::ReverseEarn(pb::ReverseEarnRequest {
            transaction_id: id,
            original_transaction_id: get("original_transaction_id"),
            points: points(false)?,
        }),
        "reverse_burn" => Operation::ReverseBurn(pb::ReverseBurnRequest {
            transaction_id: id,
            original_transaction_id: get("original_transaction_id"),
            points: points(false)?,
        }),
        other => {
            return Err(format!(
                "kind: {other:?} is not one of earn, burn, reverse_earn, reverse_burn"
            ));
        }
    };
    Ok(pb::IngestLine {
        line,
        operation: Some(operation),
    })
}

/// Tallies of one run.
#[derive(Default)]
struct Tally {
    ok: u64,
    refused: BTreeMap<String, u64>,
}

/// The result file: the one CSV writer that neutralises formula-like cells, since the
/// transaction ids, reasons and messages echo what the day file said.
type ResultFile = coalition_clearing::csv_writer::CsvWriter<std::io::BufWriter<std::fs::File>>;

fn write_row(out: &mut ResultFile, tally: &mut Tally, r: &pb::IngestResult) -> anyhow::Result<()> {
    let (points, balance) = r
        .receipt
        .as_ref()
        .map(|x| (x.points.to_string(), x.balance_after.to_string()))
        .unwrap_or_default();
    use coalition_clearing::csv_writer::Cell;
    out.try_row([
        Cell::Number(r.line.to_string()),
        Cell::Text(&r.transaction_id),
        Cell::Text(&r.status),
        Cell::Text(&r.reason),
        Cell::Text(&r.message),
        Cell::Number(points),
        Cell::Number(balance),
    ])?;
    if r.status == "OK" {
        tally.ok += 1;
    } else {
        *tally.refused.entry(r.reason.clone()).or_default() += 1;
    }
    Ok(())
}

/// Runs a `partner` subcommand.
pub async fn run(cmd: PartnerCommand) -> anyhow::Result<()> {
    let (conn, file, out) = match cmd {
        PartnerCommand::Ingest { conn, file, out } => (conn, file, out),
        PartnerCommand::Events {
            opts,
            from,
            types,
            follow,
        } => return events(&opts, from, types, follow).await,
        PartnerCommand::Call(call) => {
            let a = one_call(&call).await?;
            let text = if call.opts().json {
                format!("{}\n", a.json)
            } else {
                a.table.clone()
            };
            if a.refused {
                // The refusal is the answer: on stdout with --json (for a program), on stderr
                // otherwise; the exit status says it failed.
                if call.opts().json {
                    print!("{text}");
                } else {
                    eprint!("{text}");
                }
                anyhow::bail!("the call was refused");
            }
            print!("{text}");
            return Ok(());
        }
    };
    let (mut api, config) = client(&conn).await?;
    let out_path = out.unwrap_or_else(|| file.with_extension("results.csv"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&file)
        .with_context(|| format!("reading {}", file.display()))?;
    let columns: BTreeMap<String, usize> = reader
        .headers()?
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim().to_string(), i))
        .collect();
    anyhow::ensure!(
        columns.contains_key("kind") && columns.contains_key("transaction_id"),
        "{}: the header must name at least kind and transaction_id",
        file.display()
    );
    let currency = config.currency.code.to_string();
    // Lines are read and sent by a task of their own while results stream back; a line that
    // is not CSV of the day file's shape is answered here, in its place among the results.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestLine>(4096);
    let (bad_tx, mut bad_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
    let sender = tokio::spawn(async move {
        let mut record = csv::StringRecord::new();
        let mut line = 1u64; // the header
        loop {
            line += 1;
            match reader.read_record(&mut record) {
                Ok(false) => return Ok::<u64, anyhow::Error>(line - 2),
                Ok(true) => match parse_line(line, &record, &columns, &currency) {
                    Ok(l) => {
                        if tx.send(l).await.is_err() {
                            return Ok(line - 1);
                        }
                    }
                    Err(e) => {
                        let _ = bad_tx.send((line, e));
                    }
                },
                Err(e) => {
                    let _ = bad_tx.send((line, format!("not CSV: {e}")));
                }
            }
        }
    });
    let mut results = api
        .ingest_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = ResultFile::to_writer(std::io::BufWriter::new(
        std::fs::File::create(&out_path)
            .with_context(|| format!("writing {}", out_path.display()))?,
    ));
    out.try_header(&[
        "line",
        "transaction_id",
        "status",
        "reason",
        "message",
        "points",
        "balance_after",
    ])?;
    let mut tally = Tally::default();
    let mut malformed: VecDeque<(u64, String)> = VecDeque::new();
    let mut flush_bad = |upto: u64,
                         out: &mut ResultFile,
                         tally: &mut Tally,
                         malformed: &mut VecDeque<(u64, String)>|
     -> anyhow::Result<()> {
        while let Ok(b) = bad_rx.try_recv() {
            malformed.push_back(b);
        }
        while malformed.front().is_some_and(|(l, _)| *l < upto) {
            let (line, message) = malformed.pop_front().unwrap_or_default();
            write_row(
                out,
                tally,
                &pb::IngestResult {
                    line,
                    status: "INVALID_ARGUMENT".into(),
                    reason: "MALFORMED_LINE".into(),
                    message: format!("line {line}: {message}"),
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    };
    let outcome = loop {
        match results.message().await {
            Ok(Some(r)) => {
                flush_bad(r.line, &mut out, &mut tally, &mut malformed)?;
                write_row(&mut out, &mut tally, &r)?;
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let lines = sender.await??;
    if outcome.is_ok() {
        flush_bad(u64::MAX, &mut out, &mut tally, &mut malformed)?;
    }
    out.flush()?;
    let refused: u64 = tally.refused.values().sum();
    let mut summary = std::io::stderr();
    writeln!(
        summary,
        "{}: {lines} lines, {} OK, {refused} refused; results in {}",
        file.display(),
        tally.ok,
        out_path.display()
    )?;
    for (reason, n) in &tally.refused {
        writeln!(summary, "  {reason}: {n}")?;
    }
    if let Err(status) = outcome {
        anyhow::bail!(
            "the stream failed after {} answered lines ({}: {}); send the same file again: lines already applied answer with their first receipt",
            tally.ok + refused,
            crate::api::error::code_name(status.code()),
            status.message()
        );
    }
    Ok(())
}
