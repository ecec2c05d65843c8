//! Admission of connections: bounds on what a peer without a certificate can hold, so that a flood
//! of silent connections cannot exhaust the daemon's file descriptors and lock partners out.
//!
//! A connection that has not finished its TLS handshake is *pending*: pending connections are
//! bounded per source address and in total, and a connection over either bound is closed at once,
//! before it costs a handshake. Connections that finished the handshake (their certificate was
//! verified) are counted apart against their own bound, so an unauthenticated flood never takes
//! their room. Refusals, handshake failures and timeouts are counted in metrics and logged as one
//! summary line per period with the busiest sources, never one line per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// File descriptors kept out of the connection bounds: database pool, WAL, logs, metrics.
pub const RESERVED_FDS: u64 = 128;
/// How often the flood summary is logged (when there is something to say).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Most sources one summary names.
const SUMMARY_SOURCES: usize = 5;
/// Most sources tallied between two summaries (the rest are counted as "others").
const TALLY_SOURCES: usize = 10_000;

/// Raises the soft limit on open files to the hard limit and logs both. Returns the soft limit in
/// force afterwards.
pub fn raise_nofile_limit() -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            tracing::info!(
                soft_before = before.0,
                soft,
                hard = before.1,
                "open file limit raised to the hard limit"
            );
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, soft = before.0, hard = before.1, "cannot raise the open file limit");
            before.0
        }
    }
}

/// The soft limit on open files now.
pub fn nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// The bounds in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Pending (handshaking) connections from one source address.
    pub pending_per_address: usize,
    /// Pending connections in total.
    pub pending_total: usize,
    /// Connections past the handshake.
    pub authenticated: usize,
}

impl Bounds {
    /// Defaults from the open file limit: of what is left after [`RESERVED_FDS`], a quarter for
    /// pending connections and the rest for authenticated ones. Configured values win.
    pub fn from_limit(
        nofile: u64,
        per_address: Option<usize>,
        pending_total: Option<usize>,
        authenticated: Option<usize>,
    ) -> Bounds {
        let room = nofile.saturating_sub(RESERVED_FDS).max(64) as usize;
        let pending = pending_total.unwrap_or((room / 4).max(16));
        Bounds {
            pending_per_address: per_address.unwrap_or(64),
            pending_total: pending,
            authenticated: authenticated.unwrap_or(room.saturating_sub(pending).max(16)),
        }
    }
}

/// Why a connection was closed without a handshake, or what became of its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Over the per-address bound of pending connections.
    RefusedPerAddress,
    /// Over the total bound of pending connections.
    RefusedTotal,
    /// Over the bound of authenticated connections.
    RefusedAuthenticated,
    /// The handshake failed (no or a bad certificate, not TLS…).
    HandshakeFailed,
    /// The handshake did not finish in time.
    HandshakeTimedOut,
}

impl Event {
    fn index(self) -> usize {
        self as usize
    }

    fn metric(self) {
        let (name, label) = match self {
            Event::RefusedPerAddress => ("coalition_connections_refused_total", "per_address"),
            Event::RefusedTotal => ("coalition_connections_refused_total", "pending_total"),
            Event::RefusedAuthenticated => ("coalition_connections_refused_total", "authenticated"),
            Event::HandshakeFailed => ("coalition_tls_handshakes_total", "failed"),
            Event::HandshakeTimedOut => ("coalition_tls_handshakes_total", "timed_out"),
        };
        let key = if name == "coalition_tls_handshakes_total" {
            "outcome"
        } else {
            "reason"
        };
        metrics::counter!(name, key => label).increment(1);
    }
}

const KINDS: usize = 5;

#[derive(Default)]
struct Tally {
    by_source: HashMap<IpAddr, [u64; KINDS]>,
    others: [u64; KINDS],
    accept_errors: u64,
    last_accept_error: String,
}

/// The admission state of one listener.
pub struct Admission {
    bounds: Bounds,
    pending: Mutex<HashMap<IpAddr, usize>>,
    pending_total: AtomicUsize,
    authenticated: AtomicUsize,
    tally: Mutex<Tally>,
}

impl Admission {
    /// Admission under `bounds`.
    pub fn new(bounds: Bounds) -> Arc<Admission> {
        tracing::info!(
            pending_per_address = bounds.pending_per_address,
            pending_total = bounds.pending_total,
            authenticated = bounds.authenticated,
            "connection bounds"
        );
        Arc::new(Admission {
            bounds,
            pending: Mutex::new(HashMap::new()),
            pending_total: AtomicUsize::new(0),
            authenticated: AtomicUsize::new(0),
            tally: Mutex::new(Tally::default()),
        })
    }

    /// The bounds in force.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Admits a new connection from `ip` to its handshake, or says why not (close it at once).
    pub fn try_pending(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, Event> {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mine = map.get(&ip).copied().unwrap_or(0);
        if mine >= self.bounds.pending_per_address {
            return Err(Event::RefusedPerAddress);
        }
        if self.pending_total.load(Ordering::Relaxed) >= self.bounds.pending_total {
            return Err(Event::RefusedTotal);
        }
        map.insert(ip, mine + 1);
        let n = self.pending_total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("coalition_connections_pending").set(n as f64);
        Ok(Pending {
            admission: self.clone(),
            ip,
        })
    }

    fn release_pending(&self, ip: IpAddr) {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
        let n = self.pending_total.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("coalition_connections_pending").set(n as f64);
    }

    /// Counts a connection past its handshake, or refuses it over the bound.
    pub fn try_authenticated(self: &Arc<Self>) -> Result<Authenticated, Event> {
        let n = self.authenticated.fetch_add(1, Ordering::Relaxed);
        if n >= self.bounds.authenticated {
            self.authenticated.fetch_sub(1, Ordering::Relaxed);
            return Err(Event::RefusedAuthenticated);
        }
        metrics::gauge!("coalition_connections_authenticated").set((n + 1) as f64);
        Ok(Authenticated {
            admission: self.clone(),
        })
    }

    /// Records what happened to a connection from `ip` (metrics now, the log in the next summary).
    pub fn note(&self, ip: IpAddr, event: Event) {
        event.metric();
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if t.by_source.len() < TALLY_SOURCES || t.by_source.contains_key(&ip) {
            t.by_source.entry(ip).or_default()[event.index()] += 1;
        } else {
            t.others[event.index()] += 1;
        }
    }

    /// Records a failed `accept` (out of file descriptors, say).
    pub fn note_accept_error(&self, e: &std::io::Error) {
        metrics::counter!("coalition_accept_errors_total").increment(1);
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        t.accept_errors += 1;
        t.last_accept_error = e.to_string();
    }

    /// One summary of what happened since the last one, or `None` if nothing did.
    pub fn take_summary(&self) -> Option<String> {
        let t = std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()));
        if t.by_source.is_empty() && t.accept_errors == 0 && t.others.iter().all(|&n| n == 0) {
            return None;
        }
        let mut totals = t.others;
        for counts in t.by_source.values() {
            for (k, n) in counts.iter().enumerate() {
                totals[k] += n;
            }
        }
        let mut sources: Vec<(IpAddr, [u64; KINDS])> = t.by_source.into_iter().collect();
        sources.sort_by_key(|(ip, c)| (std::cmp::Reverse(c.iter().sum::<u64>()), *ip));
        let describe = |c: &[u64; KINDS]| {
            format!(
                "{} refused (per address {}, total {}, authenticated {}), {} handshakes failed, {} timed out",
                c[0] + c[1] + c[2],
                c[0],
                c[1],
                c[2],
                c[3],
                c[4]
            )
        };
        let top: Vec<String> = sources
            .iter()
            .take(SUMMARY_SOURCES)
            .map(|(ip, c)| format!("{ip}: {}", describe(c)))
            .collect();
        let mut line = format!(
            "{}; {} source(s){}",
            describe(&totals),
            sources.len(),
            if top.is_empty() {
                String::new()
            } else {
                format!(", busiest: {}", top.join("; "))
            }
        );
        if t.accept_errors > 0 {
            line.push_str(&format!(
                "; {} accept errors (last: {})",
                t.accept_errors, t.last_accept_error
            ));
        }
        Some(line)
    }

    /// Logs a summary every [`SUMMARY_EVERY`] while there is something to say, until `stop`.
    pub async fn log_summaries(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SUMMARY_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Some(line) = self.take_summary() {
                tracing::warn!(summary = %line, "connections in the last 10 s");
            }
        }
    }
}

/// A connection in its handshake; dropping it frees its place.
pub struct Pending {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.release_pending(self.ip);
    }
}

/// An authenticated connection's place; dropping it (the connection closed) frees it.
pub struct Authenticated {
    admission: Arc<Admission>,
}

impl Drop for Authenticated {
    fn drop(&mut self) {
        let n = self.admission.authenticated.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("coalition_connections_authenticated").set(n as f64);
    }
}

/// A stream that holds its connection's place for as long as it lives.
pub struct Admitted<S> {
    inner: S,
    _place: Authenticated,
}

impl<S> Admitted<S> {
    /// `inner`, holding `place`.
    pub fn new(inner: S, place: Authenticated) -> Admitted<S> {
        Admitted {
            inner,
            _place: place,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_file_limit() {
        let b = Bounds::from_limit(1024, None, None, None);
        assert_eq!(b.pending_per_address, 64);
        assert_eq!(b.pending_total, 224);
        assert_eq!(b.authenticated, 672);
        assert!(b.pending_total + b.authenticated + RESERVED_FDS as usize <= 1024);
    }

    #[tokio::test]
    async fn places_are_bounded_and_freed() {
        let a = Admission::new(Bounds {
            pending_per_address: 2,
            pending_total: 3,
            authenticated: 1,
        });
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let p1 = a.try_pending(x).unwrap();
        let _p2 = a.try_pending(x).unwrap();
        assert_eq!(a.try_pending(x).err(), Some(Event::RefusedPerAddress));
        let _p3 = a.try_pending(y).unwrap();
        assert_eq!(a.try_pending(y).err(), Some(Event::RefusedTotal));
        drop(p1);
        let _p4 = a.try_pending(y).unwrap();
        let auth = a.try_authenticated().unwrap();
        assert_eq!(
            a.try_authenticated().err(),
            Some(Event::RefusedAuthenticated)
        );
        drop(auth);
        assert!(a.try_authenticated().is_ok());
        a.note(x, Event::HandshakeTimedOut);
        a.note(x, Event::RefusedPerAddress);
        let s = a.take_summary().unwrap();
        assert!(s.contains("127.0.0.2: 1 refused"), "{s}");
        assert!(a.take_summary().is_none());
    }
}
