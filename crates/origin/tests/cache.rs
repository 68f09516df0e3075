//! `CachedOrigin` in front of a real HTTP origin started here (Python's http.server:
//! `tests/origin_http.py`, which logs every request), served by a real `tftpx::Server` on
//! loopback and fetched with the tftpx client. Origin request counts come from its log.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tftpx::proto::ErrorCode;
use tftpx::ClientError;
use tftpx_origin::{CachedOrigin, HttpOrigin, DEFAULT_CACHE_SIZE};

#[path = "support/http_origin.rs"]
mod http_origin;
use http_origin::Origin;
#[path = "support/tftp.rs"]
mod tftp;
use tftp::{client, serve, settle};

impl Origin {
    /// (unconditional GETs, conditional GETs, 304 answers) for `path`.
    fn counts(&self, path: &str) -> (usize, usize, usize) {
        let e = self.entries();
        let of = |ev: &'static str| {
            e.iter()
                .filter(move |x| x["event"] == ev && x["path"] == path)
        };
        (
            of("request").filter(|x| x["inm"].is_null()).count(),
            of("request").filter(|x| !x["inm"].is_null()).count(),
            of("not-modified").count(),
        )
    }
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1428) as u8 ^ salt).collect()
}

/// Downloads `name`, then waits (at most 30 s) until `cache` has no fetch under way: the
/// last block can reach the client just before the fetch renames its file into place.
async fn get(
    addr: SocketAddr,
    cache: &CachedOrigin<HttpOrigin>,
    name: &str,
) -> Result<Vec<u8>, ClientError> {
    let mut got = Vec::new();
    let r = client(addr).get(name, &mut got, |_| {}).await;
    settle(cache).await;
    r.map(|_| got)
}

/// Files in the cache directory (names starting with `.tmp-` are partial fetches).
fn cached_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

type Downloads = Vec<tokio::task::JoinHandle<Result<Vec<u8>, ClientError>>>;

/// `n` downloads of `name` at once; each reports (its index, bytes so far) on the channel.
fn storm(
    addr: SocketAddr,
    name: &'static str,
    n: usize,
) -> (
    Downloads,
    tokio::sync::mpsc::UnboundedReceiver<(usize, u64)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = (0..n)
        .map(|i| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                client(addr)
                    .get(name, &mut got, move |p| {
                        let _ = tx.send((i, p.bytes));
                    })
                    .await?;
                Ok(got)
            })
        })
        .collect();
    (tasks, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_downloads_make_one_origin_get_then_only_304s() {
    let kernel = pattern(300_000, 0);
    let origin = Origin::start(&[("slow/kernel", &kernel)]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = CachedOrigin::new(
        HttpOrigin::new(&origin.url()).unwrap(),
        cache_dir.path(),
        DEFAULT_CACHE_SIZE,
    )
    .unwrap();
    let (addr, token) = serve(cached.clone());

    // Round 1, empty cache: the origin holds back the second half until every one of the
    // 50 clients has received DATA, so all 50 overlap the one fetch.
    let (tasks, mut progress) = storm(addr, "slow/kernel", 50);
    let mut started = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while started.len() < 50 {
        let (i, bytes) = tokio::time::timeout_at(deadline, progress.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} clients got DATA in 120 s", started.len()))
            .unwrap();
        if bytes > 0 {
            started.insert(i);
        }
    }
    // While the body is incomplete, nothing is in the cache under its name.
    assert!(
        cached_files(cache_dir.path())
            .iter()
            .all(|f| f.starts_with(".tmp-")),
        "{:?}",
        cached_files(cache_dir.path())
    );
    std::fs::write(&origin.release, b"").unwrap();
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a download did not end in 120 s")
            .unwrap()
            .unwrap();
        assert!(got == kernel, "a download differs");
    }
    settle(&cached).await;
    assert_eq!(
        origin.counts("/slow/kernel"),
        (1, 0, 0),
        "one origin GET for 50 clients"
    );
    let s = cached.stats();
    assert_eq!((s.fetches, s.shared, s.hits), (1, 49, 0), "{s:?}");
    assert_eq!(
        cached_files(cache_dir.path()),
        ["736c6f772f6b65726e656c"],
        "one whole cache file, named by the hex of the name"
    );
    assert_eq!(cached.used_bytes(), 4096 + 300_000);

    // Round 2: 50 more; no full GET, only conditional ones, each answered 304.
    let (tasks, _progress) = storm(addr, "slow/kernel", 50);
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a download did not end in 120 s")
            .unwrap()
            .unwrap();
        assert!(got == kernel, "a cached download differs");
    }
    let (full, conditional, not_modified) = origin.counts("/slow/kernel");
    assert_eq!(full, 1, "no second full GET");
    assert!(conditional >= 1, "revalidated");
    assert_eq!(conditional, not_modified, "every revalidation got 304");
    let s = cached.stats();
    assert_eq!(s.fetches, 1);
    assert_eq!(s.hits, 50, "{s:?}");
    eprintln!("round 2: {conditional} conditional request(s) for 50 clients; {s:?}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_fetched_again_and_a_dead_origin_serves_the_copy() {
    let v1 = pattern(50_000, 0);
    let v2 = pattern(60_000, 0x55);
    let origin = Origin::start(&[("a.bin", &v1)]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = CachedOrigin::new(
        HttpOrigin::new(&origin.url()).unwrap(),
        cache_dir.path(),
        DEFAULT_CACHE_SIZE,
    )
    .unwrap();
    let (addr, token) = serve(cached.clone());
    assert!(get(addr, &cached, "a.bin").await.unwrap() == v1);
    assert!(get(addr, &cached, "a.bin").await.unwrap() == v1);
    assert_eq!(origin.counts("/a.bin"), (1, 1, 1));

    // The origin's file changes: the conditional GET gets the new body.
    std::fs::write(origin.www.join("a.bin"), &v2).unwrap();
    assert!(
        get(addr, &cached, "a.bin").await.unwrap() == v2,
        "new bytes served"
    );
    assert_eq!(origin.counts("/a.bin"), (1, 2, 1));
    assert!(get(addr, &cached, "a.bin").await.unwrap() == v2);
    assert_eq!(origin.counts("/a.bin"), (1, 3, 2));
    assert_eq!(cached.used_bytes(), 4096 + 60_000);

    // Not found at the origin any more: ERROR 1, and the copy is dropped.
    std::fs::remove_file(origin.www.join("a.bin")).unwrap();
    let e = get(addr, &cached, "a.bin").await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::FileNotFound,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(cached.used_bytes(), 0);
    assert!(cached_files(cache_dir.path()).is_empty());

    // A cached copy and an origin that is down: the copy is served (with a warning).
    std::fs::write(origin.www.join("b.bin"), &v1).unwrap();
    assert!(get(addr, &cached, "b.bin").await.unwrap() == v1);
    drop(origin);
    assert!(
        get(addr, &cached, "b.bin").await.unwrap() == v1,
        "served from the cache"
    );
    assert_eq!(cached.stats().stale_served, 1);
    // Never fetched and the origin down: ERROR 0.
    let e = get(addr, &cached, "c.bin").await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::NotDefined,
                ..
            }
        ),
        "{e}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_body_is_an_error_and_nothing_is_cached() {
    let big = pattern(400_000, 3);
    let origin = Origin::start(&[("big.bin", &big)]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = CachedOrigin::new(
        HttpOrigin::new(&origin.url()).unwrap(),
        cache_dir.path(),
        DEFAULT_CACHE_SIZE,
    )
    .unwrap();
    let (addr, token) = serve(cached.clone());
    std::fs::write(&origin.die, b"").unwrap();
    let e = get(addr, &cached, "big.bin").await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::NotDefined,
                ..
            }
        ),
        "the client gets an ERROR, not a short file: {e}"
    );
    let died = origin
        .entries()
        .iter()
        .filter(|e| e["event"] == "died")
        .count();
    assert_eq!(died, 1);
    // The fetch task removes its partial file once the body broke off.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cached_files(cache_dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cached_files(cache_dir.path()).is_empty(),
        "{:?}",
        cached_files(cache_dir.path())
    );
    assert_eq!(cached.used_bytes(), 0);

    // The origin recovers: the next request fetches again (unconditionally) and succeeds.
    std::fs::remove_file(&origin.die).unwrap();
    assert!(get(addr, &cached, "big.bin").await.unwrap() == big);
    assert_eq!(origin.counts("/big.bin"), (2, 0, 0));
    assert_eq!(cached_files(cache_dir.path()).len(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_files_are_evicted_beyond_the_size() {
    let files: Vec<(String, Vec<u8>)> = (0..3u8)
        .map(|i| (format!("f{i}.bin"), pattern(100_000, i)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let origin = Origin::start(&refs);
    let cache_dir = tempfile::tempdir().unwrap();
    // Room for two files (4 KiB header each), not three.
    let capacity = 2 * (4096 + 100_000) + 50_000;
    let cached = CachedOrigin::new(
        HttpOrigin::new(&origin.url()).unwrap(),
        cache_dir.path(),
        capacity,
    )
    .unwrap();
    let (addr, token) = serve(cached.clone());
    for name in ["f0.bin", "f1.bin", "f0.bin", "f2.bin"] {
        let want = &files.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(&get(addr, &cached, name).await.unwrap() == want, "{name}");
    }
    // f1 was used least recently: gone; f0 and f2 kept.
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        cached_files(cache_dir.path()),
        [hex("f0.bin"), hex("f2.bin")]
    );
    assert!(cached.used_bytes() <= capacity);
    assert_eq!(cached.stats().evicted, 1);
    // f0 is only revalidated; f1 is fetched in full again and pushes out f2, now the
    // least recently used.
    assert!(get(addr, &cached, "f0.bin").await.unwrap() == files[0].1);
    assert_eq!(origin.counts("/f0.bin"), (1, 2, 2));
    assert!(get(addr, &cached, "f1.bin").await.unwrap() == files[1].1);
    assert_eq!(origin.counts("/f1.bin"), (2, 0, 0));
    assert_eq!(
        cached_files(cache_dir.path()),
        [hex("f0.bin"), hex("f1.bin")]
    );
    assert_eq!(cached.stats().evicted, 2);
    token.cancel();

    // A new CachedOrigin on the same directory (a restart) keeps what is there.
    let again = CachedOrigin::new(
        HttpOrigin::new(&origin.url()).unwrap(),
        cache_dir.path(),
        capacity,
    )
    .unwrap();
    assert_eq!(again.used_bytes(), 2 * (4096 + 100_000));
    let (addr, token) = serve(again.clone());
    assert!(get(addr, &again, "f1.bin").await.unwrap() == files[1].1);
    assert_eq!(
        origin.counts("/f1.bin"),
        (2, 1, 1),
        "revalidated, not fetched"
    );
    token.cancel();
}
