//! backupnizza: an ssh-agent for backup jobs.
//!
//! The tree follows the data flow, in start-up order:
//!
//! 1. [`config`] reads the task file once and checks all of it ([`schedule`] parses cron
//!    expressions and computes fire times; [`duration`] parses `90s`, `1h30m`).
//! 2. [`daemon`] hardens the process ([`hardening`]: no core dumps, no ptrace, locked pages),
//!    checks the programs it will run (StrictModes, pins), and has [`broker`] load every
//!    secret into locked memory.
//! 3. [`broker`] binds the Unix socket and serves the [`protocol`]: redemptions of one-time
//!    tokens by the processes they were made for, and control requests from the user, which
//!    it passes as messages to the daemon.
//! 4. In [`daemon`], one task owns the task and run state: it fires each task when
//!    [`schedule`]'s timetable says (on time, caught up after a suspend, or skipped; rebuilt
//!    from the new clock when the wall clock is changed), runs it with a fresh token per
//!    process (and `{secret_file:}` values as private files that live as long as the step),
//!    keeps every process of a run together (its process group, its cgroup, a
//!    guardian process should the daemon die; interrupted runs are settled at the next
//!    start), and records and reports the result ([`history`],
//!    metrics, notifications, systemd readiness); [`redact`] masks secrets in everything
//!    written anywhere, before it is formatted ([`logging`]).
//!
//! The clients: `secretbox` ([`client`]) redeems a token; `backupnizza status`, `trigger`,
//! `history`, `explain`, `validate`, `next`, `secret`, `service`, `completions` and `man`
//! live in [`commands`] (arguments in [`cli`], exit codes in [`exit`]; service files in
//! [`service`]).

// The crate's docs are for its developers and are built with `--document-private-items`
// (CI fails on any rustdoc warning), so they may link to crate-private modules.
#![allow(rustdoc::private_intra_doc_links)]
// `unsafe` lives in `sys` alone, which allows it for itself.
#![deny(unsafe_code)]

pub mod broker;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub(crate) mod digest;
pub mod exit;

pub(crate) mod history;
pub(crate) mod ledger;
pub(crate) mod logging;
pub mod protocol;
pub(crate) mod redact;
pub(crate) mod restic;
pub mod schedule;
pub(crate) mod service;
pub mod sys;
pub(crate) mod time;
pub(crate) mod trust;
