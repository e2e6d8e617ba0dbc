//! Starts a child process the way `posix_spawn` does — a vfork-style clone that shares the
//! parent's memory until it execs, so a large multi-threaded parent pays no copy of its page
//! tables — and, when given a cgroup, straight into it (`clone3` with `CLONE_INTO_CGROUP`,
//! Linux 5.7), which glibc's `posix_spawn` can't do before 2.41. Joining the cgroup with a
//! hook between fork and exec instead forces a real fork of the whole agent, which cost the
//! fleet half its throughput (BENCHMARKS.md, 2026-12-02).
//!
//! Invariants: the parent prepares everything (paths, argv, environment, descriptors) before
//! the clone; between clone and exec the child runs [`child_main`], which touches only its
//! own stack and its [`ChildArgs`], makes raw system calls only (no libc, so no errno, no
//! locks, no allocation) and starts with every caught signal reset to its default
//! (`CLONE_CLEAR_SIGHAND`), so no handler of the parent can run on shared memory. The child
//! gets stdin from `/dev/null`, stdout and stderr on pipes, its own process group, an empty
//! signal mask and SIGPIPE at its default (as std gives its children), and no other
//! descriptor: not even one this process inherited without close-on-exec.
//!
//! On x86_64 this is a hand-written clone; elsewhere [`spawn`] uses std's `Command` with a
//! `pre_exec` hook that joins the cgroup (a fork, slower but the same result).
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::libc;
use tokio::io::unix::AsyncFd;

/// What to start: everything already resolved.
pub(crate) struct Command<'a> {
    /// The program file to exec.
    pub program: PathBuf,
    /// Its arguments, `argv[0]` included.
    pub argv: &'a [String],
    /// The whole environment, `NAME=value`.
    pub env: Vec<(&'a str, &'a str)>,
    /// The working directory; `None`: this process's.
    pub cwd: Option<&'a Path>,
    /// The cgroup directory to start the child in (see [`crate::cgroup::CallGroup`]).
    pub cgroup: Option<&'a crate::cgroup::CallGroup>,
}

/// A started child: its pid (also its process group), and the parent's ends of its output.
pub(crate) struct Spawned {
    pub child: Child,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Looks `program` up the way `execvp` would on `path` (a name with a `/` is taken as it is;
/// relative `PATH` entries are relative to `cwd`). `None`: nothing executable was found.
pub(crate) fn resolve(program: &str, path: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            let on_disk = match cwd {
                Some(cwd) if candidate.is_relative() => cwd.join(candidate),
                _ => candidate.clone(),
            };
            is_executable(&on_disk)
        })
}

/// Whether `file` is a regular file with an execute bit.
pub(crate) fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts `cmd`. An error means nothing runs: the child could not be created, or it failed
/// before its exec (the error says which step) and has been reaped.
pub(crate) fn spawn(cmd: &Command<'_>) -> io::Result<Spawned> {
    #[cfg(target_arch = "x86_64")]
    {
        clone::spawn(cmd)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        forked::spawn(cmd)
    }
}

/// A child process this crate started, waited for through its pidfd. Dropped before it was
/// waited for, it is killed and reaped.
pub(crate) struct Child {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Child {
    fn new(pid: i32, pidfd: OwnedFd) -> io::Result<Child> {
        // SAFETY: `OwnedFd` keeps the pidfd open for as long as the `AsyncFd` holds it.
        let registered =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
        let pidfd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                let e = io::Error::other(e.to_string());
                // Not registered: kill and reap it here, or it would run unwatched.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                reap_blocking(pid);
                return Err(e);
            }
        };
        Ok(Child {
            pid,
            pidfd,
            status: None,
        })
    }

    /// The child's pid, which is also its process group's id.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the child to exit and reaps it. Cancel-safe: the child is reaped only once
    /// it has exited, and a later call returns the same status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            // A pidfd turns readable when its process exits.
            let mut ready = self.pidfd.readable().await?;
            let mut raw = 0;
            // SAFETY: waitpid on our own child, with a valid pointer for its status.
            let r = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
            if r == self.pid {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                return Ok(status);
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: signalling through our pidfd (it can't reach a recycled pid) and a
        // non-blocking waitpid on our own child.
        let reaped = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            let mut raw = 0;
            libc::waitpid(self.pid, &mut raw, libc::WNOHANG) == self.pid
        };
        if !reaped {
            // SIGKILL is on its way; reap it off this thread once it lands.
            let pid = self.pid;
            std::thread::spawn(move || reap_blocking(pid));
        }
    }
}

fn reap_blocking(pid: i32) {
    let mut raw = 0;
    // SAFETY: waitpid on our own child, with a valid pointer for its status.
    while unsafe { libc::waitpid(pid, &mut raw, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// A pipe, both ends close-on-exec, neither on descriptors 0-2 (the child's `dup2`s must not
/// clobber one with another). Returns (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn dev_null() -> io::Result<OwnedFd> {
    above_stdio(std::fs::File::open("/dev/null")?.into())
}

/// `fd`, moved to a number of 3 or more when it is one of 0-2 (possible when this process
/// was started with those closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own; the copy is a new descriptor we then own.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn os_cstring(s: &OsStr, what: &str) -> io::Result<CString> {
    cstring(s.as_bytes(), what)
}

#[cfg(target_arch = "x86_64")]
mod clone {
    use super::*;
    use std::ffi::c_char;
    use std::ptr;

    const CLONE_VM: u64 = 0x0000_0100;
    const CLONE_VFORK: u64 = 0x0000_4000;
    const CLONE_PIDFD: u64 = 0x0000_1000;
    const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    /// Plenty for [`child_main`], which has a handful of locals and calls nothing but the
    /// kernel.
    const STACK: usize = 32 * 1024;

    /// `struct clone_args`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// The step the child failed at, for the error.
    #[derive(Clone, Copy)]
    #[repr(u32)]
    enum Step {
        None = 0,
        Signals,
        ProcessGroup,
        Descriptors,
        CloseOthers,
        Workdir,
        Exec,
    }

    /// What the child reads, and the two fields it writes when it fails before exec. Lives
    /// on the parent's stack, which the suspended parent does not touch until the child has
    /// exec'd or exited.
    #[repr(C)]
    struct ChildArgs {
        program: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
        cwd: *const c_char,
        stdin: RawFd,
        stdout: RawFd,
        stderr: RawFd,
        failed_at: u32,
        errno: i32,
    }

    /// The kernel's `struct sigaction` on x86_64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }

    pub(super) fn spawn(cmd: &Command<'_>) -> io::Result<Spawned> {
        let program = os_cstring(cmd.program.as_os_str(), "the program's path")?;
        let argv = cmd
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes(), "an argument"))
            .collect::<io::Result<Vec<_>>>()?;
        let env = cmd
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "an environment variable"))
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = cmd
            .cwd
            .map(|d| os_cstring(d.as_os_str(), "the working directory"))
            .transpose()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(ptr::null());

        let stdin = dev_null()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut stack = vec![0u8; STACK];

        let mut args = ChildArgs {
            program: program.as_ptr(),
            argv: argv_ptrs.as_ptr(),
            envp: env_ptrs.as_ptr(),
            cwd: cwd.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            stdin: stdin.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            failed_at: Step::None as u32,
            errno: 0,
        };
        let mut pidfd: i32 = -1;
        let mut flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND;
        let mut cgroup = 0;
        if let Some(group) = cmd.cgroup {
            flags |= CLONE_INTO_CGROUP;
            cgroup = group.dir_fd().as_raw_fd() as u64;
        }
        // The stack grows down from its top, which must be 16-byte aligned.
        let base = stack.as_mut_ptr() as usize;
        let top = (base + STACK) & !15;
        let clone_args = CloneArgs {
            flags,
            pidfd: &raw mut pidfd as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: (top - base) as u64,
            cgroup,
            ..CloneArgs::default()
        };

        let ret: i64;
        // SAFETY: clone3 with CLONE_VM | CLONE_VFORK: this thread is suspended until the
        // child has exec'd or exited, and the child runs `child_main` on `stack` (its own),
        // reading `args` and writing only `failed_at` and `errno` (see the module's
        // invariants). The child starts with the registers we had, so it finds `child_main`
        // and its argument in r12 and r13; it never returns here (`child_main` ends in
        // execve or exit_group, and `ud2` traps if it ever did).
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r13",
                "call r12",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &raw const clone_args,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") child_main as *const () as usize,
                in("r13") &raw mut args,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        drop(stack);
        if ret < 0 {
            let e = io::Error::from_raw_os_error(-ret as i32);
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::E2BIG) => " (clone3 needs Linux 5.7 or newer)",
                _ => "",
            };
            return Err(io::Error::new(e.kind(), format!("clone3: {e}{why}")));
        }
        let pid = ret as i32;
        // SAFETY: the kernel wrote the child's new pidfd, which nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        // The child has exec'd or exited; its ends of the pipes are closed here.
        drop((stdin, out_w, err_w));
        // SAFETY: the child is done with `args` (see above).
        let (failed_at, errno) = unsafe {
            (
                ptr::read_volatile(&raw const args.failed_at),
                ptr::read_volatile(&raw const args.errno),
            )
        };
        if failed_at != Step::None as u32 {
            reap_blocking(pid);
            let e = io::Error::from_raw_os_error(errno);
            let step = match failed_at {
                x if x == Step::Signals as u32 => "reset the signal mask",
                x if x == Step::ProcessGroup as u32 => "make a process group",
                x if x == Step::Descriptors as u32 => "set up stdin, stdout and stderr",
                x if x == Step::CloseOthers as u32 => {
                    "close inherited descriptors (close_range needs Linux 5.9)"
                }
                x if x == Step::Workdir as u32 => "change to the working directory",
                _ => return Err(e),
            };
            return Err(io::Error::new(e.kind(), format!("{step}: {e}")));
        }
        Ok(Spawned {
            child: Child::new(pid, pidfd)?,
            stdout: out_r,
            stderr: err_r,
        })
    }

    #[inline(always)]
    unsafe fn syscall4(n: i64, a: usize, b: usize, c: usize, d: usize) -> i64 {
        let ret: i64;
        // SAFETY: the caller passes a valid system call and arguments.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// The child between clone and exec. Raw system calls only: see the module's invariants.
    unsafe extern "C" fn child_main(args: *mut ChildArgs) -> ! {
        // SAFETY: `args` points at the parent's `ChildArgs`, valid until we exec or exit;
        // every call below is a plain system call on values the parent prepared.
        unsafe {
            let a = args;
            let fail = |step: Step, ret: i64| -> ! {
                ptr::write_volatile(&raw mut (*a).errno, (-ret) as i32);
                ptr::write_volatile(&raw mut (*a).failed_at, step as u32);
                syscall4(libc::SYS_exit_group, 127, 0, 0, 0);
                // exit_group does not return.
                loop {
                    std::hint::spin_loop();
                }
            };
            // Handlers were reset by CLONE_CLEAR_SIGHAND; SIGPIPE, which the Rust runtime
            // ignores, goes back to its default; the mask is emptied.
            let default = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            let r = syscall4(
                libc::SYS_rt_sigaction,
                libc::SIGPIPE as usize,
                &raw const default as usize,
                0,
                8,
            );
            if r < 0 {
                fail(Step::Signals, r);
            }
            let empty: u64 = 0;
            let r = syscall4(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &raw const empty as usize,
                0,
                8,
            );
            if r < 0 {
                fail(Step::Signals, r);
            }
            let r = syscall4(libc::SYS_setpgid, 0, 0, 0, 0);
            if r < 0 {
                fail(Step::ProcessGroup, r);
            }
            // The sources are all above 2 (see `pipe`), so no dup2 clobbers another.
            for (from, to) in [((*a).stdin, 0), ((*a).stdout, 1), ((*a).stderr, 2)] {
                let r = syscall4(libc::SYS_dup2, from as usize, to, 0, 0);
                if r < 0 {
                    fail(Step::Descriptors, r);
                }
            }
            // Descriptors this process inherited without close-on-exec stay here too.
            let r = syscall4(libc::SYS_close_range, 3, u32::MAX as usize, 0, 0);
            if r < 0 {
                fail(Step::CloseOthers, r);
            }
            if !(*a).cwd.is_null() {
                let r = syscall4(libc::SYS_chdir, (*a).cwd as usize, 0, 0, 0);
                if r < 0 {
                    fail(Step::Workdir, r);
                }
            }
            let r = syscall4(
                libc::SYS_execve,
                (*a).program as usize,
                (*a).argv as usize,
                (*a).envp as usize,
                0,
            );
            fail(Step::Exec, r)
        }
    }
}

/// The portable way: std's `Command` (which forks when given a `pre_exec` hook) and a pidfd
/// opened after the spawn. Used where [`clone`] is not written (not x86_64), and compiled
/// and tested everywhere.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) mod forked {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    pub(crate) fn spawn(cmd: &Command<'_>) -> io::Result<Spawned> {
        let mut std_cmd = std::process::Command::new(&cmd.program);
        if let Some(arg0) = cmd.argv.first() {
            std_cmd.arg0(arg0);
        }
        std_cmd
            .args(cmd.argv.iter().skip(1))
            .env_clear()
            .envs(cmd.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = cmd.cwd {
            std_cmd.current_dir(dir);
        }
        let procs = cmd
            .cgroup
            .map(|group| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(group.dir().join("cgroup.procs"))
            })
            .transpose()?;
        let procs_fd = procs.as_ref().map(|p| p.as_raw_fd());
        // SAFETY: the hook runs in the forked child before exec and makes only system calls
        // (a write(2) on a descriptor that stays open until `spawn` returns, close_range); it
        // allocates nothing.
        unsafe {
            std_cmd.pre_exec(move || {
                if let Some(fd) = procs_fd
                    && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = std_cmd.spawn()?;
        let pid = child.id() as i32;
        let stdout: OwnedFd = child.stdout.take().expect("stdout was piped").into();
        let stderr: OwnedFd = child.stderr.take().expect("stderr was piped").into();
        // SAFETY: pidfd_open on our own child, not yet reaped (std's `Child` never waits
        // unless asked, and it is dropped here without being asked).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(e.kind(), format!("pidfd_open: {e}")));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Spawned {
            child: Child::new(pid, pidfd)?,
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cgroup::Cgroups;
    use crate::model::Execution;
    use crate::process::run;

    fn exec(argv: &[&str]) -> Execution {
        Execution {
            timeout: Duration::from_secs(10),
            ..Execution::new(argv.iter().copied())
        }
    }

    async fn stdout_of(e: &Execution, group: Option<crate::cgroup::CallGroup>) -> String {
        let out = run(e, None, CancellationToken::new(), group).await.unwrap();
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn cgroups(name: &str) -> Cgroups {
        Cgroups::open(&format!("spawn-{name}-{}", std::process::id()))
            .expect("this machine has a writable cgroup v2 (/sys/fs/cgroup/unified)")
    }

    /// The cgroup a `/proc/<pid>/cgroup` text names on its v2 line.
    fn v2_line(text: &str) -> &str {
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line")
    }

    #[tokio::test]
    async fn the_child_starts_inside_its_cgroup() {
        let groups = cgroups("into");
        let group = groups.call().unwrap();
        let expected = group.dir().to_owned();
        let seen = stdout_of(&exec(&["/bin/cat", "/proc/self/cgroup"]), Some(group)).await;
        assert!(
            expected.ends_with(v2_line(&seen).trim_start_matches('/')),
            "the child was in {seen:?}, not {}",
            expected.display()
        );
        groups.close();
    }

    #[tokio::test]
    async fn the_forked_way_starts_the_child_inside_its_cgroup_too() {
        let groups = cgroups("forked");
        let group = groups.call().unwrap();
        let argv = ["/bin/cat".to_owned(), "/proc/self/cgroup".to_owned()];
        let spawned = forked::spawn(&Command {
            program: PathBuf::from("/bin/cat"),
            argv: &argv,
            env: vec![("PATH", "/bin")],
            cwd: None,
            cgroup: Some(&group),
        })
        .unwrap();
        let mut child = spawned.child;
        let mut out = tokio::fs::File::from_std(std::fs::File::from(spawned.stdout));
        let mut seen = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out, &mut seen)
            .await
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        assert!(
            group
                .dir()
                .ends_with(v2_line(&seen).trim_start_matches('/')),
            "{seen:?}"
        );
        drop(group);
        groups.close();
    }

    #[tokio::test]
    async fn the_child_has_no_blocked_signals_and_sigpipe_at_its_default() {
        let status = stdout_of(&exec(&["/bin/cat", "/proc/self/status"]), None).await;
        let field = |name: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim();
            u64::from_str_radix(hex, 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "blocked signals");
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(field("SigIgn:") & sigpipe, 0, "SIGPIPE is ignored");
    }

    #[tokio::test]
    async fn the_child_gets_only_stdin_stdout_and_stderr() {
        // Descriptors this process holds: one close-on-exec, as std opens everything, and one
        // without, as a process can inherit them.
        let _held = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of a descriptor we hold; the copy is ours (and not close-on-exec).
        let inherited = unsafe { OwnedFd::from_raw_fd(libc::dup(_held.as_raw_fd())) };
        assert_eq!(
            unsafe { libc::fcntl(inherited.as_raw_fd(), libc::F_GETFD) },
            0
        );
        let listing = stdout_of(&exec(&["/bin/ls", "/proc/self/fd"]), None).await;
        let mut fds: Vec<u32> = listing.lines().map(|l| l.parse().unwrap()).collect();
        fds.sort();
        // 3 is the directory `ls` itself opened.
        assert_eq!(fds, vec![0, 1, 2, 3], "{listing}");
        let stdin = stdout_of(&exec(&["/bin/readlink", "/proc/self/fd/0"]), None).await;
        assert_eq!(stdin.trim(), "/dev/null");
    }

    /// The pids of this process's unreaped children, zombies included.
    fn children() -> Vec<String> {
        let mut all = vec![];
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(list.split_whitespace().map(str::to_owned));
        }
        all
    }

    #[tokio::test]
    async fn a_failed_exec_is_an_error_and_leaves_no_child() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
        let before = children();
        let err = run(
            &exec(&[script.to_str().unwrap()]),
            None,
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("not-executable"), "{err}");
        assert!(err.contains("ermission denied"), "{err}");
        let after = children();
        let left: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
        assert!(left.is_empty(), "children left: {left:?}");
    }

    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let argv = ["/bin/sleep".to_owned(), "300".to_owned()];
        let spawned = spawn(&Command {
            program: PathBuf::from("/bin/sleep"),
            argv: &argv,
            env: vec![],
            cwd: None,
            cgroup: None,
        })
        .unwrap();
        let pid = spawned.child.id();
        assert!(crate::cgroup::process_alive(pid));
        drop(spawned);
        // Reaped: its /proc entry is gone (a zombie would keep it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} was left"
        );
    }

    #[test]
    fn programs_are_looked_up_like_execvp() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve("no-such-program-xyz", "/bin:/usr/bin", None), None);
        // Not executable: skipped.
        assert_eq!(resolve("passwd", "/etc", None), None);
        assert_eq!(resolve("./x", "/bin", None), Some(PathBuf::from("./x")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::copy("/bin/true", dir.path().join("bin/tool")).unwrap();
        assert_eq!(
            resolve("tool", "bin", Some(dir.path())),
            Some(PathBuf::from("bin/tool"))
        );
    }
}
