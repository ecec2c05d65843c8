//! Partners answer final settlements (issue 14, in part): acknowledge or dispute, idempotent, only
//! for themselves, only once final; finance sees each partner's state. On both backends, over mTLS.

use coalition_tests::*;
use tonic::Code;

fn no_scheduler(toml: String) -> String {
    toml.replace("scheduler = true", "scheduler = false")
}

backends!(partners_acknowledge_or_dispute_a_final_settlement);

async fn partners_acknowledge_or_dispute_a_final_settlement(b: Backend) {
    let t = TestDaemon::start_with(b, no_scheduler).await;
    let (mut air, mut food) = (t.partner("skyways").await, t.partner("bistro").await);
    air.earn(earn_bonus("a1", "m1", 500)).await.receipt();
    food.burn(burn("f1", "m1", 200)).await.receipt();
    let day = t
        .config
        .cycles()
        .cycle_of(t.clock.now())
        .expect("today is in the calendar");
    t.advance_to(t.config.cycles().close(day).unwrap() + 3_600_000_000);
    let draft = t.clear(day).await.unwrap();
    let ask = |reason: &str| v1::SettlementAnswerRequest {
        cycle: day.to_string(),
        reason: reason.into(),
    };

    // A draft may still change: nothing to answer yet.
    let e = air.acknowledge_settlement(ask("")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::FailedPrecondition, "SETTLEMENT_NOT_FINAL")
    );
    let e = air
        .acknowledge_settlement(v1::SettlementAnswerRequest {
            cycle: "2020-01-01".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "UNKNOWN_SETTLEMENT")
    );
    let mut fin = t.finance().await;
    fin.finalize_settlement(v1::FinalizeSettlementRequest {
        cycle: day.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();

    // bistro acknowledges; a retry answers the same.
    let ack = food
        .acknowledge_settlement(ask(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            ack.partner.as_str(),
            ack.state.as_str(),
            ack.answered_by.as_str(),
            ack.digest.as_str()
        ),
        (
            "bistro",
            "acknowledged",
            "partner/bistro",
            draft.digest.as_str()
        )
    );
    t.advance_to(t.clock.now() + 1_000_000);
    let again = food
        .acknowledge_settlement(ask(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, ack, "a retry answers as the first call did");

    // skyways disputes: a reason is required; a retry answers the same.
    let e = air.dispute_settlement(ask("  ")).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "REASON_REQUIRED")
    );
    let e = air
        .dispute_settlement(ask(&"x".repeat(501)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "REASON_TOO_LONG")
    );
    let dispute = air
        .dispute_settlement(ask("our tills show no burn at bistro"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dispute.partner.as_str(), dispute.state.as_str()),
        ("skyways", "disputed")
    );
    let again = air
        .dispute_settlement(ask("our tills show no burn at bistro"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, dispute);

    // Finance sees each partner's state; the settlement itself is unchanged.
    let s = fin
        .get_settlement(v1::CycleRequest {
            cycle: day.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.digest, draft.digest);
    assert_eq!(s.responses, vec![ack.clone(), dispute.clone()]);

    // A later acknowledgement replaces the dispute as skyways' state; both stay recorded.
    let later = air
        .acknowledge_settlement(ask("resolved: a late till"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.state, "acknowledged");
    let s = fin
        .get_settlement(v1::CycleRequest {
            cycle: day.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.responses, vec![ack, later]);
    assert_eq!(
        t.execute_sql(
            "UPDATE settlement_responses SET reason = reason WHERE partner_id = 'skyways'"
        )
        .await,
        2,
        "the dispute and the acknowledgement are both kept"
    );

    // The audit checks each answer against its settlement: one edited behind the daemon fails it.
    assert!(t.audit().await.ok());
    t.execute_sql("UPDATE settlement_responses SET digest = 'edited' WHERE partner_id = 'bistro'")
        .await;
    let audit = t.audit().await;
    assert!(
        !audit.ok(),
        "an answer naming another digest passes the audit"
    );

    // Only partners answer, each for itself: a finance certificate cannot call the partner API.
    let pem = t.issue(coalition_certs::Role::Finance, "finance", 1);
    let mut as_finance = v1::partner_service_client::PartnerServiceClient::new(
        coalitiond::client::connect(&t.addr, &pem).await.unwrap(),
    );
    let e = as_finance
        .acknowledge_settlement(ask(""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
