//! Bodies of the fuzz targets in `fuzz/fuzz_targets/`, shared with the corpus regression
//! test (`tests/fuzz_corpus.rs`) so `cargo test` replays every committed corpus file on the
//! stable toolchain. Not a supported API: compiled only with the `fuzzing` feature.
//!
//! Each function takes arbitrary bytes and panics when an invariant breaks. The bytes are
//! read through a cursor that yields zeros once exhausted, so every input is valid and short
//! inputs mean "defaults". Layouts (all integers big-endian):
//!
//! - [`decode`]: one datagram.
//! - [`netascii`]: `n` (1 byte, 1 + n % 8 chunk sizes follow), the chunk sizes (1 byte
//!   each), then the text.
//! - [`negotiate`]: server limits, file size, client options (see [`negotiate`]), then one
//!   datagram (an RRQ/WRQ is negotiated by the server, an OACK checked by the client).
//! - [`sender`] / [`receiver`]: a transfer setup, then operations until the input ends
//!   (see the functions).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::negotiate::{
    negotiate_server, ClientOptions, Direction, NegotiateError, Negotiated, RefusedOptions,
    ServerLimits,
};
use crate::netascii::{encoded_len, Decoder, Encoder};
use crate::transfer::{Event, Receiver, RequestError, Sender, TransferConfig};
use crate::wire::{
    EncodeError, ErrorCode, Mode, OptionList, Packet, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE,
};

/// Reads fuzz input front to back; yields zeros (and empty slices) once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ---------------------------------------------------------------------------------------
// decode

/// `Packet::decode` on arbitrary bytes never panics; whatever decodes re-encodes (into no
/// more than one byte over the datagram: an ERROR may lack its NUL) and decodes back to an
/// equal packet; string fields hold no NUL; option lists are whole pairs and print without
/// control characters.
pub fn decode(data: &[u8]) {
    let Ok(p) = Packet::decode(data) else { return };
    let n = p.encoded_len();
    assert!(n <= data.len() + 1, "{p:?} encodes into {n} bytes");
    let mut buf = vec![0u8; n];
    let w = p.encode(&mut buf).expect("a decoded packet re-encodes");
    assert_eq!(w, n);
    assert_eq!(Packet::decode(&buf).as_ref(), Ok(&p));
    assert_eq!(
        p.encode(&mut buf[..n - 1]),
        Err(EncodeError::BufferTooSmall { needed: n })
    );
    match p {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            assert!(!r.filename.is_empty() && !r.filename.contains(&0));
            assert!(!r.mode.contains(&0));
            let _ = Mode::parse(r.mode);
            let _ = r.filename_lossy();
            check_option_list(r.options);
        }
        Packet::Oack(o) => check_option_list(o),
        Packet::Error { message, .. } => assert!(!message.contains(&0)),
        Packet::Data { .. } | Packet::Ack { .. } => {}
    }
}

fn check_option_list(o: OptionList<'_>) {
    assert_eq!(OptionList::new(o.as_bytes()), Ok(o));
    let mut raw = Vec::new();
    for (i, (name, value)) in o.iter().enumerate() {
        assert!(!name.contains(&0) && !value.contains(&0));
        raw.extend_from_slice(name);
        raw.push(0);
        raw.extend_from_slice(value);
        raw.push(0);
        if i >= 16 {
            continue; // the lookup check below is quadratic: the first options suffice
        }
        // `get` finds the first option of that name, whatever the case.
        let first = o
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        if let Ok(name) = std::str::from_utf8(name) {
            assert_eq!(o.get(name), first);
        }
    }
    assert_eq!(raw, o.as_bytes(), "iteration covers the whole list");
    let shown = o.to_string();
    assert!(
        !shown.chars().any(char::is_control),
        "control character in {shown:?}"
    );
    let _ = format!("{o:?}");
}

// ---------------------------------------------------------------------------------------
// netascii

/// The netascii encoder and decoder on arbitrary text cut at arbitrary points: the encoding
/// has the length `encoded_len` predicts and no bare CR; decoding it (in other pieces) gives
/// the text back; decoding arbitrary bytes gives the same output whatever the pieces, never
/// more than one byte per input byte plus one; an empty output buffer changes nothing.
pub fn netascii(data: &[u8]) {
    let mut inp = Input::new(data);
    let count = 1 + usize::from(inp.u8() % 8);
    let sizes: Vec<usize> = (0..count).map(|_| usize::from(inp.u8())).collect();
    let text = inp.rest();
    // Piece lengths cycle through `sizes` (0: an empty call); output buffers are 1..=256.
    let all_zero = sizes.iter().all(|&s| s == 0);
    let piece = |i: usize, left: usize| {
        if all_zero {
            left
        } else {
            sizes[i % count].min(left)
        }
    };

    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    let mut rest = text;
    let mut out = [0u8; 256];
    let mut i = 0;
    while !rest.is_empty() || enc.has_pending() {
        let take = piece(i, rest.len());
        let out_len = 1 + sizes[(i + 1) % count];
        let had_pending = enc.has_pending();
        assert_eq!(enc.encode(&rest[..take], &mut []), (0, 0));
        assert_eq!(enc.has_pending(), had_pending);
        let (used, n) = enc.encode(&rest[..take], &mut out[..out_len]);
        assert!(used <= take && n <= out_len);
        if take > 0 || had_pending {
            assert!(n > 0, "no progress");
        }
        wire.extend_from_slice(&out[..n]);
        rest = &rest[used..];
        i += 1;
        assert!(i <= 2 * (count + 1) * (text.len() + 2), "encoder loops");
    }
    assert_eq!(wire.len() as u64, encoded_len(text));
    for (k, &b) in wire.iter().enumerate() {
        if b == b'\r' {
            assert!(matches!(wire.get(k + 1), Some(b'\n' | 0)), "bare CR at {k}");
        }
    }
    assert_eq!(decode_pieces(&wire, &sizes, 1), text);

    // Arbitrary bytes as netascii: the pieces do not matter.
    let whole = decode_pieces(text, &[usize::MAX], 0);
    assert!(whole.len() <= text.len() + 1);
    assert_eq!(decode_pieces(text, &sizes, 2), whole);
}

fn decode_pieces(wire: &[u8], sizes: &[usize], shift: usize) -> Vec<u8> {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut i = shift;
    let all_zero = sizes.iter().all(|&s| s == 0);
    while !rest.is_empty() {
        let take = if all_zero {
            rest.len()
        } else {
            sizes[i % sizes.len()].min(rest.len())
        };
        let before = out.len();
        dec.decode(&rest[..take], &mut out);
        assert!(out.len() - before <= take + 1);
        rest = &rest[take..];
        i += 1;
    }
    dec.finish(&mut out);
    dec.finish(&mut out); // a second finish adds nothing
    out
}

// ---------------------------------------------------------------------------------------
// negotiate

fn read_limits(inp: &mut Input<'_>, max_windowsize_cap: u16) -> ServerLimits {
    let max_blksize = inp.u16();
    ServerLimits {
        max_blksize,
        max_windowsize: inp.u16() % max_windowsize_cap.saturating_add(1),
        max_upload_size: inp.bool().then(|| inp.u64()),
        // From bits already read (the top five of max_blksize), so the corpus keeps its
        // meaning: most small blksize limits refuse nothing, large ones refuse some options.
        refused: RefusedOptions::from_bits_truncate((max_blksize >> 11) as u8),
        ..ServerLimits::default()
    }
}

fn read_client_options(inp: &mut Input<'_>, max_windowsize: u16) -> ClientOptions {
    let flags = inp.u8();
    let blksize = inp.u16();
    let windowsize = inp.u16() % max_windowsize.saturating_add(1);
    let timeout = inp.u8();
    let tsize = inp.u64();
    ClientOptions {
        blksize: (flags & 1 != 0).then_some(blksize),
        windowsize: (flags & 2 != 0).then_some(windowsize),
        timeout: (flags & 4 != 0).then_some(timeout),
        tsize: (flags & 8 != 0).then_some(tsize),
    }
}

/// Option negotiation. Layout: server limits (`max_blksize` u16, `max_windowsize` u16, a
/// flag byte and `max_upload_size` u64 when its low bit is set), a flag byte and a file size
/// u64 when set, client options (flags: bit 0 blksize, 1 windowsize, 2 timeout, 3 tsize;
/// then blksize u16, windowsize u16, timeout u8, tsize u64), then one datagram.
///
/// - An RRQ/WRQ datagram goes through `negotiate_server`: it fails only with `TooLarge` on
///   a WRQ whose first `tsize` exceeds the limit; the OACK lists each option once, only
///   options the request carries, with values in their RFC ranges, within the limits, never
///   above what was asked, never one of `ServerLimits::refused`, and matching the
///   negotiated values.
/// - An OACK datagram goes through `accept_oack`: accepted values never exceed what was
///   asked, and a refusal is reported with ERROR 8.
/// - The client's own request, negotiated by the server, is accepted by the client with the
///   very values the server settled on.
pub fn negotiate(data: &[u8]) {
    let mut inp = Input::new(data);
    let limits = read_limits(&mut inp, u16::MAX);
    let file_size = inp.bool().then(|| inp.u64());
    let asked = read_client_options(&mut inp, u16::MAX);
    let datagram = inp.rest();
    match Packet::decode(datagram) {
        Ok(Packet::Rrq(r)) => check_server(Direction::Read, r.options, &limits, file_size),
        Ok(Packet::Wrq(r)) => check_server(Direction::Write, r.options, &limits, file_size),
        Ok(Packet::Oack(o)) => check_client(&asked, o),
        _ => {}
    }
    let request = asked.to_options();
    for dir in [Direction::Read, Direction::Write] {
        match negotiate_server(dir, request.as_list(), &limits, file_size) {
            Ok(s) => {
                let n = asked
                    .accept_oack(s.oack.as_list())
                    .expect("the client accepts what the server granted");
                assert_eq!(n, s.negotiated);
            }
            Err(NegotiateError::TooLarge { size, limit }) => {
                assert_eq!(dir, Direction::Write);
                assert_eq!(asked.tsize, Some(size));
                assert!(size > limit);
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

fn num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn check_server(
    dir: Direction,
    opts: OptionList<'_>,
    limits: &ServerLimits,
    file_size: Option<u64>,
) {
    let asked = |name: &str| opts.get(name).and_then(num);
    let s = match negotiate_server(dir, opts, limits, file_size) {
        Ok(s) => s,
        Err(NegotiateError::TooLarge { size, limit }) => {
            assert_eq!(dir, Direction::Write);
            assert_eq!(limits.max_upload_size, Some(limit));
            assert!(size > limit);
            assert_eq!(asked("tsize"), Some(size));
            return;
        }
        Err(e) => panic!("server negotiation failed with {e:?}"),
    };
    let oack = s.oack.as_list();
    assert!(oack.as_bytes().len() <= 128, "OACK of {oack}");
    let n = s.negotiated;
    let mut seen: Vec<&[u8]> = Vec::new();
    for (name, value) in oack.iter() {
        assert!(!seen.contains(&name), "{oack} repeats an option");
        seen.push(name);
        let name = std::str::from_utf8(name).expect("OACK names are ASCII");
        let v = num(value).expect("OACK values are numbers");
        let requested = asked(name).expect("OACK option not in the request");
        assert!(
            !limits.refused.refuses(name),
            "refused option {name} in {oack}"
        );
        match name {
            "blksize" => {
                assert!((u64::from(MIN_BLKSIZE)..=u64::from(MAX_BLKSIZE)).contains(&v));
                assert!(v <= u64::from(limits.max_blksize.max(MIN_BLKSIZE)));
                assert!(v <= requested);
                assert_eq!(u64::from(n.blksize), v);
            }
            "windowsize" => {
                assert!(v >= 1 && v <= u64::from(limits.max_windowsize.max(1)));
                assert!(v <= requested);
                assert_eq!(u64::from(n.windowsize), v);
            }
            "timeout" => {
                assert!((1..=255).contains(&v));
                assert!(Duration::from_secs(v) <= limits.max_timeout);
                assert_eq!(v, requested);
            }
            "utimeout" => {
                assert!((1_000..=255_000_000).contains(&v));
                assert!(Duration::from_micros(v) <= limits.max_timeout);
                assert_eq!(v, requested);
                assert_eq!(n.timeout, Some(Duration::from_micros(v)));
            }
            "tsize" => match dir {
                Direction::Read => assert_eq!(Some(v), file_size),
                Direction::Write => {
                    assert_eq!(v, requested);
                    assert!(limits.max_upload_size.is_none_or(|l| v <= l));
                }
            },
            other => panic!("OACK carries unknown option {other:?}"),
        }
    }
    let has = |name: &str| oack.get(name).is_some();
    if !has("blksize") {
        assert_eq!(n.blksize, DEFAULT_BLKSIZE);
    }
    if !has("windowsize") {
        assert_eq!(n.windowsize, 1);
    }
    match (has("timeout"), has("utimeout")) {
        (false, false) => assert_eq!(n.timeout, None),
        (true, false) => {
            let t = oack.get("timeout").and_then(num);
            assert_eq!(n.timeout, t.map(Duration::from_secs));
        }
        // utimeout, when granted, wins over timeout (checked above).
        (_, true) => {}
    }
    assert_eq!(n.tsize, oack.get("tsize").and_then(num));
}

fn check_client(asked: &ClientOptions, oack: OptionList<'_>) {
    match asked.accept_oack(oack) {
        Ok(n) => {
            let requested = asked.to_options();
            for (name, _) in oack.iter() {
                let name = std::str::from_utf8(name).expect("accepted names are known");
                assert!(requested.as_list().get(name).is_some(), "{name} not asked");
            }
            match oack.get("blksize") {
                Some(_) => assert!(n.blksize >= MIN_BLKSIZE && Some(n.blksize) <= asked.blksize),
                None => assert_eq!(n.blksize, DEFAULT_BLKSIZE),
            }
            match oack.get("windowsize") {
                Some(_) => assert!(n.windowsize >= 1 && Some(n.windowsize) <= asked.windowsize),
                None => assert_eq!(n.windowsize, 1),
            }
            match oack.get("timeout") {
                Some(_) => assert_eq!(
                    n.timeout,
                    asked.timeout.map(|t| Duration::from_secs(t.into()))
                ),
                None => assert_eq!(n.timeout, None),
            }
            if n.tsize.is_some() {
                assert!(asked.tsize.is_some());
            }
        }
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::OptionNegotiation);
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------
// sender and receiver

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
/// Where a client sends its request.
fn server_port_69() -> SocketAddr {
    addr([10, 0, 0, 1], 69)
}
/// The server's TID, from which it answers.
fn server_tid() -> SocketAddr {
    addr([10, 0, 0, 1], 40000)
}
fn client_tid() -> SocketAddr {
    addr([10, 0, 0, 2], 50000)
}

/// Where a datagram comes from: mostly the peer, sometimes someone else.
fn source(inp: &mut Input<'_>, peer: SocketAddr) -> SocketAddr {
    match inp.u8() % 8 {
        0 => addr([10, 0, 0, 1], 40001),
        1 => addr([10, 0, 0, 3], 40000),
        2 => SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 40000)),
        3 => server_port_69(),
        _ => peer,
    }
}

fn read_config(inp: &mut Input<'_>) -> TransferConfig {
    let timeout = Duration::from_millis(1 + u64::from(inp.u16() % 5000));
    let retries = inp.u8();
    TransferConfig {
        timeout,
        max_retries: u32::from(retries % 8),
        dally: Duration::from_millis(u64::from(inp.u16() % 5000)),
        max_unanswered_retries: u32::from(retries >> 3 & 7),
    }
}

fn encode(p: Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len()];
    let n = p.encode(&mut b).expect("encodable");
    b.truncate(n);
    b
}

/// A packet that some peer could send: arbitrary ERROR and OACK contents.
fn error_datagram(inp: &mut Input<'_>) -> Vec<u8> {
    let code = inp.u16();
    let len = usize::from(inp.u8());
    let mut d = vec![0, 5];
    d.extend_from_slice(&code.to_be_bytes());
    d.extend_from_slice(inp.bytes(len));
    d
}

fn oack_datagram(inp: &mut Input<'_>) -> Vec<u8> {
    let len = usize::from(inp.u8());
    let mut d = vec![0, 6];
    d.extend_from_slice(inp.bytes(len));
    d
}

/// The OACK a real server would send for `asked` under arbitrary limits (None: it would
/// answer without options).
fn server_oack(inp: &mut Input<'_>, asked: &ClientOptions, dir: Direction) -> Option<Vec<u8>> {
    let limits = read_limits(inp, 64);
    let file_size = inp.bool().then(|| inp.u64());
    let s = negotiate_server(dir, asked.to_options().as_list(), &limits, file_size).ok()?;
    (!s.oack.is_empty()).then(|| encode(Packet::Oack(s.oack.as_list())))
}

/// The events of one transfer: each kind at most once.
#[derive(Default)]
struct Events {
    negotiated: Option<Negotiated>,
    complete: bool,
    failed: bool,
}

impl Events {
    fn take(&mut self, e: Event, may_fail_after_complete: bool) {
        match e {
            Event::Negotiated(n) => {
                assert!(self.negotiated.is_none(), "negotiated twice");
                assert!((MIN_BLKSIZE..=MAX_BLKSIZE).contains(&n.blksize), "{n:?}");
                assert!(n.windowsize >= 1, "{n:?}");
                self.negotiated = Some(n);
            }
            Event::Complete => {
                assert!(!self.complete && !self.failed, "late Complete");
                self.complete = true;
            }
            Event::Failed(err) => {
                assert!(!self.failed, "failed twice");
                assert!(
                    !self.complete || may_fail_after_complete,
                    "Failed after Complete"
                );
                let _ = (err.code(), err.to_string());
                self.failed = true;
            }
        }
    }
}

/// Byte `i` of the sender's file: differs between blocks that share a wire number.
fn file_byte(i: u64) -> u8 {
    (i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Upper bound on model-driven work per input (blocks moved by "perfect peer" runs), so
/// one input stays fast while block numbers can still roll over.
const RUN_BUDGET: u64 = 200_000;
/// Upper bound on the sender's file, in bytes: enough to roll block numbers over at
/// blksize 8 and 16.
const MAX_FILE: u32 = 1 << 21;

/// Length of a "perfect peer" run: up to 255 steps, or, for the one op byte of the kind
/// that is >= 240, up to 2 x 65535 (enough to roll block numbers over). Long runs are rare
/// so that most inputs stay fast.
fn run_length(op: u8, inp: &mut Input<'_>) -> u64 {
    if op >= 240 {
        u64::from(inp.u16()) * 2
    } else {
        u64::from(inp.u8())
    }
}

struct SendModel {
    now: Instant,
    client: bool,
    file_len: u64,
    events: Events,
    filled_blocks: u64,
    filled_bytes: u64,
    last_filled: bool,
    last_data: Option<u16>,
    strangers: Vec<SocketAddr>,
    /// `poll_transmit_batch(max_segments, max_bytes)` instead of `poll_transmit`.
    batch: Option<(usize, usize)>,
}

impl SendModel {
    fn peer(&self, s: &Sender) -> SocketAddr {
        if self.client && s.peer() == server_port_69() {
            server_tid()
        } else {
            s.peer()
        }
    }

    fn feed(&mut self, s: &mut Sender, from: SocketAddr, datagram: &[u8]) {
        if from != s.peer() && !self.strangers.contains(&from) {
            self.strangers.push(from);
        }
        s.handle_datagram(self.now, from, datagram);
    }

    /// Reads events, fills what the sender offers, sends what it yields; checks all of it.
    fn pump(&mut self, s: &mut Sender) {
        let finished = s.is_finished();
        while let Some(e) = s.poll_event() {
            self.events.take(e, false);
        }
        let window = self
            .events
            .negotiated
            .map_or(1, |n| u64::from(n.windowsize));
        let mut offered = 0;
        while let Some(buf) = s.block_to_fill() {
            let n = self
                .events
                .negotiated
                .expect("a block offered before negotiation");
            let bs = usize::from(n.blksize);
            assert_eq!(buf.len(), bs);
            assert!(!self.last_filled, "a block offered after the last one");
            offered += 1;
            assert!(offered <= window, "more blocks offered than a window holds");
            let len = (self.file_len - self.filled_bytes).min(bs as u64) as usize;
            for (k, b) in buf[..len].iter_mut().enumerate() {
                *b = file_byte(self.filled_bytes + k as u64);
            }
            s.block_filled(len);
            self.filled_blocks += 1;
            self.filled_bytes += len as u64;
            self.last_filled = len < bs;
        }
        let peer = s.peer();
        let mut sent = 0;
        loop {
            if let Some((segments, bytes)) = self.batch {
                let Some(b) = s.poll_transmit_batch(self.now, segments, bytes) else {
                    break;
                };
                assert!(!finished, "a finished sender transmits");
                assert!(b.count >= 1 && b.count <= segments.max(1), "{b:?}");
                if b.count > 1 {
                    let n = self.events.negotiated.expect("DATA before negotiation");
                    assert!(b.payload.len() <= bytes);
                    assert_eq!(b.segment, usize::from(n.blksize) + 4);
                }
                let mut count = 0;
                for d in b.datagrams() {
                    count += 1;
                    self.check_transmit(peer, b.destination, d);
                }
                assert_eq!(count, b.count);
                sent += count as u64;
            } else {
                let Some(t) = s.poll_transmit(self.now) else {
                    break;
                };
                assert!(!finished, "a finished sender transmits");
                sent += 1;
                self.check_transmit(peer, t.destination, t.payload);
            }
            assert!(sent <= window + 2, "too many datagrams at once");
        }
        while let Some(e) = s.poll_event() {
            self.events.take(e, false);
        }
        if self.events.complete {
            let st = s.stats();
            assert!(self.last_filled, "complete before the last block");
            assert_eq!((st.bytes, st.blocks), (self.file_len, self.filled_blocks));
        }
    }

    fn check_transmit(&mut self, peer: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let len = payload.len();
        match Packet::decode(payload).expect("the sender's datagrams decode") {
            Packet::Data { block, payload } => {
                let n = self.events.negotiated.expect("DATA before negotiation");
                let bs = u64::from(n.blksize);
                assert_eq!(to, peer);
                assert!(len <= usize::from(n.blksize) + 4);
                // Some filled block with this wire number holds exactly these bytes.
                let mut abs = if block == 0 { 65536 } else { u64::from(block) };
                let mut found = false;
                while abs <= self.filled_blocks && !found {
                    let off = (abs - 1) * bs;
                    let want = (self.file_len - off).min(bs);
                    found = payload.len() as u64 == want
                        && payload
                            .iter()
                            .enumerate()
                            .all(|(k, &b)| b == file_byte(off + k as u64));
                    abs += 65536;
                }
                assert!(found, "DATA {block} does not hold a filled block");
                self.last_data = Some(block);
            }
            Packet::Error { code, message } => {
                assert!(message.len() <= 200);
                if to != peer {
                    assert_eq!(code, ErrorCode::UnknownTid);
                    assert!(self.strangers.contains(&to), "ERROR to {to}");
                }
            }
            Packet::Oack(o) => {
                assert!(!self.client && to == peer && o.as_bytes().len() <= 128);
            }
            Packet::Wrq(r) => {
                assert!(self.client && r.filename.len() <= 255);
            }
            p => panic!("the sender sent {p:?}"),
        }
    }
}

/// Drives a [`Sender`] (server for an RRQ, or client that sent a WRQ) with an arbitrary
/// sequence of datagrams and clock moves, filling blocks from a file of arbitrary length.
///
/// Layout: setup byte (bit 0 client, bit 1 netascii, bit 2 batches, bit 3 batches of at
/// most 64 KiB), config (timeout ms u16, retries u8: bits 0-2 `max_retries`, 3-5
/// `max_unanswered_retries`; dally ms u16), file length u32; a client then reads client
/// options, a name length byte and the name; a server reads limits and the client's
/// options; with bit 2, the batches' `max_segments` (u8 % 66) and, without bit 3,
/// `max_bytes` (u16); then operations, one byte each followed by their arguments, until
/// the input ends. Batches are checked datagram by datagram, like single transmits, and
/// hold at most `max_segments` datagrams of 4 + blksize bytes within `max_bytes`.
///
/// Checks: no panic; every datagram decodes, DATA goes to the peer, is at most blksize + 4
/// bytes and holds exactly the file's bytes for its block number; ERROR 5 only to strangers;
/// at most a window of blocks is offered and at most a window (+ control) sent at once;
/// events at most once each, Complete only with every byte acknowledged; after the input,
/// timeouts alone end the transfer within `max_retries + 2` of them.
pub fn sender(data: &[u8]) {
    let mut inp = Input::new(data);
    let setup = inp.u8();
    let config = read_config(&mut inp);
    let file_len = u64::from(inp.u32() % (MAX_FILE + 1));
    let client = setup & 1 == 1;
    let mut asked = ClientOptions::default();
    let mut s = if client {
        asked = read_client_options(&mut inp, 64);
        let mode = if setup & 2 != 0 {
            Mode::Netascii
        } else {
            Mode::Octet
        };
        let len = usize::from(inp.u8());
        let name = inp.bytes(len);
        match Sender::client(server_port_69(), name, mode, asked, config) {
            Ok(s) => s,
            Err(RequestError::BadFilename) => {
                assert!(name.is_empty() || name.contains(&0));
                return;
            }
        }
    } else {
        let limits = read_limits(&mut inp, 64);
        let req = read_client_options(&mut inp, u16::MAX);
        let req = req.to_options();
        let Ok(n) = negotiate_server(Direction::Read, req.as_list(), &limits, Some(file_len))
        else {
            return;
        };
        Sender::server(client_tid(), n.negotiated, n.oack.as_list(), config)
    };
    let mut m = SendModel {
        now: Instant::now(),
        client,
        file_len,
        events: Events::default(),
        filled_blocks: 0,
        filled_bytes: 0,
        last_filled: false,
        last_data: None,
        strangers: Vec::new(),
        batch: (setup & 4 != 0).then(|| {
            let segments = usize::from(inp.u8() % 66);
            (
                segments,
                if setup & 8 != 0 {
                    65536
                } else {
                    usize::from(inp.u16())
                },
            )
        }),
    };
    let mut budget = RUN_BUDGET;
    m.pump(&mut s);
    while !inp.is_empty() {
        let op = inp.u8();
        let peer = m.peer(&s);
        match op % 12 {
            0 => {
                let from = source(&mut inp, peer);
                let len = usize::from(inp.u16() % 1024);
                let d = inp.bytes(len);
                m.feed(&mut s, from, d);
            }
            1 => {
                let from = source(&mut inp, peer);
                let d = encode(Packet::Ack { block: inp.u16() });
                m.feed(&mut s, from, &d);
            }
            2 => {
                let back = u16::from(inp.u8() % 4);
                let block = m.last_data.unwrap_or(0).wrapping_sub(back);
                m.feed(&mut s, peer, &encode(Packet::Ack { block }));
            }
            3 => {
                let from = source(&mut inp, peer);
                let d = oack_datagram(&mut inp);
                m.feed(&mut s, from, &d);
            }
            4 => {
                let d = server_oack(&mut inp, &asked, Direction::Write)
                    .unwrap_or_else(|| encode(Packet::Ack { block: 0 }));
                m.feed(&mut s, peer, &d);
            }
            5 => {
                let from = source(&mut inp, peer);
                let d = error_datagram(&mut inp);
                m.feed(&mut s, from, &d);
            }
            6 => {
                m.now += Duration::from_millis(u64::from(inp.u16()));
                s.handle_timeout(m.now);
            }
            7 => {
                if let Some(d) = s.poll_timeout() {
                    m.now = m.now.max(d);
                }
                s.handle_timeout(m.now);
            }
            8 => {
                let code = ErrorCode::from_u16(inp.u16());
                let len = usize::from(inp.u16() % 512);
                let msg = String::from_utf8_lossy(inp.bytes(len)).into_owned();
                s.abort(code, &msg);
            }
            9 => {
                // A perfect receiver: acknowledges whatever was sent last, up to k times.
                let k = run_length(op, &mut inp);
                for _ in 0..k.min(budget) {
                    budget -= 1;
                    m.pump(&mut s);
                    let (Some(b), false) = (m.last_data, s.is_finished()) else {
                        break;
                    };
                    let peer = m.peer(&s);
                    m.feed(&mut s, peer, &encode(Packet::Ack { block: b }));
                }
            }
            10 => {
                // DATA is never welcome at a sender.
                let from = source(&mut inp, peer);
                let mut d = vec![0, 3];
                let len = usize::from(inp.u8());
                d.extend_from_slice(inp.bytes(len));
                m.feed(&mut s, from, &d);
            }
            _ => {
                // An early wake-up.
                m.now += Duration::from_millis(u64::from(inp.u8()));
                s.handle_timeout(m.now);
            }
        }
        m.pump(&mut s);
    }
    // Every transfer ends: with the peer gone silent, timeouts alone finish it. Wake-ups
    // that end a pause between two bursts of a paced window (each sends a block) are not
    // retransmission timeouts; there are at most a window's worth per timeout.
    let mut wakeups = 0u64;
    let first = s.stats().timeouts;
    loop {
        m.pump(&mut s);
        if s.is_finished() {
            break;
        }
        let d = s
            .poll_timeout()
            .expect("an unfinished sender waits for nothing");
        m.now = m.now.max(d);
        s.handle_timeout(m.now);
        wakeups += 1;
        let timeouts = s.stats().timeouts - first;
        assert!(
            timeouts <= u64::from(config.max_retries) + 2
                && wakeups <= (u64::from(config.max_retries) + 3) * 65_536,
            "sender still running after {timeouts} timeouts ({wakeups} wake-ups): {s:?}"
        );
    }
    assert!(
        m.events.complete || m.events.failed,
        "ended without an event"
    );
    assert!(s.poll_transmit(m.now).is_none() && s.block_to_fill().is_none());
}

struct RecvModel {
    now: Instant,
    client: bool,
    events: Events,
    aborted: bool,
    delivered_blocks: u64,
    delivered_bytes: u64,
    last_wire: u16,
    /// What follows block 65535 once the peer has wrapped to 1.
    wrapped_to_one: bool,
    strangers: Vec<SocketAddr>,
}

impl RecvModel {
    fn peer(&self, r: &Receiver) -> SocketAddr {
        if self.client && r.peer() == server_port_69() {
            server_tid()
        } else {
            r.peer()
        }
    }

    fn blksize(&self) -> usize {
        usize::from(
            self.events
                .negotiated
                .map_or(DEFAULT_BLKSIZE, |n| n.blksize),
        )
    }

    /// The block number a well-behaved sender sends next (`zero`: wrap 65535 to 0).
    fn next_wire(&self, zero: bool) -> u16 {
        match self.last_wire {
            u16::MAX if zero && !self.wrapped_to_one => 0,
            u16::MAX => 1,
            w => w + 1,
        }
    }

    /// Feeds a datagram; returns whether a payload came out. Checks that only the next
    /// block in order comes out, and only its payload.
    fn feed(&mut self, r: &mut Receiver, from: SocketAddr, datagram: &[u8]) -> bool {
        if from != r.peer() && !self.strangers.contains(&from) {
            self.strangers.push(from);
        }
        // Before the datagram: a client without an OACK takes DATA 1 at the default blksize.
        let blksize = self.blksize();
        let Some(p) = r.handle_datagram(self.now, from, datagram) else {
            return false;
        };
        let Ok(Packet::Data { block, payload }) = Packet::decode(datagram) else {
            panic!("a payload out of a datagram that is no DATA");
        };
        assert_eq!(p, payload);
        assert!(
            !self.events.complete && !self.events.failed,
            "payload after the end"
        );
        assert!(p.len() <= blksize, "payload longer than blksize");
        match self.last_wire {
            u16::MAX => {
                assert!(block <= 1, "block {block} after 65535");
                self.wrapped_to_one |= block == 1;
            }
            w => assert_eq!(block, w + 1, "out of order"),
        }
        assert!(
            self.delivered_blocks > 0 || block == 1,
            "first block {block}"
        );
        self.last_wire = block;
        self.delivered_blocks += 1;
        self.delivered_bytes += p.len() as u64;
        true
    }

    fn pump(&mut self, r: &mut Receiver) {
        let finished = r.is_finished();
        let aborted = self.aborted;
        while let Some(e) = r.poll_event() {
            self.events.take(e, aborted);
        }
        let peer = r.peer();
        let mut sent = 0;
        while let Some(t) = r.poll_transmit(self.now) {
            assert!(!finished, "a finished receiver transmits");
            sent += 1;
            assert!(
                sent <= 2,
                "more than a control packet and an ERROR 5 at once"
            );
            let (to, len) = (t.destination, t.payload.len());
            match Packet::decode(t.payload).expect("the receiver's datagrams decode") {
                Packet::Ack { block } => {
                    assert_eq!(to, peer);
                    // Every ACK names the last block received in order (0 before any).
                    assert_eq!(block, self.last_wire, "stale or premature ACK");
                }
                Packet::Error { code, message } => {
                    assert!(message.len() <= 200 && len <= 205);
                    if to != peer {
                        assert_eq!(code, ErrorCode::UnknownTid);
                        assert!(self.strangers.contains(&to), "ERROR to {to}");
                    }
                }
                Packet::Oack(o) => {
                    assert!(!self.client && to == peer && o.as_bytes().len() <= 128);
                }
                Packet::Rrq(r) => assert!(self.client && r.filename.len() <= 255),
                p => panic!("the receiver sent {p:?}"),
            }
        }
        while let Some(e) = r.poll_event() {
            self.events.take(e, aborted);
        }
        let st = r.stats();
        assert_eq!(
            (st.blocks, st.bytes),
            (self.delivered_blocks, self.delivered_bytes)
        );
        if self.events.complete && !self.events.failed {
            assert!(r.is_complete());
        }
    }
}

/// Drives a [`Receiver`] (server for a WRQ, or client that sent an RRQ) with an arbitrary
/// sequence of datagrams and clock moves.
///
/// Layout: setup byte (bit 0 client, bit 1 netascii, bit 2 wrap to 0 in perfect runs),
/// config (as for [`sender`]); a client then reads client options, a
/// name length byte and the name; a server reads limits and the client's options; then
/// operations, one byte each followed by their arguments, until the input ends.
///
/// Checks: no panic; only the next block in order yields a payload (its own, at most
/// blksize bytes, never after the end); every ACK names the last block received in order;
/// ERROR 5 only to strangers; at most two datagrams at once; a perfect sender's
/// blocks are always taken; events at most once each; stats match what came out; after the
/// input, timeouts alone end the transfer within `max_retries + 2` of them.
pub fn receiver(data: &[u8]) {
    let mut inp = Input::new(data);
    let setup = inp.u8();
    let config = read_config(&mut inp);
    let client = setup & 1 == 1;
    let wrap_zero = setup & 4 != 0;
    let mut asked = ClientOptions::default();
    let mut r = if client {
        asked = read_client_options(&mut inp, u16::MAX);
        let mode = if setup & 2 != 0 {
            Mode::Netascii
        } else {
            Mode::Octet
        };
        let len = usize::from(inp.u8());
        let name = inp.bytes(len);
        match Receiver::client(server_port_69(), name, mode, asked, config) {
            Ok(r) => r,
            Err(RequestError::BadFilename) => {
                assert!(name.is_empty() || name.contains(&0));
                return;
            }
        }
    } else {
        let limits = read_limits(&mut inp, u16::MAX);
        let req = read_client_options(&mut inp, u16::MAX);
        let req = req.to_options();
        let Ok(n) = negotiate_server(Direction::Write, req.as_list(), &limits, None) else {
            return;
        };
        Receiver::server(client_tid(), n.negotiated, n.oack.as_list(), config)
    };
    let mut m = RecvModel {
        now: Instant::now(),
        client,
        events: Events::default(),
        aborted: false,
        delivered_blocks: 0,
        delivered_bytes: 0,
        last_wire: 0,
        wrapped_to_one: false,
        strangers: Vec::new(),
    };
    let mut budget = RUN_BUDGET;
    let mut byte_budget: u64 = 16 << 20;
    let mut d = Vec::new();
    m.pump(&mut r);
    while !inp.is_empty() {
        let op = inp.u8();
        let peer = m.peer(&r);
        match op % 12 {
            0 => {
                let from = source(&mut inp, peer);
                let len = usize::from(inp.u16() % 1024);
                m.feed(&mut r, from, inp.bytes(len));
            }
            1..=3 => {
                let from = if op % 12 == 1 {
                    source(&mut inp, peer)
                } else {
                    peer
                };
                let block = match op % 12 {
                    1 => inp.u16(),
                    2 => m.next_wire(inp.bool()),
                    _ => m
                        .last_wire
                        .wrapping_add(u16::from(inp.u8() % 8))
                        .wrapping_sub(3),
                };
                let bs = m.blksize();
                let len = match inp.u8() % 4 {
                    0 | 1 => bs,
                    2 => usize::from(inp.u16()) % bs,
                    _ => bs + 1,
                };
                d.clear();
                d.extend_from_slice(&[0, 3]);
                d.extend_from_slice(&block.to_be_bytes());
                d.extend((0..len).map(|k| k as u8));
                m.feed(&mut r, from, &d);
            }
            4 => {
                let from = source(&mut inp, peer);
                let d = oack_datagram(&mut inp);
                m.feed(&mut r, from, &d);
            }
            5 => {
                if let Some(d) = server_oack(&mut inp, &asked, Direction::Read) {
                    m.feed(&mut r, peer, &d);
                }
            }
            6 => {
                let from = source(&mut inp, peer);
                let d = error_datagram(&mut inp);
                m.feed(&mut r, from, &d);
            }
            7 => {
                m.now += Duration::from_millis(u64::from(inp.u16()));
                r.handle_timeout(m.now);
            }
            8 => {
                if let Some(d) = r.poll_timeout() {
                    m.now = m.now.max(d);
                }
                r.handle_timeout(m.now);
            }
            9 => {
                let code = ErrorCode::from_u16(inp.u16());
                let len = usize::from(inp.u16() % 512);
                let msg = String::from_utf8_lossy(inp.bytes(len)).into_owned();
                m.aborted = true;
                r.abort(code, &msg);
            }
            10 => {
                // A perfect sender: full blocks in order, k of them (the last maybe short).
                let k = run_length(op, &mut inp);
                let short = inp.bool();
                for i in 0..k.min(budget) {
                    m.pump(&mut r);
                    if r.is_complete() || m.events.failed {
                        break;
                    }
                    let bs = m.blksize();
                    if byte_budget < bs as u64 {
                        break;
                    }
                    budget -= 1;
                    byte_budget -= bs as u64;
                    let len = if short && i + 1 == k { bs / 2 } else { bs };
                    d.clear();
                    d.extend_from_slice(&[0, 3]);
                    d.extend_from_slice(&m.next_wire(wrap_zero).to_be_bytes());
                    d.resize(4 + len, 0x5a);
                    let peer = m.peer(&r);
                    assert!(m.feed(&mut r, peer, &d), "an in-order block was refused");
                }
            }
            _ => {
                m.now += Duration::from_millis(u64::from(inp.u8()));
                r.handle_timeout(m.now);
            }
        }
        m.pump(&mut r);
    }
    let mut timeouts = 0;
    loop {
        m.pump(&mut r);
        if r.is_finished() {
            break;
        }
        let d = r
            .poll_timeout()
            .expect("an unfinished receiver waits for nothing");
        m.now = m.now.max(d);
        r.handle_timeout(m.now);
        timeouts += 1;
        assert!(
            timeouts <= config.max_retries + 2,
            "receiver still running after {timeouts} timeouts: {r:?}"
        );
    }
    assert!(
        m.events.complete || m.events.failed,
        "ended without an event"
    );
    assert!(r.poll_transmit(m.now).is_none());
}
