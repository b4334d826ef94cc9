//! backupnizza: an ssh-agent for backup jobs.
pub mod duration;
pub mod schedule;
