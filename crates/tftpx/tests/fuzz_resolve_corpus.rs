//! Replays the committed corpus of the `resolve` fuzz target (`fuzz/corpus/resolve/*`)
//! through the target's body, so path resolution keeps confining every name it has seen.

#[path = "../../../fuzz/resolve_body.rs"]
mod resolve_body;

#[test]
fn resolve_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/resolve");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("corpus file");
            let r = std::panic::catch_unwind(|| resolve_body::resolve(&data));
            assert!(r.is_ok(), "{} fails", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "corpus {} is empty", dir.display());
}
