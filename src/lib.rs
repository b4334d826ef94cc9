//! backupnizza: an ssh-agent for backup jobs.
pub mod cli;
pub mod commands;
pub mod config;
pub mod duration;
pub mod exit;
pub mod schedule;
