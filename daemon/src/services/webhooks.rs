//! Webhooks: each partner's events pushed to its URL, in order, signed as the Standard Webhooks
//! convention signs (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`), retried with capped exponential backoff and jitter, by
//! one daemon at a time per partner (a lease in the database), and paused once they have failed
//! for longer than `events.webhook_pause_after_seconds` (an operator resumes them). What was
//! delivered is recorded after each delivery, so a daemon taking over goes on from there: a
//! receiver may see an event again (after a daemon died mid-delivery), never out of order, and
//! tells a repeat by its `webhook-id`.

use super::error::ServiceError;
use super::shared::Shared;
use crate::events::Event;
use crate::ledger::Micros;
use crate::store::feed::{FeedCall, FeedReply, WebhookRow};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// How long a lease runs; renewed before each delivery, which takes at most the configured
/// timeout (so a lease never runs out in the middle of one).
const LEASE: Duration = Duration::from_secs(30);
/// How often the webhooks are looked at (new ones, changed secrets, pauses).
const TICK: Duration = Duration::from_secs(1);
/// Events read at a time for delivery.
const PAGE: i64 = 100;

/// Renders an event as the body its webhook posts (the API's JSON of it): handed in by whoever
/// starts the deliveries, since the wire form is the handlers' to make.
pub type Render = fn(&Event) -> Result<Vec<u8>, String>;

/// The `webhook-signature` of a delivery: `v1,` and the base64 HMAC-SHA256, keyed by the
/// secret's bytes, of `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> Result<String, String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "no randomness for a secret".to_string())?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// The HTTP client deliveries go through: rustls on ring, the web's roots (and the configured
/// CA, if any), HTTP/1.1, the configured timeout.
pub fn client(config: &crate::config::EventsConfig) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("events.webhook_ca_cert {}: {e}", path.display()))?;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> = cert?;
            roots.add(cert)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("coalitiond/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Posts one event; `Ok` on a 2xx answer.
async fn post(
    client: &reqwest::Client,
    row: &WebhookRow,
    event: &Event,
    render: Render,
) -> Result<(), String> {
    let key = crate::config::webhook_secret(&row.secret)?;
    let body = render(event)?;
    let id = event.id();
    let timestamp = chrono::Utc::now().timestamp();
    let answer = client
        .post(&row.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&key, &id, timestamp, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", row.url))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {status}", row.url))
    }
}

/// The wait before attempt `n + 1` after `n` failures in a row: 1 s, 2 s, 4 s, … up to `cap`,
/// less up to half of it at random (so that many receivers coming back are not hit at once).
fn backoff(failures: i64, cap: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let base = Duration::from_secs(1 << failures.clamp(0, 20).saturating_sub(1)).min(cap);
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    base.mul_f64(1.0 - f64::from(byte[0]) / 512.0)
}

fn micros() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

/// Delivers every partner's events while `stop` stays false: a task per webhook, started when
/// one appears. Also keeps each webhook's gauges (lag, failures, paused) on every daemon.
pub async fn run(shared: Shared, holder: String, render: Render, mut stop: watch::Receiver<bool>) {
    let client = match client(&shared.config.events) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks cannot start: no HTTP client");
            return;
        }
    };
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let rows = match shared.store.feed(FeedCall::Webhooks).await {
            Ok(FeedReply::Webhooks(rows)) => rows,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the webhooks");
                continue;
            }
        };
        for row in &rows {
            gauges(&shared, row).await;
            let running = tasks.get(&row.partner).is_some_and(|t| !t.is_finished());
            if !running {
                tasks.insert(
                    row.partner.clone(),
                    tokio::spawn(deliver(
                        shared.clone(),
                        client.clone(),
                        row.partner.clone(),
                        holder.clone(),
                        render,
                        stop.clone(),
                    )),
                );
            }
        }
    }
    for (_, t) in tasks {
        let _ = t.await;
    }
}

/// A webhook's gauges: events waiting and since when, failures in a row, paused.
async fn gauges(shared: &Shared, row: &WebhookRow) {
    let p = row.partner.clone();
    let (head, oldest_waiting) = match waiting(shared, row, 1).await {
        Ok((head, events)) => (head, events.first().map(|e| e.at)),
        Err(_) => return,
    };
    metrics::gauge!("coalition_webhook_lag_events", "partner" => p.clone())
        .set((head - row.delivered_seq).max(0) as f64);
    metrics::gauge!("coalition_webhook_lag_seconds", "partner" => p.clone())
        .set(oldest_waiting.map_or(0.0, |at| (micros() - at).max(0) as f64 / 1e6));
    metrics::gauge!("coalition_webhook_failures", "partner" => p.clone()).set(row.failures as f64);
    metrics::gauge!("coalition_webhook_paused", "partner" => p).set(if row.paused_at.is_some() {
        1.0
    } else {
        0.0
    });
}

/// The feed's last sequence, and up to `limit` events not yet delivered.
async fn waiting(
    shared: &Shared,
    row: &WebhookRow,
    limit: i64,
) -> Result<(i64, Vec<Event>), crate::store::StoreError> {
    if let FeedReply::Page { last, events, .. } = shared
        .store
        .feed(FeedCall::Page {
            partner: row.partner.clone(),
            from: row.delivered_seq + 1,
            types: Vec::new(),
            limit,
        })
        .await?
    {
        return Ok((last, events));
    }
    Ok((0, Vec::new()))
}

/// One partner's deliveries: while this daemon holds the lease, every event after the last
/// delivered, in order; on a failure, the wait of [`backoff`] and the same event again.
async fn deliver(
    shared: Shared,
    client: reqwest::Client,
    partner: String,
    holder: String,
    render: Render,
    mut stop: watch::Receiver<bool>,
) {
    let mut commits = shared.writer.signals().watch_commits();
    let pause_after = shared.config.events.pause_after.as_micros() as i64;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut wait = TICK;
        let row = match shared.store.feed(FeedCall::Webhooks).await {
            Ok(FeedReply::Webhooks(rows)) => rows.into_iter().find(|r| r.partner == partner),
            _ => None,
        };
        let Some(row) = row else {
            return; // removed: the manager starts a task again if it comes back
        };
        let leased = row.paused_at.is_none()
            && matches!(
                shared
                    .store
                    .feed(FeedCall::Lease {
                        partner: partner.clone(),
                        holder: holder.clone(),
                        now: micros(),
                        until: micros() + LEASE.as_micros() as i64,
                    })
                    .await,
                Ok(FeedReply::Done(true))
            );
        if leased {
            match waiting(&shared, &row, PAGE).await {
                Ok((_, events)) => {
                    for event in events {
                        // The lease renewed before each delivery: it outlives the post.
                        let renewed = shared
                            .store
                            .feed(FeedCall::Lease {
                                partner: partner.clone(),
                                holder: holder.clone(),
                                now: micros(),
                                until: micros() + LEASE.as_micros() as i64,
                            })
                            .await;
                        if !matches!(renewed, Ok(FeedReply::Done(true))) {
                            break;
                        }
                        match post(&client, &row, &event, render).await {
                            Ok(()) => {
                                metrics::counter!("coalition_webhook_deliveries_total",
                                    "partner" => partner.clone(), "result" => "delivered")
                                .increment(1);
                                let _ = shared
                                    .store
                                    .feed(FeedCall::Delivered {
                                        partner: partner.clone(),
                                        holder: holder.clone(),
                                        seq: event.seq,
                                    })
                                    .await;
                                wait = Duration::ZERO;
                            }
                            Err(error) => {
                                metrics::counter!("coalition_webhook_deliveries_total",
                                    "partner" => partner.clone(), "result" => "failed")
                                .increment(1);
                                let now = micros();
                                let pause = row
                                    .failing_since
                                    .is_some_and(|since| now - since >= pause_after);
                                if pause {
                                    tracing::error!(partner = %partner, error = %error,
                                        "webhook paused: deliveries have failed too long; resume with `coalitiond ops webhooks resume`");
                                } else if row.failures == 0 {
                                    tracing::warn!(partner = %partner, error = %error, "webhook delivery failed; retrying");
                                }
                                let _ = shared
                                    .store
                                    .feed(FeedCall::Failed {
                                        partner: partner.clone(),
                                        holder: holder.clone(),
                                        now,
                                        error,
                                        pause,
                                    })
                                    .await;
                                if pause {
                                    // Not a tick later: the alert should see what the log says.
                                    metrics::gauge!("coalition_webhook_paused", "partner" => partner.clone())
                                        .set(1.0);
                                }
                                wait = backoff(row.failures + 1, shared.config.events.max_backoff);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(partner = %partner, error = %e, "could not read events to deliver")
                }
            }
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = commits.changed(), if leased && wait == TICK => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification.
        let key = crate::config::webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_wait_doubles_up_to_its_cap_less_some_jitter() {
        let cap = Duration::from_secs(60);
        for n in 1..30 {
            let w = backoff(n, cap);
            let full = Duration::from_secs(1 << (n - 1).min(20)).min(cap);
            assert!(w <= full && w >= full / 2, "{n}: {w:?} of {full:?}");
        }
    }
}

/// A webhook as an operator sees it.
#[derive(Debug, Clone)]
pub struct Status {
    /// Its row.
    pub row: WebhookRow,
    /// The feed's last sequence.
    pub head: i64,
    /// Seconds since the oldest event not yet delivered committed.
    pub lag_seconds: i64,
    /// The secret, when this call made it (shown once).
    pub new_secret: Option<String>,
}

async fn status(shared: &Shared, row: WebhookRow) -> Result<Status, ServiceError> {
    let (head, events) = waiting(shared, &row, 1).await?;
    Ok(Status {
        lag_seconds: events
            .first()
            .map_or(0, |e| ((micros() - e.at) / 1_000_000).max(0)),
        head,
        row,
        new_secret: None,
    })
}

async fn row_of(shared: &Shared, partner: &str) -> Result<Option<WebhookRow>, ServiceError> {
    match shared.store.feed(FeedCall::Webhooks).await? {
        FeedReply::Webhooks(rows) => Ok(rows.into_iter().find(|r| r.partner == partner)),
        _ => Err(ServiceError::mismatched()),
    }
}

/// Every partner's webhook.
pub async fn list(shared: &Shared) -> Result<Vec<Status>, ServiceError> {
    let rows = match shared.store.feed(FeedCall::Webhooks).await? {
        FeedReply::Webhooks(rows) => rows,
        _ => return Err(ServiceError::mismatched()),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(status(shared, row).await?);
    }
    Ok(out)
}

/// Sets `partner`'s webhook (by an operator `by`): the URL checked, the secret checked or — for a
/// webhook that has none yet and was given none — made (and shown once). Effective on every
/// daemon at its next delivery.
pub async fn set(
    shared: &Shared,
    partner: &str,
    url: &str,
    secret: &str,
    by: &str,
) -> Result<Status, ServiceError> {
    if !shared.config.partners.contains_key(partner) {
        return Err(ServiceError::NotFound {
            reason: "UNKNOWN_PARTNER",
            message: format!("{partner:?} is not a configured partner"),
        });
    }
    crate::config::webhook_url(url).map_err(|m| ServiceError::field("url", "MALFORMED_URL", m))?;
    let existing = row_of(shared, partner).await?;
    let (secret, made) = match (secret.is_empty(), &existing) {
        (false, _) => {
            crate::config::webhook_secret(secret)
                .map_err(|m| ServiceError::field("secret", "MALFORMED_SECRET", m))?;
            (secret.to_string(), false)
        }
        (true, Some(row)) => (row.secret.clone(), false),
        (true, None) => (
            new_secret()
                .map_err(|m| ServiceError::Store(crate::store::StoreError::Unavailable(m)))?,
            true,
        ),
    };
    shared
        .store
        .feed(FeedCall::SetWebhook {
            partner: partner.to_string(),
            url: url.to_string(),
            secret: secret.clone(),
            at: micros(),
            by: by.to_string(),
        })
        .await?;
    tracing::warn!(partner, url, by, "webhook set");
    let row = row_of(shared, partner)
        .await?
        .ok_or_else(ServiceError::mismatched)?;
    let mut s = status(shared, row).await?;
    s.new_secret = made.then_some(secret);
    Ok(s)
}

/// Resumes `partner`'s paused webhook.
pub async fn resume(shared: &Shared, partner: &str, by: &str) -> Result<Status, ServiceError> {
    let resumed = shared
        .store
        .feed(FeedCall::ResumeWebhook {
            partner: partner.to_string(),
        })
        .await?;
    if !matches!(resumed, FeedReply::Done(true)) {
        return Err(ServiceError::NotFound {
            reason: "NO_WEBHOOK",
            message: format!("partner {partner:?} has no webhook: set one first"),
        });
    }
    tracing::warn!(partner, by, "webhook resumed");
    let row = row_of(shared, partner)
        .await?
        .ok_or_else(ServiceError::mismatched)?;
    status(shared, row).await
}

/// Brings the webhooks of the config into the database at start: a partner's configured webhook
/// is set (or changed, if the config changed it) unless an operator has set one: the operator's
/// stands, and is changed through the operator API.
pub async fn sync(shared: &Shared) -> Result<(), ServiceError> {
    for p in shared.config.partners.values() {
        if let Some(w) = &p.webhook {
            shared
                .store
                .feed(FeedCall::SetWebhook {
                    partner: p.id.clone(),
                    url: w.url.clone(),
                    secret: w.secret.clone(),
                    at: micros(),
                    by: crate::prices::SET_BY_CONFIG.to_string(),
                })
                .await?;
        }
    }
    Ok(())
}
