//! # tftpx-origin: serve TFTP from where images already live
//!
//! [`tftpx::Handler`]s that fetch each requested file from an origin instead of a local
//! directory, streaming it: DATA leaves while the origin's body still arrives, and `tsize`
//! (RFC 2349) is the origin's `Content-Length` or object size.
//!
//! | item | origin |
//! | --- | --- |
//! | [`HttpOrigin`] | an `http://` or `https://` base URL (reqwest, rustls) |
//! | [`S3Origin`] | `s3://BUCKET/PREFIX` on S3 or an S3-compatible store (object_store) |
//! | [`Origin`] | either, chosen from a root string (what `tftpx serve ROOT` takes) |
//! | [`origin_name`] | the check every name passes before it becomes a URL or a key |
//! | [`OriginReader`] | the streamed body, with an idle timeout |
//! | [`CachedOrigin`] | any of them with a local cache: one origin fetch per file, revalidated |
//!
//! These live in their own crate so that the `tftpx` library pulls no HTTP or S3 code.
//!
//! Errors map to TFTP as: not found (HTTP 404/410, S3 NoSuchKey) -> ERROR 1; forbidden
//! (HTTP 401/403, S3 AccessDenied) -> ERROR 2; anything else (5xx, connection refused,
//! timeouts, a body that breaks off) -> ERROR 0, with the reason in the log.
//!
//! Uploads (WRQ), when allowed ([`HttpOrigin::allow_write`], [`S3Origin::allow_write`]),
//! reach the origin only after the last block: one HTTP PUT, or an S3 PutObject (multipart
//! past 10 MiB, aborted if the upload is abandoned). Otherwise a WRQ gets ERROR 2.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use tftpx::proto::ErrorCode;
use tftpx::{normalize_name, write_disabled, Handler, HandlerError, ReadFile, RequestInfo, Upload};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::StreamReader;
use tracing::warn;

mod cache;
mod profile;
pub use cache::{CacheReader, CacheStats, CachedOrigin, DEFAULT_CACHE_SIZE};

/// How long an origin may take to connect, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an origin may take to answer a request (status and headers), by default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a body may send nothing while the server waits for it, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A root string that is not a usable origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The URL or `s3://` root is malformed; the text says how.
    #[error("{0}")]
    Invalid(String),
    /// The HTTP client or object store could not be built.
    #[error("{0}")]
    Client(String),
}

/// Checks a requested name and returns the relative path it is fetched as: the checks of
/// [`tftpx::normalize_name`] (no `..`, NUL, overlong names; `\` separates; leading `/` and
/// empty or `.` components dropped), and then ERROR 2 "Invalid file name" for any `%`, `?`
/// or `#` and any ASCII control byte: a name never carries its own percent-encoding (so
/// `%2e%2e` cannot become `..` at an origin that decodes), a query or a fragment.
/// Other bytes are kept; [`HttpOrigin`] percent-encodes them, [`S3Origin`] needs UTF-8.
///
/// # Errors
/// ERROR 2 or ERROR 1 as above, with the message sent to the client.
pub fn origin_name(name: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let name = normalize_name(name)?;
    if name
        .iter()
        .any(|&b| matches!(b, b'%' | b'?' | b'#') || b.is_ascii_control())
    {
        return Err(HandlerError::access("Invalid file name"));
    }
    Ok(name)
}

/// Percent-encodes `name` (already checked by [`origin_name`]) for a URL path: every byte
/// but the unreserved ones of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) and the `/` separators.
fn encode_path(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() * 3);
    for &b in name {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The client's address as an origin sees it (an IPv4-mapped IPv6 address as IPv4).
fn client_ip(peer: SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

/// ERROR 0 sent when an origin fails; the reason goes to the log only.
fn origin_failed(what: &str, name: &str, reason: &dyn std::fmt::Display) -> HandlerError {
    warn!("origin: {what} {name}: {reason}");
    HandlerError::new(ErrorCode::NotDefined, "Origin unavailable")
}

/// A streamed origin body as an [`AsyncRead`]: fails with [`io::ErrorKind::TimedOut`] when
/// the origin sends nothing for the idle timeout while the server waits for bytes (time
/// spent waiting for the TFTP client does not count).
pub struct OriginReader {
    body: StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>,
    idle: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for OriginReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginReader")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl OriginReader {
    fn new(body: BoxStream<'static, io::Result<Bytes>>, idle: Duration) -> Self {
        Self {
            body: StreamReader::new(body),
            idle,
            waiting: None,
        }
    }
}

impl AsyncRead for OriginReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.waiting = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the origin sent nothing for {} s", idle.as_secs_f64()),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// What identifies one version of an origin's file, for a conditional request
/// (RFC 9110 section 8.8): the `ETag` and `Last-Modified` response headers, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The entity tag, quotes included (`"abc"`, `W/"abc"`); `None` if the origin sent none.
    pub etag: Option<String>,
    /// The HTTP date of the last modification; `None` if the origin sent none.
    pub last_modified: Option<String>,
}

/// What [`Fetch::fetch`] got from the origin.
#[derive(Debug)]
pub enum Fetched {
    /// The origin's file still matches the validators given (HTTP 304, or S3's "not
    /// modified"): the caller's copy is current.
    NotModified,
    /// The file's body, streamed.
    Body {
        /// The body.
        reader: OriginReader,
        /// Its length in bytes (`Content-Length` or the object's size), if known.
        size: Option<u64>,
        /// What identifies this version, for the next conditional request.
        validators: Validators,
    },
}

/// An origin that can fetch a file conditionally: what [`CachedOrigin`] needs.
pub trait Fetch: Handler + Clone {
    /// Fetches `name` (checked by [`origin_name`]) on behalf of the TFTP client `peer`;
    /// with `known`, only if the origin's version no longer matches it.
    ///
    /// # Errors
    /// As [`Handler::open_read`]: ERROR 1 not found, ERROR 2 forbidden or an invalid name,
    /// ERROR 0 "Origin unavailable" for any other failure (the reason is logged).
    fn fetch(
        &self,
        name: &[u8],
        peer: SocketAddr,
        known: Option<&Validators>,
    ) -> impl Future<Output = Result<Fetched, HandlerError>> + Send;
}

/// Serves files from an HTTP(S) server: an RRQ for `NAME` is a `GET BASE/NAME`.
///
/// - `NAME` passes [`origin_name`], is percent-encoded and appended to the base URL's path;
///   the result is checked to have the base's scheme, host and port and no query.
/// - Each request carries `X-TFTP-Client-IP`, `X-TFTP-Client-Port` and `X-TFTP-File` (the
///   percent-encoded relative name, as in the URL), the convention of tftp-http-proxy, so
///   an origin application can answer per client; and `Accept-Encoding: identity`, so
///   `Content-Length` is the size served.
/// - `tsize` is the response's `Content-Length` (none for a chunked response). Redirects
///   are followed (up to 10), as the origin asks.
/// - Timeouts: connect [`DEFAULT_CONNECT_TIMEOUT`], status and headers
///   [`DEFAULT_RESPONSE_TIMEOUT`], then the body may pause at most [`DEFAULT_IDLE_TIMEOUT`]
///   at a time; a body can take as long as the TFTP client takes.
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    client: reqwest::Client,
    base: reqwest::Url,
    response_timeout: Duration,
    idle_timeout: Duration,
    allow_write: bool,
}

impl HttpOrigin {
    /// An origin at `base` (`http://HOST[:PORT]/[PATH]`, or `https://`). A missing final
    /// `/` is added: `http://h/images` serves `http://h/images/NAME`.
    ///
    /// # Errors
    /// [`OriginError::Invalid`] for a URL that does not parse, another scheme, a URL with
    /// credentials, a query or a fragment; [`OriginError::Client`] if the TLS client cannot
    /// be built.
    pub fn new(base: &str) -> Result<Self, OriginError> {
        let mut url =
            reqwest::Url::parse(base).map_err(|e| OriginError::Invalid(format!("{base}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(OriginError::Invalid(format!(
                "{base}: not an http:// or https:// URL"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(OriginError::Invalid(format!(
                "{base}: a base URL has no query or fragment"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OriginError::Invalid(format!(
                "{base}: credentials in the URL are not supported"
            )));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .read_timeout(DEFAULT_IDLE_TIMEOUT)
            .build()
            .map_err(|e| OriginError::Client(e.to_string()))?;
        Ok(Self {
            client,
            base: url,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            allow_write: false,
        })
    }

    /// Accepts uploads (WRQ): each becomes one `PUT BASE/NAME` with the whole file, sent
    /// only after the last block arrived (off by default: ERROR 2). The file is held in
    /// memory until then, at most [`MAX_HTTP_UPLOAD`] bytes (ERROR 3 beyond).
    pub fn allow_write(mut self, yes: bool) -> Self {
        self.allow_write = yes;
        self
    }

    /// How long the origin may take to send status and headers (default 10 s).
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = t;
        self
    }

    /// How long the body may send nothing while the server waits for it (default 30 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// The base URL (ends in `/`).
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// The URL `name` (checked by [`origin_name`]) is fetched from, and its encoded path.
    ///
    /// # Errors
    /// ERROR 2 when the name fails [`origin_name`] or the URL would leave the base.
    pub fn url_for(&self, name: &[u8]) -> Result<(reqwest::Url, String), HandlerError> {
        let rel = encode_path(&origin_name(name)?);
        let url = reqwest::Url::parse(&format!("{}{rel}", self.base))
            .map_err(|_| HandlerError::access("Invalid file name"))?;
        let same_place = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.query().is_none()
            && url.fragment().is_none()
            && url.path().starts_with(self.base.path());
        if !same_place {
            return Err(HandlerError::access("Invalid file name"));
        }
        Ok((url, rel))
    }
}

impl Handler for HttpOrigin {
    type Reader = OriginReader;
    type Writer = OriginUpload;

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        if !self.allow_write {
            return Err(write_disabled());
        }
        let (url, rel) = self.url_for(req.filename)?;
        if size.is_some_and(|n| n > MAX_HTTP_UPLOAD as u64) {
            return Err(HandlerError::new(ErrorCode::DiskFull, "File too large"));
        }
        let put = self
            .client
            .put(url)
            .header("X-TFTP-Client-IP", client_ip(req.peer))
            .header("X-TFTP-Client-Port", req.peer.port().to_string())
            .header("X-TFTP-File", rel);
        Ok(OriginUpload(UploadTo::Http {
            put: Some(put),
            body: Vec::new(),
            timeout: self.response_timeout,
        }))
    }

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        match self.fetch(req.filename, req.peer, None).await? {
            Fetched::Body { reader, size, .. } => Ok(ReadFile { reader, size }),
            Fetched::NotModified => unreachable!("an unconditional GET is never 304"),
        }
    }
}

impl Fetch for HttpOrigin {
    /// `GET BASE/NAME` with the X-TFTP-* headers of `peer`, and `If-None-Match` /
    /// `If-Modified-Since` from `known` (RFC 9110 section 13.1): 304 is
    /// [`Fetched::NotModified`].
    async fn fetch(
        &self,
        name: &[u8],
        peer: SocketAddr,
        known: Option<&Validators>,
    ) -> Result<Fetched, HandlerError> {
        let (url, rel) = self.url_for(name)?;
        let mut request = self
            .client
            .get(url.clone())
            .header("X-TFTP-Client-IP", client_ip(peer))
            .header("X-TFTP-Client-Port", peer.port().to_string())
            .header("X-TFTP-File", rel)
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        if let Some(k) = known {
            if let Some(etag) = &k.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &k.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let response = match tokio::time::timeout(self.response_timeout, request.send()).await {
            Err(_) => {
                let why = format!("no answer within {:?}", self.response_timeout);
                return Err(origin_failed("GET", url.as_str(), &why));
            }
            Ok(Err(e)) => return Err(origin_failed("GET", url.as_str(), &error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        match status.as_u16() {
            200 => {}
            304 if known.is_some() => return Ok(Fetched::NotModified),
            404 | 410 => return Err(HandlerError::not_found()),
            401 | 403 => return Err(HandlerError::access("Access denied")),
            _ => {
                let why = format!("HTTP {status}");
                return Err(origin_failed("GET", url.as_str(), &why));
            }
        }
        let header = |h: reqwest::header::HeaderName| {
            response
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        };
        let size = response.content_length();
        let body = response
            .bytes_stream()
            .map_err(|e| io::Error::other(error_chain(&e)))
            .boxed();
        Ok(Fetched::Body {
            reader: OriginReader::new(body, self.idle_timeout),
            size,
            validators,
        })
    }
}

/// An error and its sources, `: `-separated (reqwest's own text omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Serves objects of an S3 bucket (or an S3-compatible store): an RRQ for `NAME` is a
/// GetObject of `PREFIX/NAME`.
///
/// Configuration comes from the standard AWS environment variables, as `object_store` reads
/// them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), web identity and container
/// credentials, or the instance metadata service; then, for what the environment leaves
/// unset, the shared files as the AWS CLI reads them: profile `AWS_PROFILE` (else
/// `default`) in `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`:
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`) and `AWS_CONFIG_FILE`
/// (else `~/.aws/config`, section `[profile NAME]`: the same keys, `region`,
/// `endpoint_url`). With an endpoint, requests are path-style (`ENDPOINT/BUCKET/KEY`), and
/// an `http://` endpoint is allowed. Other profile features (`source_profile`, SSO,
/// `credential_process`) are not supported.
///
/// `NAME` passes [`origin_name`] and must be UTF-8 (object keys are); `tsize` is the
/// object's size. Failed requests are retried at most twice within 10 s before ERROR 0.
#[derive(Debug, Clone)]
pub struct S3Origin {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    idle_timeout: Duration,
    allow_write: bool,
    /// The endpoint URL from the environment or a profile file, if any.
    endpoint: Option<String>,
    /// Keys came from the environment or a profile file (no instance or container
    /// credentials will be fetched).
    static_keys: bool,
}

impl S3Origin {
    /// Objects below `prefix` (no leading or trailing `/` needed; empty for the whole
    /// bucket) in `bucket`, configured from the environment.
    ///
    /// # Errors
    /// [`OriginError::Invalid`] for an empty bucket or a prefix with `.`/`..` components;
    /// [`OriginError::Client`] when the store cannot be configured (a malformed variable, or
    /// a profile file that cannot be read or parsed).
    pub fn from_env(bucket: &str, prefix: &str) -> Result<Self, OriginError> {
        if bucket.is_empty() || bucket.contains('/') {
            return Err(OriginError::Invalid(format!(
                "invalid bucket name {bucket:?}"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|c| c == "." || c == ".." || (c.is_empty() && !prefix.is_empty()))
        {
            return Err(OriginError::Invalid(format!("invalid prefix {prefix:?}")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // The environment first, then the profile files (as the AWS SDKs order them).
        let profile = profile::load(&|k| std::env::var(k).ok())
            .map_err(|e| OriginError::Client(format!("AWS profile files: {e}")))?;
        let env_set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !env_set("AWS_ACCESS_KEY_ID") {
            if let (Some(id), Some(secret)) = (profile.access_key_id, profile.secret_access_key) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = profile.session_token {
                    builder = builder.with_token(token);
                }
            }
        }
        if let Some(region) = profile.region {
            if !env_set("AWS_REGION") && !env_set("AWS_DEFAULT_REGION") {
                builder = builder.with_region(region);
            }
        }
        if let Some(endpoint) = profile.endpoint_url {
            if !env_set("AWS_ENDPOINT_URL") && !env_set("AWS_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
        }
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let static_keys = builder
            .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
            .is_some();
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            // A body takes as long as the TFTP client takes: only its pauses are bounded
            // (by OriginReader).
            .with_timeout_disabled();
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let store = builder
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| OriginError::Client(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            allow_write: false,
            endpoint,
            static_keys,
        })
    }

    /// The endpoint URL requests go to, when one was configured (environment or profile
    /// file); `None`: AWS itself, over HTTPS.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// True when access keys were configured (environment or profile file); false when
    /// credentials will come from web identity, a container or the instance metadata
    /// service (HTTP, port 80).
    pub fn has_static_keys(&self) -> bool {
        self.static_keys
    }

    /// How long the body may send nothing while the server waits for it (default 30 s).
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Accepts uploads (WRQ) as PutObject, or a multipart upload once the file passes
    /// 10 MiB, completed only after the last block arrived; an upload that does not finish
    /// is aborted and creates no object (off by default: ERROR 2).
    pub fn allow_write(mut self, yes: bool) -> Self {
        self.allow_write = yes;
        self
    }

    /// `s3://BUCKET/PREFIX`, for logs.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The key `name` is fetched from.
    ///
    /// # Errors
    /// ERROR 2 when the name fails [`origin_name`] or is not UTF-8.
    pub fn key_for(&self, name: &[u8]) -> Result<object_store::path::Path, HandlerError> {
        let name = origin_name(name)?;
        let name =
            std::str::from_utf8(&name).map_err(|_| HandlerError::access("Invalid file name"))?;
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        };
        object_store::path::Path::parse(&key).map_err(|_| HandlerError::access("Invalid file name"))
    }
}

impl Handler for S3Origin {
    type Reader = OriginReader;
    type Writer = OriginUpload;

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        _size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        if !self.allow_write {
            return Err(write_disabled());
        }
        let key = self.key_for(req.filename)?;
        Ok(OriginUpload(UploadTo::S3(Some(
            object_store::buffered::BufWriter::new(self.store.clone(), key),
        ))))
    }

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        match self.fetch(req.filename, req.peer, None).await? {
            Fetched::Body { reader, size, .. } => Ok(ReadFile { reader, size }),
            Fetched::NotModified => unreachable!("an unconditional GetObject is never 304"),
        }
    }
}

impl Fetch for S3Origin {
    /// GetObject, conditional on the object's ETag (`If-None-Match`) when `known` has one;
    /// "not modified" is [`Fetched::NotModified`]. `peer` is not sent.
    async fn fetch(
        &self,
        name: &[u8],
        _peer: SocketAddr,
        known: Option<&Validators>,
    ) -> Result<Fetched, HandlerError> {
        let key = self.key_for(name)?;
        let what = format!("s3://{}/{key}", self.bucket);
        let options = object_store::GetOptions {
            if_none_match: known.and_then(|k| k.etag.clone()),
            ..Default::default()
        };
        let got = match self.store.get_opts(&key, options).await {
            Ok(g) => g,
            Err(object_store::Error::NotModified { .. }) if known.is_some() => {
                return Ok(Fetched::NotModified)
            }
            Err(object_store::Error::NotFound { .. }) => return Err(HandlerError::not_found()),
            Err(
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. },
            ) => return Err(HandlerError::access("Access denied")),
            Err(e) => return Err(origin_failed("GetObject", &what, &error_chain(&e))),
        };
        let size = got.meta.size;
        let validators = Validators {
            etag: got.meta.e_tag.clone(),
            last_modified: None,
        };
        let body = got
            .into_stream()
            .map_err(|e| io::Error::other(error_chain(&e)))
            .boxed();
        Ok(Fetched::Body {
            reader: OriginReader::new(body, self.idle_timeout),
            size: Some(size),
            validators,
        })
    }
}

/// An origin chosen by its root string: [`HttpOrigin`] or [`S3Origin`].
#[derive(Debug, Clone)]
pub enum Origin {
    /// `http://...` or `https://...`.
    Http(HttpOrigin),
    /// `s3://BUCKET[/PREFIX]`.
    S3(S3Origin),
}

impl Origin {
    /// Accepts uploads: see [`HttpOrigin::allow_write`] and [`S3Origin::allow_write`].
    pub fn allow_write(self, yes: bool) -> Self {
        match self {
            Self::Http(h) => Self::Http(h.allow_write(yes)),
            Self::S3(s) => Self::S3(s.allow_write(yes)),
        }
    }

    /// Whether `root` names an origin rather than a directory (`http://`, `https://`,
    /// `s3://`, ASCII case ignored).
    pub fn is_origin(root: &str) -> bool {
        let lower = root.get(..8).unwrap_or(root).to_ascii_lowercase();
        lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("s3://")
    }

    /// The origin `root` names.
    ///
    /// # Errors
    /// As [`HttpOrigin::new`] and [`S3Origin::from_env`]; [`OriginError::Invalid`] for a
    /// root that is no origin.
    pub fn parse(root: &str) -> Result<Self, OriginError> {
        let scheme_end = root.find("://").unwrap_or(0);
        match root[..scheme_end].to_ascii_lowercase().as_str() {
            "http" | "https" => Ok(Self::Http(HttpOrigin::new(root)?)),
            "s3" => {
                let rest = &root[scheme_end + 3..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Ok(Self::S3(S3Origin::from_env(bucket, prefix)?))
            }
            _ => Err(OriginError::Invalid(format!(
                "{root}: not an http://, https:// or s3:// origin"
            ))),
        }
    }
}

impl Handler for Origin {
    type Reader = OriginReader;
    type Writer = OriginUpload;

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        match self {
            Self::Http(h) => h.open_write(req, size).await,
            Self::S3(s) => s.open_write(req, size).await,
        }
    }

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        match self {
            Self::Http(h) => h.open_read(req).await,
            Self::S3(s) => s.open_read(req).await,
        }
    }
}

impl Fetch for Origin {
    async fn fetch(
        &self,
        name: &[u8],
        peer: SocketAddr,
        known: Option<&Validators>,
    ) -> Result<Fetched, HandlerError> {
        match self {
            Self::Http(h) => h.fetch(name, peer, known).await,
            Self::S3(s) => s.fetch(name, peer, known).await,
        }
    }
}

/// Largest upload to an [`HttpOrigin`], in bytes (64 MiB): it is held in memory until the
/// PUT.
pub const MAX_HTTP_UPLOAD: usize = 64 << 20;

/// An upload to an origin: nothing reaches the origin's name before [`Upload::commit`]
/// (after the last block). Dropped before, an HTTP upload sends nothing and an S3 upload
/// is aborted (a multipart upload already begun is aborted in the background).
pub struct OriginUpload(UploadTo);

enum UploadTo {
    Http {
        /// The PUT, sent by the commit; `None` once sent.
        put: Option<reqwest::RequestBuilder>,
        body: Vec<u8>,
        timeout: Duration,
    },
    /// `None` once committed or aborted.
    S3(Option<object_store::buffered::BufWriter>),
}

impl std::fmt::Debug for OriginUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            UploadTo::Http { body, .. } => write!(f, "OriginUpload::Http({} bytes)", body.len()),
            UploadTo::S3(_) => f.write_str("OriginUpload::S3"),
        }
    }
}

fn committed() -> io::Error {
    io::Error::other("upload already committed")
}

impl AsyncWrite for OriginUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            UploadTo::Http { body, .. } => {
                if body.len() + buf.len() > MAX_HTTP_UPLOAD {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "upload larger than 64 MiB",
                    )));
                }
                body.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            UploadTo::S3(Some(w)) => Pin::new(w).poll_write(cx, buf),
            UploadTo::S3(None) => Poll::Ready(Err(committed())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            UploadTo::Http { .. } => Poll::Ready(Ok(())),
            UploadTo::S3(Some(w)) => Pin::new(w).poll_flush(cx),
            UploadTo::S3(None) => Poll::Ready(Err(committed())),
        }
    }

    /// Flushes only: the upload is completed by [`Upload::commit`].
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Upload for OriginUpload {
    async fn commit(mut self) -> io::Result<()> {
        match &mut self.0 {
            UploadTo::Http { put, body, timeout } => {
                let put = put.take().ok_or_else(committed)?;
                let url = put
                    .try_clone()
                    .and_then(|p| p.build().ok())
                    .map(|r| r.url().to_string())
                    .unwrap_or_default();
                let sent = tokio::time::timeout(*timeout, put.body(std::mem::take(body)).send());
                let response = match sent.await {
                    Err(_) => {
                        warn!("origin: PUT {url}: no answer within {timeout:?}");
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "origin unavailable",
                        ));
                    }
                    Ok(Err(e)) => {
                        warn!("origin: PUT {url}: {}", error_chain(&e));
                        return Err(io::Error::other("origin unavailable"));
                    }
                    Ok(Ok(r)) => r,
                };
                match response.status().as_u16() {
                    200..=299 => Ok(()),
                    401 | 403 => Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "origin refused",
                    )),
                    413 => Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "origin refused",
                    )),
                    _ => {
                        warn!("origin: PUT {url}: HTTP {}", response.status());
                        Err(io::Error::other("origin refused the upload"))
                    }
                }
            }
            UploadTo::S3(w) => {
                let mut w = w.take().ok_or_else(committed)?;
                w.shutdown().await.map_err(|e| {
                    warn!("origin: PutObject: {}", error_chain(&e));
                    let denied = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<object_store::Error>())
                        .is_some_and(|o| {
                            matches!(
                                o,
                                object_store::Error::PermissionDenied { .. }
                                    | object_store::Error::Unauthenticated { .. }
                            )
                        });
                    if denied {
                        io::Error::new(io::ErrorKind::PermissionDenied, "origin refused")
                    } else {
                        io::Error::other("origin unavailable")
                    }
                })
            }
        }
    }
}

impl Drop for OriginUpload {
    fn drop(&mut self) {
        if let UploadTo::S3(Some(mut w)) = std::mem::replace(&mut self.0, UploadTo::S3(None)) {
            // A multipart upload already begun is aborted; a small one never left memory.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = w.abort().await {
                        warn!("origin: aborting an unfinished upload: {e}");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_change_the_url_beyond_its_path() {
        let h = HttpOrigin::new("http://127.0.0.1:8080/images").unwrap();
        assert_eq!(h.base().as_str(), "http://127.0.0.1:8080/images/");
        let url = |n: &str| h.url_for(n.as_bytes()).map(|(u, _)| u.to_string());
        assert_eq!(
            url("/boot/vmlinuz").unwrap(),
            "http://127.0.0.1:8080/images/boot/vmlinuz"
        );
        assert_eq!(
            url("\\Boot\\BCD").unwrap(),
            "http://127.0.0.1:8080/images/Boot/BCD"
        );
        assert_eq!(
            url("a b:c@d").unwrap(),
            "http://127.0.0.1:8080/images/a%20b%3Ac%40d"
        );
        assert_eq!(
            url("//evil.example/x").unwrap(),
            "http://127.0.0.1:8080/images/evil.example/x"
        );
        for bad in [
            "../x",
            "a/../../x",
            "%2e%2e/x",
            "a?x=1",
            "a#f",
            "a%2fb",
            "a\u{1}b",
            "/",
            "",
        ] {
            let e = h.url_for(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::AccessViolation, "{bad:?}");
        }
        assert_eq!(
            h.url_for(b"dir/").unwrap_err().code,
            ErrorCode::FileNotFound
        );
    }

    #[test]
    fn roots_are_recognised() {
        assert!(Origin::is_origin("HTTP://x/"));
        assert!(Origin::is_origin("s3://b/p"));
        assert!(!Origin::is_origin("/srv/tftp"));
        assert!(!Origin::is_origin("http"));
        assert!(HttpOrigin::new("ftp://x/").is_err());
        assert!(HttpOrigin::new("http://x/?q=1").is_err());
        assert!(HttpOrigin::new("http://u:p@x/").is_err());
    }
}
