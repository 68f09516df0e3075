//! netascii translation (RFC 1350 §5 and RFC 764): local text <-> wire text.
//!
//! On the wire a line ends in CR LF and a bare CR is sent as CR NUL. Locally (Unix) a line
//! ends in LF. Both translators keep state across calls, so a DATA block boundary may fall
//! between CR and its LF or NUL.
//!
//! ```
//! use tftpx_proto::netascii::{Decoder, Encoder};
//! let mut enc = Encoder::new();
//! let mut wire = [0u8; 16];
//! let (used, n) = enc.encode(b"a\nb\r", &mut wire);
//! assert_eq!((used, &wire[..n]), (4, &b"a\r\nb\r\0"[..]));
//! let mut dec = Decoder::new();
//! let mut local = Vec::new();
//! dec.decode(&wire[..3], &mut local); // "a\r" then a block boundary
//! dec.decode(&wire[3..n], &mut local);
//! dec.finish(&mut local);
//! assert_eq!(local, b"a\nb\r");
//! ```

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// Local text to netascii. LF becomes CR LF, CR becomes CR NUL; other bytes pass through.
#[derive(Debug, Clone, Default)]
pub struct Encoder {
    /// Second byte of an expansion that did not fit in the previous output buffer.
    pending: Option<u8>,
}

impl Encoder {
    /// A fresh encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when a byte of an earlier expansion still waits to be written.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Translates as much of `input` as fits into `out`. Returns `(bytes of input consumed,
    /// bytes of out written)`. Call again with the rest of the input (or an empty input, to
    /// flush a pending byte) until everything is consumed and [`Encoder::has_pending`] is false.
    pub fn encode(&mut self, input: &[u8], out: &mut [u8]) -> (usize, usize) {
        let mut w = 0;
        if let Some(p) = self.pending {
            if out.is_empty() {
                return (0, 0);
            }
            out[0] = p;
            w = 1;
            self.pending = None;
        }
        let mut r = 0;
        while r < input.len() && w < out.len() {
            let b = input[r];
            r += 1;
            let second = match b {
                LF => Some(LF),
                CR => Some(NUL),
                _ => None,
            };
            match second {
                None => {
                    out[w] = b;
                    w += 1;
                }
                Some(s) => {
                    out[w] = CR;
                    w += 1;
                    if w < out.len() {
                        out[w] = s;
                        w += 1;
                    } else {
                        self.pending = Some(s);
                    }
                }
            }
        }
        (r, w)
    }
}

/// netascii to local text. CR LF becomes LF, CR NUL becomes CR. A CR followed by anything
/// else is kept as is (lenient, as most peers are).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// The previous input ended in CR.
    pending_cr: bool,
}

impl Decoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the translation of `input` to `out`. The output is at most `input.len() + 1`
    /// bytes.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                match b {
                    LF => out.push(LF),
                    NUL => out.push(CR),
                    CR => {
                        out.push(CR);
                        self.pending_cr = true;
                    }
                    other => {
                        out.push(CR);
                        out.push(other);
                    }
                }
            } else if b == CR {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// Ends the stream: a trailing lone CR is written as CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(CR);
        }
    }
}

/// Length of `input` once encoded as netascii, in bytes (for the `tsize` of a netascii RRQ).
pub fn encoded_len(input: &[u8]) -> u64 {
    input.len() as u64 + input.iter().filter(|&&b| b == CR || b == LF).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_in_chunks(input: &[u8], out_chunk: usize) -> Vec<u8> {
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        let mut rest = input;
        let mut buf = vec![0u8; out_chunk];
        while !rest.is_empty() || enc.has_pending() {
            let (used, n) = enc.encode(rest, &mut buf);
            rest = &rest[used..];
            wire.extend_from_slice(&buf[..n]);
        }
        wire
    }

    #[test]
    fn golden_encoding() {
        assert_eq!(encode_in_chunks(b"a\nb", 64), b"a\r\nb");
        assert_eq!(encode_in_chunks(b"\r", 64), b"\r\0");
        assert_eq!(encode_in_chunks(b"\r\n", 64), b"\r\0\r\n");
        // The CR of an expansion lands at the end of one block, its LF starts the next.
        assert_eq!(encode_in_chunks(b"ab\n", 3), b"ab\r\n");
    }

    #[test]
    fn golden_decoding_across_boundaries() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for chunk in [&b"line\r"[..], b"\nnext\r", b"\0x\r", b"\r\n", b"\r"] {
            d.decode(chunk, &mut out);
        }
        d.finish(&mut out);
        assert_eq!(out, b"line\nnext\rx\r\n\r");
    }

    proptest! {
        #[test]
        fn roundtrip_any_chunking(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8), any::<u8>()], 0..300),
                                  out_chunk in 1usize..20, in_chunk in 1usize..20) {
            let wire = encode_in_chunks(&input, out_chunk);
            prop_assert_eq!(wire.len() as u64, encoded_len(&input));
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for c in wire.chunks(in_chunk) {
                d.decode(c, &mut out);
            }
            d.finish(&mut out);
            prop_assert_eq!(out, input);
        }
    }
}
