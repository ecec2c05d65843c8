//! One running daemon: storage opened, writer started, server listening. `coalitiond serve`, the
//! demo and the tests all start it the same way.

use crate::clock::Clock;
use crate::config::Config;
use crate::services::shared::Shared;
use crate::store::writer::{Writer, WriterConfig};
use crate::store::{self, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// How long a shutdown waits for the background loops to finish what they are doing.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A running daemon.
pub struct Daemon {
    /// Where it listens (the real port when the config asked for port 0).
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Reads and audits over the same database.
    pub store: Arc<dyn Store>,
    /// The daemon's clock (tests move it).
    pub clock: Clock,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    writer: tokio::task::JoinHandle<Result<(), store::StoreError>>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    /// The background loops (overrides, announcements, webhooks, holds, retention, TLS reload):
    /// each ends at the shutdown signal, after the database work it is doing — the
    /// announcements' loop removes this daemon's row then, so that its peers stop sharing a
    /// partner's limit with it the moment it stops, not when its heartbeat ages out.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Opens storage, starts the writer and the server.
    pub async fn start(config: Config, clock: Clock) -> anyhow::Result<Daemon> {
        let config = Arc::new(config);
        let tls = Arc::new(crate::server::tls::TlsState::load(
            crate::server::tls::TlsFiles {
                ca: config.ca_cert.clone(),
                cert: config.server_cert.clone(),
                key: config.server_key.clone(),
                crl: config.crl.clone(),
            },
        )?);
        let (store, backend) = store::open(&config.database_url, config.writer_lanes).await?;
        let limits = Arc::new(crate::ops::limits::Limits::new(
            config
                .partners
                .values()
                .map(|p| (p.id.clone(), p.rate_per_second, p.burst, false)),
        ));
        crate::ops::apply_overrides(&*store, &limits).await?;
        // Before the writer starts: the registry, price versions and their backfill follow the
        // config, so the first batch is priced.
        let prices =
            Arc::new(crate::services::registry::sync(&*store, &config, clock.now()).await?);
        let (writer, writer_task) = Writer::spawn(
            backend,
            WriterConfig {
                prices: prices.clone(),
                retired: Arc::new(crate::services::registry::retirements(&config)?),
                taken_over: Arc::new(crate::services::registry::takeovers(&config)?),
                max_batch: config.max_batch,
                queue_depth: config.queue_depth,
                expire_after: config.points_expire_after_days.map(|d| d * 86_400_000_000),
                pause_before_commit: config.pause_before_commit,
                panic_on_member: config.panic_on_member,
                cycles: config.cycles(),
                ladder: config.ladder.clone().map(Arc::new),
                partner_kinds: Arc::new(config.partner_kinds()),
                stamp_rules: Arc::new(config.stamp_rules()),
                member_key: config.member_key.clone(),
                chain: !config.bench_unchained,
            },
            clock.clone(),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (config key `listen`): {e}",
                    config.listen
                )
            })?;
        let addr = crate::server::local_addr(&listener);
        let writer_signals = writer.signals();
        let shared = Shared {
            config: config.clone(),
            store: store.clone(),
            writer,
            clock: clock.clone(),
            limits,
            prices,
            health: writer_signals,
        };
        let (shutdown, rx) = watch::channel(false);
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                // A look at the metrics first gives back the holds that ran out, so the
                // expired-holds counter agrees with the balances from the instant of expiry.
                let due = shared.clone();
                let before = move || {
                    let shared = due.clone();
                    async move {
                        if let Err(e) = crate::services::holds::release_due(&shared).await {
                            tracing::warn!(error = %e, "could not give back holds that ran out");
                        }
                    }
                };
                Some(crate::metrics::serve(addr, before, rx.clone()).await?)
            }
            None => None,
        };
        let mut background = Vec::new();
        background.push(tokio::spawn(crate::ops::refresh_loop(
            shared.store.clone(),
            shared.limits.clone(),
            shared.prices.clone(),
            rx.clone(),
        )));
        // Know the other daemons of the database before serving: limits are shared from the
        // first call on.
        let shared_database = !config.database_url.starts_with("sqlite:");
        let instance = crate::ops::join(&*shared.store, &shared.limits, shared_database).await;
        background.push(tokio::spawn(crate::ops::instances_loop(
            shared.store.clone(),
            shared.limits.clone(),
            instance.clone(),
            rx.clone(),
        )));
        // Partners' webhooks: the config's brought in, then delivered (one daemon per partner
        // at a time), events rendered in the API's JSON.
        crate::services::webhooks::sync(&shared)
            .await
            .map_err(|e| anyhow::anyhow!("webhooks of the config: {e}"))?;
        background.push(tokio::spawn(crate::services::webhooks::run(
            shared.clone(),
            instance,
            crate::api::events::json,
            rx.clone(),
        )));
        if !config.holds_round_off {
            background.push(tokio::spawn(holds_loop(shared.clone(), rx.clone())));
        }
        background.push(tokio::spawn(retention_loop(shared.clone(), rx.clone())));
        background.push(tokio::spawn(reload_on_sighup(tls.clone(), rx.clone())));
        let scheduler = config
            .clearing
            .scheduler
            .then(|| tokio::spawn(crate::scheduler::run(shared.clone(), rx.clone())));
        let server = tokio::spawn(crate::server::serve(listener, tls, shared, rx));
        tracing::info!(%addr, database = %redact(&config.database_url), "coalitiond listening");
        Ok(Daemon {
            addr,
            metrics_addr,
            store,
            clock,
            shutdown,
            server,
            writer: writer_task,
            scheduler,
            background,
        })
    }

    /// Stops accepting, lets calls in flight finish and commit, then returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        if let Some(s) = self.scheduler {
            s.await?;
        }
        // Before the writer: the loops hold writer handles, and their last database work
        // (this daemon's announcement removed) is done before `shutdown` returns. Bounded: a
        // loop in the middle of a long run (retention's scan of a large ledger) is cut off after
        // `BACKGROUND_GRACE`, its transaction rolled back, and runs again after the restart.
        let aborts: Vec<_> = self.background.iter().map(|t| t.abort_handle()).collect();
        let all = futures::future::join_all(self.background);
        match tokio::time::timeout(BACKGROUND_GRACE, all).await {
            Ok(done) => {
                for r in done {
                    r?;
                }
            }
            Err(_) => {
                tracing::warn!(
                    grace_seconds = BACKGROUND_GRACE.as_secs(),
                    "a background task was still running at shutdown; it was stopped and will run again after the restart"
                );
                for a in aborts {
                    a.abort();
                }
            }
        }
        let served = self.server.await?;
        // The server dropped the last writer handles: the writer drains its queue and ends.
        self.writer.await??;
        served
    }

    /// Runs until SIGTERM or Ctrl-C (then drains and stops), or until the server or the ledger
    /// writer fails: a daemon that cannot write stops loudly rather than answer every write
    /// `UNAVAILABLE` while looking healthy.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down: draining calls in flight");
                self.shutdown().await
            }
            r = &mut self.server => r?,
            w = &mut self.writer => {
                let _ = self.shutdown.send(true);
                match w? {
                    Ok(()) => anyhow::bail!("the ledger writer stopped unexpectedly"),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Replaces the ids of members past the retention period by pseudonyms, every
/// `privacy.retention_check_seconds`.
async fn retention_loop(shared: Shared, mut stop: watch::Receiver<bool>) {
    // First run one period after start, not at start: it scans the transactions, and a restart
    // (or several daemons starting together) should not pay for that.
    let period = shared.config.retention_check;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = shared.clock.now();
        let cutoff = now - i64::from(shared.config.retention_days) * 86_400_000_000;
        match shared.store.pseudonymize_inactive(cutoff, now).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("coalition_members_pseudonymized_total").increment(n as u64);
                tracing::info!(members = n, "members past retention pseudonymized");
            }
            Err(e) => tracing::warn!(error = %e, "retention run failed; will retry"),
        }
        let cutoff = now - i64::from(shared.config.access_log_days) * 86_400_000_000;
        match shared.store.prune_access_log(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "access log entries past their period removed"),
            Err(e) => tracing::warn!(error = %e, "access log prune failed; will retry"),
        }
        let cutoff = now - i64::from(shared.config.events_retention_days) * 86_400_000_000;
        match shared
            .store
            .feed(crate::store::feed::FeedCall::Prune { before: cutoff })
            .await
        {
            Ok(crate::store::feed::FeedReply::Pruned(n)) if n > 0 => {
                tracing::info!(events = n, "partners' events past their retention removed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "event prune failed; will retry"),
        }
    }
}

/// Gives back each hold at its expiry (with its `hold.expired` event and the metric), whether or
/// not its member comes back: sleeps until the soonest expiry, looking again at least every
/// [`crate::services::holds::LOOK_EVERY`].
async fn holds_loop(shared: Shared, mut stop: watch::Receiver<bool>) {
    use crate::services::holds;
    loop {
        let pause = match holds::release_due(&shared).await {
            Ok(soonest) => holds::until(soonest, shared.clock.now()),
            Err(e) => {
                tracing::warn!(error = %e, "could not give back holds that ran out; will retry");
                holds::LOOK_EVERY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reloads the TLS configuration (certificate, CA, CRL) on every SIGHUP.
async fn reload_on_sighup(tls: Arc<crate::server::tls::TlsState>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(e) = tls.reload() {
                        tracing::error!(error = %e, "TLS reload failed; the previous configuration stays in force");
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tls, stop.wait_for(|s| *s).await);
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
