//! `{secret_file: NAME}` values: the secret as a file the step's processes can read, so that
//! it sits in no environment block and no argument list.
//!
//! Each step (or hook) that has such a value gets a private directory, 0700, under the
//! daemon's runtime directory (beside the socket: `files/RUN_ID.STEP/`), holding one 0600
//! file per secret, written straight from the locked store; the variable holds the file's
//! path. The directory is removed when the step ends, that is once every process of it has
//! ended — by exit, timeout or shutdown, leftovers included. A daemon that died (SIGKILL, a
//! crash) leaves its directories behind: the next start removes them ([`sweep`], called by
//! the settlement of unended runs) before any run starts, and a clean stop removes the root.
//!
//! Why a file, not a one-shot pipe at `/dev/fd/N` (or a memfd there): a pipe can be read
//! once, and credential readers may open a file more than once or seek (the AWS SDKs, rclone
//! configs); and a descriptor reaches only the processes that inherit it, while restic starts
//! its `rclone:` backend with descriptors 0-2 only (Go's `os/exec`), so only a path works for
//! every tool. What it costs: the path exists while the step runs, readable by the daemon's
//! own user (like everything of that user: see docs/security.md); and the bytes live in the
//! runtime directory's filesystem — tmpfs under `XDG_RUNTIME_DIR`, whose pages the kernel may
//! swap out (use encrypted swap); on a disk-backed directory (the `$TMPDIR` fallback) they
//! would reach the disk, so the daemon warns at start ([`check_memory_backed`]).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory every step's directory lives in, beside the socket.
pub(crate) fn root_for(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new(".")).join("files")
}

/// Creates the root (0700) if it is missing and checks it: a directory of ours, not a
/// symlink. Its parent is the socket's private directory, so nobody else could have made it;
/// the check is for our own mistakes and leftovers of another version.
pub(crate) fn prepare(root: &Path) -> std::io::Result<()> {
    match DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of the daemon's user; remove it",
            root.display()
        )));
    }
    // The umask may have taken bits away (the socket is bound under 0177): exactly 0700.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

/// Removes every step directory under `root`: what runs of a daemon that died left behind.
/// Returns how many there were.
pub(crate) fn sweep(root: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let gone = if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone?;
        removed += 1;
    }
    Ok(removed)
}

/// Why `root` may not be memory-backed, when it may not (Linux: tmpfs and ramfs are).
pub(crate) fn check_memory_backed(root: &Path) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
        // ramfs has no constant in nix; its magic number is in linux/magic.h.
        const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
        match statfs(root) {
            Ok(fs)
                if fs.filesystem_type() == TMPFS_MAGIC || fs.filesystem_type() == RAMFS_MAGIC =>
            {
                None
            }
            Ok(_) => Some(format!(
                "{} is not on tmpfs: the files of {{secret_file:}} values would be written to disk; set XDG_RUNTIME_DIR (or `socket:`) to a tmpfs directory such as /run/user/UID",
                root.display()
            )),
            Err(e) => Some(format!("cannot tell what filesystem {} is on: {e}", root.display())),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        None
    }
}

/// The path of secret `name`'s file in step directory `label` (see [`StepFiles::create`]).
/// Known before anything is written, so the environment can be built first.
pub(crate) fn path_of(root: &Path, label: &str, name: &str) -> PathBuf {
    // Secret names are `[A-Za-z0-9][A-Za-z0-9._-]*` (checked in the task file): never `..`
    // nor a `/`, so the file stays in the directory.
    root.join(label).join(name)
}

/// One step's directory of secret files; removed, with everything in it, when dropped.
pub(crate) struct StepFiles {
    dir: PathBuf,
}

impl StepFiles {
    /// Creates directory `label` under `root` (0700, and it must not exist yet: a run id is
    /// unique) and writes each `(name, bytes)` into a 0600 file there, at [`path_of`].
    pub(crate) fn create(
        root: &Path,
        label: &str,
        secrets: &[(&str, &[u8])],
    ) -> std::io::Result<StepFiles> {
        let dir = root.join(label);
        DirBuilder::new().mode(0o700).create(&dir)?;
        // From here on, a failure removes what was written.
        let files = StepFiles { dir };
        std::fs::set_permissions(&files.dir, std::fs::Permissions::from_mode(0o700))?;
        for (name, bytes) in secrets {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path_of(root, label, name))?;
            // Straight from the locked pages: no copy in the daemon's ordinary heap.
            file.write_all(bytes)?;
        }
        Ok(files)
    }
}

impl Drop for StepFiles {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot remove the step's secret files; the next start of the daemon removes them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_files_are_private_and_gone_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("files");
        prepare(&root).unwrap();
        prepare(&root).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        let files = StepFiles::create(&root, "run1.1", &[("a", b"one"), ("b.x", b"two")]).unwrap();
        let a = path_of(&root, "run1.1", "a");
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        // Readable again (tools that open the file twice), and private.
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(root.join("run1.1")).unwrap().mode() & 0o777, 0o700);
        // A second step directory of the same name is refused, never shared.
        assert!(StepFiles::create(&root, "run1.1", &[]).is_err());
        drop(files);
        assert!(!root.join("run1.1").exists());
        assert!(root.exists());
    }

    #[test]
    fn sweep_removes_what_a_dead_daemon_left() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("files");
        prepare(&root).unwrap();
        let left = StepFiles::create(&root, "old.1", &[("a", b"x")]).unwrap();
        std::mem::forget(left);
        std::fs::write(root.join("stray"), b"").unwrap();
        assert_eq!(sweep(&root).unwrap(), 2);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }
}
