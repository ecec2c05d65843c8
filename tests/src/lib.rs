//! The behaviour suite's harness: a real daemon on a loopback port with certificates made for the
//! test, a fresh database of its own, and clients that talk to it over real mTLS.

use coalition_certs::{Authority, Identity, Role};
use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use coalitiond::client::{connect, ClientPem};
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
}

/// Runs an async behaviour test once per backend: `backends!(name);` makes `name::sqlite` …
#[macro_export]
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
            }
        )*
    };
}

/// A partner API client.
pub type PartnerClient = PartnerServiceClient<Channel>;

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
}

impl TestDaemon {
    /// Starts a daemon with the example config's partners on a fresh database.
    pub async fn start(backend: Backend) -> TestDaemon {
        coalitiond::client::install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = coalitiond::demo::write_dev_setup(dir.path(), "127.0.0.1:0").expect("dev setup");
        let _ = backend;
        let certs = certs_dir(&config);
        let ca = Authority::load(
            &std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
            &std::fs::read_to_string(certs.join("ca.key")).unwrap(),
        )
        .expect("load CA");
        let clock = Clock::default();
        let daemon = Daemon::start(config.clone(), clock.clone()).await.expect("daemon starts");
        let addr = daemon.addr.to_string();
        TestDaemon { daemon: Some(daemon), addr, config, ca, dir, clock }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// PEM of a configured partner's certificate.
    pub fn partner_pem(&self, partner: &str) -> ClientPem {
        ClientPem::from_dir(&certs_dir(&self.config), &format!("partner-{partner}")).expect("partner cert")
    }

    /// PEM of a fresh certificate for `identity` from this daemon's CA.
    pub fn issue(&self, role: Role, name: &str, days: i64) -> ClientPem {
        let issued = self
            .ca
            .issue_client(&self.config.coalition, &Identity { role, name: name.into() }, days)
            .expect("issue");
        ClientPem { ca: self.ca.cert_pem.clone(), cert: issued.cert_pem, key: issued.key_pem }
    }

    /// A client connected as a configured partner.
    pub async fn partner(&self, partner: &str) -> PartnerClient {
        PartnerServiceClient::new(connect(&self.addr, &self.partner_pem(partner)).await.expect("connect"))
    }

    /// Asserts the ledger invariants hold.
    pub async fn assert_invariants(&self) {
        let report = self.daemon().store.audit(self.clock.now()).await.expect("audit runs");
        assert!(report.ok(), "ledger invariants violated:\n{report}");
    }

    /// (balance, debt) of a member straight from storage, (0, 0) if unknown.
    pub async fn balance(&self, member: &str) -> (i64, i64) {
        match self.daemon().store.member(member).await.expect("read member") {
            Some(m) => (m.balance(self.clock.now()), m.debt()),
            None => (0, 0),
        }
    }

    /// Transactions in the ledger.
    pub async fn transactions(&self) -> i64 {
        self.daemon().store.transaction_count().await.expect("count")
    }

    /// Stops the daemon (drains and commits what is in flight).
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await.expect("clean shutdown");
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
        grant: Some(pb::earn_request::Grant::Purchase(pb::Money { amount: amount.into(), currency: "EUR".into() })),
    }
}

/// An earn of bonus points.
pub fn earn_bonus(txn: &str, member: &str, points: i64) -> pb::EarnRequest {
    pb::EarnRequest {
        transaction_id: txn.into(),
        member_id: member.into(),
        grant: Some(pb::earn_request::Grant::BonusPoints(points)),
    }
}

/// A burn.
pub fn burn(txn: &str, member: &str, points: i64) -> pb::BurnRequest {
    pb::BurnRequest { transaction_id: txn.into(), member_id: member.into(), points }
}

/// The slices of a receipt as (issuer, points).
pub fn slices(r: &pb::Receipt) -> Vec<(String, i64)> {
    r.slices.iter().map(|s| (s.issuer.clone(), s.points)).collect()
}

/// The ErrorInfo reason of a status, if any.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}
