//! The command line: the demo runs to the end, and `coalitiond audit` checks a database file and
//! fails on a tampered one.

use clap::Parser;
use coalition_tests::*;
use coalitiond::cmd::{Cli, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::parse_from(["coalitiond", "demo", "--dir", dir.path().to_str().unwrap()]);
    run(cli)
        .await
        .expect("demo finishes with its invariants holding");
    assert!(dir.path().join("coalition.db").exists());
    // The month's programme report as a page, with every chart.
    let html = std::fs::read_to_string(dir.path().join("programme-report.html")).unwrap();
    for chart in coalitiond::report::KPIS
        .iter()
        .map(|k| k.key)
        .chain(["flows", "cohorts"])
    {
        assert!(html.contains(&format!("data-chart=\"{chart}\"")), "{chart}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_command_checks_a_database_file() {
    let mut t = TestDaemon::start(Backend::Sqlite).await;
    let mut air = t.partner("skyways").await;
    let mut food = t.partner("bistro").await;
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    food.burn(burn("f1", "m1", 40)).await.unwrap();
    t.stop().await;
    let config = t.dir.path().join("coalition.toml");
    let audit = || Cli::parse_from(["coalitiond", "audit", "--config", config.to_str().unwrap()]);
    run(audit()).await.expect("a consistent ledger passes");

    // Tamper with one lot behind the daemon's back: the audit must notice.
    let url = t.config.database_url.clone();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("UPDATE lots SET points_left = points_left + 1")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let err = run(audit())
        .await
        .expect_err("a tampered ledger fails the audit");
    assert!(err.to_string().contains("invariants"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_cli_runs_shows_finalizes_and_exports() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    let mut air = t.partner("skyways").await;
    let mut food = t.partner("bistro").await;
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    food.burn(burn("f1", "m1", 40)).await.unwrap();
    let cycles = t.config.cycles();
    let d0 = cycles.cycle_of(t.clock.now()).unwrap();
    t.clock.advance(std::time::Duration::from_micros(
        (cycles.close(d0).unwrap() - t.clock.now() + 1_000_000) as u64,
    ));
    let config = t.dir.path().join("coalition.toml");
    let out = t.dir.path().join("payouts.xml");
    let payins = t.dir.path().join("payins.csv");
    let cycle = d0.to_string();
    let base = ["coalitiond", "clearing"];
    let conn = ["--config", config.to_str().unwrap(), "--addr", &t.addr];
    for args in [
        vec!["run", "--cycle", &cycle],
        vec!["show"],
        vec!["statement", "--cycle", &cycle, "--partner", "bistro"],
        vec!["liability"],
        vec!["liability", "--as-of", &cycle],
        vec!["finalize", "--cycle", &cycle],
        vec![
            "export",
            "--cycle",
            &cycle,
            "--format",
            "payins",
            "--out",
            payins.to_str().unwrap(),
        ],
        vec![
            "export",
            "--cycle",
            &cycle,
            "--format",
            "pain001",
            "--out",
            out.to_str().unwrap(),
        ],
    ] {
        let argv: Vec<&str> = base
            .iter()
            .chain(&args[..1])
            .chain(conn.iter())
            .chain(&args[1..])
            .copied()
            .collect();
        run(Cli::parse_from(&argv))
            .await
            .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    }
    // skyways pays in what is paid out.
    let payins = std::fs::read_to_string(&payins).unwrap();
    assert!(
        payins
            .lines()
            .nth(1)
            .unwrap()
            .contains(",skyways,0.53,EUR,"),
        "{payins}"
    );
    let xml = std::fs::read_to_string(&out).unwrap();
    // bistro 40 × 0.012 = 0.48 and the operator 100 × 0.0005 = 0.05 are paid out.
    assert!(
        xml.contains("<CtrlSum>0.53</CtrlSum>") && xml.contains("<NbOfTxs>2</NbOfTxs>"),
        "{xml}"
    );
    // A cycle that has not closed is refused with a message naming it.
    let tomorrow = d0.succ_opt().unwrap().to_string();
    let argv = [
        "coalitiond",
        "clearing",
        "run",
        "--config",
        config.to_str().unwrap(),
        "--addr",
        &t.addr,
        "--cycle",
        &tomorrow,
    ];
    let err = run(Cli::parse_from(argv)).await.unwrap_err();
    assert!(format!("{err:#}").contains("has not closed yet"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_cli_lists_changes_and_suspends() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    let config = t.dir.path().join("coalition.toml");
    let conn = ["--config", config.to_str().unwrap(), "--addr", &t.addr];
    for args in [
        vec!["partners"],
        vec!["limits", "--once"],
        vec![
            "set-limit",
            "--partner",
            "skyways",
            "--per-second",
            "7",
            "--burst",
            "9",
        ],
        vec!["suspend", "--partner", "bistro"],
        vec!["reload-certs"],
        vec![
            "set-prices",
            "--partner",
            "freshmart",
            "--redemption-rate",
            "0.0091",
        ],
        vec!["prices", "--partner", "freshmart"],
        vec![
            "webhooks",
            "--partner",
            "skyways",
            "--set",
            "https://127.0.0.1:9/hooks",
        ],
        vec!["webhooks", "--partner", "skyways", "--resume"],
        vec!["webhooks"],
    ] {
        let argv: Vec<&str> = ["coalitiond", "ops"]
            .iter()
            .chain(&args[..1])
            .chain(conn.iter())
            .chain(&args[1..])
            .copied()
            .collect();
        run(Cli::parse_from(&argv))
            .await
            .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    }
    let limits = t
        .operator()
        .await
        .get_limits(v1::GetLimitsRequest {
            partner: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .limits;
    let sky = limits.iter().find(|l| l.partner == "skyways").unwrap();
    assert_eq!((sky.per_second, sky.burst), (7, 9));
    assert!(
        limits
            .iter()
            .find(|l| l.partner == "bistro")
            .unwrap()
            .suspended
    );
    let prices = t.price_versions("freshmart").await;
    let next = prices.last().unwrap();
    assert_eq!(
        (prices.len(), next.redemption_rate.as_str(), next.in_force),
        (2, "0.0091", false)
    );
    assert!(next.set_by.starts_with("operator/"), "{next:?}");
    let hooks = t
        .operator()
        .await
        .list_webhooks(v1::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(
        (hooks[0].partner.as_str(), hooks[0].url.as_str()),
        ("skyways", "https://127.0.0.1:9/hooks")
    );
    assert!(hooks[0].set_by.starts_with("operator/"), "{hooks:?}");
    let shown = coalitiond::cmd::ops::webhooks_table(&hooks);
    assert!(shown.contains("https://127.0.0.1:9/hooks"), "{shown}");
    // `--partner` alone says what it lacks instead of listing.
    assert!(
        Cli::try_parse_from(["coalitiond", "ops", "webhooks", "--partner", "skyways"]).is_err()
    );
    let table = coalitiond::cmd::ops::limits_table(&limits);
    assert!(
        table.contains("SUSPENDED") && table.lines().count() == 4,
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served_over_mtls() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let t = TestDaemon::start(Backend::Sqlite).await;
    let channel = coalitiond::client::connect(&t.addr, &t.partner_pem("bistro"))
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "coalition.v1.PartnerService",
        "coalition.v1.FinanceService",
        "coalition.v1.OperatorService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "coalition.v1.PartnerService",
        "coalition.v1.FinanceService",
        "coalition.v1.OperatorService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} not listed: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programme_cli_creates_lists_and_ends_a_campaign() {
    let t = TestDaemon::start(Backend::Sqlite).await;
    let config = t.dir.path().join("coalition.toml");
    let now = t.clock.now();
    let at = |us: i64| coalitiond::clock::rfc3339(us);
    let (config, addr) = (config.to_str().unwrap(), t.addr.as_str());
    let (starts, ends) = (at(now), at(now + 86_400_000_000));
    let create = Cli::parse_from([
        "coalitiond",
        "programme",
        "campaigns",
        "create",
        "--config",
        config,
        "--addr",
        addr,
        "--id",
        "cli-bonus",
        "--name",
        "from the command line",
        "--starts",
        &starts,
        "--ends",
        &ends,
        "--partner",
        "bistro",
        "--bonus-points",
        "12",
        "--cap",
        "24",
        "--funder",
        "operator",
    ]);
    run(create).await.expect("create");
    let list = Cli::parse_from([
        "coalitiond",
        "programme",
        "campaigns",
        "list",
        "--config",
        config,
        "--addr",
        addr,
    ]);
    run(list).await.expect("list");
    let r = t
        .partner("bistro")
        .await
        .earn(earn_bonus("b1", "m1", 10))
        .await
        .receipt();
    assert_eq!(
        r.points, 22,
        "the campaign made on the command line applies"
    );
    // A refusal comes back as an error naming what is wrong.
    let bad = Cli::parse_from([
        "coalitiond",
        "programme",
        "campaigns",
        "create",
        "--config",
        config,
        "--addr",
        addr,
        "--id",
        "bad",
        "--name",
        "x",
        "--starts",
        &ends,
        "--ends",
        &starts,
        "--bonus-points",
        "1",
    ]);
    let err = run(bad).await.expect_err("end before start is refused");
    assert!(format!("{err:#}").contains("end"), "{err:#}");
    let end = Cli::parse_from([
        "coalitiond",
        "programme",
        "campaigns",
        "end",
        "--config",
        config,
        "--addr",
        addr,
        "--id",
        "cli-bonus",
    ]);
    run(end).await.expect("end");
    let r = t
        .partner("bistro")
        .await
        .earn(earn_bonus("b2", "m1", 10))
        .await
        .receipt();
    assert_eq!(r.points, 10, "an ended campaign no longer applies");
}
