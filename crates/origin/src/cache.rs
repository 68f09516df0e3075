//! [`CachedOrigin`]: an origin with a local cache directory.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tftpx::proto::ErrorCode;
use tftpx::{Handler, HandlerError, ReadFile, RequestInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{origin_name, Fetch, Fetched, Validators};

/// `--cache-size` by default: 1 GiB (2^30 bytes).
pub const DEFAULT_CACHE_SIZE: u64 = 1 << 30;

/// Bytes before the body in a cache file: the header (what was fetched, its size and
/// validators), padded with zeros.
const HEADER_LEN: u64 = 4096;
const MAGIC: &str = "tftpx-cache 1\n";
/// Names of files still being fetched (never served as complete; removed at start).
const TMP_PREFIX: &str = ".tmp-";
/// Longest ETag or Last-Modified kept, in bytes (longer ones are not stored).
const MAX_VALIDATOR_LEN: usize = 512;
/// Body bytes read from the origin at a time.
const CHUNK: usize = 64 << 10;

/// An origin `O` with a cache directory: each file is fetched once and kept, and later
/// requests are served from the cache once the origin confirms it is current.
///
/// - **Revalidation.** A request for a cached file sends one conditional request (HTTP
///   `If-None-Match` with the ETag and `If-Modified-Since` with the Last-Modified date,
///   RFC 9110 section 13.1; S3 `If-None-Match` with the object's ETag): "not modified" ->
///   served from the cache; a new body replaces the copy. There is no freshness time: every
///   request (or every group of concurrent ones) asks the origin.
/// - **One fetch per file at a time.** Requests for a file that is being fetched or
///   revalidated share that one origin request: they stream from the cache file as it grows
///   (DATA flows for all of them while the origin still sends), with `tsize` from the
///   origin's size. 500 clients asking for the same kernel make one origin request.
/// - **Never partly complete.** A body is written to `DIR/.tmp-*` and renamed to its name
///   only when whole (its length matching `Content-Length` or the object's size); a body
///   that breaks off ends every transfer reading it with ERROR 0 and leaves nothing cached
///   (the next request fetches again). Leftover `.tmp-*` files are removed at start.
/// - **Size.** When the files kept exceed the capacity (bytes, 4 KiB header per file
///   included), the least recently used ones are removed (a transfer still reading one
///   keeps its open file). A file larger than the whole capacity is served and not kept.
/// - **Origin failures.** ERROR 1 (not found) during revalidation removes the copy and is
///   passed on; ERROR 2 is passed on; any other failure (ERROR 0: 5xx, refused, timeout)
///   with a cached copy serves the copy and logs a warning.
/// - Per-client answers: the origin sees the X-TFTP-* headers of the request that caused
///   the fetch only; an origin that answers per client must not be cached.
/// - Uploads go to `O` unchanged; the next read revalidates and sees the new version.
///
/// Cache file names are the hex of the requested name (checked by [`origin_name`]), or a
/// 128-bit hash of it for names over 100 bytes; the header repeats the name.
#[derive(Debug, Clone)]
pub struct CachedOrigin<O> {
    inner: O,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    tmp_seq: AtomicU64,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    fetches: AtomicU64,
    not_modified: AtomicU64,
    shared: AtomicU64,
    stale_served: AtomicU64,
    evicted: AtomicU64,
}

/// What a [`CachedOrigin`] did since it was made; each a count of requests or files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests served from a complete cache file (after "not modified", or with the origin
    /// failing).
    pub hits: u64,
    /// Bodies fetched from the origin (full GETs or GetObjects answered with a body).
    pub fetches: u64,
    /// Conditional requests the origin answered "not modified".
    pub not_modified: u64,
    /// Requests that joined a fetch or revalidation already under way.
    pub shared: u64,
    /// Requests served from the cache because the origin failed during revalidation.
    pub stale_served: u64,
    /// Files removed to stay within the capacity.
    pub evicted: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    inflight: HashMap<String, watch::Receiver<Phase>>,
    /// Bytes on disk of `entries`, headers included.
    total: u64,
    /// Last-use clock.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    name: Vec<u8>,
    size: u64,
    validators: Validators,
    used: u64,
}

/// Where a fetch or revalidation stands, as its requests see it.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for the origin's answer.
    Asking,
    /// Serve the complete cache file.
    Current,
    /// A new body, arriving in `file` (after [`HEADER_LEN`]).
    Body {
        file: Arc<File>,
        size: Option<u64>,
        written: u64,
        /// `Some` once the body ended: whole, or broken off (the reason, for the log).
        end: Option<Result<(), String>>,
    },
    /// The origin refused (or failed with no cached copy): sent to the client.
    Refused(HandlerError),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The cache file name of a requested (checked) name.
fn key_for(name: &[u8]) -> String {
    if name.len() <= 100 {
        return hex(name);
    }
    // FNV-1a, twice with different offsets: stable across builds, 128 bits.
    let fnv = |seed: u64| {
        name.iter().fold(seed, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "h{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

fn usable_validator(v: Option<String>) -> Option<String> {
    v.filter(|v| v.len() <= MAX_VALIDATOR_LEN && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
}

fn header(name: &[u8], size: u64, v: &Validators) -> Vec<u8> {
    let mut h = format!("{MAGIC}size {size}\nname {}\n", hex(name));
    if let Some(e) = &v.etag {
        h.push_str(&format!("etag {e}\n"));
    }
    if let Some(l) = &v.last_modified {
        h.push_str(&format!("last-modified {l}\n"));
    }
    h.push('\n');
    let mut h = h.into_bytes();
    h.resize(HEADER_LEN as usize, 0);
    h
}

/// Reads a cache file's header: the name, body size and validators, if the file is whole.
fn read_header(path: &Path) -> Option<(Vec<u8>, u64, Validators)> {
    let mut f = File::open(path).ok()?;
    let mut h = vec![0; HEADER_LEN as usize];
    f.read_exact(&mut h).ok()?;
    let text = std::str::from_utf8(&h[..h.iter().position(|&b| b == 0)?]).ok()?;
    let rest = text.strip_prefix(MAGIC)?;
    let (mut size, mut name, mut v) = (None, None, Validators::default());
    for line in rest.lines().take_while(|l| !l.is_empty()) {
        let (k, val) = line.split_once(' ')?;
        match k {
            "size" => size = val.parse::<u64>().ok(),
            "name" => name = unhex(val),
            "etag" => v.etag = Some(val.to_owned()),
            "last-modified" => v.last_modified = Some(val.to_owned()),
            _ => {}
        }
    }
    let (name, size) = (name?, size?);
    (f.metadata().ok()?.len() == HEADER_LEN + size).then_some((name, size, v))
}

impl<O: Fetch> CachedOrigin<O> {
    /// `inner` cached in `dir` (created if missing), keeping at most `capacity` bytes.
    /// Files already in `dir` from an earlier run are kept (least recently modified first
    /// to go); unfinished or damaged ones are removed, and then the least recently used
    /// beyond `capacity`.
    ///
    /// # Errors
    /// When `dir` cannot be created or listed.
    pub fn new(inner: O, dir: impl Into<PathBuf>, capacity: u64) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let file_name = e.file_name();
            let path = e.path();
            let Some(key) = file_name.to_str() else {
                continue;
            };
            if key.starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !e.file_type()?.is_file() {
                continue;
            }
            match read_header(&path) {
                Some((name, size, validators)) if key_for(&name) == key => {
                    let mtime = e.metadata().and_then(|m| m.modified()).ok();
                    found.push((mtime, key.to_owned(), name, size, validators));
                }
                _ => {
                    warn!("cache: removing {}: not a whole cache file", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let mut state = State::default();
        for (_, key, name, size, validators) in found {
            state.clock += 1;
            state.total += HEADER_LEN + size;
            let used = state.clock;
            state.entries.insert(
                key,
                Entry {
                    name,
                    size,
                    validators,
                    used,
                },
            );
        }
        let kept = state.entries.len();
        let this = Self {
            inner,
            shared: Arc::new(Shared {
                dir,
                capacity,
                state: Mutex::new(state),
                tmp_seq: AtomicU64::new(0),
                stats: Counters::default(),
            }),
        };
        this.shared.evict(&mut this.shared.lock());
        if kept > 0 {
            info!(
                "cache {}: {kept} file(s) from an earlier run",
                this.shared.dir.display()
            );
        }
        Ok(this)
    }

    /// The origin behind the cache.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.stats;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            fetches: c.fetches.load(Ordering::Relaxed),
            not_modified: c.not_modified.load(Ordering::Relaxed),
            shared: c.shared.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    /// Fetches and revalidations under way. A transfer may end (its last block sent) just
    /// before its fetch renames the file into place.
    pub fn fetches_under_way(&self) -> usize {
        self.shared.lock().inflight.len()
    }

    /// Bytes the files kept take on disk now (4 KiB header each included).
    pub fn used_bytes(&self) -> u64 {
        self.shared.lock().total
    }

    /// Answers every request for `key` in `tx`: asks the origin, then publishes the result.
    async fn lead(
        self,
        key: String,
        name: Vec<u8>,
        peer: std::net::SocketAddr,
        known: Option<Validators>,
        have_copy: bool,
        tx: watch::Sender<Phase>,
    ) {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let answer = self.inner.fetch(&name, peer, known.as_ref()).await;
        let stats = &self.shared.stats;
        match answer {
            Ok(Fetched::NotModified) => {
                stats.not_modified.fetch_add(1, Ordering::Relaxed);
                debug!("cache: {shown} not modified at the origin");
                tx.send_replace(Phase::Current);
                self.shared.lock().inflight.remove(&key);
            }
            Err(e) if have_copy && e.code == ErrorCode::NotDefined => {
                stats.stale_served.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "cache: the origin failed to revalidate {shown} ({}); serving the cached copy",
                    e.message
                );
                tx.send_replace(Phase::Current);
                self.shared.lock().inflight.remove(&key);
            }
            Err(e) => {
                {
                    let mut st = self.shared.lock();
                    st.inflight.remove(&key);
                    if e.code == ErrorCode::FileNotFound {
                        self.shared.forget(&mut st, &key);
                    }
                }
                tx.send_replace(Phase::Refused(e));
            }
            Ok(Fetched::Body {
                reader,
                size,
                validators,
            }) => {
                stats.fetches.fetch_add(1, Ordering::Relaxed);
                self.pump(key, name, reader, size, validators, tx).await;
            }
        }
    }

    /// Writes a new body to a temporary file that requests read as it grows, and renames it
    /// into place when whole.
    async fn pump(
        &self,
        key: String,
        name: Vec<u8>,
        mut reader: crate::OriginReader,
        size: Option<u64>,
        validators: Validators,
        tx: watch::Sender<Phase>,
    ) {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let seq = self.shared.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .shared
            .dir
            .join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
        let opened = (|| {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.seek(SeekFrom::Start(HEADER_LEN))?;
            let w = f.try_clone()?;
            Ok::<_, io::Error>((Arc::new(f), w))
        })();
        let (file, writer) = match opened {
            Ok(f) => f,
            Err(e) => {
                warn!("cache: cannot create {}: {e}", tmp.display());
                let _ = std::fs::remove_file(&tmp);
                self.shared.lock().inflight.remove(&key);
                tx.send_replace(Phase::Refused(HandlerError::new(
                    ErrorCode::NotDefined,
                    "Cache unavailable",
                )));
                return;
            }
        };
        tx.send_replace(Phase::Body {
            file: file.clone(),
            size,
            written: 0,
            end: None,
        });
        let mut writer = tokio::fs::File::from_std(writer);
        let mut buf = vec![0; CHUNK];
        let mut written = 0u64;
        let body: Result<(), String> = async {
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("the origin's body broke off: {e}"))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if size.is_some_and(|s| written > s) {
                    return Err(format!("the origin sent more than its {size:?} bytes"));
                }
                writer
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| format!("cannot write the cache file: {e}"))?;
                writer
                    .flush()
                    .await
                    .map_err(|e| format!("cannot write the cache file: {e}"))?;
                tx.send_modify(|p| {
                    if let Phase::Body { written: w, .. } = p {
                        *w = written;
                    }
                });
            }
            if let Some(s) = size {
                if written != s {
                    return Err(format!(
                        "the origin's body ended after {written} of {s} bytes"
                    ));
                }
            }
            Ok(())
        }
        .await;
        drop(writer);
        let finished = match body {
            Err(e) => Err(e),
            Ok(()) => {
                let (file, tmp, dest) = (file.clone(), tmp.clone(), self.shared.dir.join(&key));
                let h = header(&name, written, &validators);
                tokio::task::spawn_blocking(move || {
                    file.write_all_at(&h, 0)?;
                    file.sync_data()?;
                    std::fs::rename(&tmp, &dest)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("cannot keep the cache file: {e}")))
            }
        };
        {
            let mut st = self.shared.lock();
            st.inflight.remove(&key);
            // The copy kept before, if any, is not the origin's version any more: replaced
            // by the rename, or removed.
            if finished.is_ok() {
                if let Some(old) = st.entries.remove(&key) {
                    st.total -= HEADER_LEN + old.size;
                }
            } else {
                self.shared.forget(&mut st, &key);
            }
            if finished.is_ok() {
                st.clock += 1;
                st.total += HEADER_LEN + written;
                let used = st.clock;
                st.entries.insert(
                    key.clone(),
                    Entry {
                        name,
                        size: written,
                        validators: Validators {
                            etag: usable_validator(validators.etag),
                            last_modified: usable_validator(validators.last_modified),
                        },
                        used,
                    },
                );
                self.shared.evict(&mut st);
            }
        }
        match &finished {
            Ok(()) => info!("cache: fetched {shown} from the origin ({written} bytes)"),
            Err(e) => {
                warn!("cache: {shown}: {e}; nothing kept");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        tx.send_modify(|p| {
            if let Phase::Body { end, .. } = p {
                *end = Some(finished);
            }
        });
    }

    /// The complete cache file of `key`, if still kept.
    fn open_cached(&self, key: &str) -> Option<ReadFile<CacheReader>> {
        let size = {
            let mut st = self.shared.lock();
            st.clock += 1;
            let clock = st.clock;
            let e = st.entries.get_mut(key)?;
            e.used = clock;
            e.size
        };
        let mut f = File::open(self.shared.dir.join(key)).ok()?;
        f.seek(SeekFrom::Start(HEADER_LEN)).ok()?;
        self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(ReadFile {
            reader: CacheReader(Inner::Whole(tokio::fs::File::from_std(f).take(size))),
            size: Some(size),
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops `key`'s entry and file, if any.
    fn forget(&self, st: &mut State, key: &str) {
        if let Some(e) = st.entries.remove(key) {
            st.total -= HEADER_LEN + e.size;
            let _ = std::fs::remove_file(self.dir.join(key));
        }
    }

    /// Removes the least recently used files (not being fetched) until within capacity.
    fn evict(&self, st: &mut State) {
        while st.total > self.capacity {
            let Some(key) = st
                .entries
                .iter()
                .filter(|(k, _)| !st.inflight.contains_key(*k))
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            debug!("cache: evicting {key}");
            self.forget(st, &key);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<O: Fetch> Handler for CachedOrigin<O> {
    type Reader = CacheReader;
    type Writer = O::Writer;

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        self.inner.open_write(req, size).await
    }

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let name = origin_name(req.filename)?;
        let key = key_for(&name);
        // A cache file may be evicted between "current" and opening it: ask again (twice).
        for _ in 0..3 {
            let mut rx = {
                let mut st = self.shared.lock();
                if st.entries.get(&key).is_some_and(|e| e.name != name) {
                    // Two long names with one hash: the newer request wins the file.
                    self.shared.forget(&mut st, &key);
                }
                if let Some(rx) = st.inflight.get(&key) {
                    self.shared.stats.shared.fetch_add(1, Ordering::Relaxed);
                    rx.clone()
                } else {
                    let copy = st.entries.get(&key);
                    let have_copy = copy.is_some();
                    let known = copy
                        .map(|e| e.validators.clone())
                        .filter(|v| v.etag.is_some() || v.last_modified.is_some());
                    let (tx, rx) = watch::channel(Phase::Asking);
                    st.inflight.insert(key.clone(), rx.clone());
                    // Its own task: the fetch goes on for the others if this client leaves.
                    tokio::spawn(self.clone().lead(
                        key.clone(),
                        name.clone(),
                        req.peer,
                        known,
                        have_copy,
                        tx,
                    ));
                    rx
                }
            };
            let phase = match rx.wait_for(|p| !matches!(p, Phase::Asking)).await {
                Ok(p) => p.clone(),
                Err(_) => {
                    return Err(HandlerError::new(
                        ErrorCode::NotDefined,
                        "Origin unavailable",
                    ))
                }
            };
            match phase {
                Phase::Asking => unreachable!(),
                Phase::Refused(e) => return Err(e),
                Phase::Body { file, size, .. } => {
                    return Ok(ReadFile {
                        reader: CacheReader(Inner::Growing {
                            file,
                            offset: 0,
                            rx,
                            waiting: None,
                        }),
                        size,
                    })
                }
                Phase::Current => {
                    if let Some(f) = self.open_cached(&key) {
                        return Ok(f);
                    }
                }
            }
        }
        Err(HandlerError::new(
            ErrorCode::NotDefined,
            "Cache unavailable",
        ))
    }
}

/// The reader of a file served by a [`CachedOrigin`]: a complete cache file, or one still
/// being fetched (reads wait for the origin's bytes; a body that breaks off is an error).
pub struct CacheReader(Inner);

type Changed = Pin<Box<dyn Future<Output = bool> + Send>>;

enum Inner {
    Whole(tokio::io::Take<tokio::fs::File>),
    Growing {
        file: Arc<File>,
        /// Body bytes read so far.
        offset: u64,
        rx: watch::Receiver<Phase>,
        waiting: Option<Changed>,
    },
}

impl std::fmt::Debug for CacheReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Whole(_) => f.write_str("CacheReader::Whole"),
            Inner::Growing { offset, .. } => write!(f, "CacheReader::Growing(at {offset})"),
        }
    }
}

impl AsyncRead for CacheReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (file, offset, rx, waiting) = match &mut self.0 {
            Inner::Whole(f) => return Pin::new(f).poll_read(cx, buf),
            Inner::Growing {
                file,
                offset,
                rx,
                waiting,
            } => (file, offset, rx, waiting),
        };
        loop {
            let (written, end) = match &*rx.borrow_and_update() {
                Phase::Body { written, end, .. } => (*written, end.clone()),
                _ => return Poll::Ready(Err(io::Error::other("cache fetch in a wrong state"))),
            };
            if *offset < written {
                let want = usize::try_from(written - *offset)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                // Bytes just written: from the page cache, without blocking on the disk.
                let n = file.read_at(buf.initialize_unfilled_to(want), HEADER_LEN + *offset)?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cache file shorter than written",
                    )));
                }
                buf.advance(n);
                *offset += n as u64;
                return Poll::Ready(Ok(()));
            }
            match end {
                Some(Ok(())) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => {}
            }
            let changed = waiting.get_or_insert_with(|| {
                let mut rx = rx.clone();
                Box::pin(async move { rx.changed().await.is_ok() })
            });
            match changed.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(alive) => {
                    *waiting = None;
                    if !alive && !matches!(&*rx.borrow(), Phase::Body { end: Some(_), .. }) {
                        return Poll::Ready(Err(io::Error::other("cache fetch abandoned")));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_headers_round_trip() {
        assert_eq!(key_for(b"boot/x"), "626f6f742f78");
        let long = vec![b'a'; 300];
        let k = key_for(&long);
        assert_eq!(k.len(), 33);
        assert_ne!(k, key_for(&long[..299]));
        assert_eq!(unhex("626f6f742f78").unwrap(), b"boot/x");
        let v = Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Sun, 29 Nov 2026 23:00:00 GMT".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut bytes = header(b"boot/x", 3, &v);
        assert_eq!(bytes.len() as u64, HEADER_LEN);
        bytes.extend_from_slice(b"abc");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_header(&p).unwrap(), (b"boot/x".to_vec(), 3, v));
        // A body shorter than the header says is not whole.
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_header(&p).is_none());
        assert_eq!(usable_validator(Some("a\nb".into())), None);
    }
}
