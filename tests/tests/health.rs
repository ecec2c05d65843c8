//! Health that tells the truth (issue 21): the partner service turns NOT_SERVING when its
//! database goes away (PostgreSQL refusing the daemon's connections) and SERVING again by itself
//! when it returns; reflection answers v1alpha as well as v1 (Python's grpcio-reflection client).

use coalition_tests::*;
use std::time::{Duration, Instant};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn status(t: &TestDaemon, service: &str) -> i32 {
    let channel = coalitiond::client::connect(&t.addr, &t.partner_pem("bistro"))
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits up to `within` for `service` to report `want` (1 SERVING, 2 NOT_SERVING).
async fn becomes(t: &TestDaemon, service: &str, want: i32, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = status(t, service).await;
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{service} still {now} after {within:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_service_is_not_serving_while_its_database_is_away() {
    if !postgres_available("the_partner_service_is_not_serving_while_its_database_is_away").await {
        return;
    }
    use sqlx::Connection;
    let t = TestDaemon::start(Backend::Postgres).await;
    let mut air = t.partner("skyways").await;
    air.earn(earn_bonus("e1", "m1", 10)).await.receipt();
    let partner = "coalition.v1.PartnerService";
    becomes(&t, partner, 1, Duration::from_secs(5)).await;
    let name = t.pg.as_ref().unwrap().name.clone();
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    // The database goes away: no new connection, the daemon's connections cut.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let took = becomes(&t, partner, 2, Duration::from_secs(15)).await;
    eprintln!("NOT_SERVING {took:?} after the database went away");
    // A write meanwhile is refused as UNAVAILABLE: nothing applied.
    let e = air.earn(earn_bonus("e2", "m1", 10)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // It returns: SERVING again by itself, and writes go through.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    let took = becomes(&t, partner, 1, Duration::from_secs(20)).await;
    eprintln!("SERVING {took:?} after the database returned");
    air.earn(earn_bonus("e2", "m1", 10)).await.receipt();
    assert_eq!(t.balance("m1").await.0, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1alpha_for_pythons_client() {
    let python = std::env::var("COALITION_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_reflection"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        if std::env::var("COALITION_REQUIRE_EXAMPLES").is_ok_and(|v| v == "1") {
            panic!("grpcio-reflection required (COALITION_REQUIRE_EXAMPLES=1) but not importable");
        }
        eprintln!(
            "\n*** SKIPPED reflection v1alpha with Python's client: grpcio-reflection missing (.ci/run installs it) ***\n"
        );
        return;
    }
    let t = TestDaemon::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = t.partner_pem("bistro");
    for (f, v) in [
        ("ca.pem", &pem.ca),
        ("c.pem", &pem.cert),
        ("c.key", &pem.key),
    ] {
        std::fs::write(dir.path().join(f), v).unwrap();
    }
    let script = r#"
import sys, grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
d = sys.argv[2]
creds = grpc.ssl_channel_credentials(open(d + "/ca.pem", "rb").read(), open(d + "/c.key", "rb").read(), open(d + "/c.pem", "rb").read())
channel = grpc.secure_channel(sys.argv[1], creds, options=[("grpc.ssl_target_name_override", "localhost")])
db = ProtoReflectionDescriptorDatabase(channel)
for s in db.get_services():
    print(s)
print(db.FindFileContainingSymbol("coalition.v1.PartnerService").name)
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, &t.addr, dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "coalition.v1.PartnerService",
        "coalition.v1.FinanceService",
        "coalition.v1.OperatorService",
        "grpc.health.v1.Health",
        "coalition/v1/partner.proto",
    ] {
        assert!(stdout.contains(s), "{s} missing from:\n{stdout}");
    }
}
