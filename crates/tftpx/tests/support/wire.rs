//! Hand-built datagrams for tests that talk to a server directly: requests with any name,
//! mode and options (well-formed or not), and ACKs.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

/// An RRQ (opcode 1) or WRQ (2) for `name` in `mode` with `options` (name, value) pairs, as
/// RFC 1350 and RFC 2347 lay it out; the bytes are taken as given (NUL-free or not).
pub fn request(opcode: u8, name: &[u8], mode: &[u8], options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, opcode];
    v.extend_from_slice(name);
    v.push(0);
    v.extend_from_slice(mode);
    v.push(0);
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// An octet-mode RRQ for `name` with `options`.
pub fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request(1, name.as_bytes(), b"octet", options)
}

/// An octet-mode WRQ for `name` with `options`.
pub fn wrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request(2, name.as_bytes(), b"octet", options)
}

/// ACK of `block`.
pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}
