//! Bad input, one row each: the status code it gets, and that no balance or transaction count moved.

use coalition_certs::{Authority, Identity, Role};
use coalition_tests::*;
use coalitiond::client::{ClientPem, connect};
use futures::future::BoxFuture;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

backends!(every_bad_request_is_refused_and_changes_nothing);

type Call = Box<dyn Fn(PartnerClient) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(PartnerClient) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    Box::new(move |c| Box::pin(f(c)))
}

fn purchase(amount: &str, currency: &str) -> v1::EarnRequest {
    v1::EarnRequest {
        transaction_id: "bad-1".into(),
        member_id: "m1".into(),
        grant: Some(v1::earn_request::Grant::Purchase(v1::Money {
            amount: amount.into(),
            currency: currency.into(),
        })),
        ..Default::default()
    }
}

async fn earn(mut c: PartnerClient, r: v1::EarnRequest) -> Result<(), Status> {
    c.earn(r).await.map(|_| ())
}
async fn burn_call(mut c: PartnerClient, r: v1::BurnRequest) -> Result<(), Status> {
    c.burn(r).await.map(|_| ())
}
fn rev_earn(original: &str, points: i64) -> v1::ReverseEarnRequest {
    reverse_earn("bad-r", original, points)
}
fn rev_burn(original: &str, points: i64) -> v1::ReverseBurnRequest {
    reverse_burn("bad-r", original, points)
}

/// How a row's client connects.
enum As {
    Partner(&'static str),
    Pem(ClientPem),
    NoCertificate,
    Plaintext,
}

/// A connection refused at the TLS handshake: the client sees a transport error, never a status
/// from the daemon's handlers.
const REFUSED: Code = Code::DataLoss;

struct Row {
    name: &'static str,
    who: As,
    /// The status code, or [`REFUSED`] for a connection the TLS handshake refuses.
    code: Code,
    call: Call,
}

fn row(name: &'static str, who: As, code: Code, call: Call) -> Row {
    Row {
        name,
        who,
        code,
        call,
    }
}

async fn client(t: &TestDaemon, who: &As) -> Result<PartnerClient, Status> {
    let transport =
        |e: tonic::transport::Error| Status::unavailable(format!("connect failed: {e}"));
    let channel = match who {
        As::Partner(p) => connect(&t.addr, &t.partner_pem(p))
            .await
            .map_err(transport)?,
        As::Pem(pem) => connect(&t.addr, pem).await.map_err(transport)?,
        As::NoCertificate => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca.cert_pem))
                .domain_name("localhost");
            Channel::from_shared(format!("https://{}", t.addr))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .map_err(transport)?
        }
        As::Plaintext => Channel::from_shared(format!("http://{}", t.addr))
            .unwrap()
            .connect()
            .await
            .map_err(transport)?,
    };
    Ok(PartnerClient::new(channel))
}

async fn every_bad_request_is_refused_and_changes_nothing(b: Backend) {
    let t = TestDaemon::start(b).await;
    let (mut air, mut shop, mut food) = (
        t.partner("skyways").await,
        t.partner("freshmart").await,
        t.partner("bistro").await,
    );
    air.earn(earn_bonus("a1", "m1", 100)).await.unwrap();
    shop.earn(earn_bonus("s1", "m1", 50)).await.unwrap();
    food.burn(burn("f1", "m1", 30)).await.unwrap();
    let rogue = Authority::generate("rogue CA").unwrap();
    let rogue_pem = {
        let i = rogue
            .issue_client(
                &t.config.coalition,
                &Identity {
                    role: Role::Partner,
                    name: "skyways".into(),
                },
                30,
            )
            .unwrap();
        ClientPem {
            ca: t.ca.cert_pem.clone(),
            cert: i.cert_pem,
            key: i.key_pem,
        }
    };
    let long = "x".repeat(65);
    let l2 = long.clone();
    use As::*;
    let inv = Code::InvalidArgument;
    let rows = vec![
        row(
            "zero bonus points",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 0))),
        ),
        row(
            "negative bonus points",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("bad-1", "m1", -5))),
        ),
        row(
            "bonus above the partner's cap",
            Partner("bistro"),
            inv,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5001))),
        ),
        row(
            "bonus of i64::MAX points",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("bad-1", "m1", i64::MAX))),
        ),
        row(
            "purchase earning more points than i64",
            Partner("freshmart"),
            inv,
            call(|c| earn(c, purchase("79228162514264337593543950335", "EUR"))),
        ),
        row(
            "purchase earning over i64::MAX points",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("9223372036854775808", "EUR"))),
        ),
        row(
            "zero burn",
            Partner("bistro"),
            inv,
            call(|c| burn_call(c, burn("bad-1", "m1", 0))),
        ),
        row(
            "negative burn",
            Partner("bistro"),
            inv,
            call(|c| burn_call(c, burn("bad-1", "m1", -1))),
        ),
        row(
            "burn of i64::MIN",
            Partner("bistro"),
            inv,
            call(|c| burn_call(c, burn("bad-1", "m1", i64::MIN))),
        ),
        row(
            "malformed money",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("12,50", "EUR"))),
        ),
        row(
            "money in exponent form",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("1e3", "EUR"))),
        ),
        row(
            "negative money",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("-5.00", "EUR"))),
        ),
        row(
            "zero money",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("0.00", "EUR"))),
        ),
        row(
            "too-precise money",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("10.005", "EUR"))),
        ),
        row(
            "money too small to earn a point",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("0.99", "EUR"))),
        ),
        row(
            "another currency",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("10.00", "USD"))),
        ),
        row(
            "no currency",
            Partner("skyways"),
            inv,
            call(|c| earn(c, purchase("10.00", ""))),
        ),
        row(
            "no grant",
            Partner("skyways"),
            inv,
            call(|c| {
                earn(
                    c,
                    v1::EarnRequest {
                        transaction_id: "bad-1".into(),
                        member_id: "m1".into(),
                        grant: None,
                        ..Default::default()
                    },
                )
            }),
        ),
        row(
            "missing transaction id",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("", "m1", 5))),
        ),
        row(
            "over-long transaction id",
            Partner("skyways"),
            inv,
            call(move |c| earn(c, earn_bonus(&long, "m1", 5))),
        ),
        row(
            "transaction id with spaces",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("a b", "m1", 5))),
        ),
        row(
            "missing member id",
            Partner("skyways"),
            inv,
            call(|c| earn(c, earn_bonus("bad-1", "", 5))),
        ),
        row(
            "over-long member id",
            Partner("bistro"),
            inv,
            call(move |c| burn_call(c, burn("bad-1", &l2, 5))),
        ),
        row(
            "burn above balance",
            Partner("bistro"),
            Code::FailedPrecondition,
            call(|c| burn_call(c, burn("bad-1", "m1", 121))),
        ),
        row(
            "burn for an unknown member (refused like a member with nothing: no member oracle)",
            Partner("bistro"),
            Code::FailedPrecondition,
            call(|c| burn_call(c, burn("bad-1", "nobody", 1))),
        ),
        row(
            "reversal of an unknown transaction",
            Partner("skyways"),
            Code::NotFound,
            call(|mut c| async move { c.reverse_earn(rev_earn("nope", 1)).await.map(|_| ()) }),
        ),
        row(
            "reversal of another partner's earn",
            Partner("skyways"),
            Code::NotFound,
            call(|mut c| async move { c.reverse_earn(rev_earn("s1", 1)).await.map(|_| ()) }),
        ),
        row(
            "reversal of another partner's burn",
            Partner("skyways"),
            Code::NotFound,
            call(|mut c| async move { c.reverse_burn(rev_burn("f1", 1)).await.map(|_| ()) }),
        ),
        row(
            "earn reversal beyond what remains",
            Partner("skyways"),
            Code::FailedPrecondition,
            call(|mut c| async move { c.reverse_earn(rev_earn("a1", 101)).await.map(|_| ()) }),
        ),
        row(
            "burn reversal beyond what remains",
            Partner("bistro"),
            Code::FailedPrecondition,
            call(|mut c| async move { c.reverse_burn(rev_burn("f1", 31)).await.map(|_| ()) }),
        ),
        row(
            "earn reversal naming a burn",
            Partner("bistro"),
            Code::FailedPrecondition,
            call(|mut c| async move { c.reverse_earn(rev_earn("f1", 1)).await.map(|_| ()) }),
        ),
        row(
            "negative reversal",
            Partner("bistro"),
            inv,
            call(|mut c| async move { c.reverse_burn(rev_burn("f1", -1)).await.map(|_| ()) }),
        ),
        row(
            "reused id with other content",
            Partner("skyways"),
            Code::AlreadyExists,
            call(|c| earn(c, earn_bonus("a1", "m1", 99))),
        ),
        row(
            "certificate from another CA",
            Pem(rogue_pem),
            REFUSED,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "no client certificate",
            NoCertificate,
            REFUSED,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "plaintext client",
            Plaintext,
            REFUSED,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "expired certificate",
            Pem(t.issue(Role::Partner, "skyways", -1)),
            REFUSED,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "partner unknown to the config",
            Pem(t.issue(Role::Partner, "ghost", 30)),
            Code::Unauthenticated,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "finance certificate on the partner API",
            Pem(t.issue(Role::Finance, "finance", 30)),
            Code::PermissionDenied,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
        row(
            "certificate of another coalition",
            Pem({
                let i =
                    t.ca.issue_client(
                        "other-coalition",
                        &Identity {
                            role: Role::Partner,
                            name: "skyways".into(),
                        },
                        30,
                    )
                    .unwrap();
                ClientPem {
                    ca: t.ca.cert_pem.clone(),
                    cert: i.cert_pem,
                    key: i.key_pem,
                }
            }),
            Code::Unauthenticated,
            call(|c| earn(c, earn_bonus("bad-1", "m1", 5))),
        ),
    ];
    let before = (t.balance("m1").await, t.transactions().await);
    assert_eq!(before, ((120, 0), 3));
    let mut failures = Vec::new();
    for r in &rows {
        let result = match client(&t, &r.who).await {
            Ok(c) => (r.call)(c).await,
            Err(status) => Err(status),
        };
        match result {
            Ok(()) => failures.push(format!("{}: accepted", r.name)),
            Err(s) if r.code == REFUSED => {
                // Refused by the handshake: a client-side transport failure, no ErrorInfo from us.
                let transport = matches!(
                    s.code(),
                    Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled
                ) && reason(&s).is_empty();
                if !transport {
                    failures.push(format!(
                        "{}: got {:?} ({}), want a refused connection",
                        r.name,
                        s.code(),
                        s.message()
                    ));
                }
            }
            Err(s) if s.code() != r.code => failures.push(format!(
                "{}: got {:?} ({}), want {:?}",
                r.name,
                s.code(),
                s.message(),
                r.code
            )),
            Err(s) => {
                assert!(!s.message().is_empty(), "{}: empty message", r.name);
                assert!(!reason(&s).is_empty(), "{}: no ErrorInfo reason", r.name);
            }
        }
        let after = (t.balance("m1").await, t.transactions().await);
        assert_eq!(after, before, "{} changed the ledger", r.name);
    }
    assert!(
        failures.is_empty(),
        "rows that failed:\n{}",
        failures.join("\n")
    );
    t.assert_invariants().await;
}
