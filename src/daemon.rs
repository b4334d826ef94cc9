//! `backupnizza run`: the daemon. Its subsystems, in the order data flows through them:
//!
//! - [`start`]: start-up and shutdown. Checks the task file and every program it names,
//!   hardens the process, starts the guardian, loads the secrets, binds the socket, starts
//!   the record writers, and hands over to the state owner; at the end, stops in order.
//! - [`owner`]: the state owner, the one task that holds the task and run tables and the
//!   timetable. It fires runs (on time, caught up after a suspend or downtime, or skipped),
//!   answers the socket's control requests and hears the runs' events.
//! - [`run`]: one run's phases: what it waits for before it starts (random delay, resume
//!   settle, conditions, lock), its hooks, its attempts, the audit, and its End record.
//! - [`step`]: one step's processes: their environment and token, pipelines, containment
//!   (process group, cgroup, guardian), `{secret_file:}` values, timeouts and leftovers.
//! - [`output`]: what the processes print, redacted, to the log (within a budget), to the
//!   task's output file and to `trigger --follow`.
//! - [`records`]: the history and metrics writers, off the async threads.
//! - [`notify`]: webhooks and notify commands, for run starts and ends.
//! - [`host`]: the machine around the daemon: power and network conditions, change signals,
//!   the sleep inhibitor, systemd's notifications, orphans to reap.

mod host;
mod notify;
mod output;
mod owner;
mod records;
mod run;
mod start;
mod step;

pub use start::main;
pub use step::guardian::main as guard;

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Signal(&'static str),
    SocketStolen,
}
