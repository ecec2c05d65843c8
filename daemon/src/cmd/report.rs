//! `coalitiond report …`: programme KPIs and cohorts as a table, CSV, JSON or one self-contained
//! HTML page, read over mTLS from the finance API (or, with a partner certificate, the partner's
//! own from the partner API).

use crate::cmd::finance::Connection;
use crate::report::{self, Cohorts, Report};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use coalition_proto::v1 as pb;
use std::path::PathBuf;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// KPIs down, months across (and flows, tiers).
    Table,
    /// One row per month (KPIs) or per cohort.
    Csv,
    /// Everything, as the API answers it.
    Json,
    /// One self-contained page: tiles, charts, the flow heat map, the cohort triangle.
    Html,
}

/// What to report on.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    conn: Connection,
    /// First month, YYYY-MM.
    #[arg(long)]
    from: String,
    /// Last month, YYYY-MM (included).
    #[arg(long)]
    to: String,
    /// One partner's KPIs (default: the whole coalition). With a partner certificate
    /// (`--identity partner-<id>`), always that partner's own.
    #[arg(long)]
    partner: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `coalitiond report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// KPIs per month: members active, new, activated, returning; purchases; points issued,
    /// redeemed, expired, reversed; rates; the flow matrix; tiers.
    Kpi(ReportArgs),
    /// Members by month of first earn × months since: how many are still active.
    Cohorts(ReportArgs),
}

enum Api {
    Finance(pb::finance_service_client::FinanceServiceClient<tonic::transport::Channel>),
    Partner(pb::partner_service_client::PartnerServiceClient<tonic::transport::Channel>),
}

impl Api {
    async fn open(c: &Connection) -> anyhow::Result<Api> {
        let channel = crate::cmd::ops::channel(&c.config, c.addr.as_deref(), &c.identity).await?;
        Ok(if c.identity.starts_with("partner-") {
            Api::Partner(pb::partner_service_client::PartnerServiceClient::new(
                channel,
            ))
        } else {
            Api::Finance(pb::finance_service_client::FinanceServiceClient::new(
                channel,
            ))
        })
    }

    async fn report(
        &mut self,
        r: pb::ProgrammeReportRequest,
    ) -> Result<pb::ProgrammeReport, tonic::Status> {
        Ok(match self {
            Api::Finance(c) => c.get_programme_report(r).await?.into_inner(),
            Api::Partner(c) => c.get_programme_report(r).await?.into_inner(),
        })
    }

    async fn cohorts(
        &mut self,
        r: pb::ProgrammeReportRequest,
    ) -> Result<pb::Cohorts, tonic::Status> {
        Ok(match self {
            Api::Finance(c) => c.get_cohorts(r).await?.into_inner(),
            Api::Partner(c) => c.get_cohorts(r).await?.into_inner(),
        })
    }
}

fn status_text(s: tonic::Status) -> anyhow::Error {
    let reason = tonic_types::StatusExt::get_details_error_info(&s)
        .map(|i| format!(" {}", i.reason))
        .unwrap_or_default();
    anyhow::anyhow!("{:?}{reason}: {}", s.code(), s.message())
}

fn request(a: &ReportArgs) -> pb::ProgrammeReportRequest {
    pb::ProgrammeReportRequest {
        from_month: a.from.clone(),
        to_month: a.to.clone(),
        partner: a.partner.clone().unwrap_or_default(),
    }
}

fn write_out(out: &Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Runs a `report` subcommand.
pub async fn run(cmd: ReportCommand) -> anyhow::Result<()> {
    match cmd {
        ReportCommand::Kpi(a) => {
            let mut api = Api::open(&a.conn).await?;
            let r: Report =
                crate::api::report::from_pb(&api.report(request(&a)).await.map_err(status_text)?)
                    .map_err(|e| anyhow::anyhow!(e))?;
            let text = match a.format {
                ReportFormat::Table => report::table(&r),
                ReportFormat::Csv => report::csv(&r),
                ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
                ReportFormat::Html => {
                    let c: Cohorts = crate::api::report::cohorts_from_pb(
                        &api.cohorts(request(&a)).await.map_err(status_text)?,
                    );
                    report::html::page(&r, Some(&c))
                }
            };
            write_out(&a.out, &text)
        }
        ReportCommand::Cohorts(a) => {
            let mut api = Api::open(&a.conn).await?;
            let c = crate::api::report::cohorts_from_pb(
                &api.cohorts(request(&a)).await.map_err(status_text)?,
            );
            let text = match a.format {
                ReportFormat::Table | ReportFormat::Html => report::cohorts_table(&c),
                ReportFormat::Csv => report::cohorts_csv(&c),
                ReportFormat::Json => serde_json::to_string_pretty(&c)? + "\n",
            };
            write_out(&a.out, &text)
        }
    }
}
