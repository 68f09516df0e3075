//! Which requests the server takes up: a request rate limit per source address, a limit on
//! transfers per client address, and repeated requests (a client that sends its RRQ again
//! before the first reply reached it) folded into the transfer already running.
//!
//! All decisions take the caller's clock reading, so they are tested without sleeping.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket per source address: `per_second` requests per second on average, up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second from one address (>= 1).
    pub per_second: u32,
    /// Requests accepted at once from an idle address (>= 1).
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` on average with a burst of twice that (a PXE client fetches a dozen
    /// files in its first second), or `None` when `per_second` is 0.
    pub fn per_second(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second,
            burst: per_second.saturating_mul(2),
        })
    }
}

/// How often a source that keeps hitting a limit is told (ERROR) and logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The source table is pruned of idle entries when it grows past this many.
const PRUNE_AT: usize = 1024;

/// The verdict on one datagram that arrived at a listener.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Take it up; the ticket releases the slot when dropped.
    Admit(Ticket),
    /// The same request from the same TID as a transfer that has not heard from its
    /// client yet: that transfer's own retransmission answers it.
    Duplicate,
    /// Over the source's request rate. `notify` is true for the first refusal of a
    /// [`WARN_EVERY`] period (answer with an ERROR and log); `refused` counts refusals
    /// since the source was last told.
    RateLimited { notify: bool, refused: u64 },
    /// The client address already has its maximum of transfers running.
    ClientBusy { running: usize },
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    last: Instant,
    transfers: usize,
    refused: u64,
    told: Option<Instant>,
}

#[derive(Debug)]
struct Active {
    id: u64,
    request: u64,
    heard: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Table {
    sources: HashMap<IpAddr, Source>,
    active: HashMap<SocketAddr, Active>,
    next_id: u64,
    prune_at: usize,
}

/// The admission state shared by a server's listeners and transfers.
#[derive(Debug)]
pub(crate) struct Admission {
    rate: Option<RateLimit>,
    per_client: Option<usize>,
    table: Arc<Mutex<Table>>,
}

/// A running transfer's place in the table; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Ticket {
    table: Arc<Mutex<Table>>,
    peer: SocketAddr,
    id: u64,
    heard: Arc<AtomicBool>,
    released: AtomicBool,
}

impl Ticket {
    /// Frees the place before the ticket is dropped (a transfer that only dallies no longer
    /// counts against its client). Idempotent.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.active.get(&self.peer).is_some_and(|a| a.id == self.id) {
            t.active.remove(&self.peer);
        }
        if let Some(s) = t.sources.get_mut(&self.peer.ip()) {
            s.transfers = s.transfers.saturating_sub(1);
        }
    }

    /// Marks the client as heard from (it ACKed or sent DATA): a later identical request
    /// from its TID is then a restart, not a duplicate.
    pub fn heard(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

fn fingerprint(request: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    request.hash(&mut h);
    h.finish()
}

impl Admission {
    /// `rate`: per source address; `per_client`: transfers at once per client address.
    pub fn new(rate: Option<RateLimit>, per_client: Option<usize>) -> Self {
        Self {
            rate,
            per_client,
            table: Arc::new(Mutex::new(Table {
                prune_at: PRUNE_AT,
                ..Table::default()
            })),
        }
    }

    /// Counts a datagram from `from` against its address's request rate. Every datagram
    /// that reaches a listener counts, requests or not, so junk cannot be reflected either.
    pub fn check_rate(&self, from: SocketAddr, now: Instant) -> Result<(), Verdict> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.maybe_prune(now, Some(rate));
        let s = t.source(from.ip(), now, Some(rate));
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = now;
        s.tokens = (s.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        s.refused += 1;
        let notify = s
            .told
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        let refused = s.refused;
        if notify {
            s.told = Some(now);
            s.refused = 0;
        }
        Err(Verdict::RateLimited { notify, refused })
    }

    /// Decides on a well-formed request (RRQ or WRQ bytes) from `peer`, after
    /// [`Admission::check_rate`].
    pub fn admit(&self, peer: SocketAddr, request: &[u8], now: Instant) -> Verdict {
        let fp = fingerprint(request);
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = t.active.get(&peer) {
            if a.request == fp && !a.heard.load(Ordering::Relaxed) {
                return Verdict::Duplicate;
            }
        }
        // Without a rate limit the table still counts transfers per client: prune it here.
        t.maybe_prune(now, self.rate);
        let s = t.source(peer.ip(), now, self.rate);
        if let Some(max) = self.per_client {
            if s.transfers >= max {
                return Verdict::ClientBusy {
                    running: s.transfers,
                };
            }
        }
        s.transfers += 1;
        t.next_id += 1;
        let id = t.next_id;
        let heard = Arc::new(AtomicBool::new(false));
        // A different request from the same TID, or a restart after progress, replaces the
        // entry; the older transfer runs on and ends when the client ignores it (ERROR 5).
        t.active.insert(
            peer,
            Active {
                id,
                request: fp,
                heard: heard.clone(),
            },
        );
        Verdict::Admit(Ticket {
            table: self.table.clone(),
            peer,
            id,
            heard,
            released: AtomicBool::new(false),
        })
    }

    #[cfg(test)]
    fn tracked_sources(&self) -> usize {
        self.table.lock().unwrap().sources.len()
    }
}

impl Table {
    /// The entry of `ip`, created with a full bucket.
    fn source(&mut self, ip: IpAddr, now: Instant, rate: Option<RateLimit>) -> &mut Source {
        self.sources.entry(ip).or_insert_with(|| Source {
            tokens: rate.map_or(0.0, |r| f64::from(r.burst)),
            last: now,
            transfers: 0,
            refused: 0,
            told: None,
        })
    }

    /// Forgets sources with nothing running, a full bucket and no recent refusal, once the
    /// table has doubled since the last pruning: memory stays proportional to the sources
    /// active in the last few seconds, even under a flood from forged addresses.
    fn maybe_prune(&mut self, now: Instant, rate: Option<RateLimit>) {
        if self.sources.len() < self.prune_at {
            return;
        }
        let refill = rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(f64::from(r.burst) / f64::from(r.per_second))
        });
        self.sources.retain(|_, s| {
            s.transfers > 0
                || now.saturating_duration_since(s.last) < refill
                || s.told
                    .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        });
        self.prune_at = (self.sources.len() * 2).max(PRUNE_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate_and_tells_once_per_period() {
        let a = Admission::new(RateLimit::per_second(10), None);
        let t0 = Instant::now();
        let p = peer("10.0.0.1:1000");
        for i in 0..20 {
            assert!(a.check_rate(p, t0).is_ok(), "burst request {i}");
        }
        let Err(Verdict::RateLimited { notify, refused }) = a.check_rate(p, t0) else {
            panic!("21st request at once must be refused");
        };
        assert!(notify);
        assert_eq!(refused, 1);
        for _ in 0..5 {
            assert!(matches!(
                a.check_rate(p, t0),
                Err(Verdict::RateLimited { notify: false, .. })
            ));
        }
        // 100 ms later one token (10/s) is back.
        let t1 = t0 + Duration::from_millis(100);
        assert!(a.check_rate(p, t1).is_ok());
        assert!(a.check_rate(p, t1).is_err());
        // Another address is not affected.
        assert!(a.check_rate(peer("10.0.0.2:1000"), t1).is_ok());
        // After the warning period the source is told again, with the count since then.
        let t2 = t0 + WARN_EVERY;
        for _ in 0..20 {
            let _ = a.check_rate(p, t2);
        }
        let Err(Verdict::RateLimited { notify, refused }) = a.check_rate(p, t2) else {
            panic!("over the rate");
        };
        assert!(notify);
        assert_eq!(refused, 7, "5 + 1 refused since it was told, and this one");
    }

    #[test]
    fn no_rate_limit_when_disabled() {
        let a = Admission::new(None, None);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(a.check_rate(peer("10.0.0.1:1"), t0).is_ok());
        }
        assert_eq!(a.tracked_sources(), 0);
    }

    #[test]
    fn per_client_limit_counts_running_transfers() {
        let a = Admission::new(None, Some(2));
        let t0 = Instant::now();
        let Verdict::Admit(one) = a.admit(peer("10.0.0.1:1001"), b"r1", t0) else {
            panic!()
        };
        let two = a.admit(peer("10.0.0.1:1002"), b"r1", t0);
        assert!(matches!(two, Verdict::Admit(_)));
        assert!(matches!(
            a.admit(peer("10.0.0.1:1003"), b"r1", t0),
            Verdict::ClientBusy { running: 2 }
        ));
        assert!(matches!(
            a.admit(peer("10.0.0.2:1003"), b"r1", t0),
            Verdict::Admit(_)
        ));
        one.release();
        drop(one); // releasing twice frees one place only
        let three = a.admit(peer("10.0.0.1:1003"), b"r1", t0);
        assert!(matches!(three, Verdict::Admit(_)));
        assert!(matches!(
            a.admit(peer("10.0.0.1:1004"), b"r1", t0),
            Verdict::ClientBusy { running: 2 }
        ));
    }

    #[test]
    fn repeated_request_is_a_duplicate_until_the_client_is_heard() {
        let a = Admission::new(None, None);
        let t0 = Instant::now();
        let p = peer("10.0.0.1:1001");
        let Verdict::Admit(first) = a.admit(p, b"rrq-a", t0) else {
            panic!()
        };
        assert!(matches!(a.admit(p, b"rrq-a", t0), Verdict::Duplicate));
        // A different request from the same TID is a new transfer.
        let Verdict::Admit(other) = a.admit(p, b"rrq-b", t0) else {
            panic!()
        };
        drop(first); // must not remove the newer entry
        assert!(matches!(a.admit(p, b"rrq-b", t0), Verdict::Duplicate));
        // Once the client answered, the same request again is a restart.
        other.heard();
        assert!(matches!(a.admit(p, b"rrq-b", t0), Verdict::Admit(_)));
    }

    #[test]
    fn forged_source_flood_keeps_the_table_small() {
        let a = Admission::new(RateLimit::per_second(20), None);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            // 20,000 requests per second from a new address each.
            let now = t0 + Duration::from_micros(50 * u64::from(i));
            assert!(a.check_rate(SocketAddr::new(ip.into(), 69), now).is_ok());
        }
        // Sources of the last refill period (2 s x 20,000/s) are kept; the table is pruned
        // when it doubles.
        assert!(
            a.tracked_sources() <= 2 * 40_000 + PRUNE_AT,
            "{}",
            a.tracked_sources()
        );
    }

    #[test]
    fn without_a_rate_limit_finished_clients_are_forgotten() {
        let a = Admission::new(None, Some(2));
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let v = a.admit(SocketAddr::new(ip.into(), 69), b"r", t0);
            assert!(matches!(v, Verdict::Admit(_)));
        }
        assert!(a.tracked_sources() <= PRUNE_AT, "{}", a.tracked_sources());
    }
}
