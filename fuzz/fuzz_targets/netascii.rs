//! See `tftpx_proto::fuzzing::netascii` for the input layout and the invariants checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tftpx_proto::fuzzing::netascii(data));
