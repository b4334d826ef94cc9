//! What a task's process does for itself between `fork` and `exec`, in the child, where only
//! async-signal-safe calls may be made: join its run's cgroup, ask for a signal should the
//! daemon die, take or give up the read-all capability, and lower its CPU and I/O priority.
//!
//! Everything the hook needs is prepared before the fork; the hook allocates nothing.

use std::ffi::CString;

/// The child's set-up, made before the fork.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChildSetup {
    /// The run cgroup's `cgroup.procs`, which the child joins by writing `0` to it.
    pub(crate) join_cgroup: Option<CString>,
    /// Linux: SIGINT to the child when the daemon dies (`PR_SET_PDEATHSIG`). SIGINT, not
    /// SIGTERM: restic removes its repository lock on SIGINT.
    pub(crate) parent_death_signal: bool,
    /// `setpriority(PRIO_PROCESS, 0, nice)`.
    pub(crate) nice: Option<i32>,
    /// Linux: `ioprio_set(IOPRIO_WHO_PROCESS, 0, ioprio)`.
    pub(crate) ioprio: Option<i32>,
    /// Linux, system mode: raise the read-all capability into the child's ambient set, so
    /// the program it executes holds it ([`super::caps`]); otherwise the child clears its
    /// inheritable set, so no program gains it.
    pub(crate) read_all: bool,
    /// Descriptors the program must inherit (the sealed `secretbox` image, the sealed
    /// `rclone` restic starts): their close-on-exec flag is cleared in the child only, so no
    /// other child gets them.
    pub(crate) keep_open: [Option<i32>; 2],
}

/// Exit status of a child whose daemon died between its fork and its `prctl`: the signal
/// would never come, so it must not run.
#[cfg(target_os = "linux")]
const ORPHANED_AT_BIRTH: i32 = 125;

/// Installs `setup` as the command's pre-exec hook. Failures to lower priority are ignored
/// (a process may not lower its niceness below its parent's without privileges, and a
/// kernel without I/O scheduling classes keeps the class it has); a failure to join the
/// cgroup leaves the child in the daemon's (the run is still found by its group and run id).
pub(crate) fn set_up_before_exec(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    #[cfg(target_os = "linux")]
    let parent = std::process::id() as libc::pid_t;
    // The parent-death signal and I/O classes are Linux's; elsewhere they are not asked for.
    #[cfg(not(target_os = "linux"))]
    let _ = (setup.parent_death_signal, setup.ioprio, setup.read_all);
    let hook = move || {
        #[cfg(target_os = "linux")]
        if setup.parent_death_signal {
            // SAFETY: prctl and getppid are async-signal-safe and touch only this process.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                if libc::getppid() != parent {
                    libc::_exit(ORPHANED_AT_BIRTH);
                }
            }
        }
        if let Some(file) = &setup.join_cgroup {
            // SAFETY: open, write and close are async-signal-safe; `file` is a NUL-terminated
            // path made before the fork, and the buffer written is a static byte.
            unsafe {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
        }
        for fd in setup.keep_open.into_iter().flatten() {
            // SAFETY: fcntl is async-signal-safe; it changes a flag of this (forked)
            // process's own descriptor table.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
        }
        if let Some(nice) = setup.nice {
            // SAFETY: setpriority is async-signal-safe; it affects this (forked) process.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
        }
        #[cfg(target_os = "linux")]
        if setup.read_all {
            // Fails (EPERM) when the daemon does not hold the capability: nothing to hand on.
            // SAFETY: a prctl on this (forked) process's own capability sets.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    super::caps::DAC_READ_SEARCH,
                    0,
                    0,
                );
            }
        } else {
            use super::caps::{CapData, CapHeader, VERSION_3};
            let mut header = CapHeader { version: VERSION_3, pid: 0 };
            let mut data = [CapData::default(); 2];
            // SAFETY: capget and capset are plain system calls on this (forked) process, on
            // buffers of the size version 3 asks for, on the stack: nothing is allocated.
            unsafe {
                if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) == 0
                    && (data[0].inheritable | data[1].inheritable) != 0
                {
                    data[0].inheritable = 0;
                    data[1].inheritable = 0;
                    libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr());
                }
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(ioprio) = setup.ioprio {
            // IOPRIO_WHO_PROCESS (1), this process (0).
            // SAFETY: a plain system call on this process, async-signal-safe.
            unsafe {
                libc::syscall(libc::SYS_ioprio_set, 1, 0, ioprio);
            }
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe calls (see above) and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}
