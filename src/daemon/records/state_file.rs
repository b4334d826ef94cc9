//! The daemon's small state files in `state_dir` (the data check's place, the pauses): JSON
//! written whole or not at all (a temporary file beside it, synced, then renamed over), so a
//! crash or a full disk leaves the previous version, never a torn one.

use std::io::Write as _;
use std::path::Path;

/// Writes `value` as JSON to `path`, atomically.
pub(crate) fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
