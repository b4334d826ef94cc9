//! The pauses that outlive the daemon: `state_dir/pauses.json`, rewritten whenever a pause
//! begins, changes or ends, and read at start, so that `backupnizza pause --for 3d` still
//! holds after a reboot or a restart of the service (a pause that lived only in memory would
//! let a laptop back up over the metered link its user paused it for). The file holds task
//! names and wall-clock instants, nothing secret; the state directory is private anyway.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One task's pause, as written: `until` is `None` for "until `backupnizza resume`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedPause {
    pub(crate) task: String,
    pub(crate) since: Timestamp,
    pub(crate) until: Option<Timestamp>,
}

#[derive(Serialize, Deserialize)]
struct PausesFile {
    pauses: Vec<SavedPause>,
}

pub(crate) fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("pauses.json")
}

/// The pauses in `path`: none when there is no file; an error naming the file when it
/// cannot be read or parsed (the daemon then starts with no task paused, and says so).
pub(crate) fn load(path: &Path) -> Result<Vec<SavedPause>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice::<PausesFile>(&bytes)
        .map(|f| f.pauses)
        .map_err(|e| format!("{} is not a pauses file: {e}", path.display()))
}

/// Writes `pauses` to `path` atomically; with none, removes the file.
pub(crate) fn save(path: &Path, pauses: Vec<SavedPause>) -> std::io::Result<()> {
    if pauses.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    super::state_file::save_json(path, &PausesFile { pauses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_come_back_as_written_and_a_torn_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        assert_eq!(load(&path), Ok(Vec::new()), "no file, no pause");
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let pauses = vec![
            SavedPause { task: "a".into(), since: at(100), until: Some(at(200)) },
            SavedPause { task: "b".into(), since: at(150), until: None },
        ];
        save(&path, pauses.clone()).unwrap();
        assert_eq!(load(&path), Ok(pauses));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        save(&path, Vec::new()).unwrap();
        assert!(!path.exists(), "no pause, no file");
        save(&path, Vec::new()).unwrap();
        std::fs::write(&path, b"{\"pauses\": [{\"task\"").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("pauses.json is not a pauses file"), "{err}");
    }
}
