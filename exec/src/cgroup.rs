//! A cgroup (v2) per call, so that nothing a call starts outlives it: not a `setsid` daemon
//! that left the process group, and — with the [`supervise`] lifeline — not the commands of
//! an agent killed with SIGKILL.
//!
//! Layout: `<cgroup2 mount><own cgroup>/mcpfier-<owner>/<pid>/call-<n>`, one `<pid>`
//! directory per running process of that owner (two agents with one id on a host, as tests
//! run them, never touch each other's calls). A call cgroup left empty by its call is kept
//! (up to 64) and handed to a later call, so the common call costs one read of
//! `cgroup.events` instead of a mkdir, two opens and an rmdir; one that still holds
//! processes is killed and removed, never reused. The child is created inside its call's cgroup
//! (clone3 `CLONE_INTO_CGROUP`, see [`crate::spawn`]), so it can't fork anything outside it
//! first. When the call ends, `cgroup.kill` kills every process still in it. Only the controllers-free parts of cgroup v2 are used
//! (`cgroup.procs`, `cgroup.kill`, `cgroup.events`), so it works on hybrid hosts where v2
//! is mounted beside v1 without the memory or pids controllers.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long a killed cgroup may take to empty before its removal is left to the next reap.
const EMPTY_WITHIN: Duration = Duration::from_secs(2);

/// How many empty call cgroups are kept for reuse.
const IDLE_KEPT: usize = 64;

/// The cgroups of one owner's calls.
#[derive(Clone, Debug)]
pub struct Cgroups {
    base: PathBuf,
    idle: Arc<Idle>,
}

/// Empty call cgroups kept for the next calls, so a call costs no mkdir, open and rmdir.
#[derive(Debug, Default)]
struct Idle {
    slots: Mutex<Vec<Slot>>,
    next: AtomicU64,
}

/// A call cgroup's directory and the two files a call uses, kept open.
#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    dir_fd: File,
    events: File,
}

/// Why per-call cgroups are not available here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup v2 filesystem is mounted (see /proc/self/mountinfo)")]
    NotMounted,
    /// This process's own cgroup could not be read.
    #[error("read /proc/self/cgroup: {0}")]
    OwnCgroup(io::Error),
    /// The owner's cgroup could not be created or written (no permission, a read-only mount,
    /// or `cgroup.kill` missing: it needs Linux 5.14).
    #[error("{path}: {why} (run as root, or delegate the cgroup, e.g. systemd Delegate=yes)")]
    NotWritable {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        why: io::Error,
    },
}

/// One call's cgroup: the child is started in it (through [`CallGroup::dir_fd`]).
/// [`CallGroup::finish`] kills what is left inside, and keeps the cgroup for a later call
/// when it is empty; dropping it unfinished (a call abandoned mid-run) kills and removes it.
pub struct CallGroup {
    slot: Option<Slot>,
    idle: Arc<Idle>,
}

impl Cgroups {
    /// The cgroups of this process's calls for `owner`, under this process's own cgroup;
    /// created if missing.
    pub fn open(owner: &str) -> Result<Cgroups, Unavailable> {
        let mount = cgroup2_mount().ok_or(Unavailable::NotMounted)?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(Unavailable::OwnCgroup)?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let owner_dir = mount.join(own).join(format!("mcpfier-{}", sanitize(owner)));
        let base = owner_dir.join(std::process::id().to_string());
        let not_writable = |path: &Path, why| Unavailable::NotWritable {
            path: path.to_owned(),
            why,
        };
        for dir in [&owner_dir, &base] {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(not_writable(dir, e)),
            }
        }
        let kill = base.join("cgroup.kill");
        if !kill.exists() {
            return Err(not_writable(
                &kill,
                io::Error::new(io::ErrorKind::NotFound, "no cgroup.kill"),
            ));
        }
        Ok(Cgroups {
            base,
            idle: Arc::default(),
        })
    }

    /// The directory all of this owner's call cgroups live in.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// An empty cgroup for one call: one an earlier call left empty, or a new one.
    pub fn call(&self) -> io::Result<CallGroup> {
        let reused = self.idle.slots.lock().expect("not poisoned").pop();
        let slot = match reused {
            Some(slot) => slot,
            None => {
                let n = self.idle.next.fetch_add(1, Ordering::Relaxed);
                let dir = self.base.join(format!("call-{n}"));
                std::fs::create_dir(&dir)?;
                let opened = File::open(&dir).and_then(|dir_fd| {
                    let events = File::open(dir.join("cgroup.events"))?;
                    Ok((dir_fd, events))
                });
                match opened {
                    Ok((dir_fd, events)) => Slot {
                        dir,
                        dir_fd,
                        events,
                    },
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(e);
                    }
                }
            }
        };
        Ok(CallGroup {
            slot: Some(slot),
            idle: self.idle.clone(),
        })
    }

    /// Removes the empty cgroups kept for reuse, and this process's directory when nothing
    /// else is in it (at shutdown; a dead process's are reaped by [`Cgroups::reap_stale`]
    /// or its supervisor).
    pub fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.slots.lock().expect("not poisoned"));
        for slot in idle {
            let _ = std::fs::remove_dir(&slot.dir);
        }
        let _ = std::fs::remove_dir(&self.base);
    }

    /// Kills and removes what earlier processes of this owner left: the cgroups of every
    /// `<pid>` that is no longer running (it was killed before its calls ended, and so was
    /// its supervisor). Returns how many processes were killed.
    pub fn reap_stale(&self) -> usize {
        let Some(owner_dir) = self.base.parent() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(owner_dir) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let pid = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if dir == self.base || !dir.is_dir() || process_alive(pid) {
                continue;
            }
            killed += remove_instance(&dir);
        }
        killed
    }
}

impl CallGroup {
    fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("a call group has its slot until it is finished")
    }

    /// The cgroup's directory, open: what `CLONE_INTO_CGROUP` takes.
    pub fn dir_fd(&self) -> &File {
        &self.slot().dir_fd
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.slot().dir
    }

    /// Kills everything still in the call's cgroup (descendants that left the process group
    /// included).
    pub fn kill(&self) {
        if let Err(e) = write_kill(self.dir()) {
            warn!(cgroup = %self.dir().display(), error = %e, "could not kill the call's cgroup");
        }
    }

    /// Ends the call's use of its cgroup. Empty (the common case: the leader left nothing
    /// behind), it is kept for a later call, at the cost of one read. Otherwise what is left
    /// is killed, and the cgroup is removed off the call's path once it has emptied (see
    /// `Drop`): the call does not wait for killed processes to finish exiting.
    pub fn finish(mut self) {
        let slot = self.slot.take().expect("finished once");
        let mut buf = [0u8; 128];
        let empty = slot
            .events
            .read_at(&mut buf, 0)
            .map(|n| {
                let text = String::from_utf8_lossy(&buf[..n]);
                text.lines().any(|l| l == "populated 0")
            })
            .unwrap_or(false);
        if empty {
            let mut idle = self.idle.slots.lock().expect("not poisoned");
            if idle.len() < IDLE_KEPT {
                idle.push(slot);
                return;
            }
            drop(idle);
            let _ = std::fs::remove_dir(&slot.dir);
            return;
        }
        self.slot = Some(slot);
        self.kill();
        // Drop removes it.
    }
}

impl Drop for CallGroup {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let _ = write_kill(&slot.dir);
        drop((slot.dir_fd, slot.events));
        match std::fs::remove_dir(&slot.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Still emptying (a call abandoned mid-run): finish in a thread of its own.
            Err(_) => {
                let dir = slot.dir;
                std::thread::spawn(move || kill_and_remove(&dir));
            }
        }
    }
}

fn write_kill(dir: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))?
        .write_all(b"1")
}

/// Kills and removes an instance directory and its calls' cgroups; returns how many
/// processes were in them.
fn remove_instance(dir: &Path) -> usize {
    let mut killed = pids_in(dir).len();
    if let Ok(calls) = std::fs::read_dir(dir) {
        for call in calls.flatten() {
            let call = call.path();
            if call.is_dir() {
                let pids = pids_in(&call);
                if !pids.is_empty() {
                    info!(cgroup = %call.display(), pids = ?pids, "killing processes a dead process left");
                    killed += pids.len();
                }
                kill_and_remove(&call);
            }
        }
    }
    kill_and_remove(dir);
    killed
}

/// Whether a process with this pid is running: a zombie still answers signal 0, so its state
/// is read instead.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Kills what is in `dir`, waits (briefly) for it to empty, and removes it.
fn kill_and_remove(dir: &Path) {
    let _ = write_kill(dir);
    let deadline = Instant::now() + EMPTY_WITHIN;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // EBUSY while killed processes are still exiting.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                warn!(cgroup = %dir.display(), error = %e, "could not remove a call's cgroup; the next start reaps it");
                return;
            }
        }
    }
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Where the cgroup2 filesystem is mounted: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `... mount-point options - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A name safe as one path component (never `.` or `..`).
fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        format!("_{clean}")
    } else {
        clean
    }
}

/// The supervisor's side of the lifeline: blocks until `lifeline` (its stdin, whose write end
/// the agent holds and never writes) reaches end of file — the agent is gone, however it
/// died — then kills every process in the agent's calls' cgroups under `base` and removes
/// them. Returns how many processes it killed.
pub fn supervise(base: &Path, mut lifeline: impl io::Read) -> usize {
    let mut buf = [0u8; 64];
    loop {
        match lifeline.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    // One write kills the whole subtree at once; then the directories go.
    let _ = write_kill(base);
    remove_instance(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_path_components() {
        assert_eq!(sanitize("a/../b c"), "a_.._b_c");
        assert_eq!(sanitize("call-1_x.y"), "call-1_x.y");
        assert_eq!(sanitize(".."), "_..");
        assert_eq!(sanitize(""), "_");
    }
}
