//! Where a verifier restores: a private directory per restore (0700, named
//! `backupnizza-verify.RUN_ID.LABEL`), on the runtime directory's tmpfs when what is
//! restored fits there, else on disk (`verify.scratch`, by default `state_dir/verify-scratch`).
//! It is wiped when the restore's check is over, whether it passed, failed or timed out; a
//! daemon that died mid-restore leaves it, and the next start wipes it ([`sweep`]) before
//! any run starts.
//!
//! restic restores directories with their saved modes, and a directory saved read-only
//! cannot be emptied as it is: the wipe makes each directory writable before removing what
//! it holds.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What every scratch directory's name starts with: a sweep removes only these.
const PREFIX: &str = "backupnizza-verify.";
/// Room left free beyond what a restore needs.
const MARGIN: u64 = 64 * 1024 * 1024;

/// The runtime (tmpfs) root: beside the `{secret_file:}` root, in the socket's directory.
pub(crate) fn runtime_root(secret_files: &Path) -> PathBuf {
    secret_files.with_file_name("verify")
}

/// The disk root: `verify.scratch`, or `state_dir/verify-scratch`.
pub(crate) fn disk_root(state_dir: &Path, scratch: Option<&Path>) -> PathBuf {
    scratch.map_or_else(|| state_dir.join("verify-scratch"), Path::to_path_buf)
}

/// One restore's private directory; wiped on drop (call [`Scratch::wipe`] off the async
/// threads: a drill's may hold a whole snapshot).
pub(crate) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Makes `root` (0700 if new) and the private directory in it.
    pub(crate) fn create(root: &Path, run_id: &str, label: &str) -> std::io::Result<Scratch> {
        match DirBuilder::new().mode(0o700).recursive(true).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let dir = root.join(format!("{PREFIX}{run_id}.{label}"));
        DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Scratch { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes it and everything restored in it, on a blocking thread.
    pub(crate) async fn wipe(self) {
        let dir = self.dir.clone();
        std::mem::forget(self);
        let _ = tokio::task::spawn_blocking(move || remove(&dir)).await;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

fn remove(dir: &Path) {
    if let Err(e) = wipe_tree(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(dir = %dir.display(), error = %e, "cannot remove a verification's restored files; the next start of the daemon removes them");
    }
}

/// Removes `path` and all under it, making directories writable first; never follows a
/// symbolic link (a restored link is removed, not what it points at).
fn wipe_tree(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    if meta.mode() & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        wipe_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

/// Wipes what runs of a daemon that died left under `root`; how many there were.
pub(crate) fn sweep(root: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            wipe_tree(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Bytes free for an unprivileged writer on `path`'s filesystem (its parent's when it does
/// not exist yet).
#[allow(
    clippy::useless_conversion,
    reason = "the statvfs field types differ between platforms (u32 on macOS)"
)]
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let at = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let fs = nix::sys::statvfs::statvfs(at).map_err(std::io::Error::from)?;
    Ok(u64::from(fs.blocks_available()).saturating_mul(u64::from(fs.fragment_size())))
}

/// Whether `bytes` fit on `path`'s filesystem with a margin to spare.
pub(crate) fn fits(path: &Path, bytes: u64) -> bool {
    free_bytes(path).is_ok_and(|free| free >= bytes.saturating_add(MARGIN))
}

/// What a restore made under `dir`: entries of every kind (the directory itself aside) and
/// the bytes of its regular files, as `restic stats --mode restore-size` counts them.
pub(crate) fn count(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut entries, mut bytes) = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            entries += 1;
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    Ok((entries, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_tree_is_wiped_and_a_sweep_touches_only_our_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("scratch");
        let s = Scratch::create(&root, "run1", "drill").unwrap();
        let deep = s.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"12345").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.path().join("link")).unwrap();
        assert_eq!(count(s.path()).unwrap(), (4, 5));
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::set_permissions(s.path().join("a"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        let left = s.path().to_path_buf();
        drop(s);
        assert!(!left.exists());
        assert!(Path::new("/etc/passwd").exists());

        let kept = root.join("someone-elses");
        std::fs::create_dir(&kept).unwrap();
        std::mem::forget(Scratch::create(&root, "run2", "spot").unwrap());
        assert_eq!(sweep(&root).unwrap(), 1);
        assert!(kept.exists());
        assert_eq!(sweep(&tmp.path().join("none")).unwrap(), 0);
    }
}
