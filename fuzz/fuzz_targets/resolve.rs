//! See `fuzz/resolve_body.rs` for the invariants checked.
#![no_main]

#[path = "../resolve_body.rs"]
mod resolve_body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| resolve_body::resolve(data));
