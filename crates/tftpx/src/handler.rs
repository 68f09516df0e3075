//! What the server serves: the [`Handler`] trait, and [`DirHandler`], a directory on disk.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

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
    /// The file's size in bytes, if known (reported as `tsize`).
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
///   accepted too. `..` anywhere is refused (ERROR 2), as are names over
///   [`MAX_NAME_LEN`] bytes or with a component over [`MAX_COMPONENT_LEN`].
/// - Symbolic links are followed only while they stay inside the root (ERROR 2 otherwise).
/// - Only regular files are served.
/// - Writes need [`DirHandler::allow_write`] (overwrite existing files) or
///   [`DirHandler::allow_create`] (also create new ones); uploads go to a temporary file
///   beside the target that is renamed over it only when the transfer completes.
#[derive(Debug, Clone)]
pub struct DirHandler {
    root: PathBuf,
    allow_write: bool,
    allow_create: bool,
}

impl DirHandler {
    /// Serves `root`, read-only.
    ///
    /// # Errors
    /// If `root` does not exist or is not a directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = std::fs::canonicalize(root.as_ref())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.as_ref().display())))?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            root,
            allow_write: false,
            allow_create: false,
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

    /// The served directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a requested name to a path below the root, by components only (no file system
    /// access). Symbolic links are checked by the callers.
    ///
    /// # Errors
    /// ERROR 2 for `..`, overlong names, or a name that is the root itself.
    pub fn resolve(&self, name: &[u8]) -> Result<PathBuf, HandlerError> {
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
                b".." => return Err(HandlerError::access("Access outside the root refused")),
                c if c.len() > MAX_COMPONENT_LEN => {
                    return Err(HandlerError::access("File name too long"))
                }
                c => rel.push(std::ffi::OsStr::from_bytes(c)),
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(HandlerError::access("Not a regular file"));
        }
        Ok(self.root.join(rel))
    }

    fn inside(&self, p: &Path) -> bool {
        p.starts_with(&self.root)
    }
}

impl Handler for DirHandler {
    type Reader = tokio::fs::File;
    type Writer = DirUpload;

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let path = self.resolve(req.filename)?;
        let real = tokio::fs::canonicalize(&path)
            .await
            .map_err(|e| HandlerError::from_io(&e))?;
        if !self.inside(&real) {
            return Err(HandlerError::access("Access outside the root refused"));
        }
        let file = tokio::fs::File::open(&real)
            .await
            .map_err(|e| HandlerError::from_io(&e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| HandlerError::from_io(&e))?;
        if !meta.is_file() {
            return Err(HandlerError::access("Not a regular file"));
        }
        Ok(ReadFile {
            reader: file,
            size: Some(meta.len()),
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
        let path = self.resolve(req.filename)?;
        let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
            return Err(HandlerError::access("Invalid file name"));
        };
        let parent = tokio::fs::canonicalize(parent)
            .await
            .map_err(|_| HandlerError::new(ErrorCode::FileNotFound, "Directory not found"))?;
        if !self.inside(&parent) {
            return Err(HandlerError::access("Access outside the root refused"));
        }
        let mut target = parent.join(file_name);
        let mut mode = 0o644;
        match tokio::fs::symlink_metadata(&target).await {
            Ok(meta) => {
                if meta.file_type().is_symlink() {
                    // Write through a link only when it stays inside the root.
                    target = tokio::fs::canonicalize(&target)
                        .await
                        .map_err(|e| HandlerError::from_io(&e))?;
                    if !self.inside(&target) {
                        return Err(HandlerError::access("Access outside the root refused"));
                    }
                }
                let meta = tokio::fs::metadata(&target)
                    .await
                    .map_err(|e| HandlerError::from_io(&e))?;
                if !meta.is_file() {
                    return Err(HandlerError::access("Not a regular file"));
                }
                if meta.permissions().readonly() {
                    return Err(HandlerError::access("Permission denied"));
                }
                mode = meta.permissions().mode() & 0o7777;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !self.allow_create {
                    return Err(HandlerError::access(
                        "File does not exist and creating files is disabled",
                    ));
                }
            }
            Err(e) => return Err(HandlerError::from_io(&e)),
        }
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let prefix = format!(
            ".{}.",
            target.file_name().unwrap_or_default().to_string_lossy()
        );
        let tmp = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".tftpx-part")
                .permissions(std::fs::Permissions::from_mode(mode))
                .tempfile_in(dir)
        })
        .await
        .map_err(|e| HandlerError::new(ErrorCode::NotDefined, e.to_string()))?
        .map_err(|e| HandlerError::from_io(&e))?;
        let (file, temp_path) = tmp.into_parts();
        Ok(DirUpload {
            file: BufWriter::with_capacity(UPLOAD_BUFFER, tokio::fs::File::from_std(file)),
            temp: Some(temp_path),
            target,
        })
    }
}

/// An upload into a [`DirHandler`]'s directory: a temporary file beside the target, renamed
/// over it by [`Upload::commit`] and removed if dropped before.
pub struct DirUpload {
    file: BufWriter<tokio::fs::File>,
    temp: Option<tempfile::TempPath>,
    target: PathBuf,
}

impl std::fmt::Debug for DirUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirUpload")
            .field("temp", &self.temp)
            .field("target", &self.target)
            .finish_non_exhaustive()
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
            .take()
            .ok_or_else(|| io::Error::other("upload already committed"))?;
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || temp.persist(&target).map_err(|e| e.error))
            .await
            .map_err(io::Error::other)?
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
