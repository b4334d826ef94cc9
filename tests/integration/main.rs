//! Integration tests: the real `backupnizza` and `secretbox` binaries, run in temporary
//! directories, against real peers. One test binary (compiled once), one module per area.

// A test plays one scenario end to end, often with its set-up inline; cut into helpers it
// would hide the story it checks. Library code keeps the 80-line budget (clippy.toml).
#![allow(clippy::too_many_lines)]

mod audit;
mod broker;
mod clock;
mod crash;
mod credentials;
mod daemon;
mod dashboard;
mod docs;
mod harness;
mod home;
mod hostile;
mod laptop;
mod ledger;
mod load;
mod masking;
mod memory;
mod next;
mod notify;
mod pinning;
mod pipes;
mod presets;
mod records;
mod redeemers;
mod restic;
mod restic_aware;
mod runs;
mod scopes;
mod sealed;
mod system;
mod system_service;
mod validate;
mod verify;
mod vigil;
mod watch;
