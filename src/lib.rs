//! backupnizza: an ssh-agent for backup jobs.
//!
//! The data flow, in start-up order:
//!
//! 1. [`config`] reads the task file once and checks all of it ([`schedule`] parses cron
//!    expressions and computes fire times; [`duration`] parses `90s`, `1h30m`).
//! 2. [`daemon`] hardens the process ([`hardening`]: no core dumps, no ptrace, locked pages),
//!    checks the programs it will run ([`programs`]: StrictModes, pins), and loads every
//!    secret ([`secrets`]) into locked memory.
//! 3. [`server`] binds the Unix socket and serves the [`protocol`]: redemptions of one-time
//!    tokens ([`vault`]) by the processes they were made for ([`peer`]), and control
//!    requests from the user.
//! 4. [`scheduler`] decides when each task fires (on time, caught up after a suspend, or
//!    skipped); [`runner`] runs it with a fresh token per process; [`history`],
//!    [`metrics`], [`notifications`] and [`notify`] (systemd readiness) record and report
//!    the result; [`redact`] masks secrets in everything written anywhere ([`logging`]).
//!
//! The clients: `secretbox` ([`client`]) redeems a token; `backupnizza status`, `trigger`,
//! `history`, `explain`, `validate`, `next`, `secret`, `service`, `completions` and `man`
//! live in [`commands`] (arguments in [`cli`], exit codes in [`exit`]; service files in
//! [`service`]).

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod exit;
pub mod hardening;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod notifications;
pub mod notify;
pub mod peer;
pub mod programs;
pub mod protocol;
pub mod redact;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod service;
pub mod vault;
