//! Who may talk to the server: address rules (`--allow`, `--deny`, `--allow-write-from`) and
//! the transfer port range (`--port-range`).
//!
//! Parsed with std's [`IpAddr`] and prefix arithmetic, no extra crate. IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`, what a dual-stack socket sees of an IPv4 client) are
//! matched as the IPv4 address they carry, and a rule written as `::ffff:a.b.c.d/N`
//! (N >= 96) is an IPv4 rule.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An address block: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`; a
/// bare address is a /32 or a /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

/// `ip` (as IPv4 when it is an IPv4-mapped IPv6 address) with the bits past its prefix
/// cleared: `v4_bits` of an IPv4 address (at most 32), `v6_bits` of an IPv6 one (at most
/// 128). The block an address belongs to, for ACL rules and for per-client limits.
pub(crate) fn masked(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(v4_bits.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let bits = u32::from(v6_bits.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl Cidr {
    /// The block of `prefix` leading bits of `addr` (0..=32 for IPv4, 0..=128 for IPv6;
    /// `None` beyond). Host bits past the prefix are cleared; an IPv4-mapped IPv6 block of
    /// at least 96 bits becomes the IPv4 block it covers.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (addr, prefix) = match addr {
            IpAddr::V4(_) if prefix > 32 => return None,
            IpAddr::V6(_) if prefix > 128 => return None,
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Some(Self {
            addr: masked(addr, prefix, prefix),
            prefix,
        })
    }

    /// The first address of the block.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in the block (an IPv4-mapped IPv6 `ip` as IPv4; IPv4 blocks never
    /// hold native IPv6 addresses, nor the reverse).
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Masking keeps the family: an address of the other family never equals the block.
        masked(ip, self.prefix, self.prefix) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `ADDR/BITS` or a bare `ADDR` (IPv4 dotted quad or IPv6 text form; no
    /// brackets, no zone). Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    ///
    /// # Errors
    /// [`CidrError`] when the address does not parse or the prefix is not a number within
    /// 0..=32 (IPv4) or 0..=128 (IPv6).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_owned(),
            reason,
        };
        let t = s.trim();
        let (a, p) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| err("not an IPv4 or IPv6 address (try 10.0.0.0/8 or 2001:db8::/32)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| err("prefix length too large"))?,
            Some(_) => return Err(err("the prefix length after '/' is not a number")),
        };
        if prefix > max {
            return Err(err(if max == 32 {
                "an IPv4 prefix length is 0..=32"
            } else {
                "an IPv6 prefix length is 0..=128"
            }));
        }
        Cidr::new(addr, prefix).ok_or_else(|| err("prefix length out of range"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What an [`Acl`] rule does with the addresses it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve them (`--allow`).
    Allow,
    /// Drop their datagrams without an answer (`--deny`).
    Deny,
}

/// Address rules: the first rule whose block holds the client's address decides; an
/// address no rule matches is allowed (so an empty list allows everyone, and a list ending
/// in `--deny 0.0.0.0/0 --deny ::/0` allows only what came before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<(Action, Cidr)>,
}

impl Acl {
    /// An empty list: everyone allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule after the others (it decides only for addresses none of them matches).
    #[must_use]
    pub fn rule(mut self, action: Action, cidr: Cidr) -> Self {
        self.rules.push((action, cidr));
        self
    }

    /// Adds an [`Action::Allow`] rule after the others.
    #[must_use]
    pub fn allow(self, cidr: Cidr) -> Self {
        self.rule(Action::Allow, cidr)
    }

    /// Adds an [`Action::Deny`] rule after the others.
    #[must_use]
    pub fn deny(self, cidr: Cidr) -> Self {
        self.rule(Action::Deny, cidr)
    }

    /// The rules in order.
    pub fn rules(&self) -> &[(Action, Cidr)] {
        &self.rules
    }

    /// True when no rule is set (everyone allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `ip` may be served: the action of the first rule that matches it, allowed when
    /// none does. An IPv4-mapped IPv6 `ip` is matched as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.rules
            .iter()
            .find(|(_, c)| c.contains(ip))
            .is_none_or(|(a, _)| *a == Action::Allow)
    }
}

/// Counters of the requests the address rules turned away, shared with a running server
/// (see [`Server::policy_stats`](crate::Server::policy_stats)); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PolicyStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    denied: AtomicU64,
    write_refused: AtomicU64,
}

impl PolicyStats {
    /// Datagrams dropped without an answer because their source is denied by
    /// [`ServerBuilder::acl`](crate::ServerBuilder::acl).
    pub fn denied(&self) -> u64 {
        self.inner.denied.load(Ordering::Relaxed)
    }

    /// WRQs refused (ERROR 2) because their source is not in
    /// [`ServerBuilder::allow_write_from`](crate::ServerBuilder::allow_write_from).
    pub fn write_refused(&self) -> u64 {
        self.inner.write_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn count_denied(&self) {
        self.inner.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_write_refused(&self) {
        self.inner.write_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// How often one source prefix is logged for the same refusal.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);
/// Past this many tracked sources the table is pruned of idle ones; if still full, all
/// new sources share one entry (so a flood from many addresses logs once per 10 s too).
const MAX_SOURCES: usize = 4096;

/// Counts occurrences of a condition so it is logged once per period with a count.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// Counts one occurrence; `Some(n)` when it is time to log, with `n` occurrences since
    /// the last time (this one included).
    pub(crate) fn hit(&mut self, now: Instant, every: Duration) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }

    /// True when nothing was counted for `every` (the entry can be forgotten).
    fn idle(&self, now: Instant, every: Duration) -> bool {
        self.last
            .is_none_or(|l| now.saturating_duration_since(l) >= every)
    }
}

/// Rate-limited logging of refusals: one line per source prefix per [`LOG_EVERY`], with
/// the count since the last one.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    table: Mutex<LogTable>,
}

#[derive(Debug, Default)]
struct LogTable {
    sources: HashMap<(u8, IpAddr), Throttle>,
    /// When the table was last pruned: at most once per second, so a flood from many
    /// sources costs one scan per second, not one per datagram.
    pruned: Option<Instant>,
}

impl RefusalLog {
    /// Counts one refusal of kind `kind` from `client` (a client prefix); `Some(n)` when it
    /// should be logged now, `n` refusals since the last line (this one included).
    pub(crate) fn hit(&self, kind: u8, client: IpAddr, now: Instant) -> Option<u64> {
        let mut guard = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let LogTable { sources: t, pruned } = &mut *guard;
        if t.len() >= MAX_SOURCES
            && !t.contains_key(&(kind, client))
            && pruned.is_none_or(|p| now.saturating_duration_since(p) >= Duration::from_secs(1))
        {
            *pruned = Some(now);
            t.retain(|_, th| !th.idle(now, LOG_EVERY));
        }
        let key = if t.len() >= MAX_SOURCES && !t.contains_key(&(kind, client)) {
            (kind, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        } else {
            (kind, client)
        };
        t.entry(key).or_default().hit(now, LOG_EVERY)
    }
}

/// A range of UDP ports for transfer sockets (`--port-range LOW:HIGH`), both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    low: u16,
    high: u16,
}

/// A port range that is not valid; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port range {input:?}: {reason}")]
pub struct PortRangeError {
    input: String,
    reason: &'static str,
}

impl PortRange {
    /// Ports `low..=high`; `None` unless 1 <= low <= high (high is at most 65535 by type).
    pub fn new(low: u16, high: u16) -> Option<Self> {
        (low >= 1 && low <= high).then_some(Self { low, high })
    }

    /// The ports, both ends included.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.low..=self.high
    }

    /// How many ports the range holds (1..=65535).
    pub fn len(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th port counted from `start` (an offset into the range), wrapping around.
    pub(crate) fn nth_from(&self, start: u32, i: u32) -> u16 {
        let off = (start % self.len() + i % self.len()) % self.len();
        // off < len <= 65535 - low + 1, so low + off <= 65535.
        self.low + off as u16
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// Parses `LOW:HIGH` (tftpd-hpa's `--port-range` syntax; `LOW-HIGH` too).
    ///
    /// # Errors
    /// [`PortRangeError`] unless both are numbers with 1 <= LOW <= HIGH <= 65535.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PortRangeError {
            input: s.to_owned(),
            reason,
        };
        let (l, h) = s
            .trim()
            .split_once([':', '-'])
            .ok_or_else(|| err("expected LOW:HIGH, e.g. 50000:50099"))?;
        let num = |v: &str| -> Result<u32, PortRangeError> {
            if v.is_empty() || v.len() > 6 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("LOW and HIGH must be port numbers"));
            }
            v.parse()
                .map_err(|_| err("LOW and HIGH must be port numbers"))
        };
        let (low, high) = (num(l.trim())?, num(h.trim())?);
        if high > 65535 {
            return Err(err("HIGH must be at most 65535"));
        }
        if low < 1 {
            return Err(err("LOW must be at least 1"));
        }
        if low > high {
            return Err(err("LOW must not exceed HIGH"));
        }
        Ok(Self {
            low: low as u16,
            high: high as u16,
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.low, self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = cidr("10.1.2.3/8");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped matches IPv4 rules"
        );
        assert!(!c.contains(ip("::a09:909")), "IPv4-compatible is IPv6");
        let host = cidr("192.0.2.7");
        assert_eq!((host.addr(), host.prefix()), (ip("192.0.2.7"), 32));
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert_eq!(cidr("2001:db8::1").prefix(), 128);
        let all4 = cidr("0.0.0.0/0");
        assert!(all4.contains(ip("255.255.255.255")) && !all4.contains(ip("::1")));
        let all6 = cidr("::/0");
        assert!(all6.contains(ip("::1")) && !all6.contains(ip("127.0.0.1")));
        assert!(!all6.contains(ip("::ffff:127.0.0.1")), "mapped is IPv4");
        let mapped = cidr("::ffff:192.0.2.0/120");
        assert_eq!(mapped.to_string(), "192.0.2.0/24");
        assert!(mapped.contains(ip("192.0.2.200")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "[::1]",
            "host",
            "10.0.0.0/ 8",
            "::/1000",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("0..=32"));
    }

    #[test]
    fn first_match_wins_default_allow() {
        let acl = Acl::new()
            .allow(cidr("10.0.0.5"))
            .deny(cidr("10.0.0.0/8"))
            .deny(cidr("::/0"));
        assert!(acl.allows(ip("10.0.0.5")));
        assert!(!acl.allows(ip("10.0.0.6")));
        assert!(!acl.allows(ip("::ffff:10.0.0.6")));
        assert!(acl.allows(ip("::ffff:10.0.0.5")));
        assert!(acl.allows(ip("192.0.2.1")), "no rule matches: allowed");
        assert!(!acl.allows(ip("2001:db8::1")));
        // Order matters: the same rules reversed deny 10.0.0.5 too.
        let rev = Acl::new().deny(cidr("10.0.0.0/8")).allow(cidr("10.0.0.5"));
        assert!(!rev.allows(ip("10.0.0.5")));
        assert!(Acl::new().allows(ip("::1")));
        assert_eq!(acl.rules().len(), 3);
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "50000:50009".parse().unwrap();
        assert_eq!((r.ports(), r.len()), (50000..=50009, 10));
        assert_eq!(r.nth_from(7, 0), 50007);
        assert_eq!(r.nth_from(7, 3), 50000);
        assert_eq!(r.nth_from(u32::MAX, 1), 50006);
        let all: PortRange = "1-65535".parse().unwrap();
        assert_eq!(all.len(), 65535);
        assert_eq!(all.nth_from(65534, 0), 65535);
        assert_eq!(all.nth_from(65534, 1), 1);
        assert_eq!("69:69".parse::<PortRange>().unwrap().len(), 1);
        for (bad, why) in [
            ("0:10", "at least 1"),
            ("10:9", "not exceed"),
            ("1:65536", "at most 65535"),
            ("100", "LOW:HIGH"),
            ("a:b", "port numbers"),
            (":5", "port numbers"),
        ] {
            let e = bad.parse::<PortRange>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(PortRange::new(0, 1), None);
        assert_eq!(PortRange::new(5, 4), None);
    }

    #[test]
    fn throttle_reports_once_per_period_with_a_count() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert_eq!(t.hit(t0, every), Some(1));
        for i in 1..50 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i * 100), every), None);
        }
        assert_eq!(t.hit(t0 + every, every), Some(50));
        assert_eq!(t.hit(t0 + every, every), None);
    }

    #[test]
    fn refusal_log_is_once_per_prefix_per_period() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!(log.hit(0, a, t0), Some(1));
        assert_eq!(log.hit(0, a, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.hit(0, a, t0 + Duration::from_secs(2)), None);
        assert_eq!(log.hit(1, a, t0), Some(1), "another kind is logged apart");
        assert_eq!(log.hit(0, ip("192.0.2.2"), t0), Some(1));
        assert_eq!(log.hit(0, a, t0 + LOG_EVERY), Some(3));
        assert_eq!(log.hit(0, a, t0 + LOG_EVERY), None);
        // A flood from many sources stays bounded.
        for i in 0..(MAX_SOURCES as u32 * 2) {
            let _ = log.hit(2, IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert!(log.table.lock().unwrap().sources.len() <= MAX_SOURCES + 1);
    }
}
