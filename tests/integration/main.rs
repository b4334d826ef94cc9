//! Integration tests: the real `backupnizza` and `secretbox` binaries, run in temporary
//! directories, against real peers. One test binary (compiled once), one module per area.

mod broker;
mod clock;
mod daemon;
mod harness;
mod next;
mod restic;
mod runs;
mod validate;
