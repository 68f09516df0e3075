//! # tftpx: a TFTP server and client on tokio
//!
//! The protocol itself lives in [`tftpx_proto`] (re-exported as [`proto`]), which has no
//! I/O; this crate drives it with sockets, files and the tokio clock:
//!
//! | item | role |
//! | --- | --- |
//! | [`Server`], [`ServerBuilder`] | listeners; one task and one socket (TID) per transfer |
//! | [`Handler`], [`DirHandler`] | what is served: a directory confined to its root, or your own |
//! | [`normalize_name`], [`NoUpload`] | the name checks of [`DirHandler`] for other handlers; a read-only handler's upload type |
//! | [`Upload`] | an upload that only replaces the target on [`Upload::commit`] |
//! | [`TransferSummary`] | the facts of a finished transfer (logged, and given to a hook) |
//! | [`ServerStats`] | live counters: refusals, ERRORs sent, running transfers (for metrics) |
//! | [`RemapRules`] | tftp-hpa's file name remapping rules, applied before the handler |
//! | [`Acl`], [`Cidr`], [`PortRange`] | who may be served or upload; which ports transfers use |
//! | [`Reloader`], [`LiveSettings`] | swap the address rules, remap rules and refused options of a running server |
//! | [`Client`], [`ClientBuilder`] | downloads into any `AsyncWrite`, uploads from any `AsyncRead` |
//!
//! Every transfer runs in its own task on its own socket bound to the address the request
//! was sent to, so a slow client never delays another and replies leave from the address
//! the client asked.

mod admission;
mod budget;
mod client;
mod driver;
mod endpoint;
mod handler;
mod inline;
mod io;
mod net;
pub mod policy;
pub mod reload;
pub mod remap;
mod server;
pub mod stats;
mod trace;

pub use client::{Client, ClientBuilder, ClientError, Progress, Report};
pub use driver::{BusyPolls, DEFAULT_BUSY_POLL};
pub use handler::{
    from_fn, normalize_name, write_disabled, DirFile, DirHandler, DirUpload, FnHandler, Handler,
    HandlerError, NoUpload, ReadFile, RequestInfo, SyncFile, Upload, MAX_COMPONENT_LEN,
    MAX_NAME_LEN,
};
pub use policy::{Acl, Cidr, PolicyStats, PortRange};
pub use reload::{LiveSettings, Reloader};
pub use remap::{RemapRules, Remapped};
pub use server::{
    printable, Kind, Outcome, RateLimit, Server, ServerBuilder, ServerConfig, ServerError,
    TransferSummary,
};
pub use stats::{Refusal, RunningTransfer, ServerStats};
pub use tftpx_proto as proto;
pub use tokio_util::sync::CancellationToken;
pub use trace::{Direction, PacketTrace};
