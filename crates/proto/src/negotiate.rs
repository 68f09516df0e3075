//! Option negotiation (RFC 2347), pure functions.
//!
//! Options understood: `blksize` (RFC 2348), `timeout` and `tsize` (RFC 2349), `windowsize`
//! (RFC 7440) and tftp-hpa's `utimeout` (microseconds). Names are case-insensitive, unknown
//! options are ignored, the first of duplicated options wins, and a value that does not parse
//! or lies outside its RFC range makes the server leave that option out of its OACK (the
//! transfer then uses the default).

use std::time::Duration;

use crate::wire::{ErrorCode, OptionList, OptionsBuf, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};

/// Which request is being negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// RRQ: the server sends the file.
    Read,
    /// WRQ: the client sends the file.
    Write,
}

/// The values a transfer runs with once negotiation is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size in bytes, 8..=65464 (512 when not negotiated).
    pub blksize: u16,
    /// Blocks sent per ACK, 1..=65535 (1 when not negotiated).
    pub windowsize: u16,
    /// The retransmission timeout the peers agreed on, if any (1..=255 s, or 1 ms..=255 s
    /// via `utimeout`).
    pub timeout: Option<Duration>,
    /// Transfer size in bytes, when known (`tsize`).
    pub tsize: Option<u64>,
}

impl Negotiated {
    /// Bytes of payload in one window: blksize x windowsize (what a sender buffers and a
    /// socket must hold).
    pub fn window_bytes(&self) -> usize {
        usize::from(self.blksize) * usize::from(self.windowsize.max(1))
    }
}

impl Default for Negotiated {
    fn default() -> Self {
        Self {
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            timeout: None,
            tsize: None,
        }
    }
}

/// What a server allows clients to negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest blksize granted, in bytes (8..=65464); larger requests are answered with this.
    pub max_blksize: u16,
    /// Largest windowsize granted, in blocks (1..=65535); larger requests get this.
    pub max_windowsize: u16,
    /// Largest upload accepted, in bytes: a WRQ whose `tsize` is larger is refused with
    /// ERROR 3. `None`: no limit.
    pub max_upload_size: Option<u64>,
    /// Longest `timeout` (or `utimeout`) granted (RFC 2349 allows 1..=255 s). A request
    /// asking for more has the option left out of the OACK: the transfer then runs on the
    /// server's own timeout. Default 30 s. A long timeout lets a request hold a transfer (and
    /// its slot) for minutes.
    pub max_timeout: Duration,
    /// Options ignored in requests, as if the client had not sent them, so they never appear
    /// in an OACK (`--refuse`: the classic workaround for boot ROMs that mishandle one).
    /// Default: none.
    pub refused: RefusedOptions,
}

/// A set of the options a server understands ([`ServerLimits::refused`]): `blksize`
/// (RFC 2348), `tsize`, `timeout` (RFC 2349), `windowsize` (RFC 7440) and `utimeout`
/// (tftp-hpa). A bit set without dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RefusedOptions(u8);

impl RefusedOptions {
    /// No option refused.
    pub const NONE: Self = Self(0);
    /// `blksize` (RFC 2348).
    pub const BLKSIZE: Self = Self(1);
    /// `tsize` (RFC 2349).
    pub const TSIZE: Self = Self(1 << 1);
    /// `timeout` (RFC 2349).
    pub const TIMEOUT: Self = Self(1 << 2);
    /// `windowsize` (RFC 7440).
    pub const WINDOWSIZE: Self = Self(1 << 3);
    /// `utimeout` (tftp-hpa: a timeout in microseconds).
    pub const UTIMEOUT: Self = Self(1 << 4);
    /// Every option, with its lower-case name, in this order.
    pub const ALL: [(&'static str, Self); 5] = [
        ("blksize", Self::BLKSIZE),
        ("tsize", Self::TSIZE),
        ("timeout", Self::TIMEOUT),
        ("windowsize", Self::WINDOWSIZE),
        ("utimeout", Self::UTIMEOUT),
    ];

    /// The option named `name` (case-insensitive, e.g. `BlkSize`); `None` for a name not
    /// in [`RefusedOptions::ALL`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, o)| o)
    }

    /// The set holding the options in the low five bits of `bits` (others ignored).
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & 0x1f)
    }

    /// The set as bits (see the constants).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every option of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no option is refused.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self` with the options of `other` added.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Adds the options of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// True when the option called `name` (case-insensitive) is in the set; false for
    /// names the set cannot hold.
    pub fn refuses(self, name: &str) -> bool {
        Self::from_name(name).is_some_and(|o| self.contains(o))
    }

    /// The lower-case names of the options in the set, in [`RefusedOptions::ALL`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(move |&(_, o)| self.contains(o))
            .map(|(n, _)| n)
    }
}

impl std::ops::BitOr for RefusedOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_upload_size: None,
            max_timeout: Duration::from_secs(30),
            refused: RefusedOptions::NONE,
        }
    }
}

/// The outcome of a server's negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNegotiation {
    /// The values the transfer will use.
    pub negotiated: Negotiated,
    /// The OACK's options: empty when no option was accepted (then no OACK is sent and the
    /// transfer starts as plain RFC 1350).
    pub oack: OptionsBuf,
}

/// Why negotiation failed. Each variant knows the TFTP error code it is reported with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// A WRQ announced more bytes (`tsize`) than the server accepts.
    #[error("upload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced size in bytes.
        size: u64,
        /// The server's limit in bytes.
        limit: u64,
    },
    /// An OACK named an option the client did not ask for.
    #[error("server acknowledged option {0:?} that was not requested")]
    Unrequested(String),
    /// An OACK carried a value the client cannot accept.
    #[error("server answered {name}={value}, which is not acceptable")]
    BadValue {
        /// Option name.
        name: String,
        /// The value the server sent.
        value: String,
    },
}

impl NegotiateError {
    /// The TFTP error code this failure is reported with: 3 for [`NegotiateError::TooLarge`],
    /// 8 otherwise (RFC 2347).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::DiskFull,
            _ => ErrorCode::OptionNegotiation,
        }
    }
}

fn parse_num(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Negotiates a request's options on the server side (RFC 2347 §3).
///
/// `file_size` is the size in bytes of the file an RRQ reads (as it goes on the wire, i.e.
/// after netascii translation), reported in the OACK when the client asks for `tsize`;
/// `None` leaves `tsize` out. Options in [`ServerLimits::refused`] are ignored as if not
/// sent: they are left out of the OACK and take their defaults (a refused `tsize` in a WRQ
/// is not checked against [`ServerLimits::max_upload_size`] here; the receiver still is).
///
/// # Errors
/// [`NegotiateError::TooLarge`] (ERROR 3) when a WRQ's `tsize` exceeds
/// [`ServerLimits::max_upload_size`].
pub fn negotiate_server(
    direction: Direction,
    options: OptionList<'_>,
    limits: &ServerLimits,
    file_size: Option<u64>,
) -> Result<ServerNegotiation, NegotiateError> {
    let mut n = Negotiated::default();
    let mut oack = OptionsBuf::new();
    let mut push = |name: &str, value: String| {
        // Names and numbers never contain NUL.
        let _ = oack.push(name, &value);
    };
    let get = |name: &str| {
        if limits.refused.refuses(name) {
            None
        } else {
            options.get(name)
        }
    };
    if let Some(v) = get("blksize").and_then(parse_num) {
        if v >= u64::from(MIN_BLKSIZE) {
            let granted = v.min(u64::from(
                limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE),
            ));
            n.blksize = granted as u16;
            push("blksize", granted.to_string());
        }
    }
    if let Some(v) = get("windowsize").and_then(parse_num) {
        if v >= 1 {
            let granted = v.min(u64::from(limits.max_windowsize.max(1)));
            n.windowsize = granted as u16;
            push("windowsize", granted.to_string());
        }
    }
    let utimeout = get("utimeout")
        .and_then(parse_num)
        .filter(|v| (1_000..=255_000_000).contains(v))
        .filter(|&v| Duration::from_micros(v) <= limits.max_timeout);
    let timeout = get("timeout")
        .and_then(parse_num)
        .filter(|v| (1..=255).contains(v))
        .filter(|&v| Duration::from_secs(v) <= limits.max_timeout);
    if let Some(t) = timeout {
        n.timeout = Some(Duration::from_secs(t));
        push("timeout", t.to_string());
    }
    if let Some(u) = utimeout {
        n.timeout = Some(Duration::from_micros(u));
        push("utimeout", u.to_string());
    }
    if let Some(v) = get("tsize").and_then(parse_num) {
        match direction {
            Direction::Read => {
                if let Some(size) = file_size {
                    n.tsize = Some(size);
                    push("tsize", size.to_string());
                }
            }
            Direction::Write => {
                if let Some(limit) = limits.max_upload_size {
                    if v > limit {
                        return Err(NegotiateError::TooLarge { size: v, limit });
                    }
                }
                n.tsize = Some(v);
                push("tsize", v.to_string());
            }
        }
    }
    Ok(ServerNegotiation {
        negotiated: n,
        oack,
    })
}

/// The options a client asks for. `None` leaves an option out of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientOptions {
    /// Requested block size in bytes, 8..=65464.
    pub blksize: Option<u16>,
    /// Requested window size in blocks, 1..=65535.
    pub windowsize: Option<u16>,
    /// Requested timeout in whole seconds, 1..=255.
    pub timeout: Option<u8>,
    /// `tsize`: 0 in an RRQ (asks the server for the size), the file size in a WRQ.
    pub tsize: Option<u64>,
}

impl ClientOptions {
    /// The request's option list.
    pub fn to_options(&self) -> OptionsBuf {
        let mut o = OptionsBuf::new();
        // Names and numbers never contain NUL.
        if let Some(b) = self.blksize {
            let _ = o.push("blksize", &b.to_string());
        }
        if let Some(w) = self.windowsize {
            let _ = o.push("windowsize", &w.to_string());
        }
        if let Some(t) = self.timeout {
            let _ = o.push("timeout", &t.to_string());
        }
        if let Some(t) = self.tsize {
            let _ = o.push("tsize", &t.to_string());
        }
        o
    }

    /// True when the request carries no option (so no OACK can come back).
    pub fn is_empty(&self) -> bool {
        self.blksize.is_none()
            && self.windowsize.is_none()
            && self.timeout.is_none()
            && self.tsize.is_none()
    }

    /// Checks a server's OACK against what was asked (RFC 2347 §3): every option must have
    /// been requested, `blksize` and `windowsize` may be smaller but not larger, `timeout` must
    /// be the requested value. Options the server left out take their defaults.
    ///
    /// # Errors
    /// [`NegotiateError::Unrequested`] or [`NegotiateError::BadValue`]; the client answers
    /// either with ERROR 8.
    pub fn accept_oack(&self, oack: OptionList<'_>) -> Result<Negotiated, NegotiateError> {
        let mut n = Negotiated::default();
        for (name, value) in oack.iter() {
            let lname = String::from_utf8_lossy(name).to_ascii_lowercase();
            let bad = || NegotiateError::BadValue {
                name: lname.clone(),
                value: String::from_utf8_lossy(value).into_owned(),
            };
            let num = parse_num(value);
            match lname.as_str() {
                "blksize" => {
                    let asked = self
                        .blksize
                        .ok_or_else(|| NegotiateError::Unrequested(lname.clone()))?;
                    let v = num
                        .filter(|v| (u64::from(MIN_BLKSIZE)..=u64::from(asked)).contains(v))
                        .ok_or_else(bad)?;
                    n.blksize = v as u16;
                }
                "windowsize" => {
                    let asked = self
                        .windowsize
                        .ok_or_else(|| NegotiateError::Unrequested(lname.clone()))?;
                    let v = num
                        .filter(|v| (1..=u64::from(asked)).contains(v))
                        .ok_or_else(bad)?;
                    n.windowsize = v as u16;
                }
                "timeout" => {
                    let asked = self
                        .timeout
                        .ok_or_else(|| NegotiateError::Unrequested(lname.clone()))?;
                    let v = num.filter(|&v| v == u64::from(asked)).ok_or_else(bad)?;
                    n.timeout = Some(Duration::from_secs(v));
                }
                "tsize" => {
                    if self.tsize.is_none() {
                        return Err(NegotiateError::Unrequested(lname));
                    }
                    n.tsize = Some(num.ok_or_else(bad)?);
                }
                _ => return Err(NegotiateError::Unrequested(lname)),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(raw: &[u8]) -> OptionList<'_> {
        OptionList::new(raw).unwrap()
    }

    #[test]
    fn server_accepts_clamps_and_ignores() {
        let limits = ServerLimits {
            max_blksize: 1468,
            max_windowsize: 16,
            ..ServerLimits::default()
        };
        let o = opts(
            b"BLKSIZE\x0065464\x00WindowSize\x0064\x00tsize\x000\x00foo\x00bar\x00timeout\x003\x00",
        );
        let r = negotiate_server(Direction::Read, o, &limits, Some(1234)).unwrap();
        assert_eq!(
            r.negotiated,
            Negotiated {
                blksize: 1468,
                windowsize: 16,
                timeout: Some(Duration::from_secs(3)),
                tsize: Some(1234)
            }
        );
        assert_eq!(
            r.oack.as_list().as_bytes(),
            b"blksize\x001468\x00windowsize\x0016\x00timeout\x003\x00tsize\x001234\x00"
        );
    }

    #[test]
    fn server_leaves_out_invalid_values() {
        let o = opts(
            b"blksize\x007\x00timeout\x000\x00windowsize\x000\x00tsize\x00x\x00timeout\x00999\x00",
        );
        let r = negotiate_server(Direction::Read, o, &ServerLimits::default(), Some(5)).unwrap();
        assert!(r.oack.is_empty());
        assert_eq!(r.negotiated, Negotiated::default());
    }

    #[test]
    fn timeouts_above_the_cap_are_left_out() {
        let o = opts(b"timeout\x00255\x00blksize\x001024\x00");
        let r = negotiate_server(Direction::Read, o, &ServerLimits::default(), None).unwrap();
        assert_eq!(r.negotiated.timeout, None);
        assert_eq!(r.oack.as_list().as_bytes(), b"blksize\x001024\x00");
        let o = opts(b"utimeout\x0031000000\x00");
        let r = negotiate_server(Direction::Read, o, &ServerLimits::default(), None).unwrap();
        assert!(r.oack.is_empty());
        let o = opts(b"timeout\x0030\x00");
        let r = negotiate_server(Direction::Read, o, &ServerLimits::default(), None).unwrap();
        assert_eq!(r.negotiated.timeout, Some(Duration::from_secs(30)));
        let limits = ServerLimits {
            max_timeout: Duration::from_secs(255),
            ..ServerLimits::default()
        };
        let o = opts(b"timeout\x00255\x00");
        let r = negotiate_server(Direction::Read, o, &limits, None).unwrap();
        assert_eq!(r.negotiated.timeout, Some(Duration::from_secs(255)));
    }

    #[test]
    fn first_duplicate_wins_and_utimeout_is_microseconds() {
        let o = opts(b"blksize\x001024\x00blksize\x002048\x00utimeout\x00500000\x00");
        let r = negotiate_server(Direction::Read, o, &ServerLimits::default(), None).unwrap();
        assert_eq!(r.negotiated.blksize, 1024);
        assert_eq!(r.negotiated.timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            r.oack.as_list().as_bytes(),
            b"blksize\x001024\x00utimeout\x00500000\x00"
        );
    }

    #[test]
    fn wrq_tsize_is_echoed_or_refused() {
        let limits = ServerLimits {
            max_upload_size: Some(1000),
            ..ServerLimits::default()
        };
        let r =
            negotiate_server(Direction::Write, opts(b"tsize\x001000\x00"), &limits, None).unwrap();
        assert_eq!(r.oack.as_list().as_bytes(), b"tsize\x001000\x00");
        let e = negotiate_server(Direction::Write, opts(b"tsize\x001001\x00"), &limits, None)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::DiskFull);
    }

    #[test]
    fn refused_options_are_ignored_as_if_not_sent() {
        let all = b"BlkSize\x001024\x00tsize\x000\x00timeout\x003\x00windowsize\x008\x00utimeout\x00500000\x00";
        let r = negotiate_server(
            Direction::Read,
            opts(all),
            &ServerLimits::default(),
            Some(77),
        )
        .unwrap();
        assert_eq!(
            r.oack.as_list().as_bytes(),
            b"blksize\x001024\x00windowsize\x008\x00timeout\x003\x00utimeout\x00500000\x00tsize\x0077\x00"
        );
        let limits = ServerLimits {
            refused: RefusedOptions::BLKSIZE | RefusedOptions::UTIMEOUT,
            ..ServerLimits::default()
        };
        let r = negotiate_server(Direction::Read, opts(all), &limits, Some(77)).unwrap();
        assert_eq!(
            r.oack.as_list().as_bytes(),
            b"windowsize\x008\x00timeout\x003\x00tsize\x0077\x00"
        );
        assert_eq!(r.negotiated.blksize, 512);
        assert_eq!(r.negotiated.timeout, Some(Duration::from_secs(3)));
        let mut every = RefusedOptions::NONE;
        for (_, o) in RefusedOptions::ALL {
            every.insert(o);
        }
        let limits = ServerLimits {
            refused: every,
            ..ServerLimits::default()
        };
        let r = negotiate_server(Direction::Read, opts(all), &limits, Some(77)).unwrap();
        assert!(
            r.oack.is_empty(),
            "no OACK at all: {:?}",
            r.oack.as_list().as_bytes()
        );
        assert_eq!(r.negotiated, Negotiated::default());
        // A refused tsize in a WRQ is not even looked at: no ERROR 3 here.
        let limits = ServerLimits {
            refused: RefusedOptions::TSIZE,
            max_upload_size: Some(10),
            ..ServerLimits::default()
        };
        let r =
            negotiate_server(Direction::Write, opts(b"tsize\x00999\x00"), &limits, None).unwrap();
        assert!(r.oack.is_empty());
        assert_eq!(r.negotiated.tsize, None);
    }

    #[test]
    fn refused_option_names() {
        assert_eq!(
            RefusedOptions::from_name("WINDOWSIZE"),
            Some(RefusedOptions::WINDOWSIZE)
        );
        assert_eq!(RefusedOptions::from_name("multicast"), None);
        let s = RefusedOptions::TSIZE | RefusedOptions::BLKSIZE;
        assert_eq!(s.names().collect::<Vec<_>>(), ["blksize", "tsize"]);
        assert!(s.refuses("TSize") && !s.refuses("timeout") && !s.refuses("foo"));
        assert_eq!(RefusedOptions::from_bits_truncate(0xff).bits(), 0x1f);
        assert!(RefusedOptions::NONE.is_empty());
    }

    #[test]
    fn rrq_tsize_without_known_size_is_left_out() {
        let r = negotiate_server(
            Direction::Read,
            opts(b"tsize\x000\x00"),
            &ServerLimits::default(),
            None,
        )
        .unwrap();
        assert!(r.oack.is_empty());
    }

    #[test]
    fn client_checks_oack() {
        let asked = ClientOptions {
            blksize: Some(1468),
            windowsize: Some(16),
            timeout: Some(2),
            tsize: Some(0),
        };
        assert_eq!(
            asked.to_options().as_list().as_bytes(),
            b"blksize\x001468\x00windowsize\x0016\x00timeout\x002\x00tsize\x000\x00"
        );
        let n = asked
            .accept_oack(opts(b"BLKSIZE\x001024\x00tsize\x0099\x00"))
            .unwrap();
        assert_eq!((n.blksize, n.windowsize, n.tsize), (1024, 1, Some(99)));
        assert!(matches!(
            asked.accept_oack(opts(b"blksize\x002000\x00")),
            Err(NegotiateError::BadValue { .. })
        ));
        assert!(matches!(
            asked.accept_oack(opts(b"timeout\x005\x00")),
            Err(NegotiateError::BadValue { .. })
        ));
        assert!(matches!(
            asked.accept_oack(opts(b"multicast\x00\x00")),
            Err(NegotiateError::Unrequested(_))
        ));
        let plain = ClientOptions::default();
        assert!(matches!(
            plain.accept_oack(opts(b"blksize\x00512\x00")),
            Err(NegotiateError::Unrequested(_))
        ));
    }
}
