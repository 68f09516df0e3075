//! Which requests the server takes up: a request rate limit per client, a limit on
//! transfers per client, and repeated requests (a client that sends its RRQ again before the
//! first reply reached it) folded into the transfer already running.
//!
//! A *client* is an address prefix ([`ClientPrefix`]: an IPv4 /32 and an IPv6 /64 by
//! default), so a host with a whole /64 to draw source addresses from is still one client.
//!
//! The first datagram of a forged request cannot be told from a real one; what tells them
//! apart is that a real peer answers from its port (it ACKs our DATA or sends DATA). So:
//! - a request whose peer answers gets back the rate token it cost ([`Ticket::heard`]): a
//!   real client fetching file after file never drains its bucket, while requests nobody
//!   answers (forged ones) do;
//! - a client at its transfer limit that still has transfers whose peer never answered
//!   gets the oldest of those ended to make room ([`Ticket::cancel_token`]): forged requests
//!   from a victim's address cannot hold its transfer slots.
//!
//! All decisions take the caller's clock reading, so they are tested without sleeping.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A token bucket per client (an address prefix, see `ServerBuilder::client_prefix_v6`):
/// `per_second` requests per second on average, up to `burst` at once. A request whose peer
/// answers gets its token back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second from one client (>= 1).
    pub per_second: u32,
    /// Requests accepted at once from an idle client (>= 1).
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

/// How client addresses are grouped for the per-client limits (the rate limit and the
/// transfers per client): addresses that share their first `v4` (IPv4) or `v6` (IPv6) bits
/// are one client. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefix {
    /// IPv4 prefix length in bits, 0..=32 (default 32: each address is a client).
    pub v4: u8,
    /// IPv6 prefix length in bits, 0..=128 (default 64: a /64 is one subnet, which one host
    /// may hold whole and draw source addresses from at will).
    pub v6: u8,
}

impl Default for ClientPrefix {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl ClientPrefix {
    /// The client `ip` belongs to: `ip` with the bits past the prefix cleared (an IPv4-mapped
    /// IPv6 address as IPv4).
    pub fn client_of(&self, ip: IpAddr) -> IpAddr {
        crate::policy::masked(ip, self.v4, self.v6)
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
    /// The client already has its maximum of transfers running, all of them with a peer
    /// that has answered.
    ClientBusy { running: usize },
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    last: Instant,
    transfers: usize,
    refused: u64,
    told: Option<Instant>,
    /// This client's running transfers whose peer has not answered yet, oldest first
    /// (tracked only with a per-client limit; never longer than that limit).
    unproven: VecDeque<Arc<State>>,
}

/// What a ticket shares with the table.
#[derive(Debug)]
struct State {
    id: u64,
    peer: SocketAddr,
    heard: AtomicBool,
    released: AtomicBool,
    evicted: AtomicBool,
    /// Cancelled when the transfer is evicted (or the server stops: a child of its token).
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Active {
    request: u64,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct Table {
    /// Per client (see [`ClientPrefix`]).
    sources: HashMap<IpAddr, Source>,
    /// Per peer TID (address and port).
    active: HashMap<SocketAddr, Active>,
    next_id: u64,
    prune_at: usize,
}

/// The admission state shared by a server's listeners and transfers.
#[derive(Debug)]
pub(crate) struct Admission {
    rate: Option<RateLimit>,
    per_client: Option<usize>,
    prefix: ClientPrefix,
    table: Arc<Mutex<Table>>,
}

/// A running transfer's place in the table; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Ticket {
    proof: Proof,
}

/// What a transfer reports about its peer, and learns about its eviction: a handle to its
/// ticket that can be cloned (into the transfer's summary) and frees nothing when dropped.
#[derive(Clone)]
pub(crate) struct Proof {
    table: Arc<Mutex<Table>>,
    /// The client (prefix) the transfer counts against.
    client: IpAddr,
    /// The request cost a rate token of this limit, refunded when the peer answers.
    refund: Option<RateLimit>,
    state: Arc<State>,
}

impl Ticket {
    /// Frees the place before the ticket is dropped (a transfer that only dallies no longer
    /// counts against its client). Idempotent.
    pub fn release(&self) {
        let p = &self.proof;
        if p.state.released.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut t = p.table.lock().unwrap_or_else(|e| e.into_inner());
        t.forget_active(&p.state);
        if let Some(s) = t.sources.get_mut(&p.client) {
            s.transfers = s.transfers.saturating_sub(1);
            s.unproven.retain(|u| u.id != p.state.id);
        }
    }

    /// See [`Proof::heard`].
    pub fn heard(&self) {
        self.proof.heard();
    }

    /// The transfer's cancellation token: cancelled when the server stops, or when the
    /// transfer is evicted (its peer never answered and its client needed the slot).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.proof.state.cancel
    }

    /// See [`Proof::evicted`].
    #[cfg(test)]
    pub fn evicted(&self) -> bool {
        self.proof.evicted()
    }

    /// A handle for reporting the peer as heard from later (after the ticket is released).
    pub fn proof(&self) -> Proof {
        self.proof.clone()
    }
}

/// The transfer's own facts only (not the whole table).
impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("id", &self.state.id)
            .field("client", &self.client)
            .field("heard", &self.state.heard.load(Ordering::Relaxed))
            .field("evicted", &self.state.evicted.load(Ordering::Relaxed))
            .finish()
    }
}

impl Proof {
    /// Marks the peer as heard from: it ACKed our DATA or sent DATA, from the port the
    /// request came from, so its address is not forged. A later identical request from its
    /// TID is then a restart, not a duplicate; the rate token the request cost goes back to
    /// its client (never past the burst); and the transfer can no longer be evicted.
    /// Idempotent: one refund per request.
    pub fn heard(&self) {
        // Called per block: a plain load once heard (a swap would write the line each time).
        if self.state.heard.load(Ordering::Relaxed)
            || self.state.heard.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = t.sources.get_mut(&self.client) {
            if let Some(rate) = self.refund {
                s.tokens = (s.tokens + 1.0).min(f64::from(rate.burst));
            }
            s.unproven.retain(|u| u.id != self.state.id);
        }
    }

    /// True when the transfer was ended to make room for a newer request of its client.
    pub fn evicted(&self) -> bool {
        self.state.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request's fingerprint, to tell a copy of it from another request.
pub(crate) fn fingerprint(request: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    request.hash(&mut h);
    h.finish()
}

impl Admission {
    /// `rate`: requests per client; `per_client`: transfers at once per client; `prefix`:
    /// which addresses are one client.
    pub fn new(rate: Option<RateLimit>, per_client: Option<usize>, prefix: ClientPrefix) -> Self {
        Self {
            rate,
            per_client,
            prefix,
            table: Arc::new(Mutex::new(Table {
                prune_at: PRUNE_AT,
                ..Table::default()
            })),
        }
    }

    /// Counts a datagram from `from` against its client's request rate. Every datagram
    /// that reaches a listener counts, requests or not, so junk cannot be reflected either;
    /// an admitted request whose peer answers gets its token back ([`Ticket::heard`]).
    pub fn check_rate(&self, from: SocketAddr, now: Instant) -> Result<(), Verdict> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.maybe_prune(now, Some(rate));
        let s = t.source(self.prefix.client_of(from.ip()), now, Some(rate));
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
    /// [`Admission::check_rate`]. `cancel` is the server's token; the ticket's own
    /// ([`Ticket::cancel_token`]) is a child of it.
    ///
    /// A client at its transfer limit gets its oldest transfer whose peer never answered
    /// evicted (cancelled and no longer counted) to make room; only a client whose
    /// transfers all have answering peers is refused ([`Verdict::ClientBusy`]).
    pub fn admit(
        &self,
        peer: SocketAddr,
        request: &[u8],
        now: Instant,
        cancel: &CancellationToken,
    ) -> Verdict {
        let fp = fingerprint(request);
        let client = self.prefix.client_of(peer.ip());
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = t.active.get(&peer) {
            if a.request == fp && !a.state.heard.load(Ordering::Relaxed) {
                return Verdict::Duplicate;
            }
        }
        // Without a rate limit the table still counts transfers per client: prune it here.
        t.maybe_prune(now, self.rate);
        let s = t.source(client, now, self.rate);
        let mut evicted = None;
        if let Some(max) = self.per_client {
            if s.transfers >= max {
                // Entries heard from since they were queued are skipped (heard() removes
                // them under the lock, but sets its flag first).
                while let Some(old) = s.unproven.pop_front() {
                    if !old.heard.load(Ordering::Relaxed) {
                        evicted = Some(old);
                        break;
                    }
                }
                let Some(old) = &evicted else {
                    return Verdict::ClientBusy {
                        running: s.transfers,
                    };
                };
                if !old.released.swap(true, Ordering::Relaxed) {
                    s.transfers = s.transfers.saturating_sub(1);
                }
                old.evicted.store(true, Ordering::Relaxed);
                old.cancel.cancel();
            }
        }
        s.transfers += 1;
        t.next_id += 1;
        let state = Arc::new(State {
            id: t.next_id,
            peer,
            heard: AtomicBool::new(false),
            released: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            cancel: cancel.child_token(),
        });
        if self.per_client.is_some() {
            if let Some(s) = t.sources.get_mut(&client) {
                s.unproven.push_back(state.clone());
            }
        }
        if let Some(old) = evicted {
            t.forget_active(&old);
        }
        // A different request from the same TID, or a restart after progress, replaces the
        // entry; the older transfer runs on and ends when the client ignores it (ERROR 5).
        t.active.insert(
            peer,
            Active {
                request: fp,
                state: state.clone(),
            },
        );
        Verdict::Admit(Ticket {
            proof: Proof {
                table: self.table.clone(),
                client,
                refund: self.rate,
                state,
            },
        })
    }

    #[cfg(test)]
    fn tracked_sources(&self) -> usize {
        self.table.lock().unwrap().sources.len()
    }
}

impl Table {
    /// The entry of `client`, created with a full bucket.
    fn source(&mut self, client: IpAddr, now: Instant, rate: Option<RateLimit>) -> &mut Source {
        self.sources.entry(client).or_insert_with(|| Source {
            tokens: rate.map_or(0.0, |r| f64::from(r.burst)),
            last: now,
            transfers: 0,
            refused: 0,
            told: None,
            unproven: VecDeque::new(),
        })
    }

    /// Removes the TID entry of the transfer `state`, if it is still that transfer's.
    fn forget_active(&mut self, state: &State) {
        if self
            .active
            .get(&state.peer)
            .is_some_and(|a| a.state.id == state.id)
        {
            self.active.remove(&state.peer);
        }
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

    fn new(rate: Option<RateLimit>, per_client: Option<usize>) -> Admission {
        Admission::new(rate, per_client, ClientPrefix::default())
    }

    /// Admits with a fresh server token.
    fn admit(a: &Admission, p: &str, request: &[u8], now: Instant) -> Verdict {
        a.admit(peer(p), request, now, &CancellationToken::new())
    }

    impl Admission {
        /// (transfers counted, unproven queued) for the client of `p`.
        fn counts(&self, p: &str) -> (usize, usize) {
            let t = self.table.lock().unwrap();
            t.sources
                .get(&self.prefix.client_of(peer(p).ip()))
                .map_or((0, 0), |s| (s.transfers, s.unproven.len()))
        }
    }

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate_and_tells_once_per_period() {
        let a = new(RateLimit::per_second(10), None);
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
        let a = new(None, None);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(a.check_rate(peer("10.0.0.1:1"), t0).is_ok());
        }
        assert_eq!(a.tracked_sources(), 0);
    }

    #[test]
    fn client_prefixes_group_addresses() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let d = ClientPrefix::default();
        assert_eq!(d.client_of(ip("192.0.2.77")), ip("192.0.2.77"));
        assert_eq!(
            d.client_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        // IPv4-mapped IPv6 is IPv4, with the IPv4 prefix.
        assert_eq!(d.client_of(ip("::ffff:192.0.2.77")), ip("192.0.2.77"));
        let p = ClientPrefix { v4: 24, v6: 48 };
        assert_eq!(p.client_of(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(p.client_of(ip("2001:db8:1:2::5")), ip("2001:db8:1::"));
        let exact = ClientPrefix { v4: 32, v6: 128 };
        assert_eq!(exact.client_of(ip("2001:db8::5")), ip("2001:db8::5"));
        let all = ClientPrefix { v4: 0, v6: 0 };
        assert_eq!(all.client_of(ip("198.51.100.1")), ip("0.0.0.0"));
        assert_eq!(all.client_of(ip("2001:db8::5")), ip("::"));
        // Out-of-range lengths are the whole address.
        let big = ClientPrefix { v4: 99, v6: 200 };
        assert_eq!(big.client_of(ip("2001:db8::5")), ip("2001:db8::5"));
    }

    #[test]
    fn one_ipv6_64_shares_one_rate_limit_and_one_transfer_limit() {
        let a = new(RateLimit::per_second(20), Some(32));
        let t0 = Instant::now();
        let from = |i: u32| format!("[2001:db8:1::{:x}:{:x}]:{}", i, i * 3, 1000 + i);
        for i in 0..40 {
            assert!(a.check_rate(peer(&from(i)), t0).is_ok(), "burst {i}");
        }
        assert!(a.check_rate(peer(&from(40)), t0).is_err(), "one bucket");
        assert!(a.check_rate(peer("[2001:db8:2::1]:1000"), t0).is_ok());
        // Transfers: 32 for the whole /64 (heard from, so none is evicted).
        let mut tickets = Vec::new();
        for i in 0..32 {
            let Verdict::Admit(t) = admit(&a, &from(i), b"r", t0) else {
                panic!("transfer {i}")
            };
            t.heard();
            tickets.push(t);
        }
        assert!(matches!(
            admit(&a, &from(99), b"r", t0),
            Verdict::ClientBusy { running: 32 }
        ));
        assert!(matches!(
            admit(&a, "[2001:db8:2::1]:1000", b"r", t0),
            Verdict::Admit(_)
        ));
    }

    #[test]
    fn per_client_limit_counts_running_transfers() {
        // Transfers whose peers answered: the limit refuses. (Unanswered ones are evicted
        // instead, see below.)
        let a = new(None, Some(2));
        let t0 = Instant::now();
        let Verdict::Admit(one) = admit(&a, "10.0.0.1:1001", b"r1", t0) else {
            panic!()
        };
        one.heard();
        let Verdict::Admit(two) = admit(&a, "10.0.0.1:1002", b"r1", t0) else {
            panic!()
        };
        two.heard();
        assert!(matches!(
            admit(&a, "10.0.0.1:1003", b"r1", t0),
            Verdict::ClientBusy { running: 2 }
        ));
        assert!(matches!(
            admit(&a, "10.0.0.2:1003", b"r1", t0),
            Verdict::Admit(_)
        ));
        one.release();
        drop(one); // releasing twice frees one place only
        let Verdict::Admit(three) = admit(&a, "10.0.0.1:1003", b"r1", t0) else {
            panic!()
        };
        three.heard();
        assert!(matches!(
            admit(&a, "10.0.0.1:1004", b"r1", t0),
            Verdict::ClientBusy { running: 2 }
        ));
    }

    #[test]
    fn at_the_limit_the_oldest_unanswered_transfer_is_evicted() {
        let a = new(None, Some(2));
        let t0 = Instant::now();
        let server = CancellationToken::new();
        let adm = |p: &str, r: &[u8]| match a.admit(peer(p), r, t0, &server) {
            Verdict::Admit(t) => t,
            v => panic!("{v:?}"),
        };
        let old = adm("10.0.0.1:1001", b"forged-1");
        let newer = adm("10.0.0.1:1002", b"forged-2");
        let real = adm("10.0.0.1:1003", b"real");
        assert!(old.evicted() && old.cancel_token().is_cancelled());
        assert!(!newer.evicted() && !newer.cancel_token().is_cancelled());
        assert_eq!(a.counts("10.0.0.1:1"), (2, 2));
        // The evicted transfer's ticket frees nothing more when it ends.
        drop(old);
        assert_eq!(a.counts("10.0.0.1:1"), (2, 2));
        // Its TID may ask again: not a duplicate of the evicted transfer.
        real.heard();
        let again = adm("10.0.0.1:1001", b"forged-1");
        assert!(newer.evicted());
        // Now one answered transfer and one unanswered: the unanswered one goes first.
        let fourth = adm("10.0.0.1:1004", b"x");
        assert!(again.evicted() && !real.evicted());
        fourth.heard();
        assert!(matches!(
            a.admit(peer("10.0.0.1:1005"), b"y", t0, &server),
            Verdict::ClientBusy { running: 2 }
        ));
        // The server's token still reaches every transfer.
        server.cancel();
        assert!(real.cancel_token().is_cancelled() && !real.evicted());
    }

    #[test]
    fn a_flood_from_one_client_keeps_its_tables_at_the_limit() {
        let a = new(None, Some(32));
        let t0 = Instant::now();
        let mut tickets = Vec::new();
        for i in 0..10_000u32 {
            let p = format!("10.0.0.1:{}", 1 + i % 60_000);
            let Verdict::Admit(t) = admit(&a, &p, &i.to_be_bytes(), t0) else {
                panic!()
            };
            tickets.push(t);
        }
        assert_eq!(a.counts("10.0.0.1:1"), (32, 32));
        assert_eq!(tickets.iter().filter(|t| !t.evicted()).count(), 32);
        drop(tickets);
        assert_eq!(a.counts("10.0.0.1:1"), (0, 0));
        assert!(a.table.lock().unwrap().active.is_empty());
    }

    #[test]
    fn an_answered_request_gets_its_rate_token_back() {
        let a = new(RateLimit::per_second(20), Some(32));
        let t0 = Instant::now();
        let p = "10.0.0.1:1000";
        // 1,000 requests at the same instant, each answered by its peer: never refused.
        for i in 0..1000u32 {
            assert!(a.check_rate(peer(p), t0).is_ok(), "request {i}");
            let Verdict::Admit(t) = admit(&a, p, &i.to_be_bytes(), t0) else {
                panic!()
            };
            t.heard();
            t.heard(); // once only
        }
        // Unanswered requests drain the bucket as before: 40, then refused.
        let mut held = Vec::new();
        for i in 0..40u32 {
            assert!(a.check_rate(peer(p), t0).is_ok(), "unanswered {i}");
            held.push(admit(&a, p, &(5000 + i).to_be_bytes(), t0));
        }
        assert!(a.check_rate(peer(p), t0).is_err());
        // An answer refunds one token, never more than the burst.
        let Verdict::Admit(last) = held.pop().unwrap() else {
            panic!()
        };
        last.heard();
        assert!(a.check_rate(peer(p), t0).is_ok());
        assert!(a.check_rate(peer(p), t0).is_err());
        let t1 = t0 + Duration::from_secs(60);
        let Verdict::Admit(t) = admit(&a, p, b"late", t1) else {
            panic!()
        };
        assert!(a.check_rate(peer(p), t1).is_ok()); // refilled: 39 left
        t.heard();
        for i in 0..40 {
            assert!(a.check_rate(peer(p), t1).is_ok(), "{i}");
        }
        assert!(
            a.check_rate(peer(p), t1).is_err(),
            "the burst caps the refund"
        );
    }

    #[test]
    fn repeated_request_is_a_duplicate_until_the_client_is_heard() {
        let a = new(None, None);
        let t0 = Instant::now();
        let p = "10.0.0.1:1001";
        let Verdict::Admit(first) = admit(&a, p, b"rrq-a", t0) else {
            panic!()
        };
        assert!(matches!(admit(&a, p, b"rrq-a", t0), Verdict::Duplicate));
        // A different request from the same TID is a new transfer.
        let Verdict::Admit(other) = admit(&a, p, b"rrq-b", t0) else {
            panic!()
        };
        drop(first); // must not remove the newer entry
        assert!(matches!(admit(&a, p, b"rrq-b", t0), Verdict::Duplicate));
        // Once the client answered, the same request again is a restart.
        other.heard();
        assert!(matches!(admit(&a, p, b"rrq-b", t0), Verdict::Admit(_)));
    }

    #[test]
    fn a_proof_debugs_as_its_own_facts_not_the_table() {
        let a = new(RateLimit::per_second(20), Some(2));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let _ = a.check_rate(peer(&format!("10.0.{}.{}:69", i / 256, i % 256)), t0);
        }
        let Verdict::Admit(t) = admit(&a, "10.0.0.1:1000", b"r", t0) else {
            panic!()
        };
        let d = format!("{:?}", t.proof());
        assert!(d.len() < 100, "{d}");
        assert!(
            d.contains("client: 10.0.0.1") && d.contains("heard: false"),
            "{d}"
        );
    }

    #[test]
    fn forged_source_flood_keeps_the_table_small() {
        let a = new(RateLimit::per_second(20), None);
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
        let a = new(None, Some(2));
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let v = a.admit(
                SocketAddr::new(ip.into(), 69),
                b"r",
                t0,
                &CancellationToken::new(),
            );
            assert!(matches!(v, Verdict::Admit(_)));
        }
        assert!(a.tracked_sources() <= PRUNE_AT, "{}", a.tracked_sources());
    }
}
