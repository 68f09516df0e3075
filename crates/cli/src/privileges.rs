//! What `tftpx serve` may do once it runs: the descriptor limit, the switch from root to an
//! unprivileged account, `no_new_privs`, and Landlock confinement to the served directory.
//!
//! Start-up order (see `serve.rs`): [`raise_nofile_limit`]; [`choose`] the account (user and
//! group names are looked up while `/etc` is still readable); open the served directory
//! (an `O_PATH` descriptor, so the account needs no search permission on its parents) and
//! bind the sockets, both as root; then [`confine`]: `setgroups([])`, `setresgid`,
//! `setresuid` (real, effective and saved IDs: every capability is gone), `no_new_privs` and
//! Landlock; last [`check_root_access`] tries the directory as the new account.
//!
//! Threads: binding a tokio socket needs the runtime, whose worker threads exist by then.
//! glibc applies `set*id` and `setgroups` to every thread of the process, but
//! `no_new_privs` and Landlock are per thread (Landlock's all-threads flag is ABI 8, Linux
//! 7.0). So the runtime is built with [`on_thread_start`] as its thread-start hook: each
//! runtime thread that starts before the switch waits there until [`confine`] has switched
//! the process, then confines itself; threads started later inherit everything from the
//! (confined) thread that creates them. [`confine`] returns only once every thread of the
//! process shows the new IDs, no capabilities and `NoNewPrivs: 1` in
//! `/proc/self/task/*/status`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{self, AccessFlags, Gid, Group, Uid, User};

use crate::CliError;

/// Below this many descriptors the limit is logged at info level: every transfer holds a
/// socket and an open file, so the limit caps concurrent transfers at about half of it.
const FEW_DESCRIPTORS: u64 = 4096;

/// The Landlock ABI whose rights are asked for (Linux 6.15); newer kernels enforce these,
/// older ones as much of them as they know (best effort).
const LANDLOCK_ABI: ABI = ABI::V7;

/// How long a runtime thread waits for the switch before it gives up and aborts the
/// process (never reached in practice: the switch follows the bind at once).
const GATE_WAIT: Duration = Duration::from_secs(60);

/// How long [`confine`] waits for every runtime thread to confine itself.
const THREADS_WAIT: Duration = Duration::from_secs(10);

/// The soft `RLIMIT_NOFILE` before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    /// The soft limit the process started with, in descriptors.
    pub before: u64,
    /// The soft limit now (the hard limit unless raising it failed), in descriptors.
    pub now: u64,
    /// Why raising it failed, if it did.
    pub error: Option<Errno>,
}

impl NofileLimit {
    /// Logs the limit: at debug level, or at info level when it is below 4096 (then it,
    /// not `--max-transfers`, bounds how many transfers run at once).
    pub fn log(&self) {
        if let Some(e) = self.error {
            tracing::debug!(
                "cannot raise the descriptor limit from {}: {e}",
                self.before
            );
        }
        if self.now < FEW_DESCRIPTORS {
            tracing::info!(
                "descriptor limit {} (hard limit): each transfer uses a socket and a file, so \
                 at most about {} transfers run at once; raise it with ulimit -Hn",
                self.now,
                self.now / 2
            );
        } else {
            tracing::debug!("descriptor limit {} (was {})", self.now, self.before);
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (`setrlimit(2)`): the usual soft
/// limit of 1024 would otherwise cap the server at ~500 concurrent transfers. Never fails:
/// the outcome says what happened.
pub(crate) fn raise_nofile_limit() -> NofileLimit {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return NofileLimit {
            before: 0,
            now: 0,
            error: Some(Errno::last()),
        };
    };
    let (before, hard): (u64, u64) = (soft, hard);
    if before >= hard {
        return NofileLimit {
            before,
            now: before,
            error: None,
        };
    }
    let error = setrlimit(Resource::RLIMIT_NOFILE, hard, hard).err();
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(before, |(s, _)| s);
    NofileLimit { before, now, error }
}

/// A user account and the group the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// The user's name (or its number when it has none).
    pub name: String,
    /// Its user ID.
    pub uid: Uid,
    /// The group's name (or its number).
    pub group: String,
    /// The group ID: the user's primary group unless `--group` says otherwise.
    pub gid: Gid,
}

/// Who the server runs as after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Started as root: switch to this account.
    Switch(Account),
    /// Started as root with `--user root`: stay root (warned about).
    KeepRoot,
    /// Started as an ordinary user: stay this account (no switch is possible).
    Unprivileged(Account),
}

impl Identity {
    /// The account files are opened as, for messages.
    pub fn describe(&self) -> String {
        match self {
            Identity::Switch(a) | Identity::Unprivileged(a) => format!(
                "user {} (uid {}, group {} gid {})",
                a.name, a.uid, a.group, a.gid
            ),
            Identity::KeepRoot => "root".into(),
        }
    }
}

fn lookup_user(name: &str) -> Result<User, CliError> {
    let found = match name.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(CliError::Usage(format!(
            "--user {name}: no such user (name an account of this system, e.g. --user nobody)"
        ))),
        Err(e) => Err(CliError::Failed(format!("cannot look up user {name}: {e}"))),
    }
}

fn lookup_group(name: &str) -> Result<(String, Gid), CliError> {
    let found = match name.parse::<u32>() {
        Ok(n) => Group::from_gid(Gid::from_raw(n)),
        Err(_) => Group::from_name(name),
    };
    match found {
        Ok(Some(g)) => Ok((g.name, g.gid)),
        Ok(None) => Err(CliError::Usage(format!("--group {name}: no such group"))),
        Err(e) => Err(CliError::Failed(format!(
            "cannot look up group {name}: {e}"
        ))),
    }
}

fn group_name(gid: Gid) -> String {
    match Group::from_gid(gid) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Decides who the server runs as, from `--user` and `--group`, before anything is bound.
///
/// Started as root (effective UID 0): `user`, else `tftp` if that account exists, else
/// `nobody`, with its primary group or `group`; a user whose UID is 0 (`--user root`)
/// keeps root. Started as anyone else: no switch is possible, so `user` and `group` may
/// only name the current account.
///
/// # Errors
/// Usage errors (exit 2) for an unknown user or group, and for `--user`/`--group` naming
/// another account without root ("--user needs root"); a failure (exit 1) when the account
/// database cannot be read or neither `tftp` nor `nobody` exists.
pub(crate) fn choose(user: Option<&str>, group: Option<&str>) -> Result<Identity, CliError> {
    let euid = unistd::geteuid();
    if !euid.is_root() {
        let me = User::from_uid(euid).ok().flatten();
        let name = me
            .as_ref()
            .map_or_else(|| euid.to_string(), |u| u.name.clone());
        if let Some(want) = user {
            if lookup_user(want).ok().map(|u| u.uid) != Some(euid) {
                return Err(CliError::Usage(format!(
                    "--user needs root: tftpx runs as {name} (uid {euid}) and cannot switch \
                     to {want}"
                )));
            }
        }
        let egid = unistd::getegid();
        if let Some(want) = group {
            if lookup_group(want).ok().map(|g| g.1) != Some(egid) {
                return Err(CliError::Usage(format!(
                    "--group needs root: tftpx runs with group {} and cannot switch to {want}",
                    group_name(egid)
                )));
            }
        }
        return Ok(Identity::Unprivileged(Account {
            name,
            uid: euid,
            group: group_name(egid),
            gid: egid,
        }));
    }
    let user = match user {
        Some(name) => lookup_user(name)?,
        None => ["tftp", "nobody"]
            .iter()
            .find_map(|n| User::from_name(n).ok().flatten())
            .ok_or_else(|| {
                CliError::Failed(
                    "no account tftp or nobody to run as: name one with --user NAME \
                     (or --user root)"
                        .into(),
                )
            })?,
    };
    if user.uid.is_root() {
        if group.is_some() {
            return Err(CliError::Usage(
                "--group needs a --user other than root".into(),
            ));
        }
        return Ok(Identity::KeepRoot);
    }
    let (group, gid) = match group {
        Some(g) => lookup_group(g)?,
        None => (group_name(user.gid), user.gid),
    };
    Ok(Identity::Switch(Account {
        name: user.name,
        uid: user.uid,
        group,
        gid,
    }))
}

/// Opens `dir` as an `O_PATH` directory descriptor: what Landlock's rule and the access
/// check hold on to (the served files themselves are opened through `DirHandler`'s own).
///
/// # Errors
/// The `open(2)` error.
pub(crate) fn open_dir(dir: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

// ------------------------------------------------------------------------------ the gate

enum GateState {
    /// The process has not switched yet: runtime threads wait.
    Closed,
    /// Switched: each waiting thread sets `no_new_privs` and, with a ruleset, Landlock.
    Open(Option<RulesetCreated>),
    /// Start-up failed before the switch: threads go on unconfined, and the process exits
    /// without serving anything.
    Abandoned,
}

struct GateInner {
    state: GateState,
    /// Threads that confined themselves at the gate.
    confined: usize,
    /// What went wrong in those that could not.
    errors: Vec<String>,
}

struct Gate {
    inner: Mutex<GateInner>,
    changed: Condvar,
}

static GATE: Gate = Gate {
    inner: Mutex::new(GateInner {
        state: GateState::Closed,
        confined: 0,
        errors: Vec::new(),
    }),
    changed: Condvar::new(),
};

fn gate() -> MutexGuard<'static, GateInner> {
    GATE.inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runtime's thread-start hook (`tokio::runtime::Builder::on_thread_start`).
///
/// A thread that already has `no_new_privs` was created by a confined thread and has
/// inherited everything: it returns at once. Any other waits (at most 60 s, then the
/// process aborts rather than run unconfined) until [`confine`] has switched the process,
/// then confines itself with the same ruleset.
pub(crate) fn on_thread_start() {
    if prctl::get_no_new_privs().unwrap_or(false) {
        return;
    }
    let deadline = Instant::now() + GATE_WAIT;
    let mut g = gate();
    loop {
        match &g.state {
            GateState::Abandoned => return,
            GateState::Open(ruleset) => {
                let result = confine_this_thread(ruleset.as_ref());
                match result {
                    Ok(()) => g.confined += 1,
                    Err(e) => g.errors.push(e),
                }
                GATE.changed.notify_all();
                return;
            }
            GateState::Closed => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    eprintln!(
                        "error: a runtime thread waited {GATE_WAIT:?} for the privilege switch"
                    );
                    std::process::abort();
                }
                g = GATE
                    .changed
                    .wait_timeout(g, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

fn confine_this_thread(ruleset: Option<&RulesetCreated>) -> Result<(), String> {
    match ruleset {
        Some(r) => {
            let r = r
                .try_clone()
                .map_err(|e| format!("cannot copy the Landlock ruleset: {e}"))?;
            r.restrict_self()
                .map(drop)
                .map_err(|e| format!("Landlock: {e}"))
        }
        None => prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}")),
    }
}

/// Lets the runtime threads waiting in [`on_thread_start`] go on unconfined if start-up
/// fails before [`confine`] (the process then exits without serving: a runtime cannot shut
/// down while its threads wait). Hold it from building the runtime until [`confine`].
#[derive(Debug)]
pub(crate) struct GateGuard(());

impl GateGuard {
    /// Guards the gate until dropped.
    pub fn new() -> Self {
        Self(())
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut g = gate();
        if matches!(g.state, GateState::Closed) {
            g.state = GateState::Abandoned;
            GATE.changed.notify_all();
        }
    }
}

// ------------------------------------------------------------------------- confinement

/// Where the served directory lies and what the server may do in it.
#[derive(Debug)]
pub(crate) struct Confinement<'a> {
    /// The served directory, opened before the switch ([`open_dir`]).
    pub root: &'a OwnedFd,
    /// Whether uploads are allowed (`--allow-write`/`--allow-create`).
    pub writable: bool,
    /// TCP ports the server may connect to (an origin's; empty: no TCP at all).
    pub connect_tcp: &'a [u16],
    /// Whether to use Landlock (off with `--no-landlock`).
    pub landlock: bool,
    /// Threads not started by the runtime nor the main thread, left out of the check (a
    /// test harness's main thread); empty in the server.
    pub foreign: &'a [u32],
    /// Directories ([`open_dir`]) whose files may still be read (not listed): those of the
    /// `--config` and `--map` files, re-read on SIGHUP. Empty: none.
    pub reread: &'a [OwnedFd],
    /// An origin's `--cache` directory ([`open_dir`]): files there may be read, created,
    /// written, renamed and removed. `None`: no cache.
    pub cache: Option<&'a OwnedFd>,
}

/// What [`confine`] achieved, for the log.
#[derive(Debug)]
pub(crate) struct Confined {
    /// Runtime threads that confined themselves at the gate.
    pub threads: usize,
    /// Landlock's outcome on the main thread (the same on every thread); `None` with
    /// `--no-landlock`.
    pub landlock: Option<RestrictionStatus>,
}

impl Confined {
    /// One line on Landlock for the log: info when it confines, debug when the kernel lacks
    /// it or it is off.
    pub fn log(&self, dir: &Path, writable: bool, connect_tcp: &[u16]) {
        let rights = if writable {
            "read, write, create and remove files"
        } else {
            "read only"
        };
        let tcp = if connect_tcp.is_empty() {
            "no TCP".to_owned()
        } else {
            let ports: Vec<String> = connect_tcp.iter().map(u16::to_string).collect();
            format!("TCP connections to port(s) {} only", ports.join(", "))
        };
        match &self.landlock {
            None => tracing::debug!("Landlock off (--no-landlock)"),
            Some(s) if s.ruleset == RulesetStatus::NotEnforced => tracing::debug!(
                "Landlock unavailable ({}): file access is limited by the account's rights only",
                landlock_status(&s.landlock)
            ),
            Some(s) if s.ruleset == RulesetStatus::FullyEnforced => tracing::info!(
                "Landlock ({}): file access confined to {} ({rights}); no other file, {tcp}, \
                 no signal or abstract socket outside the process",
                landlock_status(&s.landlock),
                dir.display()
            ),
            Some(s) => tracing::info!(
                "Landlock ({}, partly enforced): file access confined to {} ({rights}) as far \
                 as this kernel's Landlock goes",
                landlock_status(&s.landlock),
                dir.display()
            ),
        }
    }
}

fn landlock_status(s: &LandlockStatus) -> String {
    match s {
        LandlockStatus::NotEnabled => "not enabled in this kernel".into(),
        LandlockStatus::NotImplemented => "not in this kernel".into(),
        LandlockStatus::Available { effective_abi, .. } => format!("ABI {}", *effective_abi as u32),
    }
}

/// The Landlock ruleset of a served directory: every file-system right of ABI 7 is handled,
/// and only these are granted, beneath `root` only: read files and list directories; with
/// `writable`, also write, create, truncate and remove regular files (an upload's temporary
/// file and its rename over the target, in the same directory). TCP bind/connect and
/// signals or abstract sockets outside the process are denied too, except TCP connections
/// to `connect_tcp` ports (an origin's). Best effort: a kernel with an older ABI enforces
/// what it knows, one without Landlock nothing.
///
/// # Errors
/// The crate's error when the ruleset cannot be built (not when the kernel lacks Landlock).
///
/// Files directly or further beneath each of `reread` may be read too (nothing else):
/// the settings files SIGHUP re-reads. A directory rather than the file, so that a file
/// replaced by an editor (a new file renamed over it) is still readable.
pub(crate) fn ruleset(
    root: &OwnedFd,
    writable: bool,
    reread: &[OwnedFd],
    connect_tcp: &[u16],
    cache: Option<&OwnedFd>,
) -> Result<RulesetCreated, landlock::RulesetError> {
    let cache_rights: BitFlags<AccessFs> = AccessFs::ReadFile
        | AccessFs::ReadDir
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::RemoveFile
        | AccessFs::Truncate;
    let mut allowed: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    if writable {
        allowed |=
            AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::Truncate;
    }
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        .add_rule(PathBeneath::new(root, allowed))?
        .add_rules(
            reread
                .iter()
                .map(|d| Ok::<_, landlock::RulesetError>(PathBeneath::new(d, AccessFs::ReadFile))),
        )?
        .add_rules(
            connect_tcp
                .iter()
                .map(|&p| Ok::<_, landlock::RulesetError>(NetPort::new(p, AccessNet::ConnectTcp))),
        )?
        .add_rules(
            cache
                .into_iter()
                .map(|d| Ok::<_, landlock::RulesetError>(PathBeneath::new(d, cache_rights))),
        )
}

/// Switches the process to `who` and confines every thread. See the module docs for the
/// order; on success every thread of the process has been checked in
/// `/proc/self/task/*/status`.
///
/// # Errors
/// A one-line message when a step fails or a thread is not as it should be; start-up must
/// then fail (some thread may be unconfined).
pub(crate) fn confine(who: &Identity, c: &Confinement<'_>) -> Result<Confined, String> {
    if let Identity::Switch(a) = who {
        unistd::setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
        unistd::setresgid(a.gid, a.gid, a.gid)
            .map_err(|e| format!("cannot switch to group {}: {e}", a.group))?;
        unistd::setresuid(a.uid, a.uid, a.uid)
            .map_err(|e| format!("cannot switch to user {}: {e}", a.name))?;
        let (u, g) = (
            unistd::getresuid().map_err(|e| e.to_string())?,
            unistd::getresgid().map_err(|e| e.to_string())?,
        );
        if [u.real, u.effective, u.saved] != [a.uid; 3]
            || [g.real, g.effective, g.saved] != [a.gid; 3]
        {
            return Err(format!("the switch to {} did not take", who.describe()));
        }
    }
    prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let ruleset = if c.landlock {
        Some(
            ruleset(c.root, c.writable, c.reread, c.connect_tcp, c.cache)
                .map_err(|e| format!("cannot build the Landlock ruleset: {e}"))?,
        )
    } else {
        None
    };
    let for_threads = match &ruleset {
        Some(r) => Some(
            r.try_clone()
                .map_err(|e| format!("cannot copy the Landlock ruleset: {e}"))?,
        ),
        None => None,
    };
    {
        let mut g = gate();
        g.state = GateState::Open(for_threads);
        GATE.changed.notify_all();
    }
    let threads = settled_threads(c.foreign)?;
    let (confined, errors) = {
        let g = gate();
        (g.confined, g.errors.clone())
    };
    if let Some(e) = errors.first() {
        return Err(format!("a runtime thread could not confine itself: {e}"));
    }
    for t in &threads {
        check_thread(who, t)?;
    }
    // The main thread last: reading /proc above needs it unconfined.
    let landlock = match ruleset {
        Some(r) => Some(r.restrict_self().map_err(|e| format!("Landlock: {e}"))?),
        None => None,
    };
    Ok(Confined {
        threads: confined,
        landlock,
    })
}

/// Waits until every thread of the process has `no_new_privs` (a thread that set it at
/// the gate has finished confining itself: it holds the gate's lock throughout), then
/// returns their status.
fn settled_threads(foreign: &[u32]) -> Result<Vec<ThreadStatus>, String> {
    let deadline = Instant::now() + THREADS_WAIT;
    loop {
        let mut threads =
            thread_statuses().map_err(|e| format!("cannot read /proc/self/task: {e}"))?;
        threads.retain(|t| !foreign.contains(&t.tid));
        let pending = threads.iter().filter(|t| !t.no_new_privs).count();
        if pending == 0 {
            // Taking the lock waits for a thread still inside the gate.
            drop(gate());
            return Ok(threads);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{pending} thread(s) did not confine themselves within {THREADS_WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn check_thread(who: &Identity, t: &ThreadStatus) -> Result<(), String> {
    let bad = |what: String| Err(format!("thread {} still has {what}", t.tid));
    if !t.no_new_privs {
        return bad("no_new_privs unset".into());
    }
    if let Identity::Switch(a) = who {
        if t.uid != [a.uid.as_raw(); 4] {
            return bad(format!("uids {:?}", t.uid));
        }
        if t.gid != [a.gid.as_raw(); 4] {
            return bad(format!("gids {:?}", t.gid));
        }
        if !t.groups.is_empty() {
            return bad(format!("supplementary groups {:?}", t.groups));
        }
        if t.cap_eff != 0 || t.cap_prm != 0 {
            return bad(format!(
                "capabilities (CapEff {:016x}, CapPrm {:016x})",
                t.cap_eff, t.cap_prm
            ));
        }
    }
    Ok(())
}

/// What `/proc/PID/task/TID/status` says about a thread's privileges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ThreadStatus {
    /// The thread's ID.
    pub tid: u32,
    /// Real, effective, saved and file-system user IDs.
    pub uid: [u32; 4],
    /// Real, effective, saved and file-system group IDs.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capabilities (bit mask).
    pub cap_eff: u64,
    /// Permitted capabilities (bit mask).
    pub cap_prm: u64,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` is set.
    pub no_new_privs: bool,
}

/// Parses the `status` file of a thread (`/proc/PID/task/TID/status`, see proc(5)).
pub(crate) fn parse_status(tid: u32, text: &str) -> ThreadStatus {
    let mut s = ThreadStatus {
        tid,
        ..ThreadStatus::default()
    };
    let ids = |v: &str| {
        let mut out = [u32::MAX; 4];
        for (o, n) in out.iter_mut().zip(v.split_whitespace()) {
            *o = n.parse().unwrap_or(u32::MAX);
        }
        out
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Uid" => s.uid = ids(value),
            "Gid" => s.gid = ids(value),
            "Groups" => {
                s.groups = value
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            }
            "CapEff" => s.cap_eff = u64::from_str_radix(value, 16).unwrap_or(u64::MAX),
            "CapPrm" => s.cap_prm = u64::from_str_radix(value, 16).unwrap_or(u64::MAX),
            "NoNewPrivs" => s.no_new_privs = value == "1",
            _ => {}
        }
    }
    s
}

/// The status of every thread of this process.
///
/// # Errors
/// When `/proc/self/task` cannot be listed (a thread that ends meanwhile is skipped).
pub(crate) fn thread_statuses() -> std::io::Result<Vec<ThreadStatus>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match std::fs::read_to_string(entry.path().join("status")) {
            Ok(text) => out.push(parse_status(tid, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Checks, as the account the server now runs as (and under Landlock), that the served
/// directory can be searched and read and, when `writable`, written: otherwise every
/// request would be refused later, so start-up fails with one line that says how to fix it.
///
/// # Errors
/// That line.
pub(crate) fn check_root_access(
    who: &Identity,
    root: &OwnedFd,
    dir: &Path,
    writable: bool,
) -> Result<(), String> {
    let d = dir.display();
    let fix = |what: &str, chmod: String| match who {
        Identity::Switch(a) => format!(
            "started as root, tftpx serve runs as {}: choose the account with --user NAME, \
             or {what}, e.g. {chmod}",
            a.name
        ),
        Identity::Unprivileged(_) | Identity::KeepRoot => format!("{what}, e.g. {chmod}"),
    };
    let name = match who {
        Identity::Switch(a) | Identity::Unprivileged(a) => a.name.clone(),
        Identity::KeepRoot => "root".into(),
    };
    let read = openat(
        root,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    if let Err(e) = read {
        let chmod = match who {
            Identity::Unprivileged(_) => format!("chmod u+rx {d}"),
            _ => format!("chmod o+rx {d}"),
        };
        return Err(format!(
            "cannot serve {d}: user {name} cannot read it ({}); {}",
            e.desc(),
            fix("let it read the directory", chmod)
        ));
    }
    if writable {
        if let Err(e) = unistd::faccessat(
            root,
            ".",
            AccessFlags::W_OK | AccessFlags::X_OK,
            AtFlags::AT_EACCESS,
        ) {
            let chmod = match who {
                Identity::Unprivileged(_) => format!("chmod u+w {d}"),
                _ => format!("chown {name} {d}"),
            };
            return Err(format!(
                "cannot serve {d} with uploads: user {name} cannot write in it ({}); {}",
                e.desc(),
                fix("let it write there", chmod)
            ));
        }
    }
    Ok(())
}

/// Opens a file for reading; used by the tests to probe confinement.
#[cfg(test)]
fn can_read(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::process::Command;

    /// Set in the re-executed test binary: the child does the confining work.
    const CHILD: &str = "TFTPX_PRIVILEGES_CHILD";

    /// Runs test `name` again in a child process with `CHILD` set to `arg`; returns its
    /// output (bounded: the child's own steps are bounded).
    fn in_child(name: &str, arg: &str) -> std::process::Output {
        let exe = std::env::current_exe().unwrap();
        Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(CHILD, arg)
            .output()
            .expect("re-run the test binary")
    }

    #[test]
    fn status_parsing() {
        let text = "Name:\ttftpx\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t\
                    65534\t65534\nGroups:\t\nCapPrm:\t0000000000000000\nCapEff:\t\
                    0000000000000000\nNoNewPrivs:\t1\n";
        let s = parse_status(7, text);
        assert_eq!(s.tid, 7);
        assert_eq!(s.uid, [65534; 4]);
        assert_eq!(s.gid, [65534; 4]);
        assert!(s.groups.is_empty());
        assert_eq!((s.cap_eff, s.cap_prm), (0, 0));
        assert!(s.no_new_privs);
        let root = parse_status(
            1,
            "Uid:\t0\t0\t0\t0\nGroups:\t0 4 \nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0\n",
        );
        assert_eq!(root.uid, [0; 4]);
        assert_eq!(root.groups, vec![0, 4]);
        assert_eq!(root.cap_eff, 0x1ff_ffff_ffff);
        assert!(!root.no_new_privs);
    }

    /// In a child (the limit is process-wide): a soft limit below the hard one is raised.
    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        const NAME: &str = "privileges::tests::the_descriptor_limit_is_raised_to_the_hard_limit";
        if std::env::var(CHILD).is_ok() {
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            setrlimit(Resource::RLIMIT_NOFILE, 256.min(hard), hard).unwrap();
            let r = raise_nofile_limit();
            let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            println!("RAISED {} {} {} {:?}", r.before, r.now, soft, r.error);
            return;
        }
        let o = in_child(NAME, "1");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}");
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let want = format!("RAISED {} {hard} {hard} None", 256.min(hard));
        assert!(out.contains(&want), "want {want:?} in {out}");
    }

    /// Landlock, where this kernel has it: once [`confine`] returns, no thread of a
    /// multi-threaded tokio runtime (a worker that existed before, the main thread, a
    /// blocking-pool thread started after) can open a file outside the served directory,
    /// while files inside it stay readable, and (read-only) nothing can be created inside.
    #[test]
    fn landlock_confines_every_thread_to_the_root() {
        const NAME: &str = "privileges::tests::landlock_confines_every_thread_to_the_root";
        if let Ok(dirs) = std::env::var(CHILD) {
            let (root, outside) = dirs.split_once('\n').unwrap();
            return landlock_child(Path::new(root), Path::new(outside));
        }
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("inside.txt"), b"in").unwrap();
        std::fs::write(outside.path().join("outside.txt"), b"out").unwrap();
        let o = in_child(
            NAME,
            &format!("{}\n{}", root.path().display(), outside.path().display()),
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if out.contains("LANDLOCK-UNAVAILABLE") {
            eprintln!("this kernel has no Landlock: nothing to prove");
            return;
        }
        for line in [
            "main inside: ok",
            "main outside: denied",
            "main create: denied",
            "worker inside: ok",
            "worker outside: denied",
            "blocking inside: ok",
            "blocking outside: denied",
            "new thread outside: denied",
        ] {
            assert!(out.contains(line), "missing {line:?} in:\n{out}");
        }
        assert!(!outside.path().join("created").exists() && !root.path().join("created").exists());
    }

    fn landlock_child(root: &Path, outside: &Path) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(on_thread_start)
            .build()
            .unwrap();
        let guard = GateGuard::new();
        let fd = open_dir(root).unwrap();
        let who = Identity::Unprivileged(Account {
            name: "test".into(),
            uid: unistd::geteuid(),
            group: "test".into(),
            gid: unistd::getegid(),
        });
        let confined = confine(
            &who,
            &Confinement {
                root: &fd,
                writable: false,
                connect_tcp: &[],
                landlock: true,
                // libtest's main thread waits for this test's thread, unconfined.
                foreign: &[std::process::id()],
                reread: &[],
                cache: None,
            },
        )
        .unwrap();
        drop(guard);
        let status = confined.landlock.expect("a ruleset was applied");
        if status.ruleset == RulesetStatus::NotEnforced {
            println!("LANDLOCK-UNAVAILABLE");
            return;
        }
        assert_eq!(confined.threads, 2, "both workers confined themselves");
        check_root_access(&who, &fd, root, false).unwrap();
        let inside = root.join("inside.txt");
        let out_file = outside.join("outside.txt");
        let show = |who: &str, what: &str, r: std::io::Result<()>| {
            let v = match r {
                Ok(()) => "ok".to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".into(),
                Err(e) => format!("error {e}"),
            };
            println!("{who} {what}: {v}");
        };
        show("main", "inside", can_read(&inside));
        show("main", "outside", can_read(&out_file));
        show(
            "main",
            "create",
            File::create(root.join("created")).map(drop),
        );
        let (i2, o2) = (inside.clone(), out_file.clone());
        let o4 = out_file.clone();
        let lines = rt.block_on(async move {
            // Spawned tasks run on the workers, which existed before the switch.
            let worker = tokio::spawn(async move { (can_read(&i2), can_read(&o2)) })
                .await
                .unwrap();
            let (i3, o3) = (inside.clone(), out_file.clone());
            let blocking = tokio::task::spawn_blocking(move || (can_read(&i3), can_read(&o3)))
                .await
                .unwrap();
            (worker, blocking)
        });
        show("worker", "inside", lines.0 .0);
        show("worker", "outside", lines.0 .1);
        show("blocking", "inside", lines.1 .0);
        show("blocking", "outside", lines.1 .1);
        show(
            "new thread",
            "outside",
            std::thread::spawn(move || can_read(&o4)).join().unwrap(),
        );
    }
}
