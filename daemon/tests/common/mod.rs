//! Helpers shared by the tests that run a real `coalitiond` process or need a database of their own.
#![allow(dead_code)] // each test binary uses its own share of them

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `coalitiond serve --config <config>` and waits until it listens on `addr`.
pub async fn spawn_serve(config: &std::path::Path, addr: &str) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_coalitiond"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coalitiond");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// A fresh database `name` on the tests' PostgreSQL server (`COALITION_TEST_PG`): its URL and an
/// admin connection to drop it with [`drop_database`]. `None` — a loud skip — when the server is
/// unreachable, a failure instead under `COALITION_REQUIRE_POSTGRES=1` (CI).
pub async fn postgres_database(name: &str) -> Option<(String, sqlx::PgConnection)> {
    use sqlx::Connection;
    let admin = std::env::var("COALITION_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut c = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("COALITION_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("PostgreSQL required but not reachable at {admin}: {e}");
            }
            eprintln!("\n*** SKIPPED {name} on PostgreSQL: not reachable at {admin} ({e}) ***\n");
            return None;
        }
    };
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut c)
        .await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some((format!("{base}/{name}"), c))
}

/// Drops a database made by [`postgres_database`].
pub async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) {
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin)
        .await;
}
