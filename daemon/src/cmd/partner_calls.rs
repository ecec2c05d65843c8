//! `coalitiond partner earn|burn|reverse-earn|reverse-burn|balance|transaction|activity`: one call
//! of the partner API with a partner's certificate, for integrators testing a certificate and for
//! support reproducing a partner's call. The answer is printed as a table or, with `--json`, as
//! one JSON object; a refusal as its status, its `ErrorInfo` reason and its message.

use clap::{Args, Subcommand};
use coalition_proto::v1 as pb;
use serde_json::{Value, json};
use std::path::PathBuf;

/// One call of the partner API.
#[derive(Debug, Subcommand)]
pub enum Call {
    /// Earn points on a purchase (`--amount`) or as a bonus (`--points`).
    Earn {
        #[command(flatten)]
        opts: CallOptions,
        /// Your id for this transaction (a retry with the same id is safe).
        #[arg(long)]
        transaction_id: String,
        /// The member.
        #[arg(long)]
        member: String,
        /// The purchase amount ("23.50").
        #[arg(long, conflicts_with = "points", required_unless_present = "points")]
        amount: Option<String>,
        /// Its currency (default: the coalition's).
        #[arg(long)]
        currency: Option<String>,
        /// The purchase category, if campaigns need it.
        #[arg(long)]
        category: Option<String>,
        /// Bonus points instead of a purchase.
        #[arg(long)]
        points: Option<i64>,
    },
    /// Spend a member's points.
    Burn {
        #[command(flatten)]
        opts: CallOptions,
        /// Your id for this transaction.
        #[arg(long)]
        transaction_id: String,
        /// The member.
        #[arg(long)]
        member: String,
        /// Points to spend.
        #[arg(long)]
        points: i64,
    },
    /// Take back (part of) an earn, e.g. on a return.
    ReverseEarn {
        #[command(flatten)]
        opts: CallOptions,
        /// Your id for this reversal.
        #[arg(long)]
        transaction_id: String,
        /// Your id of the earn.
        #[arg(long)]
        original: String,
        /// Points to take back (default: all that is left).
        #[arg(long, default_value_t = 0)]
        points: i64,
    },
    /// Give back (part of) a burn.
    ReverseBurn {
        #[command(flatten)]
        opts: CallOptions,
        /// Your id for this reversal.
        #[arg(long)]
        transaction_id: String,
        /// Your id of the burn.
        #[arg(long)]
        original: String,
        /// Points to give back (default: all that is left).
        #[arg(long, default_value_t = 0)]
        points: i64,
    },
    /// A member's balance.
    Balance {
        #[command(flatten)]
        opts: CallOptions,
        /// The member.
        #[arg(long)]
        member: String,
    },
    /// One of your transactions by your id.
    Transaction {
        #[command(flatten)]
        opts: CallOptions,
        /// Your id of the transaction.
        #[arg(long)]
        transaction_id: String,
    },
    /// Your transactions with a member, newest first.
    Activity {
        #[command(flatten)]
        opts: CallOptions,
        /// The member.
        #[arg(long)]
        member: String,
        /// At most this many (1..=500).
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
}

impl Call {
    /// Where to call and how to print.
    pub fn opts(&self) -> &CallOptions {
        match self {
            Call::Earn { opts, .. }
            | Call::Burn { opts, .. }
            | Call::ReverseEarn { opts, .. }
            | Call::ReverseBurn { opts, .. }
            | Call::Balance { opts, .. }
            | Call::Transaction { opts, .. }
            | Call::Activity { opts, .. } => opts,
        }
    }
}

/// What a call answered: its JSON, and the same as a table.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer as JSON (for `--json`).
    pub json: Value,
    /// The answer as a readable table.
    pub table: String,
    /// Whether the call was refused (the JSON then holds code, reason and message).
    pub refused: bool,
}

fn kind(k: i32) -> &'static str {
    match pb::TransactionKind::try_from(k).unwrap_or_default() {
        pb::TransactionKind::Earn => "earn",
        pb::TransactionKind::Burn => "burn",
        pb::TransactionKind::ReverseEarn => "reverse_earn",
        pb::TransactionKind::ReverseBurn => "reverse_burn",
        pb::TransactionKind::Unspecified => "",
    }
}

fn receipt_json(r: &pb::Receipt) -> Value {
    json!({
        "transaction_id": r.transaction_id,
        "ledger_id": r.ledger_id,
        "kind": kind(r.kind),
        "member_id": r.member_id,
        "points": r.points,
        "balance_after": r.balance_after,
        "accepted_at": r.accepted_at,
        "slices": r.slices.iter().map(|s| json!({"issuer": s.issuer, "points": s.points})).collect::<Vec<_>>(),
        "debt_created": r.debt_created,
        "debt_repaid": r.debt_repaid,
        "original_transaction_id": r.original_transaction_id,
        "parts": r.parts.iter().map(|p| json!({"kind": p.kind, "source": p.source, "funder": p.funder, "points": p.points})).collect::<Vec<_>>(),
        "tier": r.tier,
    })
}

fn transaction_json(t: &pb::Transaction) -> Value {
    json!({
        "receipt": t.receipt.as_ref().map(receipt_json),
        "reversed_points": t.reversed_points,
        "purchase": t.purchase.as_ref().map(|m| json!({"amount": m.amount, "currency": m.currency})),
    })
}

fn balance_json(b: &pb::Balance) -> Value {
    json!({
        "member_id": b.member_id,
        "points": b.points,
        "debt": b.debt,
        "held_points": b.held_points,
        "available_points": b.available_points,
        "next_expiry": b.next_expiry,
        "next_expiry_points": b.next_expiry_points,
    })
}

/// `key  value` lines of a flat JSON object (nested values as compact JSON).
fn table(v: &Value) -> String {
    let mut out = String::new();
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Array(a) if a.is_empty() => String::new(),
                other => other.to_string(),
            };
            out.push_str(&format!("{k:<24} {text}\n"));
        }
    }
    out
}

fn receipt_table(r: &pb::Receipt) -> String {
    table(&receipt_json(r))
}

/// A refusal: its status code's name, its `ErrorInfo` reason, its message.
pub fn refusal(s: &tonic::Status) -> Answer {
    use tonic_types::StatusExt;
    let reason = s
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default();
    let code = crate::api::error::code_name(s.code()).to_string();
    let json = json!({"code": code, "reason": reason, "message": s.message()});
    Answer {
        table: format!("refused: {code} {reason}\n{}\n", s.message()),
        json,
        refused: true,
    }
}

/// The answer of a call that returns a receipt.
fn receipt_answer(r: Option<pb::Receipt>) -> Answer {
    let r = r.unwrap_or_default();
    answered(receipt_json(&r), receipt_table(&r))
}

fn answered(json: Value, table: String) -> Answer {
    Answer {
        json,
        table,
        refused: false,
    }
}

/// Makes `call` on `api`; `currency` is the coalition's (an earn's default).
pub async fn call(
    api: &mut pb::partner_service_client::PartnerServiceClient<tonic::transport::Channel>,
    call: &Call,
    currency: &str,
) -> Answer {
    let result: Result<Answer, tonic::Status> = async {
        Ok(match call {
            Call::Earn {
                transaction_id,
                member,
                amount,
                currency: cur,
                category,
                points,
                ..
            } => {
                let grant = match (amount, points) {
                    (Some(amount), _) => pb::earn_request::Grant::Purchase(pb::Money {
                        amount: amount.clone(),
                        currency: cur.clone().unwrap_or_else(|| currency.to_string()),
                    }),
                    (None, p) => pb::earn_request::Grant::BonusPoints(p.unwrap_or(0)),
                };
                receipt_answer(
                    api.earn(pb::EarnRequest {
                        transaction_id: transaction_id.clone(),
                        member_id: member.clone(),
                        grant: Some(grant),
                        category: category.clone().unwrap_or_default(),
                    })
                    .await?
                    .into_inner()
                    .receipt,
                )
            }
            Call::Burn {
                transaction_id,
                member,
                points,
                ..
            } => {
                receipt_answer(
                    api.burn(pb::BurnRequest {
                        transaction_id: transaction_id.clone(),
                        member_id: member.clone(),
                        points: *points,
                    })
                    .await?
                    .into_inner()
                    .receipt,
                )
            }
            Call::ReverseEarn {
                transaction_id,
                original,
                points,
                ..
            } => {
                receipt_answer(
                    api.reverse_earn(pb::ReverseEarnRequest {
                        transaction_id: transaction_id.clone(),
                        original_transaction_id: original.clone(),
                        points: *points,
                    })
                    .await?
                    .into_inner()
                    .receipt,
                )
            }
            Call::ReverseBurn {
                transaction_id,
                original,
                points,
                ..
            } => {
                receipt_answer(
                    api.reverse_burn(pb::ReverseBurnRequest {
                        transaction_id: transaction_id.clone(),
                        original_transaction_id: original.clone(),
                        points: *points,
                    })
                    .await?
                    .into_inner()
                    .receipt,
                )
            }
            Call::Balance { member, .. } => {
                let b = api
                    .get_balance(pb::GetBalanceRequest {
                        member_id: member.clone(),
                    })
                    .await?
                    .into_inner();
                let j = balance_json(&b);
                let t = table(&j);
                answered(j, t)
            }
            Call::Transaction { transaction_id, .. } => {
                let t = api
                    .get_transaction(pb::GetTransactionRequest {
                        transaction_id: transaction_id.clone(),
                    })
                    .await?
                    .into_inner();
                let mut text = t.receipt.as_ref().map(receipt_table).unwrap_or_default();
                text.push_str(&format!("{:<24} {}\n", "reversed_points", t.reversed_points));
                if let Some(m) = &t.purchase {
                    text.push_str(&format!("{:<24} {} {}\n", "purchase", m.amount, m.currency));
                }
                answered(transaction_json(&t), text)
            }
            Call::Activity { member, limit, .. } => {
                let page = api
                    .list_member_activity(pb::ListMemberActivityRequest {
                        member_id: member.clone(),
                        page_size: *limit,
                        page_token: String::new(),
                    })
                    .await?
                    .into_inner();
                let mut text = format!(
                    "{:<20} {:<13} {:>8} {:>10} {:>9}  accepted_at\n",
                    "transaction_id", "kind", "points", "balance", "reversed"
                );
                for t in &page.transactions {
                    let r = t.receipt.clone().unwrap_or_default();
                    text.push_str(&format!(
                        "{:<20} {:<13} {:>8} {:>10} {:>9}  {}\n",
                        r.transaction_id,
                        kind(r.kind),
                        r.points,
                        r.balance_after,
                        t.reversed_points,
                        r.accepted_at
                    ));
                }
                answered(
                    json!({
                        "transactions": page.transactions.iter().map(transaction_json).collect::<Vec<_>>(),
                        "next_page_token": page.next_page_token,
                    }),
                    text,
                )
            }
        })
    }
    .await;
    result.unwrap_or_else(|s| refusal(&s))
}

/// Where the daemon is and which partner we are.
#[derive(Debug, Args)]
pub struct PartnerConnection {
    /// The config file (its `listen` address, CA and currency are used).
    #[arg(long, default_value = "coalition.toml")]
    pub config: PathBuf,
    /// host:port of the daemon, if not the config's `listen`.
    #[arg(long)]
    pub addr: Option<String>,
    /// The partner's certificate (PEM); its key is the file beside it ending in `.key` unless
    /// `--key` says otherwise.
    #[arg(long, required_unless_present = "partner")]
    pub cert: Option<PathBuf>,
    /// Instead of `--cert`: the partner whose development certificate `certs issue` wrote into
    /// the config's certificate folder (`partner-<id>.pem`).
    #[arg(long)]
    pub partner: Option<String>,
    /// The partner's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Global options of the one-call subcommands.
#[derive(Debug, Args)]
pub struct CallOptions {
    #[command(flatten)]
    pub conn: PartnerConnection,
    /// Print the answer (or the refusal: code, reason, message) as one JSON object.
    #[arg(long)]
    pub json: bool,
}
