//! `coalitiond programme …`: the programme team's command line, a client of the programme API
//! over mTLS with the programme certificate (an operator's works too).

use clap::{Args, Subcommand};
use coalition_proto::v1 as pb;
use coalition_proto::v1::programme_service_client::ProgrammeServiceClient;
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
    /// Stem of the certificate in the certificate folder (programme, or operator).
    #[arg(long, default_value = "programme")]
    pub identity: String,
}

/// `coalitiond programme …`
#[derive(Debug, Subcommand)]
pub enum ProgrammeCommand {
    /// Campaigns: list, create, end.
    Campaigns {
        /// What to do.
        #[command(subcommand)]
        command: CampaignsCommand,
    },
}

/// `coalitiond programme campaigns …`
#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// Campaigns not yet over (all with --all), by start.
    List {
        #[command(flatten)]
        conn: Connection,
        /// Include campaigns that are over.
        #[arg(long)]
        all: bool,
    },
    /// Create a campaign (idempotent by id). Times are local to the coalition's time zone
    /// (YYYY-MM-DDTHH:MM) or RFC 3339 with an offset.
    Create(Box<CreateArgs>),
    /// End a campaign now.
    End {
        #[command(flatten)]
        conn: Connection,
        /// Its id.
        #[arg(long)]
        id: String,
    },
}

/// The fields of a new campaign.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Its id (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub id: String,
    /// A name people read.
    #[arg(long)]
    pub name: String,
    /// First instant it applies.
    #[arg(long)]
    pub starts: String,
    /// First instant it no longer applies.
    #[arg(long)]
    pub ends: String,
    /// A partner it applies at (repeat; none and no --kind: everywhere).
    #[arg(long = "partner")]
    pub partners: Vec<String>,
    /// A kind of partner it applies at (repeat).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Smallest purchase amount.
    #[arg(long)]
    pub min_purchase: Option<String>,
    /// A tier it applies to (repeat; none: every tier).
    #[arg(long = "tier")]
    pub tiers: Vec<String>,
    /// The purchase category the till must send.
    #[arg(long)]
    pub category: Option<String>,
    /// Only the member's first earn at the partner.
    #[arg(long)]
    pub welcome: bool,
    /// Multiplier on base points (2 doubles them).
    #[arg(long, conflicts_with = "bonus_points")]
    pub multiplier: Option<String>,
    /// Fixed bonus points.
    #[arg(long)]
    pub bonus_points: Option<i64>,
    /// Most points one member gets from it (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub cap: i64,
    /// partner or operator.
    #[arg(long, default_value = "partner")]
    pub funder: String,
}

async fn client(c: &Connection) -> anyhow::Result<ProgrammeServiceClient<Channel>> {
    Ok(ProgrammeServiceClient::new(
        crate::cmd::ops::channel(&c.config, c.addr.as_deref(), &c.identity).await?,
    ))
}

/// The campaigns table.
pub fn campaigns_table(cs: &[pb::Campaign]) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:<19} {:<19} {:<22} {:<12} {:>8} {:<8}\n",
        "campaign", "state", "starts", "ends", "effect", "where", "cap", "funder"
    );
    for c in cs {
        let effect = match &c.effect {
            Some(pb::campaign::Effect::Multiplier(m)) => format!("x{m} on base"),
            Some(pb::campaign::Effect::BonusPoints(b)) => format!("+{b} points"),
            None => String::new(),
        };
        let mut conditions = Vec::new();
        if c.welcome {
            conditions.push("welcome".to_string());
        }
        if !c.min_purchase.is_empty() {
            conditions.push(format!(">={}", c.min_purchase));
        }
        if !c.category.is_empty() {
            conditions.push(format!("cat={}", c.category));
        }
        if !c.tiers.is_empty() {
            conditions.push(format!("tiers={}", c.tiers.join("|")));
        }
        let effect = if conditions.is_empty() {
            effect
        } else {
            format!("{effect} ({})", conditions.join(", "))
        };
        let place = [c.partners.clone(), c.partner_kinds.clone()]
            .concat()
            .join(",");
        out += &format!(
            "{:<16} {:<10} {:<19} {:<19} {:<22} {:<12} {:>8} {:<8}\n",
            c.campaign_id,
            c.state,
            c.starts,
            c.ends,
            effect,
            if place.is_empty() {
                "everywhere".into()
            } else {
                place
            },
            if c.cap_per_member == 0 {
                "-".into()
            } else {
                c.cap_per_member.to_string()
            },
            c.funder
        );
    }
    out
}

/// Runs a `programme` subcommand.
pub async fn run(cmd: ProgrammeCommand) -> anyhow::Result<()> {
    let ProgrammeCommand::Campaigns { command } = cmd;
    match command {
        CampaignsCommand::List { conn, all } => {
            let cs = client(&conn)
                .await?
                .list_campaigns(pb::ListCampaignsRequest { include_ended: all })
                .await?
                .into_inner()
                .campaigns;
            print!("{}", campaigns_table(&cs));
        }
        CampaignsCommand::Create(args) => {
            let CreateArgs {
                conn,
                id,
                name,
                starts,
                ends,
                partners,
                kinds,
                min_purchase,
                tiers,
                category,
                welcome,
                multiplier,
                bonus_points,
                cap,
                funder,
            } = *args;
            let effect = match (multiplier, bonus_points) {
                (Some(m), None) => pb::campaign::Effect::Multiplier(m),
                (None, Some(b)) => pb::campaign::Effect::BonusPoints(b),
                _ => anyhow::bail!("give either --multiplier or --bonus-points"),
            };
            let c = client(&conn)
                .await?
                .create_campaign(pb::Campaign {
                    campaign_id: id,
                    name,
                    starts,
                    ends,
                    partners,
                    partner_kinds: kinds,
                    min_purchase: min_purchase.unwrap_or_default(),
                    tiers,
                    category: category.unwrap_or_default(),
                    welcome,
                    effect: Some(effect),
                    cap_per_member: cap,
                    funder,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print!("{}", campaigns_table(&[c]));
        }
        CampaignsCommand::End { conn, id } => {
            let c = client(&conn)
                .await?
                .end_campaign(pb::EndCampaignRequest { campaign_id: id })
                .await?
                .into_inner();
            print!("{}", campaigns_table(&[c]));
        }
    }
    Ok(())
}
