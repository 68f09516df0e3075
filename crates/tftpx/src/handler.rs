//! What the server serves: the [`Handler`] trait, and [`DirHandler`], a directory on disk.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{
    openat, openat2, readlinkat, renameat, AtFlags, OFlag, OpenHow, ResolveFlag, AT_FDCWD,
};
use nix::sys::stat::{fchmod, fstat, fstatat};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

use tftpx_proto::wire::{ErrorCode, Mode, OptionList};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// Longest file name accepted in a request, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest single path component accepted, in bytes (the usual NAME_MAX).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Write buffer of an upload, in bytes: file writes happen in chunks this big.
pub(crate) const UPLOAD_BUFFER: usize = 64 * 1024;

/// Bytes of an upload written since the last writeback started after which a
/// [`DirUpload`] starts the next one (a background `fdatasync`), so that the commit's sync
/// finds at most about this much still unwritten.
pub(crate) const WRITEBACK_BYTES: u64 = 8 << 20;

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
    /// told: NotFound and NotADirectory -> 1, PermissionDenied -> 2, disk full / quota /
    /// file too large -> 3, out of descriptors -> 0 "Server busy", anything else -> 0 with
    /// the error's text.
    pub fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            // `f.txt/x`: a name that goes through a file names nothing.
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Self::not_found(),
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
///
/// `#[non_exhaustive]`: fields may be added; build one outside this crate (in tests of
/// another handler) with [`RequestInfo::new`] and [`RequestInfo::with_options`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The client's address and port (its TID).
    pub peer: SocketAddr,
    /// The local address and port the request was sent to (the listen socket's address;
    /// with a wildcard listener, the address the client asked, where the kernel says).
    pub local: SocketAddr,
    /// The file name as the handler is to open it (bytes; not necessarily UTF-8): as
    /// requested, or as `--map` rules rewrote it.
    pub filename: &'a [u8],
    /// The transfer mode.
    pub mode: Mode,
    /// The options the client requested (RFC 2347 `name\0value\0` pairs, as sent; the
    /// server negotiates them itself after the handler opened the file).
    pub options: OptionList<'a>,
}

impl<'a> RequestInfo<'a> {
    /// A request from `peer` to `local` for `filename` in `mode`, with no options.
    pub fn new(peer: SocketAddr, local: SocketAddr, filename: &'a [u8], mode: Mode) -> Self {
        Self {
            peer,
            local,
            filename,
            mode,
            options: OptionList::empty(),
        }
    }

    /// The same request with the client's requested `options`.
    pub fn with_options(mut self, options: OptionList<'a>) -> Self {
        self.options = options;
        self
    }
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
    /// The default refuses every upload with ERROR 2 "Writing is disabled on this server":
    /// a read-only handler implements [`Handler::open_read`] only and sets
    /// `type Writer = NoUpload;`.
    ///
    /// # Errors
    /// A [`HandlerError`] whose code and message are sent to the client.
    fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Self::Writer, HandlerError>> + Send {
        let _ = (req, size);
        std::future::ready(Err(write_disabled()))
    }

    /// Whether every read of a [`Handler::Reader`] completes at once, without ever
    /// returning `Poll::Pending` (a local file read with `pread`, bytes in memory). In
    /// shared single-port mode ([`crate::ServerBuilder::single_port_shared`]) the listener
    /// then runs such downloads itself, batched across transfers, instead of waking a task
    /// per datagram; a read that did wait there would end its transfer with ERROR 0.
    /// Default `false` (a reader that may wait: a network origin, a pipe).
    fn reads_never_wait(&self) -> bool {
        false
    }
}

/// A read-only [`Handler`] made of a function that returns each file's whole content,
/// generated per request (an iPXE script naming the client, a switch's configuration):
/// see [`from_fn`].
#[derive(Clone)]
pub struct FnHandler<F>(F);

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnHandler")
    }
}

/// A read-only [`Handler`] that answers an RRQ with the bytes `f` returns for it (`tsize`
/// is their length), or with `f`'s [`HandlerError`] (ERROR 1 for an unknown name, say);
/// every WRQ gets ERROR 2 "Writing is disabled on this server". `f` runs on the server's
/// runtime: it must not block (for I/O, implement [`Handler`] with an async `open_read`).
///
/// ```
/// let handler = tftpx::from_fn(|req| {
///     Ok(format!("#!ipxe\nchain http://boot.example/{}\n", req.peer.ip()).into_bytes())
/// });
/// let server = tftpx::Server::builder(handler).listen("127.0.0.1:0".parse().unwrap());
/// ```
pub fn from_fn<F>(f: F) -> FnHandler<F>
where
    F: Fn(&RequestInfo<'_>) -> Result<Vec<u8>, HandlerError> + Send + Sync + 'static,
{
    FnHandler(f)
}

impl<F> Handler for FnHandler<F>
where
    F: Fn(&RequestInfo<'_>) -> Result<Vec<u8>, HandlerError> + Send + Sync + 'static,
{
    type Reader = io::Cursor<Vec<u8>>;
    type Writer = NoUpload;

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let bytes = (self.0)(req)?;
        Ok(ReadFile {
            size: Some(bytes.len() as u64),
            reader: io::Cursor::new(bytes),
        })
    }

    /// Bytes in memory.
    fn reads_never_wait(&self) -> bool {
        true
    }
}

/// ERROR 2 "Writing is disabled on this server": what a read-only handler answers a WRQ.
pub fn write_disabled() -> HandlerError {
    HandlerError::access("Writing is disabled on this server")
}

/// The [`Handler::Writer`] of a read-only handler: an upload that cannot exist (the type has
/// no values), so a handler that never accepts a WRQ names it instead of an upload type of
/// its own. Rust has no defaults for associated types yet (`associated_type_defaults` is
/// unstable), hence this one line in every read-only handler.
#[derive(Debug)]
pub enum NoUpload {}

impl AsyncWrite for NoUpload {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
}

impl Upload for NoUpload {
    async fn commit(self) -> io::Result<()> {
        match self {}
    }
}

/// Checks a requested file name as [`DirHandler`] does and returns it normalised: the
/// components joined by `/`, without empty or `.` components and without a leading `/`
/// (`/pxelinux.cfg//default` -> `pxelinux.cfg/default`). `\` separates components too.
/// For handlers that turn names into something else (URLs, object keys, database keys).
///
/// # Errors
/// - ERROR 2 (access violation) for a name over [`MAX_NAME_LEN`] (1024) bytes, a NUL, a
///   `..` component, a component over [`MAX_COMPONENT_LEN`] (255) bytes, a component that
///   looks like a temporary upload (ends in `.tftpx-part`, in any case), and a name with no
///   component at all (`/`, `.`).
/// - ERROR 1 (file not found) for a name that ends in a separator or in `/.`: it names a
///   directory.
///
/// Checks apply in that order. Nothing is decoded: `%2e%2e` is a literal name here.
pub fn normalize_name(name: &[u8]) -> Result<Vec<u8>, HandlerError> {
    if name.len() > MAX_NAME_LEN {
        return Err(HandlerError::access("File name too long"));
    }
    if name.contains(&0) {
        return Err(HandlerError::access("Invalid file name"));
    }
    let name: Vec<u8> = name
        .iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect();
    normalize_components(&name)
}

/// The component checks of [`normalize_name`] on a name whose separators are all `/`.
fn normalize_components(name: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let mut out = Vec::with_capacity(name.len());
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(outside()),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(HandlerError::access("File name too long"))
            }
            c if is_temp_name(c) => return Err(reserved()),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        return Err(HandlerError::access("Not a regular file"));
    }
    // `f.bin/` (or `f.bin/.`) names a directory: never serve or replace `f.bin`.
    if matches!(name.rsplit(|&b| b == b'/').next(), Some(b"" | b".")) {
        return Err(HandlerError::not_found());
    }
    Ok(out)
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
/// - A name ending in a separator (`f.bin/`) is ERROR 1; a name with a component ending in
///   `.tftpx-part` (a temporary upload's) is ERROR 2, on RRQ and WRQ alike.
/// - A name that leads outside the root gets ERROR 2 "Access outside the root refused"
///   whether or not its target exists outside: the server never looks there.
/// - Writes need [`DirHandler::allow_write`] (overwrite existing files) or
///   [`DirHandler::allow_create`] (also create new ones). An upload is written to an
///   anonymous file (`O_TMPFILE`, mode 0600) in the target's directory: it has no name, so
///   no request can reach it, and a crash leaves nothing behind. The commit gives it its
///   permission bits and then its name (see [`DirUpload`]). The new file gets the replaced
///   file's permission bits without setuid, setgid or sticky (`mode & 0o777`), or 0644
///   less the umask when it is new. Where the file system refuses `O_TMPFILE` (or `/proc`
///   is missing), uploads fall back to a named temporary file beside the target
///   (`.NAME.XXXXXXXX.tftpx-part`, mode 0600, created exclusively and renamed relative to
///   the directory's descriptor), which a crash can leave behind; the log says so once.
#[derive(Debug, Clone)]
pub struct DirHandler {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    allow_write: bool,
    allow_create: bool,
    allow_hard_links: bool,
    /// Uploads use `O_TMPFILE` where the file system has it (false: always the named
    /// fallback; unit tests exercise it this way).
    tmpfile: bool,
    /// Files open for reading, shared by every transfer of the same file (see [`DirFile`]).
    open_files: OpenFiles,
}

/// Files open for reading by (device, inode number): one descriptor per file however many
/// transfers read it. Entries are removed when their last reader ends.
type OpenFiles = Arc<Mutex<HashMap<(u64, u64), Weak<SharedFile>>>>;

/// One open file and its entry in [`OpenFiles`], which it removes when the last transfer
/// reading it ends.
#[derive(Debug)]
struct SharedFile {
    file: std::fs::File,
    key: (u64, u64),
    open_files: OpenFiles,
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        let mut map = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        // A later open of the same inode may already have put a live entry there.
        if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.key);
        }
    }
}

/// Flags for resolving names below the root: no escape, no /proc magic links.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn outside() -> HandlerError {
    HandlerError::access("Access outside the root refused")
}

/// Suffix of the names of temporary upload files ([`DirHandler`]'s fallback when the file
/// system has no `O_TMPFILE`, and the hidden name of a commit that replaces a file).
const TEMP_SUFFIX: &[u8] = b".tftpx-part";

/// `component` looks like a tftpx temporary file (`*.tftpx-part`, ASCII case ignored, for
/// case-insensitive file systems): no request may name one.
fn is_temp_name(component: &[u8]) -> bool {
    component.len() >= TEMP_SUFFIX.len()
        && component[component.len() - TEMP_SUFFIX.len()..].eq_ignore_ascii_case(TEMP_SUFFIX)
}

fn reserved() -> HandlerError {
    HandlerError::access("Reserved file name")
}

impl DirHandler {
    /// Serves `root`, read-only.
    ///
    /// There is nothing to clean up at start: uploads in progress have no name (`O_TMPFILE`),
    /// so a crash leaves nothing behind (except on file systems without `O_TMPFILE`, where a
    /// crash can leave a `.NAME.XXXXXXXX.tftpx-part` file that no request can name).
    ///
    /// # Errors
    /// If `root` does not exist, is not a directory or cannot be opened; with
    /// [`io::ErrorKind::Unsupported`] when the kernel has no `openat2(2)` (Linux 5.6+), which
    /// every name is resolved with: refusing to start says so once, where serving on would
    /// fail every request.
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
        let probe = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath());
        match openat2(&fd, ".", probe) {
            Ok(_) => {}
            Err(Errno::ENOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel has no openat2 system call (Linux 5.6 or later is needed): \
                     tftpx resolves every name with it to keep requests inside the root",
                ))
            }
            Err(e) => return Err(with_path(e.into())),
        }
        Ok(Self {
            root: canonical,
            root_fd: Arc::new(fd),
            allow_write: false,
            allow_create: false,
            allow_hard_links: false,
            tmpfile: true,
            open_files: OpenFiles::default(),
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
    /// - ERROR 2 (access violation) for `..`, a NUL, a name over [`MAX_NAME_LEN`] bytes or
    ///   with a component over [`MAX_COMPONENT_LEN`], a name that is the root itself, and a
    ///   name with a component that looks like a temporary upload (ends in `.tftpx-part`,
    ///   in any case).
    /// - ERROR 1 (file not found) for a name that ends in a separator (`/` or `\`) or in
    ///   `/.`: it names a directory, never the file before the separator, whatever the file
    ///   system holds.
    ///
    /// Checks apply in that order: `../`, `/` and `x.tftpx-part/` are ERROR 2.
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
        Ok(PathBuf::from(OsString::from_vec(normalize_components(
            &name,
        )?)))
    }

    /// Opens `rel` (relative to the root) without ever leaving the root.
    ///
    /// The kernel resolves the name below the root's descriptor and fails with EXDEV when
    /// a `..` or a symbolic link would leave it (EAGAIN when a concurrent rename kept it
    /// from checking a `..`: handled the same way). An absolute symbolic link always does so
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
            // EAGAIN: a rename anywhere on the system raced a `..` in the lookup (a link's
            // text), and the kernel could not prove it stayed below; the walk in user space
            // resolves every `..` itself.
            Err(Errno::EXDEV | Errno::ELOOP | Errno::EAGAIN) => {
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
    ///
    /// The walk never looks outside the root, so the answer for a link that leaves it does
    /// not depend on what lies outside (no existence oracle): every step is a
    /// `fstatat`/`readlinkat` in a directory opened below the root's descriptor with
    /// RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, and the walk stops with ERROR 2 as soon as a
    /// `..` or an absolute link would leave the root. An absolute link is inside only when
    /// it starts with the root's canonical path. The target need not exist: from the first
    /// missing component on, the rest is appended as is (a later `..` is "File not found",
    /// as the kernel would say), so a dangling link inside the root names a missing file
    /// inside it (ERROR 1 when opened). More than [`MAX_SYMLINKS`] links, or more than
    /// [`MAX_WALK`] components in all, is ERROR 2.
    fn canonical_inside(&self, rel: &Path) -> Result<PathBuf, HandlerError> {
        // Components still to walk, the next one last.
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, rel.as_os_str().as_bytes());
        let mut done = PathBuf::new();
        let mut dir = self.open_walked(&done)?;
        let (mut links, mut steps, mut missing) = (0, 0, false);
        while let Some(c) = todo.pop() {
            steps += 1;
            if steps > MAX_WALK {
                return Err(HandlerError::access("File name too long"));
            }
            match c.as_bytes() {
                b"." => continue,
                b".." if missing => return Err(HandlerError::not_found()),
                b".." => {
                    if !done.pop() {
                        return Err(outside());
                    }
                    dir = self.open_walked(&done)?;
                    continue;
                }
                _ if missing => {
                    done.push(&c);
                    continue;
                }
                _ => {}
            }
            match fstatat(&dir, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(HandlerError::access("Too many levels of symbolic links"));
                    }
                    let target = readlinkat(&dir, c.as_os_str()).map_err(walk_error)?;
                    let target = target.as_bytes();
                    if target.is_empty() {
                        return Err(HandlerError::not_found());
                    }
                    if target.starts_with(b"/") {
                        let inner = Path::new(OsStr::from_bytes(target))
                            .strip_prefix(&self.root)
                            .map_err(|_| outside())?;
                        push_components(&mut todo, inner.as_os_str().as_bytes());
                        done = PathBuf::new();
                        dir = self.open_walked(&done)?;
                    } else {
                        push_components(&mut todo, target);
                    }
                }
                Ok(_) => {
                    done.push(&c);
                    dir = self.open_walked_at(&dir, &c)?;
                }
                // Missing here (or a file used as a directory): the rest cannot exist.
                Err(Errno::ENOENT | Errno::ENOTDIR) => {
                    missing = true;
                    done.push(&c);
                }
                Err(e) => return Err(walk_error(e)),
            }
        }
        if done
            .components()
            .any(|c| is_temp_name(c.as_os_str().as_bytes()))
        {
            return Err(reserved());
        }
        Ok(done)
    }

    /// `done` (a walked name with no symbolic link in it), opened as an `O_PATH` below the
    /// root, links refused.
    fn open_walked(&self, done: &Path) -> Result<OwnedFd, HandlerError> {
        self.open_walked_at(&self.root_fd, dot_if_empty(done).as_os_str())
    }

    fn open_walked_at(&self, dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, HandlerError> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(beneath() | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(dir, name, how).map_err(walk_error)
    }

    /// Opens `rel` for reading and returns it with its size in bytes: the descriptor a
    /// running transfer of the same file (same device and inode) already holds, if any
    /// (the one just opened is closed at once), else the new one, now shared.
    fn open_read_blocking(&self, rel: &Path) -> Result<(Arc<SharedFile>, u64), HandlerError> {
        let (file, meta) = self.open_read_file(rel)?;
        let (key, size) = ((meta.dev(), meta.ino()), meta.len());
        let mut map = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = map.get(&key).and_then(Weak::upgrade) {
            return Ok((shared, size));
        }
        let shared = Arc::new(SharedFile {
            file,
            key,
            open_files: self.open_files.clone(),
        });
        map.insert(key, Arc::downgrade(&shared));
        Ok((shared, size))
    }

    /// Number of files open for reading (each shared by all its transfers).
    pub fn open_files(&self) -> usize {
        let map = self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    fn open_read_file(
        &self,
        rel: &Path,
    ) -> Result<(std::fs::File, std::fs::Metadata), HandlerError> {
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
        Ok((file, meta))
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
        // The replaced file's permission bits, if there is one.
        let mut existing = None;
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
                existing = Some(check_writable(&st)?);
            }
            Ok(st) => existing = Some(check_writable(&st)?),
            Err(Errno::ENOENT) => {
                if !self.allow_create {
                    return Err(HandlerError::access(
                        "File does not exist and creating files is disabled",
                    ));
                }
            }
            Err(e) => return Err(from_io(&e.into())),
        }
        let (file, temp, mode) = self.create_upload(&dir, &name, existing)?;
        Ok(DirUpload {
            file: BufWriter::with_capacity(UPLOAD_BUFFER, SyncFile(file)),
            writeback: Writeback::default(),
            dir,
            temp: Some(temp),
            name,
            mode,
            replaces: existing.is_some(),
        })
    }

    /// Creates the file an upload of `name` is written to, in `dir`, mode 0600 while it is
    /// written. Returns it, where it is, and the permission bits it gets at the commit:
    /// `old` (the replaced file's, already without special bits), or for a new file 0644
    /// less the umask (as the kernel applies it to the `O_TMPFILE` inode, default ACLs
    /// included; read from `/proc/self/status` for the named fallback).
    fn create_upload(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        old: Option<u32>,
    ) -> Result<(std::fs::File, Temp, u32), HandlerError> {
        if self.tmpfile && proc_fd_usable() {
            let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
            let new_mode = nix::sys::stat::Mode::from_bits_truncate(NEW_FILE_MODE);
            match openat(dir, ".", flags, new_mode) {
                Ok(fd) => {
                    let mode = match old {
                        Some(m) => m,
                        None => fstat(&fd).map_err(|e| from_io(&e.into()))?.st_mode & 0o777,
                    };
                    fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .map_err(|e| from_io(&e.into()))?;
                    return Ok((std::fs::File::from(fd), Temp::Anonymous, mode));
                }
                // EISDIR: a kernel without O_TMPFILE (it saw O_DIRECTORY | O_WRONLY).
                Err(e @ (Errno::EOPNOTSUPP | Errno::EISDIR)) => {
                    fall_back_once(&format!("the file system refuses O_TMPFILE ({e})"));
                }
                Err(e) => return Err(from_io(&e.into())),
            }
        }
        let (file, temp) = create_temp(dir, name)?;
        Ok((
            file,
            Temp::Named(temp),
            old.unwrap_or(NEW_FILE_MODE & !umask()),
        ))
    }
}

/// Permission bits of a new upload, before the umask.
const NEW_FILE_MODE: u32 = 0o644;

/// Whether `/proc/self/fd` is there: the commit of an `O_TMPFILE` upload links
/// `/proc/self/fd/N` (checked once; without it uploads use named temporary files).
fn proc_fd_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let ok = Path::new("/proc/self/fd").is_dir();
        if !ok {
            fall_back_once("/proc/self/fd is missing");
        }
        ok
    })
}

/// Logs, once per process, that uploads use named temporary files, and why.
fn fall_back_once(why: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "uploads: {why}; using named temporary files (.NAME.XXXXXXXX.tftpx-part) instead: \
             still atomic and never reachable by a request, but a crash can leave one behind"
        );
    }
}

/// The process's umask, from `/proc/self/status` (Linux 4.7+; 022 if it cannot be read):
/// `umask(2)` cannot read it without changing it for every thread.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        })
        .unwrap_or(0o022)
        & 0o777
}

/// File type bits of `st_mode` (from `<sys/stat.h>`; the same on every Linux).
mod libc_mode {
    pub const S_IFMT: u32 = 0o170_000;
    pub const S_IFREG: u32 = 0o100_000;
    pub const S_IFLNK: u32 = 0o120_000;
}

/// Most symbolic links followed for one name (the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;
/// Most components walked for one name, links expanded (bounds the work a link farm costs).
const MAX_WALK: usize = 4096;

/// Pushes the components of `path` on `todo` so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, path: &[u8]) {
    let start = todo.len();
    todo.extend(
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(|c| OsStr::from_bytes(c).to_owned()),
    );
    todo[start..].reverse();
}

/// An error while walking a name below the root: a link swapped in meanwhile (ELOOP from
/// RESOLVE_NO_SYMLINKS, EXDEV) is "outside", anything else as [`HandlerError::from_io`].
fn walk_error(e: Errno) -> HandlerError {
    match e {
        Errno::ELOOP | Errno::EXDEV => outside(),
        e => from_io(&e.into()),
    }
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
/// permission bits the new file gets: the old ones without setuid, setgid and sticky (F5: an
/// upload over a setuid file must not leave an attacker's setuid file behind).
fn check_writable(st: &nix::sys::stat::FileStat) -> Result<u32, HandlerError> {
    if st.st_mode & libc_mode::S_IFMT != libc_mode::S_IFREG {
        return Err(HandlerError::access("Not a regular file"));
    }
    if st.st_mode & 0o222 == 0 {
        return Err(HandlerError::access("Permission denied"));
    }
    Ok(st.st_mode & 0o777)
}

/// A fresh temporary name for `name`: `.NAME.XXXXXXXX.tftpx-part`, within NAME_MAX (255)
/// whatever the target's length. [`DirHandler::resolve`] refuses every such name.
fn temp_name(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let stem = &name.as_bytes()[..name.len().min(200)];
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
    temp.extend_from_slice(format!(".{:08x}", h.finish() as u32).as_bytes());
    temp.extend_from_slice(TEMP_SUFFIX);
    OsString::from_vec(temp)
}

/// Creates a named temporary file for `name` in `dir` (the fallback without `O_TMPFILE`):
/// exclusively, never following a link, mode 0600 from the start.
fn create_temp(dir: &OwnedFd, name: &OsStr) -> Result<(std::fs::File, OsString), HandlerError> {
    for _ in 0..32 {
        let temp = temp_name(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(
            dir,
            temp.as_os_str(),
            flags,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((std::fs::File::from(fd), temp)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(from_io(&e.into())),
        }
    }
    Err(HandlerError::new(
        ErrorCode::NotDefined,
        "Cannot create a temporary file",
    ))
}

/// Gives the anonymous (`O_TMPFILE`) file `fd` the name `name` in `dir`.
///
/// The link is made through `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW`, which needs no
/// capability, even in a process that dropped root and is no longer dumpable
/// (`AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`; it is only tried if `/proc` fails).
///
/// A new name (nothing stood there when the upload began) is linked directly. `linkat`
/// never replaces a name, so when a file is to be replaced, or one appeared under the name
/// meanwhile, the file is linked under a fresh hidden name (`.NAME.XXXXXXXX.tftpx-part`,
/// which no request can name) and renamed over the target: rename semantics, the last
/// upload to commit wins, exactly as for a replacement (a symbolic link put there meanwhile
/// is replaced, never followed). Only a crash between the link and the rename can leave
/// the hidden name behind.
fn link_anonymous(
    fd: BorrowedFd<'_>,
    dir: &OwnedFd,
    name: &OsStr,
    replaces: bool,
) -> io::Result<()> {
    if !replaces {
        match link_fd(fd, dir, name) {
            Err(Errno::EEXIST) => {}
            r => return r.map_err(io::Error::from),
        }
    }
    for _ in 0..32 {
        let hidden = temp_name(name);
        match link_fd(fd, dir, &hidden) {
            Ok(()) => {
                return renameat(dir, hidden.as_os_str(), dir, name).map_err(|e| {
                    let _ = unlinkat(dir, hidden.as_os_str(), UnlinkatFlags::NoRemoveDir);
                    io::Error::from(e)
                })
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// `linkat(2)` of the open file `fd` to `at` in `dir`.
fn link_fd(fd: BorrowedFd<'_>, dir: &OwnedFd, at: &OsStr) -> nix::Result<()> {
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match linkat(AT_FDCWD, proc.as_str(), dir, at, AtFlags::AT_SYMLINK_FOLLOW) {
        Err(Errno::ENOENT) => linkat(fd, "", dir, at, AtFlags::AT_EMPTY_PATH),
        r => r,
    }
}

/// A file a [`DirHandler`] serves, read from the start to its end.
///
/// Every transfer of one file shares one descriptor (files are told apart by device and
/// inode: a file replaced by an upload is a new one), and reads are positioned
/// (`pread(2)`), so ten thousand transfers of one boot image hold one descriptor, not ten
/// thousand. Reads are plain system calls made on the runtime's thread, as tftpd-hpa and
/// dnsmasq make them: served files live in the page cache, where a read costs a
/// microsecond or two, while handing each read to tokio's blocking pool costs two context
/// switches and a second buffer per transfer (memory that counts when ten thousand
/// transfers run at once). A read that misses the cache blocks its worker thread for the
/// disk's latency.
#[derive(Debug)]
pub struct DirFile {
    shared: Arc<SharedFile>,
    /// Offset of the next read, in bytes.
    pos: u64,
}

impl AsyncRead for DirFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::unix::fs::FileExt;
        loop {
            match self
                .shared
                .file
                .read_at(buf.initialize_unfilled(), self.pos)
            {
                Ok(n) => {
                    buf.advance(n);
                    self.pos += n as u64;
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

    /// [`DirFile`] reads with `pread`, on the caller's thread.
    fn reads_never_wait(&self) -> bool {
        true
    }

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let rel = self.relative(req.filename)?;
        let this = self.clone();
        let (shared, size) = tokio::task::spawn_blocking(move || this.open_read_blocking(&rel))
            .await
            .map_err(|e| HandlerError::new(ErrorCode::NotDefined, e.to_string()))??;
        Ok(ReadFile {
            reader: DirFile { shared, pos: 0 },
            size: Some(size),
        })
    }

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        _size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        if !self.allow_write {
            return Err(write_disabled());
        }
        let rel = self.relative(req.filename)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.open_write_blocking(&rel))
            .await
            .map_err(|e| HandlerError::new(ErrorCode::NotDefined, e.to_string()))?
    }
}

/// An upload into a [`DirHandler`]'s directory, relative to the directory's descriptor
/// opened below the root when the upload began.
///
/// The bytes go to an anonymous `O_TMPFILE` file in that directory (mode 0600), which has
/// no name until [`Upload::commit`]. Every 8 MiB written (`WRITEBACK_BYTES`), a
/// background `fdatasync` (one at a time, on tokio's blocking pool) writes what is there
/// to the disk while the transfer goes on, so that the commit's sync, which the final ACK
/// waits for, is left with at most about that much instead of the whole file (100 MB on
/// an ext4 disk: its sync was most of the gap to servers that do not sync). An error of a
/// background sync fails the commit. The commit flushes and syncs the file, sets its permission bits
/// (the replaced file's & 0o777, or 0644 less the umask), and links it into the directory
/// (see [`DirHandler`]): directly under a new name, or under a hidden name renamed over the
/// file it replaces. Dropped before, it simply vanishes (so does it when the process dies).
/// On file systems without `O_TMPFILE` it is a named `.NAME.XXXXXXXX.tftpx-part` file
/// (mode 0600) instead, renamed over the target by the commit and removed if dropped.
pub struct DirUpload {
    file: BufWriter<SyncFile>,
    writeback: Writeback,
    dir: OwnedFd,
    /// Where the bytes are; `None` once committed.
    temp: Option<Temp>,
    name: OsString,
    /// Permission bits the file gets at the commit (never setuid, setgid or sticky).
    mode: u32,
    /// A file stood under `name` when the upload began.
    replaces: bool,
}

/// The background syncs of a [`DirUpload`] (see there).
#[derive(Debug, Default)]
struct Writeback {
    /// Bytes handed to the file so far.
    written: u64,
    /// `written` when the last background sync started.
    started_at: u64,
    /// The sync running, if any.
    running: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// The first error a finished background sync returned: the commit's. (A sync on the
    /// same open file reports a writeback error once: the commit's own sync would not.)
    error: Option<io::Error>,
}

impl Writeback {
    /// After `n` more bytes went to `file`: starts a background sync of it when
    /// [`WRITEBACK_BYTES`] have been written since the last one started and none is
    /// running. Without a tokio runtime, or without a descriptor for the copy, nothing.
    fn wrote(&mut self, n: usize, file: &std::fs::File) {
        self.written += n as u64;
        if self.written - self.started_at < WRITEBACK_BYTES {
            return;
        }
        if let Some(mut r) = self.running.take() {
            // Finished: its result is ready, polled without waiting.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut r).poll(&mut cx) {
                Poll::Ready(done) => self.reap(done),
                Poll::Pending => {
                    self.running = Some(r);
                    return;
                }
            }
        }
        if let Some(sync) = spawn_sync(file) {
            self.started_at = self.written;
            self.running = Some(sync);
        }
    }

    /// Keeps the error of a finished sync, if it is the first.
    fn reap(&mut self, r: Result<io::Result<()>, tokio::task::JoinError>) {
        let e = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => io::Error::other(e),
        };
        self.error.get_or_insert(e);
    }

    /// Waits for the running sync, if any; the first error of any of them.
    async fn finish(&mut self) -> io::Result<()> {
        if let Some(r) = self.running.take() {
            let r = r.await;
            self.reap(r);
        }
        self.error.take().map_or(Ok(()), Err)
    }
}

/// `fdatasync` of `file` on tokio's blocking pool (a sync can take long on a real disk), on
/// a copy of its descriptor; `None` without a runtime or a descriptor for the copy.
fn spawn_sync(file: &std::fs::File) -> Option<tokio::task::JoinHandle<io::Result<()>>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let copy = file.try_clone().ok()?;
    Some(rt.spawn_blocking(move || copy.sync_data()))
}

/// Where an upload's bytes are until the commit.
#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE` inode: no name at all.
    Anonymous,
    /// The fallback: a named temporary file in the directory.
    Named(OsString),
}

impl std::fmt::Debug for DirUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirUpload")
            .field("temp", &self.temp)
            .field("name", &self.name)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        // An anonymous file needs nothing: closing it frees it.
        if let Some(Temp::Named(temp)) = self.temp.take() {
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
        let this = &mut *self;
        let r = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.writeback.wrote(n, &this.file.get_ref().0);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

/// A regular file read and written with plain `read(2)` / `write(2)` calls on the calling
/// thread, as `AsyncRead` / `AsyncWrite` that are always ready: what [`DirUpload`] writes
/// through, and what the `tftpx` command reads and writes its local files with.
///
/// A write goes to the page cache (tens of microseconds for a 64 KiB block); handing each
/// to tokio's blocking pool (`tokio::fs::File`) cost four futex calls and two thread
/// switches per block, which is what the upload path spent most of its system time on. A
/// call the kernel makes wait (dirty pages over the limit on a slow disk, a read that
/// misses the cache) blocks the calling thread meanwhile. Only for regular files: a FIFO
/// or a device could block for as long as its other end likes. `flush` and `shutdown` do
/// nothing (nothing is buffered here; syncing is the caller's).
#[derive(Debug)]
pub struct SyncFile(pub std::fs::File);

impl AsyncRead for SyncFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::io::Read;
        loop {
            match (&self.0).read(buf.initialize_unfilled()) {
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

impl AsyncWrite for SyncFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Write;
        loop {
            match (&self.0).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Upload for DirUpload {
    async fn commit(mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.writeback.finish().await?;
        // Not on the runtime's thread, unless no descriptor is left for the copy.
        match spawn_sync(&self.file.get_ref().0) {
            Some(sync) => sync.await.map_err(io::Error::other)??,
            None => self.file.get_ref().0.sync_data()?,
        }
        let file = &self.file.get_ref().0;
        fchmod(file, nix::sys::stat::Mode::from_bits_truncate(self.mode))?;
        match self
            .temp
            .as_ref()
            .ok_or_else(|| io::Error::other("upload already committed"))?
        {
            Temp::Anonymous => {
                link_anonymous(file.as_fd(), &self.dir, &self.name, self.replaces)?;
            }
            Temp::Named(temp) => renameat(
                &self.dir,
                temp.as_os_str(),
                &self.dir,
                self.name.as_os_str(),
            )?,
        }
        self.temp = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn sync_file_reads_back_whole_what_it_wrote() {
        use std::io::{Seek, SeekFrom};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = SyncFile(tempfile::tempfile().unwrap());
        f.write_all(&data).await.unwrap();
        f.flush().await.unwrap();
        f.0.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
    }

    /// Names in `dir` (sorted).
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn req(name: &str) -> RequestInfo<'_> {
        RequestInfo::new(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:69".parse().unwrap(),
            name.as_bytes(),
            Mode::Octet,
        )
    }

    #[tokio::test]
    async fn named_fallback_is_private_unreachable_atomic_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.bin");
        std::fs::write(&old, b"old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut h = DirHandler::new(dir.path()).unwrap().allow_create(true);
        h.tmpfile = false;

        let mut up = h.open_write(&req("old.bin"), None).await.unwrap();
        up.write_all(b"new content").await.unwrap();
        up.flush().await.unwrap();
        let during = names(dir.path());
        assert_eq!(during.len(), 2, "{during:?}");
        let temp = during.iter().find(|n| *n != "old.bin").unwrap();
        assert!(temp.starts_with(".old.bin.") && temp.ends_with(".tftpx-part"));
        assert_eq!(
            mode_of(&dir.path().join(temp)),
            0o600,
            "private while written"
        );
        // No request reaches it.
        let Err(e) = h.open_read(&req(temp)).await else {
            panic!("RRQ for {temp} accepted");
        };
        assert_eq!(e, reserved());
        let e = h.open_write(&req(temp), None).await.unwrap_err();
        assert_eq!(e, reserved());
        assert_eq!(
            std::fs::read(&old).unwrap(),
            b"old",
            "atomic: old until commit"
        );
        up.commit().await.unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"new content");
        assert_eq!(mode_of(&old), 0o755, "no setuid after the upload");
        assert_eq!(names(dir.path()), ["old.bin"]);

        // Dropped before the commit: removed.
        let mut up = h.open_write(&req("new.bin"), None).await.unwrap();
        up.write_all(b"abandoned").await.unwrap();
        up.flush().await.unwrap();
        assert_eq!(names(dir.path()).len(), 2);
        drop(up);
        assert_eq!(names(dir.path()), ["old.bin"]);

        // A new file: 0644 less the umask.
        let mut up = h.open_write(&req("new.bin"), None).await.unwrap();
        up.write_all(b"fresh").await.unwrap();
        up.commit().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.bin")).unwrap(), b"fresh");
        assert_eq!(mode_of(&dir.path().join("new.bin")), 0o644 & !umask());
        assert_eq!(names(dir.path()), ["new.bin", "old.bin"]);
    }

    /// Every transfer of one file shares one descriptor and reads it at its own offset; a
    /// file replaced under the same name is a new file; the entry goes with the last reader.
    #[tokio::test]
    async fn transfers_of_one_file_share_one_descriptor() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("boot.img"), &content).unwrap();
        let h = DirHandler::new(dir.path()).unwrap().allow_write(true);
        // Descriptors of this process open on files in `dir` (other tests run beside).
        let fds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.starts_with(dir.path()))
                .count()
        };
        let before = fds();
        let mut readers = Vec::new();
        for name in ["boot.img", "/boot.img", "./boot.img"] {
            readers.push(h.open_read(&req(name)).await.unwrap().reader);
        }
        assert_eq!(h.open_files(), 1);
        assert_eq!(fds(), before + 1, "three transfers, one descriptor");
        // Interleaved reads of different sizes: each reader sees the whole file in order.
        let mut got = vec![Vec::new(); readers.len()];
        for round in 0..200 {
            for (i, r) in readers.iter_mut().enumerate() {
                let mut buf = vec![0u8; 300 + 211 * i + round % 7];
                let n = r.read(&mut buf).await.unwrap();
                got[i].extend_from_slice(&buf[..n]);
            }
        }
        for (i, r) in readers.iter_mut().enumerate() {
            r.read_to_end(&mut got[i]).await.unwrap();
            assert!(got[i] == content, "reader {i}: {} bytes", got[i].len());
        }

        // An upload replaces the file: new requests read the new one, the old ones go on.
        let mut up = h.open_write(&req("boot.img"), None).await.unwrap();
        up.write_all(b"new image").await.unwrap();
        up.commit().await.unwrap();
        let mut new = h.open_read(&req("boot.img")).await.unwrap().reader;
        assert_eq!(h.open_files(), 2);
        let mut text = Vec::new();
        new.read_to_end(&mut text).await.unwrap();
        assert_eq!(text, b"new image");

        drop(readers);
        assert_eq!(h.open_files(), 1);
        drop(new);
        assert_eq!(h.open_files(), 0);
        assert!(
            h.open_files.lock().unwrap().is_empty(),
            "no entry left behind"
        );
        assert_eq!(fds(), before);
    }

    /// A long upload syncs in the background as it goes (one sync at a time, from
    /// [`WRITEBACK_BYTES`] on) and commits every byte; an error of a background sync fails
    /// the commit and leaves the old file as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_upload_syncs_as_it_goes_and_a_failed_sync_fails_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let h = DirHandler::new(dir.path()).unwrap().allow_create(true);
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i * 31 % 253) as u8).collect();
        let mut up = h.open_write(&req("big.bin"), None).await.unwrap();
        assert!(up.writeback.running.is_none());
        for chunk in data.chunks(65_464) {
            up.write_all(chunk).await.unwrap();
        }
        assert!(
            up.writeback.started_at >= WRITEBACK_BYTES,
            "a background sync started after {} bytes",
            up.writeback.started_at
        );
        // The next one starts only when that one is done: on a slow disk it may be at the
        // last write (CI's disk once took longer to sync 8 MiB than the test to write 12).
        assert!(up.writeback.started_at <= data.len() as u64);
        up.commit().await.unwrap();
        assert!(std::fs::read(dir.path().join("big.bin")).unwrap() == data);

        // A background sync that failed (a disk error): the commit fails, nothing replaced.
        let mut up = h.open_write(&req("big.bin"), None).await.unwrap();
        up.write_all(b"short").await.unwrap();
        up.writeback.running = Some(tokio::task::spawn_blocking(|| {
            Err(io::Error::from_raw_os_error(nix::libc::EIO))
        }));
        let e = up.commit().await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EIO));
        assert!(std::fs::read(dir.path().join("big.bin")).unwrap() == data);
        assert_eq!(names(dir.path()), ["big.bin"]);
    }

    #[tokio::test]
    async fn a_name_taken_while_uploading_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let h = DirHandler::new(dir.path()).unwrap().allow_create(true);
        // A file appears under the name meanwhile: the upload replaces it (rename semantics).
        let mut up = h.open_write(&req("race.bin"), None).await.unwrap();
        up.write_all(b"upload").await.unwrap();
        assert!(names(dir.path()).is_empty(), "anonymous while written");
        std::fs::write(dir.path().join("race.bin"), b"created meanwhile").unwrap();
        up.commit().await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("race.bin")).unwrap(),
            b"upload"
        );
        assert_eq!(names(dir.path()), ["race.bin"], "no hidden name left");
        // A link to outside appears meanwhile: the link itself is replaced.
        let target = outside.path().join("victim");
        std::fs::write(&target, b"victim").unwrap();
        let mut up = h.open_write(&req("link.bin"), None).await.unwrap();
        up.write_all(b"upload 2").await.unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link.bin")).unwrap();
        up.commit().await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"victim");
        let meta = std::fs::symlink_metadata(dir.path().join("link.bin")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::fs::read(dir.path().join("link.bin")).unwrap(),
            b"upload 2"
        );
        assert_eq!(names(dir.path()), ["link.bin", "race.bin"]);
        // The name removed meanwhile: the upload is still committed under it.
        let mut up = h.open_write(&req("race.bin"), None).await.unwrap();
        up.write_all(b"upload 3").await.unwrap();
        std::fs::remove_file(dir.path().join("race.bin")).unwrap();
        up.commit().await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("race.bin")).unwrap(),
            b"upload 3"
        );
        assert_eq!(names(dir.path()), ["link.bin", "race.bin"]);
    }

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

    #[test]
    fn resolve_refuses_temporary_names_and_trailing_separators() {
        let dir = tempfile::tempdir().unwrap();
        let h = DirHandler::new(dir.path()).unwrap();
        for temp in [
            &b".x.bin.1234abcd.tftpx-part"[..],
            b"sub/.x.tftpx-part",
            b"sub\\.x.tftpx-part",
            b".tftpx-part",
            b"a.TFTPX-Part",
            b"d.tftpx-part/f",
            b"d.tftpx-part/",
        ] {
            let e = h.resolve(temp).unwrap_err();
            assert_eq!(e, reserved(), "{:?}", String::from_utf8_lossy(temp));
        }
        // Only a suffix of a component is reserved.
        assert!(h.resolve(b"tftpx-part").is_ok());
        assert!(h.resolve(b"x.tftpx-part.bin").is_ok());
        for dir_name in [
            &b"f.bin/"[..],
            b"f.bin\\",
            b"f.bin//",
            b"f.bin/.",
            b"sub/f/",
            b"/f.bin/",
        ] {
            let e = h.resolve(dir_name).unwrap_err();
            assert_eq!(
                e,
                HandlerError::not_found(),
                "{:?}",
                String::from_utf8_lossy(dir_name)
            );
        }
        // The root itself and parents stay ERROR 2 with or without a separator.
        for bad in [&b"/"[..], b"./", b"../", b"sub/../"] {
            assert_eq!(h.resolve(bad).unwrap_err().code, ErrorCode::AccessViolation);
        }
    }
}
