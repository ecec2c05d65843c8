//! `coalitiond bench`: a mixed earn/burn load over mTLS, and in the same run the rate of a no-op
//! RPC (the health check) on the same server and connections, as the ceiling to compare with.
//!
//! Without `--addr` it makes a dev setup in a temp folder and starts `coalitiond serve` as a child
//! process (so its peak memory can be read from /proc), then drives it.

mod preload;

use crate::client::{ClientPem, connect};
use clap::Args;
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// Bench options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// host:port of a running daemon; if absent, a daemon is started for the run.
    #[arg(long)]
    pub addr: Option<String>,
    /// Folder with ca.pem and partner-<id>.pem/.key (required with --addr).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Database URL for the daemon the bench starts (default: a SQLite file in a temp folder).
    #[arg(long)]
    pub database: Option<String>,
    /// Writer lanes of the daemon the bench starts on PostgreSQL (default: the config's, 4).
    #[arg(long)]
    pub writer_lanes: Option<usize>,
    /// Partners to drive (default: skyways,freshmart,bistro).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "skyways,freshmart,bistro"
    )]
    pub partners: Vec<String>,
    /// Distinct members.
    #[arg(long, default_value_t = 100_000)]
    pub members: u64,
    /// TLS connections (spread over the partners).
    #[arg(long, default_value_t = 6)]
    pub connections: usize,
    /// Calls in flight at once, over all connections.
    #[arg(long, default_value_t = 512)]
    pub in_flight: usize,
    /// Seconds of measured load per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Share of earns in the mix (the rest are burns).
    #[arg(long, default_value_t = 0.5)]
    pub earn_share: f64,
    /// Seconds of unmeasured warm-up load before the ledger phase (fills members with points).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Compare the earn/burn rate without and with a programme (the default tier ladder, two live
    /// campaigns, a stamp card) on two fresh daemons, one after the other; earns are purchases.
    #[arg(long)]
    pub programme: bool,
    /// Compare the earn/burn rate with the ledger's hash chain off and on (two daemons on fresh
    /// ledgers, the same load): what tamper evidence costs.
    #[arg(long)]
    pub chain: bool,
    /// Compare holds at the till with plain burns on one daemon: alternately plain burns and
    /// authorize+capture pairs (one in ten voided, one in ten captured in part), twice each, each
    /// after an unmeasured refill of earns; members are at most 10,000 so that most have points.
    #[arg(long)]
    pub holds: bool,
    /// The mixed earn/burn rate without and with a consumer following each partner's event feed
    /// (WatchEvents) on one daemon, in `--feed-rounds` rounds of four phases (without, with, with,
    /// without); and the lag from each event's commit to its delivery, p50 and p99.
    #[arg(long)]
    pub feed: bool,
    /// Rounds of `--feed`'s four phases: a fresh file's rate drifts as it grows, and each round
    /// cancels the drift that is linear over it.
    #[arg(long, default_value_t = 3)]
    pub feed_rounds: usize,
    /// Before the timed phases, fill the database with a ledger of years (1,000,000 members and
    /// 10,000,000 transactions unless the two options below say otherwise), written straight
    /// into the database; the clearing scheduler is off for the run.
    #[arg(long)]
    pub preload: bool,
    /// Members of the preloaded ledger (implies --preload).
    #[arg(long)]
    pub preload_members: Option<u64>,
    /// Transactions of the preloaded ledger (implies --preload).
    #[arg(long)]
    pub preload_transactions: Option<u64>,
    /// Send a day file of this many lines through `coalitiond partner ingest` (IngestBatch) to a
    /// daemon the bench starts (on the preloaded ledger with --preload), and time it end to end:
    /// CSV read, mTLS stream, every line durable, result CSV written.
    #[arg(long)]
    pub ingest: Option<u64>,
    /// Where generated ledgers are kept between runs (SQLite files; on PostgreSQL a template
    /// database named after the shape is kept on the server instead).
    #[arg(long)]
    pub preload_cache: Option<PathBuf>,
    /// Time the programme report of the last this many months (ending with the current one) and
    /// its cohort table, each twice, through the finance API of a daemon the bench starts (on
    /// the preloaded ledger with --preload).
    #[arg(long)]
    pub report_months: Option<i64>,
}

impl BenchArgs {
    /// The ledger to preload, if any.
    fn preload(&self) -> Option<preload::Shape> {
        (self.preload || self.preload_members.is_some() || self.preload_transactions.is_some())
            .then(|| preload::Shape {
                members: self.preload_members.unwrap_or(1_000_000),
                transactions: self.preload_transactions.unwrap_or(10_000_000),
            })
    }

    fn preload_cache(&self) -> PathBuf {
        self.preload_cache
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("coalitiond-preload"))
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

struct PhaseResult {
    name: &'static str,
    elapsed: Duration,
    hist: Histogram<u64>,
    tally: Tally,
}

impl PhaseResult {
    fn rate(&self) -> f64 {
        (self.tally.ok + self.tally.refused) as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<22} {:>10.0} ops/s   p50 {:>7.2} ms   p99 {:>7.2} ms   p999 {:>7.2} ms   ok {:>8}  refused {:>6}  errors {:>4}",
            self.name,
            self.rate(),
            us(0.5),
            us(0.99),
            us(0.999),
            self.tally.ok,
            self.tally.refused,
            self.tally.errors
        );
        if let Some(e) = &self.tally.first_error {
            println!("    first error: {e}");
        }
    }
}

/// A small, fast PRNG (xorshift64*): the load needs spread, not cryptographic randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Ledger,
    Health,
    /// Earns only.
    Earn,
    /// Burns only.
    Burn,
    /// An authorization, then its capture (in full, in part) or void: one op.
    Hold,
}

async fn drive(
    phase: Phase,
    name: &'static str,
    channels: &[(String, Channel)],
    args: &BenchArgs,
    duration: Duration,
    nonce: u64,
) -> PhaseResult {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.in_flight {
        let (_partner, channel) = channels[worker % channels.len()].clone();
        let members = args.members;
        let earn_share = (args.earn_share * 1000.0) as u64;
        let purchases = args.programme;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut tally = Tally::default();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((worker as u64 + 1) * 0x1000_0001) ^ nonce);
            let mut partner_api = PartnerServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let t0 = Instant::now();
                let result = match phase {
                    Phase::Health => health
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(|_| ()),
                    Phase::Burn => partner_api
                        .burn(pb::BurnRequest {
                            transaction_id: format!("bench-{nonce}-{worker}-{seq}"),
                            member_id: format!("bench-member-{}", rng.below(members)),
                            points: 1 + rng.below(20) as i64,
                        })
                        .await
                        .map(|_| ()),
                    Phase::Hold => {
                        let auth = format!("bench-{nonce}-{worker}-{seq}");
                        let points = 1 + rng.below(20) as i64;
                        let held = partner_api
                            .authorize_burn(pb::AuthorizeBurnRequest {
                                transaction_id: auth.clone(),
                                member_id: format!("bench-member-{}", rng.below(members)),
                                points,
                                hold_seconds: 0,
                            })
                            .await;
                        match (held, rng.below(10)) {
                            (Err(e), _) => Err(e),
                            (Ok(_), 0) => partner_api
                                .void_burn(pb::VoidBurnRequest {
                                    transaction_id: format!("{auth}-v"),
                                    authorization_id: auth,
                                })
                                .await
                                .map(|_| ()),
                            (Ok(_), k) => partner_api
                                .capture_burn(pb::CaptureBurnRequest {
                                    transaction_id: format!("{auth}-c"),
                                    authorization_id: auth,
                                    points: if k == 1 { (points / 2).max(1) } else { 0 },
                                })
                                .await
                                .map(|_| ()),
                        }
                    }
                    Phase::Ledger | Phase::Earn => {
                        let member = format!("bench-member-{}", rng.below(members));
                        let txn = format!("bench-{nonce}-{worker}-{seq}");
                        if phase == Phase::Earn || rng.below(1000) < earn_share {
                            let grant = if purchases {
                                pb::earn_request::Grant::Purchase(pb::Money {
                                    amount: format!("{}.00", 10 + rng.below(90)),
                                    currency: "EUR".into(),
                                })
                            } else {
                                pb::earn_request::Grant::BonusPoints(10 + rng.below(90) as i64)
                            };
                            partner_api
                                .earn(pb::EarnRequest {
                                    transaction_id: txn,
                                    member_id: member,
                                    grant: Some(grant),
                                    category: String::new(),
                                })
                                .await
                                .map(|_| ())
                        } else {
                            let points = 1 + rng.below(20) as i64;
                            partner_api
                                .burn(pb::BurnRequest {
                                    transaction_id: txn,
                                    member_id: member,
                                    points,
                                })
                                .await
                                .map(|_| ())
                        }
                    }
                };
                let micros = t0.elapsed().as_micros() as u64;
                let _ = hist.record(micros.max(1));
                match result {
                    Ok(()) => tally.ok += 1,
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::FailedPrecondition | tonic::Code::NotFound
                        ) =>
                    {
                        tally.refused += 1
                    }
                    Err(s) => {
                        tally.errors += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                }
            }
            (hist, tally)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tally = Tally::default();
    for t in tasks {
        let (h, t) = t.await.expect("bench worker");
        hist.add(h).expect("same bounds");
        tally.ok += t.ok;
        tally.refused += t.refused;
        tally.errors += t.errors;
        if tally.first_error.is_none() {
            tally.first_error = t.first_error;
        }
    }
    PhaseResult {
        name,
        elapsed: started.elapsed(),
        hist,
        tally,
    }
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Child {
    process: std::process::Child,
    dir: tempfile::TempDir,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_child(args: &BenchArgs) -> anyhow::Result<(String, PathBuf, Child)> {
    let cache = args.preload_cache();
    let lanes = |t: String| match args.writer_lanes {
        Some(n) => t.replacen("writer_lanes = 4", &format!("writer_lanes = {n}"), 1),
        None => t,
    };
    match args.preload() {
        None => {
            start_child_with(
                args.database.as_deref(),
                "per_second = 1000000, burst = 1000000",
                lanes,
                None,
            )
            .await
        }
        Some(shape) => {
            start_child_with(
                args.database.as_deref(),
                "per_second = 1000000, burst = 1000000",
                |t| lanes(t.replacen("scheduler = true", "scheduler = false", 1)),
                Some((shape, cache.as_path())),
            )
            .await
        }
    }
}

/// The programme of `bench --programme`: the default ladder, a stamp card at bistro.
fn with_programme(toml: String) -> String {
    toml.replacen(
        "max_bonus_points = 5000",
        "max_bonus_points = 5000\nstamps = { every = 10, min_purchase = \"10.00\", within_days = 90, reward_points = 100 }",
        1,
    ) + "\n[programme]\n"
}

/// A daemon whose batches commit without their hash-chain links (`bench --chain`'s baseline).
fn unchained(toml: String) -> String {
    toml.replacen("[limits]\n", "[limits]\nbench_unchained = true\n", 1)
}

/// What an A/B bench switches between its two daemons.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// `--programme`: no programme, then the default ladder, a stamp card and two campaigns.
    Programme,
    /// `--chain`: the hash chain off, then on.
    Chain,
}

/// `bench --programme` or `bench --chain`: the same load on daemons with the feature off and on,
/// in the order off, on, on, off (so that neither side always runs first, on a colder machine or
/// database), and the ratio of the mean rates.
async fn run_ab(args: BenchArgs, switch: Switch) -> anyhow::Result<()> {
    use coalition_proto::v1::programme_service_client::ProgrammeServiceClient;
    let what = match switch {
        Switch::Programme => "programme",
        Switch::Chain => "chain",
    };
    anyhow::ensure!(
        args.addr.is_none(),
        "--{what} starts its own daemons; leave out --addr"
    );
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (mut off_rates, mut on_rates) = (Vec::new(), Vec::new());
    for on in [false, true, true, false] {
        let (addr, certs, child) = start_child_with(
            args.database.as_deref(),
            "per_second = 1000000, burst = 1000000",
            match (switch, on) {
                (Switch::Programme, true) => with_programme,
                (Switch::Chain, false) => unchained,
                _ => |t| t,
            },
            None,
        )
        .await?;
        if on && switch == Switch::Programme {
            let pem = ClientPem::from_dir(&certs, "programme")?;
            let mut p = ProgrammeServiceClient::new(connect(&addr, &pem).await?);
            let now = crate::clock::Clock::default().now();
            let window = |c: &mut pb::Campaign| {
                c.starts = crate::clock::rfc3339(now);
                c.ends = crate::clock::rfc3339(now + 86_400_000_000);
            };
            let mut double = pb::Campaign {
                campaign_id: "bench-double".into(),
                name: "double points at supermarkets".into(),
                partner_kinds: vec!["supermarket".into()],
                effect: Some(pb::campaign::Effect::Multiplier("2".into())),
                cap_per_member: 500,
                funder: "operator".into(),
                ..Default::default()
            };
            window(&mut double);
            let mut bonus = pb::Campaign {
                campaign_id: "bench-bonus".into(),
                name: "10 points on purchases of 50.00 or more".into(),
                min_purchase: "50.00".into(),
                effect: Some(pb::campaign::Effect::BonusPoints(10)),
                ..Default::default()
            };
            window(&mut bonus);
            p.create_campaign(double).await?;
            p.create_campaign(bonus).await?;
        }
        let channels = partner_channels(&args, &addr, &certs).await?;
        let label = match (switch, on) {
            (Switch::Programme, true) => "earn/burn, programme on",
            (Switch::Programme, false) => "earn/burn, programme off",
            (Switch::Chain, true) => "earn/burn, chain on",
            (Switch::Chain, false) => "earn/burn, chain off",
        };
        if args.warmup > 0 {
            drive(
                Phase::Ledger,
                "warm-up",
                &channels,
                &args,
                Duration::from_secs(args.warmup),
                nonce ^ 1,
            )
            .await
            .print();
        }
        let r = drive(
            Phase::Ledger,
            label,
            &channels,
            &args,
            Duration::from_secs(args.seconds),
            nonce,
        )
        .await;
        r.print();
        if on {
            on_rates.push(r.rate());
        } else {
            off_rates.push(r.rate());
        }
        drop(child);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "mean {what} off {:.0} ops/s, on {:.0} ops/s; ratio {what} on : off = {:.2}",
        mean(&off_rates),
        mean(&on_rates),
        mean(&on_rates) / mean(&off_rates)
    );
    Ok(())
}

/// Starts `coalitiond serve` on a fresh dev setup with every partner's limit set to `limit`.
async fn start_child_with(
    database: Option<&str>,
    limit: &str,
    edit: impl FnOnce(String) -> String,
    preload: Option<(preload::Shape, &std::path::Path)>,
) -> anyhow::Result<(String, PathBuf, Child)> {
    let dir = tempfile::Builder::new()
        .prefix("coalitiond-bench-")
        .tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let config = crate::devsetup::write_dev_setup(dir.path(), &addr)?;
    let config_path = dir.path().join("coalition.toml");
    let file = format!("sqlite://{}", dir.path().join("bench.db").display());
    let database = match (database, preload) {
        (None, Some(_)) => Some(file.as_str()),
        (d, _) => d,
    };
    if let Some((shape, cache)) = preload {
        preload::preload(database.unwrap_or(&file), shape, cache).await?;
    }
    if let Some(db) = database {
        let text = std::fs::read_to_string(&config_path)?.replacen(
            "url = \"sqlite://coalition.db\"",
            &format!("url = \"{db}\""),
            1,
        );
        std::fs::write(&config_path, text)?;
    }
    let bench_limits = edit(
        std::fs::read_to_string(&config_path)?.replace("per_second = 5000, burst = 10000", limit),
    );
    std::fs::write(&config_path, bench_limits)?;
    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let process = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let certs = config.ca_cert.parent().expect("certs dir").to_path_buf();
    let child = Child { process, dir };
    let started = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "daemon did not start listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((addr, certs, child))
}

/// `args.connections` mTLS channels to `addr`, spread over the partners, each with its
/// certificate from `certs`.
async fn partner_channels(
    args: &BenchArgs,
    addr: &str,
    certs: &std::path::Path,
) -> anyhow::Result<Vec<(String, Channel)>> {
    let mut channels = Vec::new();
    for i in 0..args.connections.max(1) {
        let partner = &args.partners[i % args.partners.len()];
        let pem = ClientPem::from_dir(certs, &format!("partner-{partner}"))?;
        channels.push((partner.clone(), connect(addr, &pem).await?));
    }
    Ok(channels)
}

/// `bench --holds`: plain burns and authorize+capture pairs on one daemon, alternately.
async fn run_holds(mut args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.addr.is_none(),
        "--holds starts its own daemon; leave out --addr"
    );
    args.members = args.members.min(10_000);
    let (addr, certs, child) = start_child(&args).await?;
    let channels = partner_channels(&args, &addr, &certs).await?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "bench --holds: {addr}, {} members, {} calls in flight, {} s per phase",
        args.members, args.in_flight, args.seconds
    );
    drive(
        Phase::Earn,
        "warm-up (earns)",
        &channels,
        &args,
        Duration::from_secs(args.warmup.max(3)),
        nonce ^ 1,
    )
    .await
    .print();
    let duration = Duration::from_secs(args.seconds);
    let (mut burns, mut pairs) = (Vec::new(), Vec::new());
    // Each measured phase starts after an unmeasured refill of earns, so that neither runs on
    // members the previous phase emptied (refusals are cheap and would flatter it).
    let refill = |round: u64| {
        drive(
            Phase::Earn,
            "refill (earns)",
            &channels,
            &args,
            Duration::from_secs(args.warmup.max(3)),
            nonce ^ (30 + round),
        )
    };
    for round in 0..2u64 {
        refill(2 * round).await;
        let b = drive(
            Phase::Burn,
            "burn (plain)",
            &channels,
            &args,
            duration,
            nonce ^ (10 + round),
        )
        .await;
        b.print();
        burns.push(b.rate());
        refill(2 * round + 1).await;
        let h = drive(
            Phase::Hold,
            "authorize+capture/void",
            &channels,
            &args,
            duration,
            nonce ^ (20 + round),
        )
        .await;
        h.print();
        pairs.push(h.rate());
    }
    if let Some(mib) = peak_rss_mib(child.process.id()) {
        println!("daemon peak memory {mib:.1} MiB");
    }
    let (b, h) = (burns.iter().sum::<f64>(), pairs.iter().sum::<f64>());
    println!(
        "ratio authorize+capture pairs : plain burns = {:.2} (per round: {:.2}, {:.2})",
        h / b,
        pairs[0] / burns[0],
        pairs[1] / burns[1]
    );
    drop(child);
    Ok(())
}

/// `bench --ingest N`: a day file of N lines through `partner ingest`, timed end to end. The
/// lines are earns of 10 points and burns of 4 in turn over `--members` members of skyways (so
/// that every burn is covered), each with its own transaction id.
async fn run_ingest(args: &BenchArgs, lines: u64) -> anyhow::Result<()> {
    let (addr, certs, child) = start_child(args).await?;
    let dir = child.dir.path();
    let file = dir.join("day.csv");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        writeln!(w, "kind,transaction_id,member_id,points")?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let members = args.members.max(1);
        for i in 0..lines {
            let m = i % members;
            if (i / members).is_multiple_of(2) {
                writeln!(w, "earn,ingest-{nonce}-{i},bench-member-{m},10")?;
            } else {
                writeln!(w, "burn,ingest-{nonce}-{i},bench-member-{m},4")?;
            }
        }
    }
    println!(
        "bench --ingest: {addr}, a day file of {lines} lines (earns and burns over {} members)",
        args.members
    );
    let started = Instant::now();
    crate::cmd::partner::run(crate::cmd::partner::PartnerCommand::Ingest {
        conn: crate::cmd::partner_calls::PartnerConnection {
            config: dir.join("coalition.toml"),
            addr: Some(addr.clone()),
            cert: Some(certs.join("partner-skyways.pem")),
            partner: None,
            key: None,
        },
        file: file.clone(),
        out: Some(dir.join("day.results.csv")),
    })
    .await?;
    let elapsed = started.elapsed();
    let answered = std::fs::read_to_string(dir.join("day.results.csv"))?
        .lines()
        .skip(1)
        .filter(|l| l.contains(",OK,"))
        .count();
    println!(
        "ingest: {lines} lines in {:.1} s = {:.0} lines/s end to end ({answered} OK)",
        elapsed.as_secs_f64(),
        lines as f64 / elapsed.as_secs_f64()
    );
    if let Some(mib) = peak_rss_mib(child.process.id()) {
        println!("daemon peak memory (VmHWM): {mib:.1} MiB");
    }
    Ok(())
}

/// `bench --report-months N`: the KPI report and cohorts over the last N months, timed end to
/// end (mTLS call, SQL aggregates, answer), twice each.
async fn run_report(args: &BenchArgs, months: i64) -> anyhow::Result<()> {
    let (addr, certs, child) = start_child(args).await?;
    let pem = crate::client::ClientPem::from_dir(&certs, "finance")?;
    let mut fin = coalition_proto::v1::finance_service_client::FinanceServiceClient::new(
        crate::client::connect(&addr, &pem).await?,
    );
    let to = crate::report::Month::of(chrono::Utc::now().date_naive());
    let req = coalition_proto::v1::ProgrammeReportRequest {
        from_month: to.plus(1 - months.max(1)).to_string(),
        to_month: to.to_string(),
        partner: String::new(),
    };
    let config = crate::config::Config::load(&child.dir.path().join("coalition.toml"))?;
    let (store, _) = crate::store::open(&config.database_url, 1).await?;
    let transactions = store.transaction_count().await?;
    println!(
        "bench --report-months {months}: {} to {} over {transactions} transactions",
        req.from_month, req.to_month
    );
    for run in 1..=2 {
        let started = Instant::now();
        let r = fin.get_programme_report(req.clone()).await?.into_inner();
        let kpi = started.elapsed();
        let started = Instant::now();
        let c = fin.get_cohorts(req.clone()).await?.into_inner();
        let cohorts = started.elapsed();
        let active: i64 = r.months.iter().map(|m| m.members_active).sum();
        println!(
            "run {run}: KPI report {:.2} s ({} months, {} flows, Σ active {active}); cohorts {:.2} s ({} cohorts)",
            kpi.as_secs_f64(),
            r.months.len(),
            r.flows.len(),
            cohorts.as_secs_f64(),
            c.cohorts.len()
        );
    }
    drop(child);
    Ok(())
}

/// Runs the bench and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    crate::client::install_crypto();
    if args.programme {
        return run_ab(args, Switch::Programme).await;
    }
    if args.chain {
        return run_ab(args, Switch::Chain).await;
    }
    if args.holds {
        return run_holds(args).await;
    }
    if args.feed {
        return run_feed(args).await;
    }
    if let Some(lines) = args.ingest {
        return run_ingest(&args, lines).await;
    }
    if let Some(months) = args.report_months {
        return run_report(&args, months).await;
    }
    let (addr, certs, child) = match (&args.addr, &args.certs) {
        (Some(addr), Some(certs)) => (addr.clone(), certs.clone(), None),
        (Some(_), None) => {
            anyhow::bail!("--addr needs --certs (a folder with ca.pem and partner-<id>.pem)")
        }
        _ => {
            let (a, c, child) = start_child(&args).await?;
            (a, c, Some(child))
        }
    };
    let channels = partner_channels(&args, &addr, &certs).await?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "bench: {addr}, partners {:?}, {} members, {} connections, {} calls in flight, {} s per phase, {:.0}% earns",
        args.partners,
        args.members,
        channels.len(),
        args.in_flight,
        args.seconds,
        args.earn_share * 100.0
    );
    if args.warmup > 0 {
        let w = drive(
            Phase::Ledger,
            "warm-up",
            &channels,
            &args,
            Duration::from_secs(args.warmup),
            nonce ^ 1,
        )
        .await;
        w.print();
    }
    let duration = Duration::from_secs(args.seconds);
    let ledger = drive(
        Phase::Ledger,
        "earn/burn (durable)",
        &channels,
        &args,
        duration,
        nonce,
    )
    .await;
    let health = drive(
        Phase::Health,
        "health check (no-op)",
        &channels,
        &args,
        duration,
        nonce,
    )
    .await;
    ledger.print();
    health.print();
    println!(
        "ratio earn/burn : health = {:.2}",
        ledger.rate() / health.rate()
    );
    if let Some(c) = &child {
        match peak_rss_mib(c.process.id()) {
            Some(mib) => println!("daemon peak memory (VmHWM): {mib:.1} MiB"),
            None => println!("daemon peak memory: not available on this system"),
        }
    }
    drop(child);
    Ok(())
}

/// Follows each partner's feed from its next event until `stop`, recording the lag of each event
/// from its commit (`occurred_at`) to its arrival, in microseconds.
async fn follow_feeds(
    channels: &[(String, Channel)],
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<(Histogram<u64>, u64)>> {
    let mut followers = Vec::new();
    let mut seen_partners = std::collections::BTreeSet::new();
    for (partner, channel) in channels {
        if !seen_partners.insert(partner.clone()) {
            continue;
        }
        let mut api = PartnerServiceClient::new(channel.clone());
        // From the next event on: the last one now, plus one.
        let head = {
            let mut s = api
                .watch_events(pb::WatchEventsRequest::default())
                .await?
                .into_inner();
            let mut last = 0;
            while let Ok(Ok(Some(e))) =
                tokio::time::timeout(Duration::from_millis(300), s.message()).await
            {
                last = e.sequence;
            }
            last
        };
        let mut stream = api
            .watch_events(pb::WatchEventsRequest {
                from_sequence: head + 1,
                types: vec![],
            })
            .await?
            .into_inner();
        let mut stop = stop.clone();
        followers.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
            let mut n = 0u64;
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(e)) => {
                            n += 1;
                            if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&e.occurred_at) {
                                let lag = chrono::Utc::now().timestamp_micros() - at.timestamp_micros();
                                let _ = hist.record(lag.max(1) as u64);
                            }
                        }
                        _ => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            (hist, n)
        }));
    }
    Ok(tokio::spawn(async move {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        let mut n = 0;
        for f in followers {
            if let Ok((h, k)) = f.await {
                let _ = hist.add(h);
                n += k;
            }
        }
        (hist, n)
    }))
}

/// The least warm-up of `bench --feed`, in seconds.
const FEED_WARMUP_SECONDS: u64 = 30;

/// `bench --feed`: the mixed rate without and with consumers following every partner's feed, on
/// one daemon, twice each (without, with, with, without); the lag from commit to delivery.
async fn run_feed(args: BenchArgs) -> anyhow::Result<()> {
    let (addr, certs, child) = start_child(&args).await?;
    let channels = partner_channels(&args, &addr, &certs).await?;
    // Each consumer on a connection of its own, as a partner's CRM follows from its own system
    // (not multiplexed with the till's calls).
    let one_each = BenchArgs {
        connections: args.partners.len(),
        ..args.clone()
    };
    let consumer_channels = partner_channels(&one_each, &addr, &certs).await?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "bench --feed: {addr}, {} members, {} s per phase, a consumer per partner in the \"with\" phases",
        args.members, args.seconds
    );
    let duration = Duration::from_secs(args.seconds);
    // A fresh file's rate falls steeply while members fill with lots (early burns are refused,
    // and cheap): the phases compared start after 30 s of it, nearer its steady state.
    drive(
        Phase::Ledger,
        "warm-up",
        &channels,
        &args,
        Duration::from_secs(args.warmup.max(FEED_WARMUP_SECONDS)),
        nonce ^ 1,
    )
    .await
    .print();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    let mut delivered = 0;
    // Rounds of without, with, with, without: the rate drifts as the file grows, and this order
    // gives both sides the same mean position in each round.
    let order = [false, true, true, false];
    let phases = order
        .iter()
        .copied()
        .cycle()
        .take(4 * args.feed_rounds.max(1));
    for (round, consumers) in phases.enumerate() {
        let followers = if consumers {
            let (stop, rx) = tokio::sync::watch::channel(false);
            Some((stop, follow_feeds(&consumer_channels, rx).await?))
        } else {
            None
        };
        let r = drive(
            Phase::Ledger,
            if consumers {
                "with consumers"
            } else {
                "without a consumer"
            },
            &channels,
            &args,
            duration,
            nonce ^ (10 + round as u64),
        )
        .await;
        r.print();
        let Some((stop, followers)) = followers else {
            without.push(r.rate());
            if round % 4 == 3 {
                let k = without.len();
                println!(
                    "round {}: with : without = {:.2}",
                    round / 4 + 1,
                    (with[k - 2] + with[k - 1]) / (without[k - 2] + without[k - 1])
                );
            }
            continue;
        };
        with.push(r.rate());
        // What was committed is delivered within a moment; then the consumers stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
        let (h, n) = followers.await?;
        lag.add(h)?;
        delivered += n;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "ratio with : without consumers = {:.2} ({:.0} / {:.0} ops/s)",
        mean(&with) / mean(&without),
        mean(&with),
        mean(&without)
    );
    let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "lag from commit to delivery: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {delivered} events",
        ms(0.5),
        ms(0.99),
        lag.max() as f64 / 1000.0
    );
    drop(child);
    Ok(())
}

/// `coalitiond bench-clearing`: one cycle of many allocations, cleared, against a bare SQL aggregate
/// over the same rows in the same run.
#[derive(Debug, Clone, Args)]
pub struct ClearingBenchArgs {
    /// Database URL (default: a SQLite file in a temp folder). It must be empty: rows are generated.
    #[arg(long)]
    pub database: Option<String>,
    /// Allocations in the cycle.
    #[arg(long, default_value_t = 1_000_000)]
    pub allocations: i64,
    /// Partners.
    #[arg(long, default_value_t = 50)]
    pub partners: i64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Generates `n` burn transactions with one allocation each into cycle `cycle`, spread over
/// `partners` issuers and redeemers (each redeemer with its own rate).
const GEN_SQLITE: &str = "
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
INSERT INTO transactions (id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, request_hash,
  balance_after, slices, debt_created, debt_repaid, accepted_at, cycle)
SELECT i, 'p' || ((i / $2) % $2), 'b' || i, 'burn', 'm' || (i % 100000), 1 + (i % 97), 0, x'00', 0, '', 0, 0, 0, $3 FROM n";
const GEN_SQLITE_ALLOC: &str = "
INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, accepted_at, cycle)
SELECT id, 0, id, member_id, 'p' || (id % $1), partner_id, points,
  CASE CAST(substr(partner_id, 2) AS INTEGER) % 3 WHEN 0 THEN '0.010' WHEN 1 THEN '0.008' ELSE '0.0125' END, 0, cycle
FROM transactions";
const GEN_PG: &str = "
INSERT INTO transactions (id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, request_hash,
  balance_after, slices, debt_created, debt_repaid, accepted_at, cycle)
SELECT i, 'p' || ((i / $2) % $2), 'b' || i, 'burn', 'm' || (i % 100000), 1 + (i % 97), 0, '\\x00'::bytea, 0, '', 0, 0, 0, $3
FROM generate_series(1, $1::bigint) AS i";
const GEN_PG_ALLOC: &str = "
INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, accepted_at, cycle)
SELECT id, 0, id, member_id, 'p' || (id % $1), partner_id, points,
  CASE substr(partner_id, 2)::int % 3 WHEN 0 THEN 0.010 WHEN 1 THEN 0.008 ELSE 0.0125 END, 0, cycle
FROM transactions";
/// The cycle totals the writer would have kept for the generated transactions.
const GEN_TOTALS: &str = "INSERT INTO cycle_totals (cycle, partner_id, kind, transactions, points) \
  SELECT cycle, partner_id, kind, COUNT(*), SUM(points) FROM transactions GROUP BY cycle, partner_id, kind";
/// The gross matrix the writer would have kept for the generated allocations.
const GEN_MATRIX: &str = "INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations) \
  SELECT cycle, issuer, redeemer, CAST(rate AS TEXT), SUM(points), COUNT(*) FROM allocations \
  GROUP BY cycle, issuer, redeemer, CAST(rate AS TEXT)";
/// The baseline: the bare aggregate of the cycle's allocations per cell.
const BARE: &str = "SELECT issuer, redeemer, SUM(points) FROM allocations WHERE cycle = $1 GROUP BY issuer, redeemer";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the clearing bench and prints its figures.
pub async fn clearing(args: ClearingBenchArgs) -> anyhow::Result<()> {
    use sqlx::Connection;
    let dir = tempfile::Builder::new()
        .prefix("coalitiond-clearing-bench-")
        .tempdir()?;
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let (store, _writer) = crate::store::open(&url, 1).await?;
    let cycle = chrono::NaiveDate::from_ymd_opt(2026, 1, 15).expect("date");
    let c = cycle.to_string();
    let started = Instant::now();
    let postgres = url.starts_with("postgres");
    if postgres {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        sqlx::query(GEN_PG)
            .bind(args.allocations)
            .bind(args.partners)
            .bind(&c)
            .execute(&mut conn)
            .await?;
        sqlx::query(GEN_PG_ALLOC)
            .bind(args.partners)
            .execute(&mut conn)
            .await?;
        sqlx::query(GEN_TOTALS).execute(&mut conn).await?;
        sqlx::query(GEN_MATRIX).execute(&mut conn).await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        sqlx::query(GEN_SQLITE)
            .bind(args.allocations)
            .bind(args.partners)
            .bind(&c)
            .execute(&mut conn)
            .await?;
        sqlx::query(GEN_SQLITE_ALLOC)
            .bind(args.partners)
            .execute(&mut conn)
            .await?;
        sqlx::query(GEN_TOTALS).execute(&mut conn).await?;
        sqlx::query(GEN_MATRIX).execute(&mut conn).await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
    }
    println!(
        "bench-clearing: {} allocations over {} partners on {}, generated in {:.1} s",
        args.allocations,
        args.partners,
        if postgres { "PostgreSQL" } else { "SQLite" },
        started.elapsed().as_secs_f64()
    );
    let mut bare = Vec::new();
    for _ in 0..args.repeat {
        let t0 = Instant::now();
        let rows = if postgres {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(BARE).bind(&c).fetch_all(&mut conn).await?.len()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            sqlx::query(BARE).bind(&c).fetch_all(&mut conn).await?.len()
        };
        bare.push(t0.elapsed());
        assert!(rows > 0);
    }
    let plan = crate::store::clearing::Plan {
        cycle,
        now: crate::clock::Clock::default().now(),
        cycles: coalition_clearing::Cycles::new(chrono_tz::Europe::Amsterdam, 0).expect("cycles"),
        currency: "EUR".into(),
        minor_units: 2,
        rounding: coalition_clearing::Rounding::HalfAwayFromZero,
        skip_if_busy: false,
        first_cycle: None,
    };
    let mut runs = Vec::new();
    let mut digest = String::new();
    for i in 0..args.repeat {
        let t0 = Instant::now();
        let s = store.run_clearing(&plan).await?.expect("not skipped");
        runs.push(t0.elapsed());
        if i == 0 {
            digest = s.settlement.digest.clone();
            println!(
                "  settlement: {} gross cells, {} allocations, gross value {}, settled {}",
                s.settlement.gross.len(),
                s.settlement.totals.allocations,
                s.settlement.totals.gross_value,
                s.settlement.totals.settled
            );
        } else {
            anyhow::ensure!(s.settlement.digest == digest, "re-run changed the digest");
        }
    }
    let (b, r) = (median(bare.clone()), median(runs.clone()));
    println!(
        "  bare aggregate (SUM GROUP BY issuer, redeemer): median {:>8.1} ms  runs {:?}",
        b.as_secs_f64() * 1e3,
        bare
    );
    println!(
        "  whole clearing run (sweep, gather, settle, store): median {:>8.1} ms  runs {:?}",
        r.as_secs_f64() * 1e3,
        runs
    );
    println!(
        "  ratio clearing : bare = {:.2}",
        r.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}

/// `coalitiond bench-limits`: does one partner's flood slow the others?
#[derive(Debug, Clone, Args)]
pub struct LimitsBenchArgs {
    /// Every partner's quota, requests per second (burst the same).
    #[arg(long, default_value_t = 200)]
    pub quota: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// Sends `rate` calls per second, open loop (a call every tick whether or not the last one
/// answered), for `duration`; returns the latency histogram and (ok, throttled, other errors).
async fn paced(
    channel: Channel,
    partner: &'static str,
    rate: u32,
    duration: Duration,
) -> (Histogram<u64>, u64, u64, u64) {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    let mut seq = 0u64;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    while Instant::now() < deadline {
        tick.tick().await;
        for _ in 0..per_tick {
            seq += 1;
            let mut c = PartnerServiceClient::new(channel.clone());
            let txn = format!("{partner}-{nonce}-{seq}");
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = c
                    .earn(pb::EarnRequest {
                        transaction_id: txn,
                        member_id: format!("iso-{}", seq % 1000),
                        grant: Some(pb::earn_request::Grant::BonusPoints(5)),
                        category: String::new(),
                    })
                    .await;
                (t0.elapsed(), r.map(|_| ()).map_err(|e| e.code()))
            }));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut ok, mut throttled, mut other) = (0, 0, 0);
    for t in tasks {
        let (d, r) = t.await.expect("call task");
        match r {
            Ok(()) => {
                ok += 1;
                let _ = hist.record((d.as_micros() as u64).max(1));
            }
            Err(tonic::Code::ResourceExhausted) => throttled += 1,
            Err(_) => other += 1,
        }
    }
    (hist, ok, throttled, other)
}

/// Runs the isolation bench: the quiet partner alone, then beside a flooding one, in one run.
pub async fn limits(args: LimitsBenchArgs) -> anyhow::Result<()> {
    crate::client::install_crypto();
    let limit = format!("per_second = {0}, burst = {0}", args.quota);
    let (addr, certs, child) = start_child_with(None, &limit, |t| t, None).await?;
    let quiet_pem = ClientPem::from_dir(&certs, "partner-bistro")?;
    let flood_pem = ClientPem::from_dir(&certs, "partner-skyways")?;
    let quiet = connect(&addr, &quiet_pem).await?;
    let flood = connect(&addr, &flood_pem).await?;
    let d = Duration::from_secs(args.seconds);
    let (half, tenfold) = (args.quota / 2, args.quota * 10);
    println!(
        "bench-limits: quota {}/s each; bistro at {half}/s, skyways at {tenfold}/s (10x), {} s per phase",
        args.quota, args.seconds
    );
    let _ = paced(quiet.clone(), "warm", half, Duration::from_secs(1)).await;
    let (alone, ok_a, thr_a, err_a) = paced(quiet.clone(), "bistro", half, d).await;
    let (beside, flood_res) = tokio::join!(
        paced(quiet.clone(), "bistro", half, d),
        paced(flood, "skyways", tenfold, d)
    );
    let (beside, ok_b, thr_b, err_b) = beside;
    let (_, f_ok, f_thr, f_err) = flood_res;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "bistro alone:           ok {ok_a:>6}  throttled {thr_a}  errors {err_a}  p50 {:>6.2} ms  p99 {:>6.2} ms",
        ms(&alone, 0.5),
        ms(&alone, 0.99)
    );
    println!(
        "bistro beside a flood:  ok {ok_b:>6}  throttled {thr_b}  errors {err_b}  p50 {:>6.2} ms  p99 {:>6.2} ms",
        ms(&beside, 0.5),
        ms(&beside, 0.99)
    );
    println!("skyways flooding:       ok {f_ok:>6}  throttled {f_thr}  errors {f_err}");
    println!(
        "p99 ratio (beside / alone) = {:.2}",
        ms(&beside, 0.99) / ms(&alone, 0.99)
    );
    drop(child);
    Ok(())
}
