//! backupnizza: an ssh-agent for backup jobs. A daemon reads one task file, loads the
//! secrets it names into locked memory, runs restic, rclone and other backup commands on
//! cron schedules, and hands each process a one-time token that `secretbox get NAME` trades
//! for a secret over the daemon's Unix socket.
//!
//! ## Start-up, as the code runs it
//!
//! `backupnizza run` is [`daemon::main`] ([`daemon`]'s `start`), on the one thread the
//! process starts with:
//!
//! 1. close the descriptors it inherited ([`sys`]);
//! 2. read the task file once and check all of it ([`config`]; cron expressions and fire
//!    times in [`schedule`], durations and RFC 3339 in [`time`]), or exit 2 listing every
//!    problem;
//! 3. take the `env:` secret sources onto locked pages and out of the environment, while
//!    one thread exists ([`sys`]), then start logging ([`logging`]);
//! 4. check the task file and every program it runs, secret helpers and redeemers included:
//!    StrictModes and pins ([`trust`]);
//! 5. harden the process (no core dumps, no ptrace: [`sys`]), become the child subreaper,
//!    and start the guardian process;
//! 6. start the async runtime, and in it: load every other secret ([`broker`]'s sources;
//!    [`redact`] learns each value as it loads), bind the socket, open the run history
//!    ([`history`]), the metrics file and the output files, settle the runs a daemon that
//!    died left, catch up what fell due while it was down, serve the socket ([`broker`],
//!    speaking [`protocol`]), and hand over to the state owner, which fires runs until
//!    SIGTERM or SIGINT; each run's processes get a fresh token each, and what they print
//!    is redacted on its way to the log. The snapshot ledger ([`ledger`]) records what
//!    restic saved and audits the repository against it.
//!
//! The clients: `secretbox` ([`client`]) redeems a token; `backupnizza status`, `trigger`,
//! `history`, `explain`, `validate`, `next`, `secret`, `service`, `completions` and `man`
//! live in [`commands`] (arguments in [`cli`], exit codes in [`exit`], service files in
//! [`service`]). What restic prints is understood by [`restic`]; SHA-256 and hex are
//! [`digest`]'s.
//!
//! ## Layers
//!
//! Each module uses only modules of its own layer or of the layers below it, and no two
//! modules use each other, even through others (`.ci/layers` checks both, and that
//! `unsafe` appears in [`sys`] alone):
//!
//! 1. [`sys`]: the one home of `unsafe`: foreign calls, raw system calls, `/proc`.
//! 2. [`protocol`], [`time`], [`digest`], [`exit`], [`restic`], [`redact`]: the vocabulary.
//! 3. [`config`], [`schedule`], [`journal`], [`history`], [`ledger`], [`trust`], [`logging`], [`client`], [`service`], [`cli`], [`desktop`]: files, records, trust.
//!    The task file and its schedules, the records the daemon keeps, what it trusts, how it
//!    logs, the client side's pieces, and notifications on the desktop.
//! 4. [`broker`]: the socket, the tokens and the secrets.
//! 5. [`daemon`], [`commands`]: what the binaries run; neither uses the other.
//!
//! ## Where new code goes
//!
//! A type two modules share lives in the lower one: the wire contract in [`protocol`],
//! record types in [`history`], times in [`time`]. A helper lives with the data it works
//! on, not in the first file that needed it. Anything that needs `unsafe` gets a safe
//! function in [`sys`]. Inside [`daemon`], a run's new phase goes in `run/`, a new thing a
//! step's processes do in `step/`, a new way of telling someone in `notify/`, and a new
//! question about the machine in `host/`; the state owner (`owner/`) only decides, and its
//! decisions get an in-process test under paused time there.

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
pub(crate) mod desktop;
pub(crate) mod digest;
pub mod exit;

pub(crate) mod history;
pub(crate) mod journal;
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
