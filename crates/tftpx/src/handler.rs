//! What the server serves: the [`Handler`] trait, and [`DirHandler`], a directory on disk.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::fstatat;
use nix::unistd::{unlinkat, UnlinkatFlags};

use tftpx_proto::wire::{ErrorCode, Mode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// Longest file name accepted in a request, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest single path component accepted, in bytes (the usual NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Write buffer of an upload, in bytes: file writes happen in chunks this big.
const UPLOAD_BUFFER: usize = 64 * 1024;

/// A refused request: the TFTP error code and message sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ERROR {code}: {message}")]
pub struct HandlerError {
    /// The code sent to the client.
    pub code: ErrorCode,
    /// The message sent to the client (keep it short and free of local paths).
    pub message: String,
}

impl HandlerError {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// ERROR 1, file not found.
    pub fn not_found() -> Self {
        Self::new(ErrorCode::FileNotFound, "File not found")
    }

    /// ERROR 2, access violation, with a reason.
    pub fn access(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AccessViolation, message)
    }

    /// Maps a local I/O error (opening, reading or writing a file) to what the peer is
    /// told: NotFound -> 1, PermissionDenied -> 2, disk full / quota / file too large -> 3,
    /// anything else -> 0 with the error's text.
    pub fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Self::not_found(),
            io::ErrorKind::PermissionDenied => Self::access("Permission denied"),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Self::new(ErrorCode::DiskFull, "Disk full or allocation exceeded")
            }
            io::ErrorKind::FileTooLarge => Self::new(ErrorCode::DiskFull, "File too large"),
            // Out of descriptors passes: "Server busy", never the OS text.
            _ if crate::server::no_descriptors(e) => crate::server::busy_error(),
            _ => Self::new(ErrorCode::NotDefined, format!("I/O error: {e}")),
        }
    }
}

/// A request as the handler sees it.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// The client's address and port (its TID).
    pub peer: SocketAddr,
    /// The file name exactly as requested (bytes; not necessarily UTF-8).
    pub filename: &'a [u8],
    /// The transfer mode.
    pub mode: Mode,
}

/// A file opened for an RRQ.
pub struct ReadFile<R> {
    /// The file's bytes, as stored (the server does netascii translation itself). The
    /// server reads it through a buffer sized to the negotiated window (16 KiB..=1 MiB), so
    /// the reader need not buffer.
    pub reader: R,
    /// The file's size in bytes, if known: reported as `tsize`, and then exactly this many
    /// bytes are served (a file that grows is cut there; one that ends early fails the
    /// transfer with ERROR 0 rather than a silently short copy).
    pub size: Option<u64>,
}

/// An upload in progress. Bytes written go to a place that does not replace anything until
/// [`Upload::commit`]; dropping an uncommitted upload discards it.
pub trait Upload: AsyncWrite + Send + Unpin + 'static {
    /// Makes the upload visible under its name, replacing any previous file atomically.
    ///
    /// # Errors
    /// Any I/O error flushing or renaming; the previous file is then left as it was.
    fn commit(self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Opens files for the server. Implement it to serve something other than a directory;
/// methods take `&self` so requests never wait on one another.
pub trait Handler: Send + Sync + 'static {
    /// The reader of a file being downloaded.
    type Reader: AsyncRead + Send + Unpin + 'static;
    /// The writer of a file being uploaded.
    type Writer: Upload;

    /// Opens `req.filename` for reading (RRQ).
    ///
    /// # Errors
    /// A [`HandlerError`] whose code and message are sent to the client.
    fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> impl Future<Output = Result<ReadFile<Self::Reader>, HandlerError>> + Send;

    /// Opens `req.filename` for writing (WRQ). `size` is the client's announced `tsize` in
    /// bytes, if any.
    ///
    /// # Errors
    /// A [`HandlerError`] whose code and message are sent to the client.
    fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Self::Writer, HandlerError>> + Send;
}

/// Serves one directory: names resolve inside it only.
///
/// - `/` and `\` both separate components; a leading `/` means the root itself (PXE configs
///   ask for `/pxelinux.0`), and an absolute path that starts with the root's own path is
///   accepted too. `..` anywhere is refused (ERROR 2), as are names with a NUL, names over
///   [`MAX_NAME_LEN`] bytes or with a component over [`MAX_COMPONENT_LEN`].
/// - Every open is relative to a descriptor of the root with `openat2(RESOLVE_BENEATH)`
///   (Linux 5.6+), so the kernel refuses any resolution that leaves the root, even when a
///   directory or link is swapped for a symbolic link to elsewhere while a request is being
///   served. Symbolic links are followed while they stay inside the root (ERROR 2
///   otherwise); an absolute link that points inside the root is followed too.
/// - Only regular files are served; FIFOs and devices are refused without being waited on.
/// - A file with more than one hard link is refused (ERROR 2) unless
///   [`DirHandler::allow_hard_links`]: a hard link is the same file as another name that may
///   lie outside the root. Uploads never write through a hard link (they replace the name).
/// - Writes need [`DirHandler::allow_write`] (overwrite existing files) or
///   [`DirHandler::allow_create`] (also create new ones); uploads go to a temporary file
///   beside the target (`.NAME.XXXXXXXX.tftpx-part`), created and renamed relative to the
///   directory's descriptor, renamed over the target only when the transfer completes.
#[derive(Debug, Clone)]
pub struct DirHandler {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    allow_write: bool,
    allow_create: bool,
    allow_hard_links: bool,
}

/// Flags for resolving names below the root: no escape, no /proc magic links.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn outside() -> HandlerError {
    HandlerError::access("Access outside the root refused")
}

impl DirHandler {
    /// Serves `root`, read-only.
    ///
    /// # Errors
    /// If `root` does not exist, is not a directory or cannot be opened.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let with_path =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.as_ref().display()));
        let canonical = std::fs::canonicalize(root.as_ref()).map_err(with_path)?;
        if !canonical.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", canonical.display()),
            ));
        }
        let fd = nix::fcntl::open(
            &canonical,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| with_path(e.into()))?;
        Ok(Self {
            root: canonical,
            root_fd: Arc::new(fd),
            allow_write: false,
            allow_create: false,
            allow_hard_links: false,
        })
    }

    /// Lets clients overwrite existing files.
    pub fn allow_write(mut self, yes: bool) -> Self {
        self.allow_write = yes;
        self
    }

    /// Lets clients create new files (implies [`DirHandler::allow_write`]).
    pub fn allow_create(mut self, yes: bool) -> Self {
        self.allow_create = yes;
        if yes {
            self.allow_write = true;
        }
        self
    }

    /// Serves files that have more than one hard link (refused by default: another name of
    /// the same file may lie outside the root).
    pub fn allow_hard_links(mut self, yes: bool) -> Self {
        self.allow_hard_links = yes;
        self
    }

    /// The served directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a requested name to a path below the root, by components only (no file system
    /// access). Symbolic links are checked when the file is opened.
    ///
    /// # Errors
    /// ERROR 2 for `..`, a NUL, overlong names, or a name that is the root itself.
    pub fn resolve(&self, name: &[u8]) -> Result<PathBuf, HandlerError> {
        Ok(self.root.join(self.relative(name)?))
    }

    /// [`DirHandler::resolve`], relative to the root.
    fn relative(&self, name: &[u8]) -> Result<PathBuf, HandlerError> {
        if name.len() > MAX_NAME_LEN {
            return Err(HandlerError::access("File name too long"));
        }
        if name.contains(&0) {
            return Err(HandlerError::access("Invalid file name"));
        }
        let mut name: Vec<u8> = name
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect();
        let root = self.root.as_os_str().as_bytes();
        if root != b"/" && name.starts_with(root) && name.get(root.len()) == Some(&b'/') {
            name.drain(..root.len());
        }
        let mut rel = PathBuf::new();
        for comp in name.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(outside()),
                c if c.len() > MAX_COMPONENT_LEN => {
                    return Err(HandlerError::access("File name too long"))
                }
                c => rel.push(OsStr::from_bytes(c)),
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(HandlerError::access("Not a regular file"));
        }
        Ok(rel)
    }

    /// Opens `rel` (relative to the root) without ever leaving the root.
    ///
    /// The kernel resolves the name below the root's descriptor and fails with EXDEV when
    /// a `..` or a symbolic link would leave it. An absolute symbolic link always does so
    /// lexically, even one that points back inside the root: that case is resolved once in
    /// user space and opened again by its canonical name below the root, still with
    /// RESOLVE_BENEATH, so a link swapped in between cannot lead outside either.
    fn open_beneath(&self, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, HandlerError> {
        // openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC.
        let flags = if flags.contains(OFlag::O_PATH) {
            flags | OFlag::O_CLOEXEC
        } else {
            flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = || {
            OpenHow::new()
                .flags(flags)
                .mode(nix::sys::stat::Mode::from_bits_truncate(mode))
                .resolve(beneath())
        };
        let rel = dot_if_empty(rel);
        match openat2(&*self.root_fd, rel, how()) {
            Ok(fd) => Ok(fd),
            Err(Errno::EXDEV | Errno::ELOOP) => {
                let inner = self.canonical_inside(rel)?;
                openat2(&*self.root_fd, dot_if_empty(&inner), how()).map_err(|e| match e {
                    Errno::EXDEV | Errno::ELOOP => outside(),
                    e => from_io(&e.into()),
                })
            }
            Err(e) => Err(from_io(&e.into())),
        }
    }

    /// `rel` with every symbolic link resolved, relative to the root; ERROR 2 when it leads
    /// outside. Only a name to reopen with RESOLVE_BENEATH: it checks nothing by itself.
    fn canonical_inside(&self, rel: &Path) -> Result<PathBuf, HandlerError> {
        let canonical = std::fs::canonicalize(self.root.join(rel)).map_err(|e| from_io(&e))?;
        canonical
            .strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .map_err(|_| outside())
    }

    fn open_read_blocking(&self, rel: &Path) -> Result<(std::fs::File, u64), HandlerError> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
        let fd = self.open_beneath(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| from_io(&e))?;
        if !meta.is_file() {
            return Err(HandlerError::access("Not a regular file"));
        }
        if meta.nlink() > 1 && !self.allow_hard_links {
            return Err(HandlerError::access(
                "Refused: the file has several hard links",
            ));
        }
        Ok((file, meta.len()))
    }

    fn open_write_blocking(&self, rel: &Path) -> Result<DirUpload, HandlerError> {
        let (Some(parent), Some(mut name)) = (rel.parent(), rel.file_name().map(OsStr::to_owned))
        else {
            return Err(HandlerError::access("Invalid file name"));
        };
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let mut dir = self
            .open_beneath(parent, dir_flags, 0)
            .map_err(|e| match e.code {
                ErrorCode::FileNotFound => {
                    HandlerError::new(ErrorCode::FileNotFound, "Directory not found")
                }
                _ => e,
            })?;
        let mut mode = 0o644;
        let mut existing = false;
        match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFLNK => {
                // Write through a link only while it stays inside the root: find the file
                // it names, and work in that file's directory from here on.
                let inner = self.canonical_inside(rel)?;
                let (Some(p), Some(n)) = (inner.parent(), inner.file_name()) else {
                    return Err(HandlerError::access("Not a regular file"));
                };
                dir = self.open_beneath(p, dir_flags, 0)?;
                name = n.to_owned();
                let st = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| from_io(&e.into()))?;
                (mode, existing) = (check_writable(&st)?, true);
            }
            Ok(st) => (mode, existing) = (check_writable(&st)?, true),
            Err(Errno::ENOENT) => {
                if !self.allow_create {
                    return Err(HandlerError::access(
                        "File does not exist and creating files is disabled",
                    ));
                }
            }
            Err(e) => return Err(from_io(&e.into())),
        }
        let (file, temp) = create_temp(&dir, &name, mode, existing)?;
        Ok(DirUpload {
            file: BufWriter::with_capacity(UPLOAD_BUFFER, tokio::fs::File::from_std(file)),
            dir,
            temp: Some(temp),
            name,
        })
    }
}

/// File type bits of `st_mode` (from `<sys/stat.h>`; the same on every Linux).
mod libc_mode {
    pub const S_IFMT: u32 = 0o170_000;
    pub const S_IFREG: u32 = 0o100_000;
    pub const S_IFLNK: u32 = 0o120_000;
}

/// `.` for the root itself (openat2 refuses an empty name).
fn dot_if_empty(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

fn from_io(e: &io::Error) -> HandlerError {
    HandlerError::from_io(e)
}

/// An upload may replace `st`'s file: a regular file the server may write. Returns the
/// permission bits the new file gets.
fn check_writable(st: &nix::sys::stat::FileStat) -> Result<u32, HandlerError> {
    if st.st_mode & libc_mode::S_IFMT != libc_mode::S_IFREG {
        return Err(HandlerError::access("Not a regular file"));
    }
    if st.st_mode & 0o222 == 0 {
        return Err(HandlerError::access("Permission denied"));
    }
    Ok(st.st_mode & 0o7777)
}

/// Creates `.NAME.XXXXXXXX.tftpx-part` in `dir` (exclusively, never following a link), with
/// `mode` (set exactly when it replaces an existing file, else through the umask).
fn create_temp(
    dir: &OwnedFd,
    name: &OsStr,
    mode: u32,
    exact_mode: bool,
) -> Result<(std::fs::File, OsString), HandlerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Keep the temporary name within NAME_MAX (255) whatever the target's length.
    let stem = &name.as_bytes()[..name.len().min(200)];
    for _ in 0..32 {
        let mut h = std::hash::DefaultHasher::new();
        (
            std::time::SystemTime::now(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        )
            .hash(&mut h);
        let mut temp = Vec::with_capacity(stem.len() + 24);
        temp.push(b'.');
        temp.extend_from_slice(stem);
        temp.extend_from_slice(format!(".{:08x}.tftpx-part", h.finish() as u32).as_bytes());
        let temp = OsString::from_vec(temp);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(
            dir,
            temp.as_os_str(),
            flags,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => {
                if exact_mode {
                    let _ =
                        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(mode));
                }
                return Ok((std::fs::File::from(fd), temp));
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(from_io(&e.into())),
        }
    }
    Err(HandlerError::new(
        ErrorCode::NotDefined,
        "Cannot create a temporary file",
    ))
}

/// A file a [`DirHandler`] serves. Reads are plain `read(2)` calls made on the runtime's
/// thread, as tftpd-hpa and dnsmasq make them: served files live in the page cache, where a
/// read costs a microsecond or two, while handing each read to tokio's blocking pool costs
/// two context switches and a second buffer per transfer (memory that counts when ten
/// thousand transfers run at once). A read that misses the cache blocks its worker thread
/// for the disk's latency.
#[derive(Debug)]
pub struct DirFile {
    file: std::fs::File,
}

impl AsyncRead for DirFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::io::Read;
        loop {
            match (&self.file).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Handler for DirHandler {
    type Reader = DirFile;
    type Writer = DirUpload;

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let rel = self.relative(req.filename)?;
        let this = self.clone();
        let (file, size) = tokio::task::spawn_blocking(move || this.open_read_blocking(&rel))
            .await
            .map_err(|e| HandlerError::new(ErrorCode::NotDefined, e.to_string()))??;
        Ok(ReadFile {
            reader: DirFile { file },
            size: Some(size),
        })
    }

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        _size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        if !self.allow_write {
            return Err(HandlerError::access("Writing is disabled on this server"));
        }
        let rel = self.relative(req.filename)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.open_write_blocking(&rel))
            .await
            .map_err(|e| HandlerError::new(ErrorCode::NotDefined, e.to_string()))?
    }
}

/// An upload into a [`DirHandler`]'s directory: a temporary file beside the target, renamed
/// over it by [`Upload::commit`] and removed if dropped before. Both happen relative to the
/// directory's descriptor, opened below the root when the upload began.
pub struct DirUpload {
    file: BufWriter<tokio::fs::File>,
    dir: OwnedFd,
    temp: Option<OsString>,
    name: OsString,
}

impl std::fmt::Debug for DirUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirUpload")
            .field("temp", &self.temp)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = unlinkat(&self.dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

impl AsyncWrite for DirUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl Upload for DirUpload {
    async fn commit(mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.get_mut().sync_data().await?;
        let temp = self
            .temp
            .clone()
            .ok_or_else(|| io::Error::other("upload already committed"))?;
        renameat(
            &self.dir,
            temp.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )?;
        self.temp = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_confines_names_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let h = DirHandler::new(dir.path()).unwrap();
        let root = h.root().to_path_buf();
        assert_eq!(h.resolve(b"a.txt").unwrap(), root.join("a.txt"));
        assert_eq!(h.resolve(b"/pxelinux.0").unwrap(), root.join("pxelinux.0"));
        assert_eq!(h.resolve(b"dir\\file").unwrap(), root.join("dir/file"));
        assert_eq!(h.resolve(b"./a//b").unwrap(), root.join("a/b"));
        let abs = format!("{}/x/y", root.display());
        assert_eq!(h.resolve(abs.as_bytes()).unwrap(), root.join("x/y"));
        for bad in [
            &b"../etc/passwd"[..],
            b"a/../../b",
            b"a/..",
            b"..\\..\\windows",
            b"/",
            b".",
        ] {
            let e = h.resolve(bad).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::AccessViolation,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(h.resolve(&vec![b'a'; 256]).is_err());
        assert!(h.resolve(&vec![b'a'; MAX_NAME_LEN + 1]).is_err());
        // An absolute path elsewhere is taken relative to the root, never outside it.
        assert_eq!(h.resolve(b"/etc/passwd").unwrap(), root.join("etc/passwd"));
    }
}
