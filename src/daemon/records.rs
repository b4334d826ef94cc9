//! The daemon's records. Written off the async threads: the run history, the snapshot
//! ledger and the metrics text file, each by a thread of its own ([`writers`]), with what
//! the history and the ledger hold while their file cannot be written ([`backlog`]) and the
//! metrics' figures and their Prometheus text ([`metrics`]). Written in place, being small
//! and rare: the state files ([`state_file`]), among them the pauses that outlive a restart
//! ([`pauses`]). What the ledger's entries mean, and the audit, are [`crate::ledger`]'s.

mod backlog;
pub(crate) mod metrics;
pub(crate) mod pauses;
pub(crate) mod state_file;
pub(crate) mod writers;
