//! The ledger as people read it (`backupnizza ledger`): one row per recorded snapshot with
//! what became of it, and the runs that found nothing changed; and the one entry people
//! write (`backupnizza ledger forget ID... --reason TEXT`), which says a deletion was on
//! purpose.

use std::path::Path;

use serde::Serialize;

use super::{Entry, Gone, Ledger, LedgerFile, same_id};

/// One snapshot (or unchanged run) the ledger knows, for `backupnizza ledger`.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// Empty for an unchanged run, which made no snapshot.
    pub snapshot_id: String,
    /// The task that saved it (none for a baseline snapshot, which predates the ledger).
    pub task: Option<String>,
    /// When it was recorded.
    pub at: String,
    /// `saved`, `seen` (an audit found it), `baseline`, `unchanged`, `forgotten`,
    /// `pruned` or `acknowledged`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Who or what removed it, and when (empty when it is not removed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Ledger {
    /// Every recorded snapshot with its fate, in the order recorded, then the baseline.
    pub(crate) fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for s in &self.saved {
            let seen = self.seen.keys().any(|full| same_id(full, &s.id));
            let (state, detail) = self.fate(&s.id, if seen { "seen" } else { "saved" });
            let row = Row {
                snapshot_id: s.id.clone(),
                task: Some(s.task.clone()),
                at: s.at.clone(),
                state,
                partial: s.partial,
                detail,
            };
            rows.push(row);
        }
        for (task, at) in &self.unchanged {
            rows.push(Row {
                snapshot_id: String::new(),
                task: Some(task.clone()),
                at: at.clone(),
                state: "unchanged",
                partial: false,
                detail: "no snapshot: nothing changed since the last one".into(),
            });
        }
        rows.sort_by(|a, b| a.at.cmp(&b.at));
        let mut baseline: Vec<_> = self.baseline.values().collect();
        baseline.sort_by(|a, b| a.time.cmp(&b.time));
        for snapshot in baseline {
            let (state, detail) = self.fate(&snapshot.id, "baseline");
            rows.push(Row {
                snapshot_id: snapshot.id.clone(),
                task: None,
                at: snapshot.time.clone(),
                state,
                partial: false,
                detail,
            });
        }
        rows
    }

    fn fate(&self, id: &str, otherwise: &'static str) -> (&'static str, String) {
        match self.gone(id) {
            Some(Gone::Forgotten { task, at }) => {
                ("forgotten", format!("by task {task}'s forget at {at}"))
            }
            Some(Gone::Pruned { at, policy }) => {
                ("pruned", format!("by the keep policy ({policy}), found at {at}"))
            }
            Some(Gone::Acknowledged { at, reason }) => {
                ("acknowledged", format!("{reason} (at {at})"))
            }
            None => (otherwise, String::new()),
        }
    }

    /// The recorded snapshot `id` names (a full id, or a prefix of 8 digits or more).
    fn resolve(&self, id: &str) -> Result<String, String> {
        let valid = id.len() >= 8 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(format!("{id:?} is not a snapshot id (8 to 64 hexadecimal digits)"));
        }
        let recorded = self
            .saved
            .iter()
            .map(|s| s.id.as_str())
            .chain(self.seen.keys().map(String::as_str))
            .chain(self.baseline.keys().map(String::as_str));
        let mut found: Vec<&str> = recorded.filter(|r| same_id(r, id)).collect();
        // A short id and the full one are one snapshot: keep the longest of each.
        found.sort_by_key(|r| std::cmp::Reverse(r.len()));
        found.dedup_by(|a, b| same_id(a, b));
        match found.as_slice() {
            [one] => Ok((*one).to_string()),
            [] => Err(format!("no snapshot {id} in the ledger (`backupnizza ledger` lists them)")),
            many => Err(format!("{id} names {} snapshots: give more of its digits", many.len())),
        }
    }
}

/// Why an acknowledgement was not recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AckError {
    /// The request: an empty reason, an id that names no recorded snapshot, or several.
    #[error("{0}")]
    Request(String),
    /// The ledger file.
    #[error("{0}")]
    File(String),
}

/// Records that the snapshots `ids` were removed on purpose, for `reason`, at `at`. Every id
/// is checked before anything is written: all or none. Returns the full ids recorded.
pub(crate) fn acknowledge(
    state_dir: &Path,
    ids: &[String],
    reason: &str,
    at: &str,
) -> Result<Vec<String>, AckError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AckError::Request(
            "--reason is empty: say why the snapshots were removed".into(),
        ));
    }
    let ledger = Ledger::load(state_dir).map_err(|e| {
        let file = state_dir.join(super::FILE_NAME);
        AckError::File(format!("cannot read the snapshot ledger {}: {e}", file.display()))
    })?;
    let resolved: Vec<String> = ids
        .iter()
        .map(|id| ledger.resolve(id).map_err(AckError::Request))
        .collect::<Result<_, _>>()?;
    let mut file = LedgerFile::new(state_dir);
    for id in &resolved {
        let entry = Entry::Acknowledged {
            at: at.to_string(),
            snapshot_id: id.clone(),
            reason: reason.to_string(),
        };
        file.append(&entry).map_err(|e| {
            AckError::File(format!(
                "cannot write the snapshot ledger {}: {e}",
                file.path().display()
            ))
        })?;
    }
    Ok(resolved)
}
