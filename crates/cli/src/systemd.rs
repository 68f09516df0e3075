//! The service manager's side of `tftpx serve`: listen sockets passed by socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`: sd_listen_fds(3)) and readiness
//! notifications (`NOTIFY_SOCKET`: sd_notify(3)).
//!
//! Descriptors are adopted with the `listenfd` crate, which checks that each one is a
//! datagram socket of IPv4 or IPv6 before it becomes a `UdpSocket` (so this crate needs no
//! `unsafe`). Notifications are written here with std's `UnixDatagram`: the sd-notify crate
//! connects to the variable's value as a path, which misses abstract sockets (`@NAME`).

use std::ffi::OsStr;
use std::io;
use std::net::UdpSocket;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: usize = 3;

/// A listen socket passed by the service manager.
#[derive(Debug)]
pub(crate) struct Passed {
    /// The socket (a datagram socket of IPv4 or IPv6, not yet checked to be UDP).
    pub socket: UdpSocket,
    /// Its descriptor number (3, 4, ...).
    pub fd: usize,
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=`, by default the socket unit's
    /// name), if given.
    pub name: Option<String>,
}

/// Takes the listen sockets the service manager passed to this process, following
/// sd_listen_fds(3): only when `LISTEN_PID` is this process's id, `LISTEN_FDS` of them from
/// descriptor 3 on. `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the
/// environment whether or not they were meant for this process (a child must not take them
/// for its own). Call it before any thread starts (it changes the environment).
///
/// # Errors
/// One line naming the descriptor when one is not a datagram socket of IPv4 or IPv6 (for
/// instance a stream socket: `ListenStream=` where `ListenDatagram=` was meant).
pub(crate) fn take_listen_sockets() -> Result<Vec<Passed>, String> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let mut passed = Vec::new();
    if ours {
        // Reads LISTEN_FDS and removes LISTEN_PID and LISTEN_FDS.
        let mut fds = listenfd::ListenFd::from_env();
        let names: Vec<&str> = names
            .as_deref()
            .map_or(Vec::new(), |n| n.split(':').collect());
        for i in 0..fds.len() {
            let fd = LISTEN_FDS_START + i;
            let name = names
                .get(i)
                .filter(|n| !n.is_empty())
                .map(|n| (*n).to_owned());
            let label = match &name {
                Some(n) => format!("descriptor {fd} ({n})"),
                None => format!("descriptor {fd}"),
            };
            match fds.take_udp_socket(i) {
                Ok(Some(socket)) => passed.push(Passed { socket, fd, name }),
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "the service manager passed {label}, which is not a UDP socket ({e}): \
                         TFTP needs ListenDatagram= in the socket unit"
                    ))
                }
            }
        }
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    Ok(passed)
}

/// Tells the service manager about start-up and shutdown (`Type=notify`): a datagram socket
/// connected to `NOTIFY_SOCKET` while the process may still reach it (before it gives up
/// root and confines itself), used for every later message. Without `NOTIFY_SOCKET` it
/// sends nothing.
#[derive(Debug)]
pub(crate) struct Notifier {
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// Connects to `NOTIFY_SOCKET` (an absolute path, or `@NAME` for an abstract socket)
    /// when it is set; logs a warning and sends nothing when it cannot.
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self { sock: None };
        };
        match connect(&path) {
            Ok(sock) => Self { sock: Some(sock) },
            Err(e) => {
                tracing::warn!(
                    "cannot reach the service manager at NOTIFY_SOCKET={}: {e}; \
                     it will not hear that the server is ready",
                    path.to_string_lossy()
                );
                Self { sock: None }
            }
        }
    }

    /// True when notifications go somewhere.
    pub fn enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// `READY=1` with a one-line `STATUS=`: start-up is finished, requests are served.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// `STOPPING=1` with a one-line `STATUS=`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
    }

    fn send(&self, message: &str) {
        if let Some(sock) = &self.sock {
            if let Err(e) = sock.send(message.as_bytes()) {
                tracing::warn!("cannot notify the service manager: {e}");
            }
        }
    }
}

/// A status text fit for one `STATUS=` line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn connect(path: &OsStr) -> io::Result<UnixDatagram> {
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(path)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract socket name (@NAME)",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&addr)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables meant for another process (LISTEN_PID not ours) pass no socket and are
    /// cleared all the same; no descriptor is touched.
    #[test]
    fn listen_variables_for_another_process_are_ignored_and_cleared() {
        std::env::set_var("LISTEN_PID", (std::process::id() + 1).to_string());
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDNAMES", "tftpx.socket");
        let passed = take_listen_sockets().expect("no error");
        assert!(passed.is_empty());
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(v).is_none(), "{v} still set");
        }
    }

    #[test]
    fn notify_socket_addresses() {
        let e = connect(OsStr::new("vsock:2:1234")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let name = format!("tftpx-unit-notify-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier {
            sock: Some(connect(OsStr::new(&format!("@{name}"))).unwrap()),
        };
        n.ready("a\nb");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=a b\n");
    }
}
