//! The one home of `unsafe` code: every foreign call, `extern` block and raw system call of
//! the crate sits behind a safe function here, each block with a `// SAFETY:` comment saying
//! why it is sound. The rest of the crate denies `unsafe_code`.
//!
//! [`hardening`] and [`locked`] protect the secrets (no dumps, no ptrace, locked pages);
//! [`env`](mod@env) takes `env:` sources out of the environment; [`proc`] reads the process table;
//! [`exec`] sets a task's process up between fork and exec; [`fds`] closes what the daemon
//! inherited; [`fd_passing`] is the guardian's channel; [`signals`] the guardian's
//! dispositions; [`footprint`] gives back the idle daemon's memory; `iokit` is macOS's
//! power management.

#![allow(unsafe_code)]

pub(crate) mod caps;
pub(crate) mod env;
pub(crate) mod exec;
pub(crate) mod fd_passing;
pub(crate) mod fds;
pub(crate) mod footprint;
pub mod hardening;
#[cfg(target_os = "macos")]
pub(crate) mod iokit;
pub(crate) mod locked;
pub(crate) mod proc;
pub(crate) mod signals;
