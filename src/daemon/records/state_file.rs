//! The daemon's small state files in `state_dir` (the data check's place, the pauses): JSON
//! written whole or not at all (a temporary file beside it, synced, then renamed over), so a
//! crash or a full disk leaves the previous version, never a torn one. Mode 0600, like the
//! history: they are nobody else's business.

use std::io::Write as _;
use std::path::Path;

/// Writes `value` as JSON to `path`, atomically.
pub(crate) fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
