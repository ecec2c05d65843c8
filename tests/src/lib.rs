//! The behaviour suite's harness: a real daemon on a loopback port with certificates made for the
//! test, a fresh database of its own, and clients that talk to it over real mTLS.

use coalition_certs::{Authority, Identity, Role};
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use coalitiond::client::{ClientPem, connect};
use coalitiond::clock::Clock;
use coalitiond::config::Config;
use coalitiond::daemon::Daemon;
use std::path::PathBuf;
use tonic::transport::Channel;

pub use coalition_proto::v1;

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temp folder.
    Sqlite,
    /// A fresh database of its own on the PostgreSQL server.
    Postgres,
}

/// Runs an async behaviour test once per backend: `backends!(name);` makes `name::sqlite` and
/// `name::postgres`. Without a reachable PostgreSQL the second says so loudly and passes, unless
/// `COALITION_REQUIRE_POSTGRES=1` (CI sets it), which turns the skip into a failure.
#[macro_export]
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::postgres_available(concat!(module_path!(), "::postgres")).await {
                        super::$name($crate::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

/// The server the PostgreSQL tests use (`COALITION_TEST_PG`, default the local one, trust auth).
pub fn pg_admin_url() -> String {
    std::env::var("COALITION_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether PostgreSQL is reachable; if not, prints a loud skip, or panics under
/// `COALITION_REQUIRE_POSTGRES=1`.
pub async fn postgres_available(test: &str) -> bool {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(&pg_admin_url()).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(e) => {
            if std::env::var("COALITION_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!(
                    "PostgreSQL required (COALITION_REQUIRE_POSTGRES=1) but not reachable at {}: {e}",
                    pg_admin_url()
                );
            }
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "\n*** SKIPPED {test}: PostgreSQL not reachable at {} ({e}) ***\n",
                    pg_admin_url()
                ),
            );
            false
        }
    }
}

/// A database of its own on the PostgreSQL server, dropped when the value is.
pub struct PgDatabase {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl PgDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "coalition_t_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let base = pg_admin_url();
        let url = match base.rfind('/') {
            Some(i) if base[..i].contains("://") && i > base.find("://").unwrap() + 2 => {
                format!("{}/{name}", &base[..i])
            }
            _ => format!("{base}/{name}"),
        };
        PgDatabase { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we could block on: use a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            })
        })
        .join();
    }
}

/// A partner API client.
pub type PartnerClient = PartnerServiceClient<Channel>;
/// An operator API client.
pub type OperatorClient =
    coalition_proto::v1::operator_service_client::OperatorServiceClient<Channel>;
/// A programme API client.
pub type ProgrammeClient =
    coalition_proto::v1::programme_service_client::ProgrammeServiceClient<Channel>;
/// A finance API client.
pub type FinanceClient = coalition_proto::v1::finance_service_client::FinanceServiceClient<Channel>;

/// One daemon under test.
pub struct TestDaemon {
    /// The running daemon (None after [`TestDaemon::stop`]).
    pub daemon: Option<Daemon>,
    /// `host:port` it listens on.
    pub addr: String,
    /// The config it runs with.
    pub config: Config,
    /// The CA that signed its certificates, to issue more.
    pub ca: Authority,
    /// The test's folder (deleted on drop).
    pub dir: tempfile::TempDir,
    /// Shared clock (tests advance it).
    pub clock: Clock,
    /// The PostgreSQL database, if the test runs on one (dropped after the daemon).
    pub pg: Option<PgDatabase>,
}

impl TestDaemon {
    /// Starts a daemon with the example config's partners on a fresh database.
    pub async fn start(backend: Backend) -> TestDaemon {
        Self::start_with(backend, |t| t).await
    }

    /// Starts a daemon whose config file text is first passed through `edit`.
    pub async fn start_with(backend: Backend, edit: impl FnOnce(String) -> String) -> TestDaemon {
        coalitiond::client::install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        let url = pg
            .as_ref()
            .map_or("sqlite://coalition.db".to_string(), |p| p.url.clone());
        coalitiond::devsetup::write_dev_setup_on(dir.path(), "127.0.0.1:0", &url)
            .expect("dev setup");
        let path = dir.path().join("coalition.toml");
        std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
        let config = Config::load(&path).expect("edited config loads");
        let certs = certs_dir(&config);
        let ca = Authority::load(
            &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
            &std::fs::read_to_string(certs.join("ca.key")).unwrap(),
        )
        .expect("load CA");
        let clock = Clock::default();
        let daemon = Daemon::start(config.clone(), clock.clone())
            .await
            .expect("daemon starts");
        let addr = daemon.addr.to_string();
        TestDaemon {
            daemon: Some(daemon),
            addr,
            config,
            ca,
            dir,
            clock,
            pg,
        }
    }

    /// Starts another daemon on the same config and database (another port), sharing the clock.
    pub async fn start_another(&self) -> Daemon {
        Daemon::start(self.config.clone(), self.clock.clone())
            .await
            .expect("second daemon starts")
    }

    /// The running daemon (its store, to compare a view with the whole ledger).
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// PEM of a configured partner's certificate.
    pub fn partner_pem(&self, partner: &str) -> ClientPem {
        ClientPem::from_dir(&certs_dir(&self.config), &format!("partner-{partner}"))
            .expect("partner cert")
    }

    /// PEM of a fresh certificate for `identity` from this daemon's CA.
    pub fn issue(&self, role: Role, name: &str, days: i64) -> ClientPem {
        let issued = self
            .ca
            .issue_client(
                &self.config.coalition,
                &Identity {
                    role,
                    name: name.into(),
                },
                days,
            )
            .expect("issue");
        ClientPem {
            ca: self.ca.cert_pem.clone(),
            cert: issued.cert_pem,
            key: issued.key_pem,
        }
    }

    /// A client connected as a configured partner.
    pub async fn partner(&self, partner: &str) -> PartnerClient {
        PartnerServiceClient::new(
            connect(&self.addr, &self.partner_pem(partner))
                .await
                .expect("connect"),
        )
    }

    /// A finance client (the dev finance certificate).
    pub async fn finance(&self) -> FinanceClient {
        let pem = ClientPem::from_dir(&certs_dir(&self.config), "finance").expect("finance cert");
        FinanceClient::new(connect(&self.addr, &pem).await.expect("connect"))
    }

    /// An operator client (the dev operator certificate).
    pub async fn operator(&self) -> OperatorClient {
        let pem = ClientPem::from_dir(&certs_dir(&self.config), "operator").expect("operator cert");
        OperatorClient::new(connect(&self.addr, &pem).await.expect("connect"))
    }

    /// A programme client (the dev programme certificate).
    pub async fn programme(&self) -> ProgrammeClient {
        let pem =
            ClientPem::from_dir(&certs_dir(&self.config), "programme").expect("programme cert");
        ProgrammeClient::new(connect(&self.addr, &pem).await.expect("connect"))
    }

    /// A programme client presenting `pem` (any role, to see who is refused).
    pub async fn programme_as(&self, pem: &ClientPem) -> ProgrammeClient {
        ProgrammeClient::new(connect(&self.addr, pem).await.expect("connect"))
    }

    /// Moves the daemon's clock forward to at least `at` (wall time keeps running after it).
    pub fn advance_to(&self, at: i64) {
        let now = self.clock.now();
        if at > now {
            self.clock
                .advance(std::time::Duration::from_micros((at - now) as u64));
        }
    }

    /// Runs the clearing of `cycle` as finance, returning the settlement or the status.
    pub async fn clear(&self, cycle: chrono::NaiveDate) -> Result<v1::Settlement, tonic::Status> {
        self.finance()
            .await
            .run_clearing(v1::CycleRequest {
                cycle: cycle.to_string(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Runs one SQL statement on the test's database straight, bypassing the daemon (to tamper
    /// with the ledger in tests of the audit). Returns the rows affected.
    pub async fn execute_sql(&self, statement: &str) -> u64 {
        use sqlx::Connection;
        let url = &self.config.database_url;
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(statement)
                .execute(&mut c)
                .await
                .expect("statement runs")
                .rows_affected()
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::query(statement)
                .execute(&mut c)
                .await
                .expect("statement runs")
                .rows_affected()
        }
    }

    /// One whole number read with SQL straight from the test's database (`SELECT …` of one value).
    pub async fn query_i64(&self, query: &str) -> i64 {
        use sqlx::Connection;
        let url = &self.config.database_url;
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_scalar::<_, i64>(query)
                .fetch_one(&mut c)
                .await
                .expect("query runs")
        } else {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::query_scalar::<_, i64>(query)
                .fetch_one(&mut c)
                .await
                .expect("query runs")
        }
    }

    /// The audit's report (invariants and every settlement recomputed).
    pub async fn audit(&self) -> coalitiond::store::audit::Report {
        self.daemon()
            .store
            .audit(self.clock.now(), &self.config.clearing_rules())
            .await
            .expect("audit runs")
    }

    /// Where the daemon serves /metrics.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.daemon().metrics_addr.expect("metrics served")
    }

    /// The Prometheus text the daemon serves on /metrics.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr())
            .await
            .expect("metrics port answers");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("request sent");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("metrics read");
        out
    }

    /// Asserts the ledger invariants hold.
    pub async fn assert_invariants(&self) {
        let report = self
            .daemon()
            .store
            .audit(self.clock.now(), &self.config.clearing_rules())
            .await
            .expect("audit runs");
        assert!(report.ok(), "ledger invariants violated:\n{report}");
    }

    /// (balance, debt) of a member straight from storage, (0, 0) if unknown.
    pub async fn balance(&self, member: &str) -> (i64, i64) {
        match self
            .daemon()
            .store
            .member(member)
            .await
            .expect("read member")
        {
            Some(m) => (m.balance(self.clock.now()), m.debt()),
            None => (0, 0),
        }
    }

    /// Transactions in the ledger.
    pub async fn transactions(&self) -> i64 {
        self.daemon()
            .store
            .transaction_count()
            .await
            .expect("count")
    }

    /// Edits the config file, reloads it and restarts the daemon on it (same database).
    pub async fn reconfigure(&mut self, edit: impl FnOnce(String) -> String) {
        let path = self.dir.path().join("coalition.toml");
        std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
        self.config = Config::load(&path).expect("edited config loads");
        self.restart().await;
    }

    /// A partner client with a certificate of this CA for `partner` (configured or not).
    pub async fn partner_as(&self, partner: &str) -> PartnerClient {
        PartnerServiceClient::new(
            connect(&self.addr, &self.issue(Role::Partner, partner, 30))
                .await
                .expect("connect"),
        )
    }

    /// A partner's price versions, oldest first, as the operator API lists them.
    pub async fn price_versions(&self, partner: &str) -> Vec<v1::PriceVersion> {
        self.operator()
            .await
            .list_prices(v1::ListPricesRequest {
                partner: partner.into(),
            })
            .await
            .expect("list prices")
            .into_inner()
            .versions
    }

    /// Restarts the daemon on the same config and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let daemon = Daemon::start(self.config.clone(), self.clock.clone())
            .await
            .expect("daemon restarts");
        self.addr = daemon.addr.to_string();
        self.daemon = Some(daemon);
    }

    /// Stops the daemon (drains and commits what is in flight).
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await.expect("clean shutdown");
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // The daemon stops in order (its loops' last database work done, its connections gone)
        // before its database is dropped: a daemon merely dropped left its tasks running into the
        // `DROP DATABASE`, and the error they met was counted in the process-wide metrics that a
        // test beside it read.
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| {
                    rt.block_on(async {
                        let stopped = tokio::time::timeout(
                            std::time::Duration::from_secs(30),
                            daemon.shutdown(),
                        )
                        .await;
                        if !std::thread::panicking() {
                            // A test that made the daemon fail on purpose stopped it itself.
                            assert!(stopped.is_ok(), "the test daemon stops within 30 s");
                        }
                    })
                })
            }
            _ => drop(daemon),
        }
    }
}

fn certs_dir(config: &Config) -> PathBuf {
    config.ca_cert.parent().expect("certs dir").to_path_buf()
}

/// An earn of a purchase in EUR.
pub fn earn_purchase(txn: &str, member: &str, amount: &str) -> pb::EarnRequest {
    pb::EarnRequest {
        transaction_id: txn.into(),
        member_id: member.into(),
        grant: Some(pb::earn_request::Grant::Purchase(pb::Money {
            amount: amount.into(),
            currency: "EUR".into(),
        })),
        ..Default::default()
    }
}

/// An earn of bonus points.
pub fn earn_bonus(txn: &str, member: &str, points: i64) -> pb::EarnRequest {
    pb::EarnRequest {
        transaction_id: txn.into(),
        member_id: member.into(),
        grant: Some(pb::earn_request::Grant::BonusPoints(points)),
        ..Default::default()
    }
}

/// A burn.
pub fn burn(txn: &str, member: &str, points: i64) -> pb::BurnRequest {
    pb::BurnRequest {
        transaction_id: txn.into(),
        member_id: member.into(),
        points,
    }
}

/// The slices of a receipt as (issuer, points).
pub fn slices(r: &pb::Receipt) -> Vec<(String, i64)> {
    r.slices
        .iter()
        .map(|s| (s.issuer.clone(), s.points))
        .collect()
}

/// The ErrorInfo reason of a status, if any.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// The receipt of a call that must have succeeded: `client.burn(..).await.receipt()`.
pub trait Answered {
    /// Unwraps the call and its receipt, naming the status if it failed.
    fn receipt(self) -> pb::Receipt;
}

macro_rules! answered {
    ($($t:ty),*) => {$(
        impl Answered for Result<tonic::Response<$t>, tonic::Status> {
            fn receipt(self) -> pb::Receipt {
                match self {
                    Ok(r) => r.into_inner().receipt.expect("a receipt"),
                    Err(e) => panic!("call failed: {e:?}"),
                }
            }
        }
    )*};
}
answered!(pb::EarnResponse, pb::BurnResponse, pb::ReverseResponse);

/// A reversal of `points` (0: all that is left) of the burn `original`.
pub fn reverse_burn(txn: &str, original: &str, points: i64) -> pb::ReverseBurnRequest {
    pb::ReverseBurnRequest {
        transaction_id: txn.into(),
        original_transaction_id: original.into(),
        points,
    }
}

/// A reversal of `points` (0: all that is left) of the earn `original`.
pub fn reverse_earn(txn: &str, original: &str, points: i64) -> pb::ReverseEarnRequest {
    pb::ReverseEarnRequest {
        transaction_id: txn.into(),
        original_transaction_id: original.into(),
        points,
    }
}

/// Validates a pain.001 document against the XSD shipped in `clearing/schemas/` with `xmllint`:
/// `Some(errors)` (empty when valid), or `None` with a loud skip where xmllint is missing — a
/// failure under `COALITION_REQUIRE_XMLLINT=1` (CI).
pub fn xmllint_pain001(xml: &str) -> Option<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pain001.xml");
    std::fs::write(&file, xml).expect("write");
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clearing/schemas/pain.001.001.09.xsd"
    );
    match std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema])
        .arg(&file)
        .output()
    {
        Ok(out) if out.status.success() => Some(String::new()),
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => {
            if std::env::var("COALITION_REQUIRE_XMLLINT").is_ok_and(|v| v == "1") {
                panic!("xmllint required (COALITION_REQUIRE_XMLLINT=1) but not runnable: {e}");
            }
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "\n*** SKIPPED an XSD validation of pain.001: xmllint not found ({e}) ***\n"
                ),
            );
            None
        }
    }
}

/// Renders an HTML file with headless Chromium (Debian's `chromium`) to a PNG of `width` ×
/// `height`: `Some(png bytes)`, or `None` with a loud skip where Chromium is missing — a failure
/// under `COALITION_REQUIRE_CHROMIUM=1` (CI).
pub fn chromium_screenshot(html: &std::path::Path, width: u32, height: u32) -> Option<Vec<u8>> {
    let out = html.with_extension("png");
    let mut tried = Vec::new();
    for browser in ["chromium", "chromium-browser", "google-chrome"] {
        let run = std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                &format!("--window-size={width},{height}"),
                &format!("--screenshot={}", out.display()),
            ])
            .arg(format!("file://{}", html.display()))
            .output();
        match run {
            Ok(o) if o.status.success() && out.exists() => {
                return Some(std::fs::read(&out).expect("read screenshot"));
            }
            Ok(o) => panic!(
                "{browser} failed to render {}: {}",
                html.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => tried.push(format!("{browser}: {e}")),
        }
    }
    if std::env::var("COALITION_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
        panic!("Chromium required (COALITION_REQUIRE_CHROMIUM=1) but not runnable: {tried:?}");
    }
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("\n*** SKIPPED rendering an HTML report: no Chromium ({tried:?}) ***\n"),
    );
    None
}
