//! The daemon's records, written off the async threads: the run history, the snapshot
//! ledger and the metrics text file, each by a thread of its own ([`writers`]), what the
//! history and the ledger hold while their file cannot be written ([`backlog`]), and the
//! metrics' figures and their Prometheus text ([`metrics`]). What the ledger's entries
//! mean, and the audit, are [`crate::ledger`]'s.

mod backlog;
pub(crate) mod metrics;
pub(crate) mod writers;
