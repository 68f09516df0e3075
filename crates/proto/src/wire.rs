//! Packet codec (RFC 1350 §5, RFC 2347 §2 for OACK).
//!
//! [`Packet::decode`] borrows from the datagram and never panics: every length is checked
//! once, and a datagram that is not a well-formed TFTP packet yields a [`DecodeError`].
//! [`Packet::encode`] writes into a caller's buffer, so the hot path allocates nothing.
//!
//! ```
//! use tftpx_proto::wire::Packet;
//! let mut buf = [0u8; 16];
//! let n = Packet::Ack { block: 7 }.encode(&mut buf).unwrap();
//! assert_eq!(&buf[..n], &[0, 4, 0, 7]);
//! assert_eq!(Packet::decode(&buf[..n]).unwrap(), Packet::Ack { block: 7 });
//! ```

use std::fmt;

/// Bytes in a DATA header (opcode + block number), RFC 1350 §5.
pub const DATA_HEADER_LEN: usize = 4;
/// Default block size in bytes (RFC 1350): a DATA payload of fewer bytes ends a transfer.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest block size a peer may negotiate, in bytes (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size a peer may negotiate, in bytes (RFC 2348).
pub const MAX_BLKSIZE: u16 = 65464;
/// Largest datagram tftpx ever sends or needs to receive, in bytes (DATA header + max blksize).
pub const MAX_DATAGRAM: usize = DATA_HEADER_LEN + MAX_BLKSIZE as usize;

/// TFTP opcodes (RFC 1350 §5, RFC 2347 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Read request.
    Rrq = 1,
    /// Write request.
    Wrq = 2,
    /// Data block.
    Data = 3,
    /// Acknowledgement.
    Ack = 4,
    /// Error.
    Error = 5,
    /// Option acknowledgement (RFC 2347).
    Oack = 6,
}

impl Opcode {
    /// Maps a wire value to an opcode; `None` for anything outside 1..=6.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Rrq,
            2 => Self::Wrq,
            3 => Self::Data,
            4 => Self::Ack,
            5 => Self::Error,
            6 => Self::Oack,
            _ => return None,
        })
    }
}

/// TFTP error codes (RFC 1350 appendix, RFC 2347 adds 8). Unknown codes are kept in
/// [`ErrorCode::Other`] so they round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused or failed (RFC 2347).
    OptionNegotiation,
    /// Any other code (9..=65535), kept as received.
    Other(u16),
}

impl ErrorCode {
    /// The code's wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::NotDefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTid => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionNegotiation => 8,
            Self::Other(v) => v,
        }
    }

    /// Maps a wire value to a code; never fails.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionNegotiation,
            v => Self::Other(v),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::NotDefined => "not defined",
            Self::FileNotFound => "file not found",
            Self::AccessViolation => "access violation",
            Self::DiskFull => "disk full or allocation exceeded",
            Self::IllegalOperation => "illegal TFTP operation",
            Self::UnknownTid => "unknown transfer ID",
            Self::FileExists => "file already exists",
            Self::NoSuchUser => "no such user",
            Self::OptionNegotiation => "option negotiation failed",
            Self::Other(_) => "unknown error code",
        };
        write!(f, "{} ({text})", self.to_u16())
    }
}

/// Transfer mode (RFC 1350 §5). `mail` is obsolete and not represented: servers answer it
/// with ERROR 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `netascii`: lines end in CR LF on the wire, a bare CR is CR NUL.
    Netascii,
    /// `octet`: raw bytes (also called `binary` by some clients' users, never on the wire).
    Octet,
}

impl Mode {
    /// Parses a mode name, case-insensitively. `None` for `mail` and anything unknown.
    pub fn parse(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"octet") {
            Some(Self::Octet)
        } else if name.eq_ignore_ascii_case(b"netascii") {
            Some(Self::Netascii)
        } else {
            None
        }
    }

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netascii => "netascii",
            Self::Octet => "octet",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than 2 bytes, or fewer than the packet type's fixed header.
    #[error("datagram too short")]
    Truncated,
    /// The opcode is not 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field (filename, mode, option, message) is not NUL-terminated.
    #[error("string field is not NUL-terminated")]
    MissingNul,
    /// A request has an empty filename.
    #[error("empty filename")]
    EmptyFilename,
    /// An option list ends with a name but no value.
    #[error("option without a value")]
    OptionWithoutValue,
    /// ACK carries bytes after the block number.
    #[error("trailing bytes after ACK")]
    TrailingBytes,
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The caller's buffer is smaller than the encoded packet.
    #[error("buffer too small: need {needed} bytes")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
    },
    /// A string field contains a NUL byte, which the wire format cannot carry.
    #[error("string field contains NUL")]
    NulInString,
}

/// A list of options as it sits on the wire: `name\0value\0` pairs (RFC 2347).
///
/// Borrowed from a datagram or from an [`OptionsBuf`]. Iteration yields `(name, value)` byte
/// strings; names are compared case-insensitively by the negotiation code, never here.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionList<'a> {
    raw: &'a [u8],
}

impl<'a> OptionList<'a> {
    /// Wraps raw `name\0value\0...` bytes. Returns [`DecodeError`] if they are not complete,
    /// NUL-terminated pairs.
    pub fn new(raw: &'a [u8]) -> Result<Self, DecodeError> {
        let mut rest = raw;
        while !rest.is_empty() {
            let (_, r) = split_cstr(rest)?;
            if r.is_empty() {
                return Err(DecodeError::OptionWithoutValue);
            }
            let (_, r) = split_cstr(r).map_err(|_| DecodeError::OptionWithoutValue)?;
            rest = r;
        }
        Ok(Self { raw })
    }

    /// The empty list.
    pub const fn empty() -> Self {
        Self { raw: &[] }
    }

    /// The raw bytes (`name\0value\0...`).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// True when there are no options.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Iterates over `(name, value)` pairs in wire order.
    pub fn iter(&self) -> OptionIter<'a> {
        OptionIter { rest: self.raw }
    }

    /// The value of the first option whose name matches `name` case-insensitively.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for OptionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (n, v) in self.iter() {
            m.entry(&String::from_utf8_lossy(n), &String::from_utf8_lossy(v));
        }
        m.finish()
    }
}

/// `name=value` pairs separated by spaces, with control characters escaped.
impl fmt::Display for OptionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (n, v) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            // Escaped: option bytes come from the network and end up in logs.
            write!(
                f,
                "{}={}",
                String::from_utf8_lossy(n).escape_debug(),
                String::from_utf8_lossy(v).escape_debug()
            )?;
        }
        Ok(())
    }
}

/// Iterator over an [`OptionList`].
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, r) = split_cstr(self.rest).ok()?;
        let (value, r) = split_cstr(r).ok()?;
        self.rest = r;
        Some((name, value))
    }
}

/// An owned option list, built once per transfer (for a request or an OACK).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionsBuf {
    raw: Vec<u8>,
}

impl OptionsBuf {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `name=value`. Returns [`EncodeError::NulInString`] if either contains NUL.
    pub fn push(&mut self, name: &str, value: &str) -> Result<(), EncodeError> {
        if name.as_bytes().contains(&0) || value.as_bytes().contains(&0) {
            return Err(EncodeError::NulInString);
        }
        self.raw.extend_from_slice(name.as_bytes());
        self.raw.push(0);
        self.raw.extend_from_slice(value.as_bytes());
        self.raw.push(0);
        Ok(())
    }

    /// Borrows the list for encoding.
    pub fn as_list(&self) -> OptionList<'_> {
        OptionList { raw: &self.raw }
    }

    /// True when no option was pushed.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// A read or write request (RFC 1350 §5, options per RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name as sent, without its NUL. Never empty, never contains NUL.
    pub filename: &'a [u8],
    /// The mode name as sent (any case). See [`Mode::parse`].
    pub mode: &'a [u8],
    /// Options appended to the request (RFC 2347), possibly empty.
    pub options: OptionList<'a>,
}

impl Request<'_> {
    /// The file name for display: lossy UTF-8.
    pub fn filename_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.filename)
    }
}

/// A TFTP packet, borrowing its variable parts from the datagram it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request (opcode 1).
    Rrq(Request<'a>),
    /// Write request (opcode 2).
    Wrq(Request<'a>),
    /// A block of data (opcode 3): block number 0..=65535 (wraps), payload 0..=blksize bytes.
    Data {
        /// Block number on the wire; the first block is 1.
        block: u16,
        /// The payload; shorter than blksize only in the last block.
        payload: &'a [u8],
    },
    /// Acknowledgement of a block (opcode 4); block 0 acknowledges a WRQ or an OACK.
    Ack {
        /// The acknowledged block number.
        block: u16,
    },
    /// Error (opcode 5): ends the transfer.
    Error {
        /// The error code.
        code: ErrorCode,
        /// The message, without its NUL; not necessarily UTF-8.
        message: &'a [u8],
    },
    /// Option acknowledgement (opcode 6, RFC 2347).
    Oack(OptionList<'a>),
}

fn split_cstr(b: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    match b.iter().position(|&c| c == 0) {
        Some(i) => Ok((&b[..i], &b[i + 1..])),
        None => Err(DecodeError::MissingNul),
    }
}

/// Parses the options of a request leniently: complete pairs are kept, and anything after the
/// last complete pair (padding NULs, a dangling name) is ignored, as tftp-hpa does.
fn lenient_options(raw: &[u8]) -> OptionList<'_> {
    let mut end = 0;
    let mut rest = raw;
    while let Ok((name, r)) = split_cstr(rest) {
        if name.is_empty() {
            break;
        }
        let Ok((_, r)) = split_cstr(r) else { break };
        end = raw.len() - r.len();
        rest = r;
    }
    OptionList { raw: &raw[..end] }
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    ///
    /// Requests are parsed leniently after the mode (trailing padding and a dangling option
    /// name are ignored); everything else strictly, except that an ERROR message may lack its
    /// NUL (some embedded peers omit it). Never panics.
    ///
    /// # Errors
    /// [`DecodeError`] when the datagram is not a TFTP packet.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < 2 {
            return Err(DecodeError::Truncated);
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        let opcode = Opcode::from_u16(op).ok_or(DecodeError::UnknownOpcode(op))?;
        match opcode {
            Opcode::Rrq | Opcode::Wrq => {
                let (filename, rest) = split_cstr(body)?;
                if filename.is_empty() {
                    return Err(DecodeError::EmptyFilename);
                }
                let (mode, rest) = split_cstr(rest)?;
                let req = Request {
                    filename,
                    mode,
                    options: lenient_options(rest),
                };
                Ok(if opcode == Opcode::Rrq {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            Opcode::Data => {
                if body.len() < 2 {
                    return Err(DecodeError::Truncated);
                }
                Ok(Packet::Data {
                    block: u16::from_be_bytes([body[0], body[1]]),
                    payload: &body[2..],
                })
            }
            Opcode::Ack => match body.len() {
                0 | 1 => Err(DecodeError::Truncated),
                2 => Ok(Packet::Ack {
                    block: u16::from_be_bytes([body[0], body[1]]),
                }),
                _ => Err(DecodeError::TrailingBytes),
            },
            Opcode::Error => {
                if body.len() < 2 {
                    return Err(DecodeError::Truncated);
                }
                let code = ErrorCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
                let msg = &body[2..];
                let message = match msg.iter().position(|&c| c == 0) {
                    Some(i) => &msg[..i],
                    None => msg,
                };
                Ok(Packet::Error { code, message })
            }
            Opcode::Oack => Ok(Packet::Oack(OptionList::new(body)?)),
        }
    }

    /// Bytes [`Packet::encode`] will write.
    pub fn encoded_len(&self) -> usize {
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                2 + r.filename.len() + 1 + r.mode.len() + 1 + r.options.raw.len()
            }
            Packet::Data { payload, .. } => DATA_HEADER_LEN + payload.len(),
            Packet::Ack { .. } => 4,
            Packet::Error { message, .. } => 4 + message.len() + 1,
            Packet::Oack(o) => 2 + o.raw.len(),
        }
    }

    /// The packet's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Packet::Rrq(_) => Opcode::Rrq,
            Packet::Wrq(_) => Opcode::Wrq,
            Packet::Data { .. } => Opcode::Data,
            Packet::Ack { .. } => Opcode::Ack,
            Packet::Error { .. } => Opcode::Error,
            Packet::Oack(_) => Opcode::Oack,
        }
    }

    /// Encodes into `buf`, returning the number of bytes written.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if `buf` is shorter than [`Packet::encoded_len`];
    /// [`EncodeError::NulInString`] if a filename, mode or message contains NUL.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.encoded_len();
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        buf[..2].copy_from_slice(&(self.opcode() as u16).to_be_bytes());
        let mut w = Writer { buf, pos: 2 };
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                w.cstr(r.filename)?;
                w.cstr(r.mode)?;
                w.bytes(r.options.raw);
            }
            Packet::Data { block, payload } => {
                w.bytes(&block.to_be_bytes());
                w.bytes(payload);
            }
            Packet::Ack { block } => w.bytes(&block.to_be_bytes()),
            Packet::Error { code, message } => {
                w.bytes(&code.to_u16().to_be_bytes());
                w.cstr(message)?;
            }
            Packet::Oack(o) => w.bytes(o.raw),
        }
        Ok(w.pos)
    }
}

/// Writes a DATA header for `block` into the first 4 bytes of `buf`, so a payload read
/// straight into `buf[4..]` becomes a complete DATA packet without a copy.
///
/// # Panics
/// If `buf` is shorter than [`DATA_HEADER_LEN`].
pub fn write_data_header(buf: &mut [u8], block: u16) {
    buf[..2].copy_from_slice(&(Opcode::Data as u16).to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn cstr(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        if b.contains(&0) {
            return Err(EncodeError::NulInString);
        }
        self.bytes(b);
        self.buf[self.pos] = 0;
        self.pos += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(p: Packet<'_>, golden: &[u8]) {
        let mut buf = vec![0u8; p.encoded_len()];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], golden, "encoding of {p:?}");
        assert_eq!(Packet::decode(golden).unwrap(), p);
    }

    #[test]
    fn golden_rrq_with_options() {
        let opts = OptionList::new(b"blksize\x001468\x00tsize\x000\x00").unwrap();
        roundtrip(
            Packet::Rrq(Request {
                filename: b"pxelinux.0",
                mode: b"octet",
                options: opts,
            }),
            b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00",
        );
    }

    #[test]
    fn golden_wrq_plain() {
        roundtrip(
            Packet::Wrq(Request {
                filename: b"a/b.txt",
                mode: b"NETASCII",
                options: OptionList::empty(),
            }),
            b"\x00\x02a/b.txt\x00NETASCII\x00",
        );
    }

    #[test]
    fn golden_data_ack_error_oack() {
        roundtrip(
            Packet::Data {
                block: 0x0102,
                payload: b"hi",
            },
            b"\x00\x03\x01\x02hi",
        );
        roundtrip(
            Packet::Data {
                block: 65535,
                payload: b"",
            },
            b"\x00\x03\xff\xff",
        );
        roundtrip(Packet::Ack { block: 0 }, b"\x00\x04\x00\x00");
        roundtrip(
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: b"File not found",
            },
            b"\x00\x05\x00\x01File not found\x00",
        );
        roundtrip(
            Packet::Error {
                code: ErrorCode::Other(42),
                message: b"",
            },
            b"\x00\x05\x00\x2a\x00",
        );
        roundtrip(
            Packet::Oack(OptionList::new(b"windowsize\x0016\x00").unwrap()),
            b"\x00\x06windowsize\x0016\x00",
        );
        roundtrip(Packet::Oack(OptionList::empty()), b"\x00\x06");
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert_eq!(Packet::decode(b""), Err(DecodeError::Truncated));
        assert_eq!(Packet::decode(b"\x00"), Err(DecodeError::Truncated));
        assert_eq!(
            Packet::decode(b"\x00\x09"),
            Err(DecodeError::UnknownOpcode(9))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file"),
            Err(DecodeError::MissingNul)
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file\x00octet"),
            Err(DecodeError::MissingNul)
        );
        assert_eq!(
            Packet::decode(b"\x00\x01\x00octet\x00"),
            Err(DecodeError::EmptyFilename)
        );
        assert_eq!(Packet::decode(b"\x00\x03\x00"), Err(DecodeError::Truncated));
        assert_eq!(Packet::decode(b"\x00\x04\x00"), Err(DecodeError::Truncated));
        assert_eq!(
            Packet::decode(b"\x00\x04\x00\x01\x00"),
            Err(DecodeError::TrailingBytes)
        );
        assert_eq!(
            Packet::decode(b"\x00\x06blksize\x00"),
            Err(DecodeError::OptionWithoutValue)
        );
        assert_eq!(
            Packet::decode(b"\x00\x06blksize\x00512"),
            Err(DecodeError::OptionWithoutValue)
        );
    }

    #[test]
    fn request_options_are_lenient_about_trailing_bytes() {
        let p = Packet::decode(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00\x00\x00").unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(r.options.as_bytes(), b"tsize\x000\x00");
        let p = Packet::decode(b"\x00\x01f\x00octet\x00tsize\x000\x00blksize").unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(r.options.iter().count(), 1);
        assert_eq!(r.options.get("TSIZE"), Some(&b"0"[..]));
    }

    #[test]
    fn option_display_escapes_control_characters() {
        let o = OptionList::new(b"blksize\x00512\x00evil\nline\x00x\x1b[31m\x00").unwrap();
        assert_eq!(o.to_string(), "blksize=512 evil\\nline=x\\u{1b}[31m");
    }

    #[test]
    fn error_without_nul_is_accepted() {
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x02denied").unwrap(),
            Packet::Error {
                code: ErrorCode::AccessViolation,
                message: b"denied"
            }
        );
    }

    #[test]
    fn encode_checks_buffer_and_nul() {
        let mut small = [0u8; 3];
        assert_eq!(
            Packet::Ack { block: 1 }.encode(&mut small),
            Err(EncodeError::BufferTooSmall { needed: 4 })
        );
        let mut buf = [0u8; 64];
        let p = Packet::Error {
            code: ErrorCode::NotDefined,
            message: b"a\0b",
        };
        assert_eq!(p.encode(&mut buf), Err(EncodeError::NulInString));
    }

    fn cstring() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..40)
    }

    fn options() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((cstring(), cstring()), 0..5).prop_map(|pairs| {
            let mut raw = Vec::new();
            for (n, v) in pairs {
                // Request options stop at an empty name, so generate non-empty names.
                let n = if n.is_empty() { b"x".to_vec() } else { n };
                raw.extend_from_slice(&n);
                raw.push(0);
                raw.extend_from_slice(&v);
                raw.push(0);
            }
            raw
        })
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Req(bool, Vec<u8>, Vec<u8>, Vec<u8>),
        Data(u16, Vec<u8>),
        Ack(u16),
        Error(u16, Vec<u8>),
        Oack(Vec<u8>),
    }

    impl Owned {
        fn packet(&self) -> Packet<'_> {
            match self {
                Owned::Req(rrq, f, m, o) => {
                    let r = Request {
                        filename: f,
                        mode: m,
                        options: OptionList::new(o).unwrap(),
                    };
                    if *rrq {
                        Packet::Rrq(r)
                    } else {
                        Packet::Wrq(r)
                    }
                }
                Owned::Data(b, p) => Packet::Data {
                    block: *b,
                    payload: p,
                },
                Owned::Ack(b) => Packet::Ack { block: *b },
                Owned::Error(c, m) => Packet::Error {
                    code: ErrorCode::from_u16(*c),
                    message: m,
                },
                Owned::Oack(o) => Packet::Oack(OptionList::new(o).unwrap()),
            }
        }
    }

    fn any_packet() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (
                any::<bool>(),
                cstring().prop_filter("non-empty", |f| !f.is_empty()),
                cstring(),
                options()
            )
                .prop_map(|(r, f, m, o)| Owned::Req(r, f, m, o)),
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..600))
                .prop_map(|(b, p)| Owned::Data(b, p)),
            any::<u16>().prop_map(Owned::Ack),
            (any::<u16>(), cstring()).prop_map(|(c, m)| Owned::Error(c, m)),
            options().prop_map(Owned::Oack),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(o in any_packet()) {
            let p = o.packet();
            let mut buf = vec![0u8; p.encoded_len()];
            let n = p.encode(&mut buf).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(Packet::decode(&buf).unwrap(), p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(p) = Packet::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes to the same packet.
                let mut buf = vec![0u8; p.encoded_len()];
                let n = p.encode(&mut buf).unwrap();
                prop_assert_eq!(Packet::decode(&buf[..n]).unwrap(), p);
            }
        }
    }
}
