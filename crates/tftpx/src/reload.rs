//! Settings a running [`Server`](crate::Server) can change without a restart: the address
//! rules, the upload sources, the remap rules and the refused options.
//!
//! [`Server::reloader`](crate::Server::reloader) hands out a [`Reloader`]; its
//! [`Reloader::replace`] swaps all of them at once. Every request reads one snapshot
//! ([`Reloader::current`]) when it arrives and keeps it for the whole transfer, so a
//! running transfer is never disturbed and a new request never sees half of a change.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tftpx::reload::LiveSettings;
//! use tftpx::{Acl, DirHandler, Server};
//! let server = Server::builder(DirHandler::new("/srv/tftp")?)
//!     .listen("127.0.0.1:6969".parse()?)
//!     .bind()?;
//! let reloader = server.reloader();
//! tokio::spawn(server.run());
//! // Later (e.g. on SIGHUP): deny 192.0.2.0/24 to every new request.
//! reloader.replace(LiveSettings {
//!     acl: Acl::new().deny("192.0.2.0/24".parse()?),
//!     ..(*reloader.current()).clone()
//! });
//! # Ok(()) }
//! ```

use std::sync::{Arc, RwLock};

use tftpx_proto::negotiate::RefusedOptions;

use crate::policy::{Acl, Cidr};
use crate::remap::RemapRules;

/// The reloadable settings, as one value: what [`ServerBuilder::acl`],
/// [`ServerBuilder::allow_write_from`], [`ServerBuilder::remap`] and
/// [`ServerBuilder::refuse_options`] set at start.
///
/// [`ServerBuilder::acl`]: crate::ServerBuilder::acl
/// [`ServerBuilder::allow_write_from`]: crate::ServerBuilder::allow_write_from
/// [`ServerBuilder::remap`]: crate::ServerBuilder::remap
/// [`ServerBuilder::refuse_options`]: crate::ServerBuilder::refuse_options
#[derive(Debug, Clone, Default)]
pub struct LiveSettings {
    /// Address rules (first match wins, default allow); a denied source's datagrams are
    /// dropped at the listener without an answer.
    pub acl: Acl,
    /// When set, WRQs only from these blocks; others get ERROR 2 (RFC 1350 section 5).
    /// `None`: uploads from anyone the handler lets write.
    pub write_from: Option<Vec<Cidr>>,
    /// tftp-hpa remap rules applied to every requested name before the handler sees it;
    /// `None`: names are used as sent.
    pub remap: Option<Arc<RemapRules>>,
    /// Options ignored in requests as if not sent (RFC 2347 lets a server leave out any
    /// option), so they never appear in an OACK.
    pub refused: RefusedOptions,
}

/// A cloneable handle that swaps a running server's [`LiveSettings`] atomically. Cheap to
/// clone; every clone (and the server) sees the same settings.
#[derive(Debug, Clone, Default)]
pub struct Reloader {
    inner: Arc<RwLock<Arc<LiveSettings>>>,
}

impl Reloader {
    /// A handle holding `settings`.
    pub(crate) fn new(settings: LiveSettings) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(settings))),
        }
    }

    /// The settings in force now: a snapshot that a later [`Reloader::replace`] does not
    /// change. Costs one uncontended read lock and a reference count.
    pub fn current(&self) -> Arc<LiveSettings> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `settings` in force for every request that arrives from now on, and returns the
    /// settings they replace. Transfers already running keep the snapshot they started with.
    pub fn replace(&self, settings: LiveSettings) -> Arc<LiveSettings> {
        let new = Arc::new(settings);
        let mut slot = self.inner.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *slot, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_every_setting_and_keeps_old_snapshots() {
        let r = Reloader::new(LiveSettings::default());
        let before = r.current();
        let other = r.clone();
        let old = other.replace(LiveSettings {
            acl: Acl::new().deny("192.0.2.0/24".parse().unwrap()),
            write_from: Some(vec!["198.51.100.0/24".parse().unwrap()]),
            remap: Some(Arc::new(RemapRules::parse("r ^/ \n").unwrap())),
            refused: RefusedOptions::from_name("tsize").unwrap(),
        });
        assert!(Arc::ptr_eq(&old, &before));
        // The snapshot taken before is unchanged; the handle sees the new settings.
        assert!(before.acl.is_empty() && before.remap.is_none());
        let now = r.current();
        assert!(!now.acl.allows("192.0.2.7".parse().unwrap()));
        assert!(now.acl.allows("192.0.3.7".parse().unwrap()));
        assert_eq!(now.write_from.as_ref().map(Vec::len), Some(1));
        assert!(now.remap.is_some());
        assert!(now.refused.refuses("TSIZE"));
    }
}
