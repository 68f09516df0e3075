//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets'
//! bodies, so every input the fuzzers kept, and every crash they found, stays a regression
//! test on the stable toolchain.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use tftpx_proto::fuzzing;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("corpus file");
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
}

#[test]
fn decode_corpus() {
    replay("decode", fuzzing::decode);
}

#[test]
fn netascii_corpus() {
    replay("netascii", fuzzing::netascii);
}

#[test]
fn negotiate_corpus() {
    replay("negotiate", fuzzing::negotiate);
}

#[test]
fn sender_corpus() {
    replay("sender", fuzzing::sender);
}

#[test]
fn receiver_corpus() {
    replay("receiver", fuzzing::receiver);
}
