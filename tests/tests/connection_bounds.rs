//! Bounds on connections (issue 20): a connection over the per-address or the total bound of
//! pending handshakes is closed at once; a silent connection is closed after the handshake timeout;
//! authenticated connections have a bound of their own. Over real TCP on loopback addresses.

use coalition_tests::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A silent connection from `from`: the first bytes of a TLS record, then nothing.
async fn silent(from: &str, to: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    let mut s = sock.connect(to.parse().unwrap()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    s
}

/// How long until the daemon closes `s` (EOF or reset), at most `limit`.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue, // an alert, say: keep reading until it closes
        }
    }
}

fn limits(extra: &'static str) -> impl FnOnce(String) -> String {
    move |toml| {
        toml.replace(
            "queue_depth = 16384",
            &format!("queue_depth = 16384\n{extra}"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_per_address_bound_is_closed_at_once() {
    let t = TestDaemon::start_with(Backend::Sqlite, limits("max_pending_per_address = 4")).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(silent("127.0.0.2", &t.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = silent("127.0.0.2", &t.addr).await;
    let closed = closed_after(&mut fifth, Duration::from_secs(1)).await;
    assert!(
        closed.is_some_and(|d| d < Duration::from_millis(500)),
        "{closed:?}"
    );
    // Another address still gets its handshake.
    let mut other = silent("127.0.0.3", &t.addr).await;
    assert_eq!(
        closed_after(&mut other, Duration::from_millis(500)).await,
        None
    );
    for s in &mut held {
        assert_eq!(
            closed_after(s, Duration::from_millis(10)).await,
            None,
            "the four stay"
        );
    }
    // A partner is served all along.
    t.partner("skyways")
        .await
        .earn(earn_bonus("e1", "m1", 5))
        .await
        .receipt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_total_bound_is_closed_at_once() {
    let t = TestDaemon::start_with(Backend::Sqlite, limits("max_pending_handshakes = 6")).await;
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..3 {
            held.push(silent(from, &t.addr).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seventh = silent("127.0.0.4", &t.addr).await;
    let closed = closed_after(&mut seventh, Duration::from_secs(1)).await;
    assert!(
        closed.is_some_and(|d| d < Duration::from_millis(500)),
        "{closed:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut later = silent("127.0.0.4", &t.addr).await;
    assert_eq!(
        closed_after(&mut later, Duration::from_millis(300)).await,
        None,
        "places are freed when connections go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let t = TestDaemon::start_with(Backend::Sqlite, |toml| {
        toml.replace(
            "queue_depth = 16384",
            "queue_depth = 16384\nhandshake_timeout_ms = 500",
        )
    })
    .await;
    let mut s = silent("127.0.0.2", &t.addr).await;
    let closed = closed_after(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|d| d >= Duration::from_millis(400) && d < Duration::from_secs(3)),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_have_a_bound_of_their_own() {
    let t = TestDaemon::start_with(
        Backend::Sqlite,
        limits("max_connections = 2\nmax_pending_per_address = 2"),
    )
    .await;
    // Two partners hold the two authenticated places (pending places are counted apart: the
    // per-address bound of 2 does not stop a third handshake once the first two finished).
    let mut a = t.partner("skyways").await;
    let mut b = t.partner("bistro").await;
    a.earn(earn_bonus("a1", "m1", 5)).await.receipt();
    b.earn(earn_bonus("b1", "m1", 5)).await.receipt();
    // A third authenticated connection is over the bound: closed after its handshake.
    let third = coalitiond::client::connect(&t.addr, &t.partner_pem("freshmart")).await;
    let refused = match third {
        Err(_) => true,
        Ok(ch) => coalition_tests::v1::partner_service_client::PartnerServiceClient::new(ch)
            .earn(earn_bonus("f1", "m1", 5))
            .await
            .is_err(),
    };
    assert!(refused, "a third authenticated connection was served");
    // The first two are still served.
    a.earn(earn_bonus("a2", "m1", 5)).await.receipt();
    // One goes; its place is freed.
    drop(b);
    let started = Instant::now();
    loop {
        if let Ok(ch) = coalitiond::client::connect(&t.addr, &t.partner_pem("freshmart")).await
            && coalition_tests::v1::partner_service_client::PartnerServiceClient::new(ch)
                .earn(earn_bonus("f2", "m1", 5))
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the freed place was not reused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
