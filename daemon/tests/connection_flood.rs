//! A flood of silent connections without a certificate (issue 20), against a real `coalitiond serve`
//! process under a file limit of 1,024: 127.0.0.2 keeps up to 1,200 connections open for 10 s, each
//! with the first bytes of a TLS record and then silence; meanwhile a partner connecting anew from
//! 127.0.0.1 is answered within a second, and the daemon writes fewer than 50 log lines about it.

use coalition_proto::v1 as pb;
use coalition_proto::v1::partner_service_client::PartnerServiceClient;
use coalitiond::client::{ClientPem, connect};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

mod common;
use common::free_port;

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_lock_partners_out() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed to run the daemon under a file limit");
    }
    coalitiond::client::install_crypto();
    // This test process holds the flood's sockets: give it room.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    coalitiond::devsetup::write_dev_setup(dir.path(), &addr).unwrap();
    let path = dir.path().join("coalition.toml");
    let log = dir.path().join("daemon.log");
    let mut child = Command::new("prlimit")
        .args([
            "--nofile=1024:1024",
            env!("CARGO_BIN_EXE_coalitiond"),
            "serve",
            "--config",
        ])
        .arg(&path)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
        ))
        .spawn()
        .expect("spawn coalitiond under prlimit");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pem = ClientPem::from_dir(&dir.path().join("certs/dev"), "partner-skyways").unwrap();
    let before = lines(&log) + lines(&dir.path().join("stderr.log"));

    let target: SocketAddr = addr.parse().unwrap();
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut open = std::collections::VecDeque::new();
        let mut attempts = 0u64;
        while started.elapsed() < Duration::from_secs(10) && attempts < 200_000 {
            attempts += 1;
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            match tokio::time::timeout(Duration::from_millis(200), sock.connect(target)).await {
                Ok(Ok(mut s)) => {
                    let _ = s.write_all(&[0x16, 0x03, 0x01]).await;
                    open.push_back(s);
                    if open.len() > 1_200 {
                        open.pop_front();
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        attempts
    });

    let mut worst = Duration::ZERO;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t0 = Instant::now();
        let mut c = PartnerServiceClient::new(
            tokio::time::timeout(Duration::from_secs(10), connect(&addr, &pem))
                .await
                .expect("connect in time")
                .expect("connect"),
        );
        c.earn(pb::EarnRequest {
            transaction_id: format!("during-flood-{i}"),
            member_id: "m1".into(),
            grant: Some(pb::earn_request::Grant::BonusPoints(5)),
            ..Default::default()
        })
        .await
        .expect("earn during the flood");
        worst = worst.max(t0.elapsed());
    }
    let attempts = flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged = lines(&log) + lines(&dir.path().join("stderr.log")) - before;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        attempts > 1_100,
        "the flood opened only {attempts} connections"
    );
    assert!(
        worst < Duration::from_secs(1),
        "a partner waited {worst:?} for a new connection and an earn during the flood"
    );
    assert!(logged < 50, "{logged} log lines for the flood:\n{text}");
    assert!(
        !text.contains("Too many open files"),
        "the daemon ran out of file descriptors:\n{text}"
    );
}
