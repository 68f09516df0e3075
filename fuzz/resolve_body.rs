//! Body of the `resolve` fuzz target, shared with `crates/tftpx/tests/fuzz_resolve_corpus.rs`
//! (both include this file by path): `DirHandler::resolve` on an arbitrary requested name
//! never yields a path outside the root, the root itself, a `..` component or a temporary
//! upload name (`*.tftpx-part`); it refuses with ERROR 2, or ERROR 1 for a name that ends
//! in a separator (a directory).

use std::path::{Component, PathBuf};
use std::sync::OnceLock;

use tftpx::proto::ErrorCode;
use tftpx::{DirHandler, MAX_COMPONENT_LEN, MAX_NAME_LEN};

/// The served root: a fixed directory under the temporary directory, so seeds can name it
/// (`/tmp/tftpx-fuzz-resolve/...` where the temporary directory is `/tmp`).
fn handler() -> &'static DirHandler {
    static H: OnceLock<DirHandler> = OnceLock::new();
    H.get_or_init(|| {
        let root = std::env::temp_dir().join("tftpx-fuzz-resolve");
        std::fs::create_dir_all(&root).expect("create the fuzz root");
        DirHandler::new(root).expect("the fuzz root")
    })
}

pub fn resolve(name: &[u8]) {
    let h = handler();
    let root = h.root();
    match h.resolve(name) {
        Ok(path) => {
            let rel: PathBuf = path
                .strip_prefix(root)
                .unwrap_or_else(|_| panic!("{name:?} resolved outside the root: {path:?}"))
                .into();
            assert!(!rel.as_os_str().is_empty(), "{name:?} resolved to the root");
            for c in rel.components() {
                match c {
                    Component::Normal(s) => {
                        assert!(s.len() <= MAX_COMPONENT_LEN);
                        let s = s.as_encoded_bytes().to_ascii_lowercase();
                        assert!(
                            !s.ends_with(b".tftpx-part"),
                            "{name:?} names a temporary file"
                        );
                    }
                    other => panic!("{name:?} resolved to {path:?} with {other:?}"),
                }
            }
            assert!(name.len() <= MAX_NAME_LEN && !name.contains(&0));
            assert!(
                !name.split(|&b| b == b'/' || b == b'\\').any(|c| c == b".."),
                "{name:?} names a parent and was accepted"
            );
        }
        Err(e) if e.code == ErrorCode::FileNotFound => {
            let last = name.rsplit(|&b| b == b'/' || b == b'\\').next();
            assert!(
                matches!(last, Some(b"" | b".")),
                "{name:?}: ERROR 1 for a name that does not end in a separator"
            );
        }
        Err(e) => assert_eq!(e.code, ErrorCode::AccessViolation, "{name:?}: {e}"),
    }
}
