//! Per-partner rate limits (governor) and suspension, checked before any database work.
//!
//! A governor keyed limiter has one quota for every key, so each partner has a direct limiter of its
//! own, in a map. Changing a partner's quota swaps its limiter: the new bucket starts full, so a
//! partner may burst up to its new burst right after a change (documented in README).
//! Allowed and throttled calls are counted per second over the last hour, for 1 min / 5 min / 1 h
//! windows.
//!
//! A partner's limit is the coalition's, not one daemon's: with N live daemons on one database
//! (`ops::instances_loop`) each enforces 1/N of the rate and of the burst (rounded up), and the
//! shares are re-balanced when a daemon joins or leaves.

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Why a call was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The partner is suspended by the operators.
    Suspended,
    /// Over quota; retry after this long.
    Throttled(Duration),
    /// Not a partner of this coalition.
    Unknown,
}

/// Seconds of history kept.
const HISTORY_SECS: u64 = 3600;

#[derive(Default)]
struct Windows {
    /// (second since start, allowed, throttled), oldest first.
    seconds: VecDeque<(u64, u64, u64)>,
}

impl Windows {
    fn add(&mut self, now: u64, allowed: bool) {
        match self.seconds.back_mut() {
            Some((s, a, t)) if *s == now => {
                if allowed {
                    *a += 1
                } else {
                    *t += 1
                }
            }
            _ => self
                .seconds
                .push_back((now, allowed as u64, (!allowed) as u64)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _, _)| now.saturating_sub(*s) >= HISTORY_SECS)
        {
            self.seconds.pop_front();
        }
    }

    fn sum(&self, now: u64, secs: u64) -> (u64, u64) {
        self.seconds
            .iter()
            .rev()
            .take_while(|(s, _, _)| now.saturating_sub(*s) < secs)
            .fold((0, 0), |(a, t), (_, x, y)| (a + x, t + y))
    }
}

struct PartnerLimit {
    per_second: u32,
    burst: u32,
    limiter: DefaultDirectRateLimiter,
    suspended: AtomicBool,
    windows: Mutex<Windows>,
}

/// One daemon's share of a coalition-wide rate or burst `x` among `daemons`: rounded up, so
/// that the daemons together allow at least `x` and less than `x + daemons`.
pub fn share(x: u32, daemons: u32) -> NonZeroU32 {
    NonZeroU32::new(x.div_ceil(daemons.max(1)).max(1)).unwrap_or(NonZeroU32::MIN)
}

/// This daemon's limiter for a coalition-wide `per_second` and `burst` shared by `daemons`.
fn limiter(per_second: u32, burst: u32, daemons: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(
        Quota::per_second(share(per_second, daemons)).allow_burst(share(burst, daemons)),
    )
}

/// The live limit state of one partner.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitState {
    /// Partner id.
    pub partner: String,
    /// Quota: requests per second.
    pub per_second: u32,
    /// Quota: burst.
    pub burst: u32,
    /// Suspended by the operators.
    pub suspended: bool,
    /// Allowed calls in the last 1 min, 5 min, 1 h.
    pub allowed: [u64; 3],
    /// Throttled calls in the last 1 min, 5 min, 1 h.
    pub throttled: [u64; 3],
    /// Live daemons sharing the limit (this one included).
    pub daemons: u32,
}

/// Every partner's limiter and switches.
pub struct Limits {
    started: Instant,
    partners: RwLock<HashMap<String, Arc<PartnerLimit>>>,
    daemons: AtomicU32,
    /// The other live daemons' traffic per partner: allowed, then throttled, in 1 min, 5 min, 1 h.
    others: Mutex<HashMap<String, [u64; 6]>>,
}

impl Limits {
    /// Limits for `(partner, per_second, burst, suspended)`.
    pub fn new(partners: impl IntoIterator<Item = (String, u32, u32, bool)>) -> Limits {
        let map = partners
            .into_iter()
            .map(|(p, r, b, s)| {
                let l = PartnerLimit {
                    per_second: r,
                    burst: b,
                    limiter: limiter(r, b, 1),
                    suspended: AtomicBool::new(s),
                    windows: Mutex::default(),
                };
                (p, Arc::new(l))
            })
            .collect();
        Limits {
            started: Instant::now(),
            partners: RwLock::new(map),
            daemons: AtomicU32::new(1),
            others: Mutex::default(),
        }
    }

    /// Shares every partner's limit among `daemons` live daemons; `true` if that changed (the
    /// limiters are then rebuilt with their share, buckets full).
    pub fn set_daemons(&self, daemons: u32) -> bool {
        let daemons = daemons.max(1);
        let mut map = self.partners.write().expect("limits lock");
        if self.daemons.swap(daemons, Ordering::Relaxed) == daemons {
            return false;
        }
        for l in map.values_mut() {
            let windows = std::mem::take(&mut *l.windows.lock().expect("windows lock"));
            *l = Arc::new(PartnerLimit {
                per_second: l.per_second,
                burst: l.burst,
                limiter: limiter(l.per_second, l.burst, daemons),
                suspended: AtomicBool::new(l.suspended.load(Ordering::Relaxed)),
                windows: Mutex::new(windows),
            });
        }
        true
    }

    /// The other live daemons' traffic, per partner (summed into [`Limits::snapshot`]).
    pub fn set_others(&self, others: HashMap<String, [u64; 6]>) {
        *self.others.lock().expect("others lock") = others;
    }

    /// This daemon's own traffic per partner (allowed, then throttled, in 1 min, 5 min, 1 h).
    pub fn own_traffic(&self) -> HashMap<String, [u64; 6]> {
        let now = self.second();
        let map = self.partners.read().expect("limits lock");
        map.iter()
            .map(|(p, l)| {
                let w = l.windows.lock().expect("windows lock");
                let (a1, t1) = w.sum(now, 60);
                let (a5, t5) = w.sum(now, 300);
                let (ah, th) = w.sum(now, HISTORY_SECS);
                (p.clone(), [a1, a5, ah, t1, t5, th])
            })
            .collect()
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn get(&self, partner: &str) -> Option<Arc<PartnerLimit>> {
        self.partners
            .read()
            .expect("limits lock")
            .get(partner)
            .cloned()
    }

    /// Lets a call of `partner` through, or says why not. Counts it either way.
    pub fn check(&self, partner: &str) -> Result<(), Denied> {
        let l = self.get(partner).ok_or(Denied::Unknown)?;
        if l.suspended.load(Ordering::Relaxed) {
            return Err(Denied::Suspended);
        }
        let result = l.limiter.check().map_err(|not_until| {
            Denied::Throttled(not_until.wait_time_from(DefaultClock::default().now()))
        });
        l.windows
            .lock()
            .expect("windows lock")
            .add(self.second(), result.is_ok());
        if result.is_err() {
            metrics::counter!("coalition_throttled_calls_total", "partner" => partner.to_string())
                .increment(1);
        }
        result
    }

    /// Sets a partner's quota (its bucket starts full again). `false` if the partner is unknown.
    pub fn set_quota(&self, partner: &str, per_second: u32, burst: u32) -> bool {
        let mut map = self.partners.write().expect("limits lock");
        let Some(old) = map.get(partner).cloned() else {
            return false;
        };
        let windows = std::mem::take(&mut *old.windows.lock().expect("windows lock"));
        map.insert(
            partner.to_string(),
            Arc::new(PartnerLimit {
                per_second,
                burst,
                limiter: limiter(per_second, burst, self.daemons.load(Ordering::Relaxed)),
                suspended: AtomicBool::new(old.suspended.load(Ordering::Relaxed)),
                windows: Mutex::new(windows),
            }),
        );
        true
    }

    /// Suspends or resumes a partner. `false` if the partner is unknown.
    pub fn set_suspended(&self, partner: &str, suspended: bool) -> bool {
        match self.get(partner) {
            Some(l) => {
                l.suspended.store(suspended, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The live state of every partner, sorted by id: its traffic summed over the live daemons.
    pub fn snapshot(&self) -> Vec<LimitState> {
        let now = self.second();
        let others = self.others.lock().expect("others lock").clone();
        let daemons = self.daemons.load(Ordering::Relaxed);
        let map = self.partners.read().expect("limits lock");
        let mut out: Vec<LimitState> = map
            .iter()
            .map(|(p, l)| {
                let w = l.windows.lock().expect("windows lock");
                let (a1, t1) = w.sum(now, 60);
                let (a5, t5) = w.sum(now, 300);
                let (ah, th) = w.sum(now, HISTORY_SECS);
                let o = others.get(p).copied().unwrap_or_default();
                LimitState {
                    partner: p.clone(),
                    per_second: l.per_second,
                    burst: l.burst,
                    suspended: l.suspended.load(Ordering::Relaxed),
                    allowed: [a1 + o[0], a5 + o[1], ah + o[2]],
                    throttled: [t1 + o[3], t5 + o[4], th + o[5]],
                    daemons,
                }
            })
            .collect();
        out.sort_by(|a, b| a.partner.cmp(&b.partner));
        out
    }

    /// One partner's state.
    pub fn state(&self, partner: &str) -> Option<LimitState> {
        self.snapshot().into_iter().find(|s| s.partner == partner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_throttle_with_a_hint_and_counts() {
        let l = Limits::new([
            ("a".to_string(), 10, 3, false),
            ("b".to_string(), 10, 3, false),
        ]);
        for _ in 0..3 {
            assert_eq!(l.check("a"), Ok(()));
        }
        match l.check("a") {
            Err(Denied::Throttled(d)) => assert!(
                d > Duration::ZERO && d <= Duration::from_millis(100),
                "{d:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.check("b"), Ok(()), "another partner's bucket is its own");
        let s = l.state("a").unwrap();
        assert_eq!((s.allowed[0], s.throttled[0]), (3, 1));
        assert!(l.set_suspended("b", true));
        assert_eq!(l.check("b"), Err(Denied::Suspended));
        assert!(l.set_quota("a", 100, 50));
        assert_eq!(
            l.check("a"),
            Ok(()),
            "a new quota starts with a full bucket"
        );
        assert_eq!(l.check("nobody"), Err(Denied::Unknown));
    }

    proptest::proptest! {
        #[test]
        fn shares_add_up_to_the_limit_and_less_than_one_more_per_daemon(
            x in 1u32..2_000_000, n in 1u32..64,
        ) {
            let total = u64::from(share(x, n).get()) * u64::from(n);
            proptest::prop_assert!(total >= u64::from(x));
            proptest::prop_assert!(total < u64::from(x) + u64::from(n));
        }
    }

    #[test]
    fn a_limit_is_shared_among_the_live_daemons() {
        let l = Limits::new([("a".to_string(), 20, 20, false)]);
        assert!(l.set_daemons(3));
        assert!(!l.set_daemons(3), "unchanged");
        let through = (0..100).filter(|_| l.check("a").is_ok()).count();
        assert_eq!(through, 7, "a third of the burst of 20, rounded up");
        let s = l.state("a").unwrap();
        assert_eq!((s.per_second, s.burst, s.daemons), (20, 20, 3));
        let mut others = HashMap::new();
        others.insert("a".to_string(), [10, 10, 10, 5, 5, 5]);
        l.set_others(others);
        let s = l.state("a").unwrap();
        assert_eq!(
            (s.allowed[0], s.throttled[0]),
            (17, 98),
            "summed over the daemons"
        );
        assert!(l.set_daemons(0), "never fewer than one");
        assert_eq!(l.state("a").unwrap().daemons, 1);
    }
}
