//! What wakes the idle daemon besides its timetable: a replaced socket, a change of the wall
//! clock or a resume from suspend, and the end of a child (an adopted orphan, the guardian).
//! A laptop daemon must not cost battery while it waits, so on Linux each comes from the
//! kernel when it happens, and an idle daemon with nothing due is not woken at all:
//!
//! - the socket's directory is watched with inotify: anything created, removed or renamed
//!   there (or the directory itself moved or removed) sends the owner to check that the path
//!   still names its socket;
//! - a `CLOCK_REALTIME` timerfd, armed a year ahead with `TFD_TIMER_CANCEL_ON_SET`, is
//!   cancelled by the kernel when the wall clock is set, and at a resume from suspend
//!   (`timerfd_resume`): the owner then reads its clocks and sees the jump or the suspend;
//! - SIGCHLD: a child ended, so the orphan reaper and the guardian check run. An orphan must
//!   be a zombie for a while before it is taken ([`super::reap_orphans`]): while one waits,
//!   and only then, the sentinel wakes the owner again after that while.
//!
//! Where any of these cannot be set up (another OS, the in-process tests, a kernel without
//! inotify), the sentinel polls: every [`POLL`] it reports everything at once, as the daemon
//! did before (on macOS that is the documented behaviour: docs/platforms.md).

use std::time::Duration;

/// How often the polling sentinel wakes the owner.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// What the sentinel saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "only the kernel sentinel (Linux) tells the alarms apart")
)]
pub(crate) enum Alarm {
    /// Something changed in the socket's directory: check the socket.
    Socket,
    /// The wall clock was set, or the machine resumed: the clocks are read on every wake.
    Clock,
    /// A child ended, or an orphan's wait is over: reap, and check the guardian.
    Children,
    /// The polling sentinel's tick: check everything.
    Poll,
}

impl Alarm {
    pub(crate) fn socket(self) -> bool {
        matches!(self, Alarm::Socket | Alarm::Poll)
    }

    pub(crate) fn children(self) -> bool {
        matches!(self, Alarm::Children | Alarm::Poll)
    }
}

/// The sentinel: the kernel's notifications where it has them, else a poll.
pub(crate) enum Sentinel {
    Polling(tokio::time::Interval),
    #[cfg(target_os = "linux")]
    Kernel(Box<linux::Kernel>),
}

impl Sentinel {
    /// The sentinel that checks everything every [`POLL`].
    pub(crate) fn polling() -> Sentinel {
        let mut interval = tokio::time::interval(POLL);
        // After a stall (a suspend, SIGSTOP) one tick, not one for each missed.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Sentinel::Polling(interval)
    }

    /// The daemon's: the kernel's notifications for the socket at `socket`, else a poll.
    /// Call it inside the runtime (it registers for SIGCHLD and the fds with the reactor).
    pub(crate) fn for_socket(socket: &std::path::Path) -> Sentinel {
        #[cfg(target_os = "linux")]
        match linux::Kernel::new(socket) {
            Ok(kernel) => return Sentinel::Kernel(Box::new(kernel)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the socket and the clock through the kernel; polling twice a second instead");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
        Sentinel::polling()
    }

    /// Whether nothing is missed while the owner sleeps: then only the timetable bounds its
    /// sleep, otherwise the timetable's own cap applies too.
    pub(crate) fn is_kernel(&self) -> bool {
        !matches!(self, Sentinel::Polling(_))
    }

    /// Waits for the next alarm.
    pub(crate) async fn next(&mut self) -> Alarm {
        match self {
            Sentinel::Polling(interval) => {
                interval.tick().await;
                Alarm::Poll
            }
            #[cfg(target_os = "linux")]
            Sentinel::Kernel(kernel) => kernel.next().await,
        }
    }

    /// An orphan waits to be reaped: report [`Alarm::Children`] again in `after`, if no
    /// child ends before. (The polling sentinel checks anyway.)
    #[cfg_attr(
        not(target_os = "linux"),
        allow(clippy::unused_self, reason = "only the kernel sentinel (Linux) rechecks")
    )]
    pub(crate) fn recheck_children(&mut self, after: Duration) {
        #[cfg(target_os = "linux")]
        if let Sentinel::Kernel(kernel) = self {
            kernel.recheck = Some(Box::pin(tokio::time::sleep(after)));
        }
        #[cfg(not(target_os = "linux"))]
        let _ = after;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::AsFd;
    use std::path::Path;
    use std::pin::Pin;

    use nix::errno::Errno;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::Alarm;
    use crate::sys::fds::{Watched, register};

    /// How far ahead the clock timer is armed: it only exists to be cancelled.
    const YEAR_SECS: i64 = 366 * 24 * 3600;

    pub(crate) struct Kernel {
        directory: AsyncFd<Watched<Inotify>>,
        clock: AsyncFd<Watched<TimerFd>>,
        children: Signal,
        pub(super) recheck: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Kernel {
        pub(super) fn new(socket: &Path) -> std::io::Result<Kernel> {
            let dir =
                socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            inotify.add_watch(
                dir,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF,
            )?;
            let timer = TimerFd::new(
                ClockId::CLOCK_REALTIME,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )?;
            arm(&timer)?;
            Ok(Kernel {
                directory: register(inotify)?,
                clock: register(timer)?,
                children: signal(SignalKind::child())?,
                recheck: None,
            })
        }

        pub(super) async fn next(&mut self) -> Alarm {
            let recheck = async {
                match self.recheck.as_mut() {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = self.directory.readable() => {
                    if let Ok(mut guard) = ready {
                        // Any event means "look": drain them all, their content is not needed.
                        let _ = guard.try_io(|fd| drain(fd.get_ref()));
                        guard.clear_ready();
                    }
                    Alarm::Socket
                }
                ready = self.clock.readable() => {
                    if let Ok(mut guard) = ready {
                        let timer = guard.get_ref().get_ref().get();
                        let mut expirations = [0u8; 8];
                        // ECANCELED (the clock was set, or a resume) or a year's expiry: re-arm
                        // either way, which also clears the cancelled state.
                        match nix::unistd::read(timer.as_fd(), &mut expirations) {
                            Err(Errno::EAGAIN) => {}
                            _ => {
                                if let Err(e) = arm(timer) {
                                    tracing::warn!(error = %e, "cannot re-arm the clock-change timer");
                                }
                            }
                        }
                        guard.clear_ready();
                    }
                    Alarm::Clock
                }
                _ = self.children.recv() => {
                    self.recheck = None;
                    Alarm::Children
                }
                () = recheck => {
                    self.recheck = None;
                    Alarm::Children
                }
            }
        }
    }

    /// Reads the inotify events until none is left.
    fn drain(fd: &Watched<Inotify>) -> std::io::Result<()> {
        loop {
            match fd.get().read_events() {
                Ok(events) if !events.is_empty() => {}
                Ok(_) => return Ok(()),
                Err(Errno::EAGAIN) => return Err(std::io::ErrorKind::WouldBlock.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Arms the timer a year from now, to be cancelled by a change of the clock.
    fn arm(timer: &TimerFd) -> nix::Result<()> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
        timer.set(
            Expiration::OneShot(TimeSpec::new(now.tv_sec() + YEAR_SECS, 0)),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
        )
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The alarms until `want` (children's ends are process-wide: other tests' children end
    /// too, and are let through).
    async fn until(sentinel: &mut Sentinel, want: Alarm) {
        loop {
            let alarm = sentinel.next().await;
            if alarm == want {
                return;
            }
            assert!(matches!(alarm, Alarm::Children | Alarm::Socket), "unexpected {alarm:?}");
        }
    }

    #[tokio::test]
    async fn the_kernel_reports_a_replaced_socket_and_a_childs_end_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        std::fs::write(&socket, "").unwrap();
        let mut sentinel = Sentinel::for_socket(&socket);
        assert!(sentinel.is_kernel());
        // Nothing but other tests' children in a quiet moment.
        let quiet = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let alarm = sentinel.next().await;
                if alarm != Alarm::Children {
                    return alarm;
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "an alarm with nothing happening: {quiet:?}");

        std::fs::write(dir.path().join("other"), "").unwrap();
        std::fs::rename(dir.path().join("other"), &socket).unwrap();
        until(&mut sentinel, Alarm::Socket).await;

        let mut child = tokio::process::Command::new("true").spawn().unwrap();
        child.wait().await.unwrap();
        until(&mut sentinel, Alarm::Children).await;

        sentinel.recheck_children(Duration::from_millis(50));
        assert_eq!(sentinel.next().await, Alarm::Children);
    }
}
