//! The daemon's records, written off the async threads: the run history and the metrics
//! text file, each by a thread of its own ([`writers`]), and the metrics' figures and their
//! Prometheus text ([`metrics`]). The snapshot ledger, which runs append to, is
//! [`crate::ledger`].

pub(crate) mod metrics;
pub(crate) mod writers;
