//! Preparing the daemon's socket the way ssh-agent and gpg-agent do: a directory of mode 0700
//! that we own (refused if it is a symlink, someone else's, or looser), a lock so a second
//! daemon refuses to start, a stale socket removed only if nothing answers on it, and a bind
//! under `umask 0177` so the socket is 0600 from its first instant.
//!
//! Without `XDG_RUNTIME_DIR` the default directory is `$TMPDIR/backupnizza-$UID`, a name
//! another user can take first. Then the daemon does not give up: it binds in a directory of
//! its own with an unpredictable name beside it ([`bind_private`]) and records the socket's
//! path in `state_dir/socket`, where the clients look for it ([`recorded`]).
//!
//! With `control_group:` (system mode: the daemon runs as a dedicated user) the directory is
//! 0750 and the socket 0660, both given to that group, so its members can reach the control
//! routes; nothing else is loosened, and the server still checks every peer's credentials.
//! Without it, nothing differs from the above.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::info;

/// Why the socket could not be prepared. Each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    #[error("socket directory {}: {problem}; {fix}", dir.display())]
    UnsafeDir { dir: PathBuf, problem: String, fix: String },
    #[error("another backupnizza daemon is running on {} (it holds {}); stop it first, or give this one another `socket:`", socket.display(), lock.display())]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error("{} exists and is not a socket; remove it or choose another `socket:`", path.display())]
    NotASocket { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io { path: path.to_path_buf(), source }
}

/// The file in `state_dir` that names the socket when it is not where the task file says.
pub(crate) const RECORD: &str = "socket";

/// The bound socket; removes the socket file when dropped (if it is still ours), and, for a
/// private directory, its record, its lock and the directory.
pub(crate) struct BoundSocket {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
    /// The record naming `path` and the private directory, when [`bind_private`] was used.
    private: Option<(PathBuf, PathBuf)>,
    /// Device and inode of the socket we bound, to notice if the path is taken over.
    pub identity: (u64, u64),
    _lock: nix::fcntl::Flock<File>,
}

impl BoundSocket {
    /// Whether the path still names the socket we bound (gpg-agent's check for a stolen socket).
    pub(crate) fn still_ours(&self) -> bool {
        self.watch().still_ours()
    }

    /// What the state owner checks when its sentinel says, apart from the socket itself.
    pub(crate) fn watch(&self) -> SocketWatch {
        SocketWatch { path: self.path.clone(), identity: self.identity }
    }
}

/// A path and the file it named when it was bound (its device and inode), to notice when
/// another process replaces or removes it.
#[derive(Debug, Clone)]
pub(crate) struct SocketWatch {
    pub(crate) path: PathBuf,
    identity: (u64, u64),
}

impl SocketWatch {
    /// Watches whatever `path` names now (the state owner's tests watch a plain file).
    #[cfg(test)]
    pub(crate) fn of(path: &Path) -> std::io::Result<SocketWatch> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(SocketWatch { path: path.to_path_buf(), identity: (m.dev(), m.ino()) })
    }

    /// Whether the path still names the same file.
    pub(crate) fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some((record, dir)) = &self.private {
            let _ = std::fs::remove_file(record);
            let _ = std::fs::remove_file(lock_path(&self.path));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates or checks the private directory, takes the single-instance lock, clears a stale
/// socket, and binds.
///
/// The process umask is 0177 for the duration of bind(2) (umask is process-wide): call this
/// while no other thread creates files, as the daemon does at start.
///
/// With `group` (the `control_group:` gid) the directory is 0750 and the socket 0660, both
/// of that group; the daemon must be a member of it (or root) to give them to it.
pub(crate) fn bind(path: &Path, group: Option<u32>) -> Result<BoundSocket, SocketError> {
    let uid = nix::unistd::getuid().as_raw();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_dir(dir, uid, group)?;

    let lock_path = lock_path(path);
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let lock = take_lock(lock_file).map_err(|errno| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            SocketError::AlreadyRunning { socket: path.to_path_buf(), lock: lock_path.clone() }
        } else {
            SocketError::Io { path: lock_path.clone(), source: errno.into() }
        }
    })?;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Remove it only if nothing answers: a daemon without our lock (an older
            // version, another host's mount) may still be serving on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::AlreadyRunning {
                    socket: path.to_path_buf(),
                    lock: lock_path,
                });
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
            info!(socket = %path.display(), "removed a stale socket left by a previous daemon");
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }

    // Bind under umask 0177 so the socket is 0600 from its first instant (no chmod window).
    // For a control group, 0660: until the chown below the group is the daemon's own, but
    // the directory (0750, the control group's) already keeps every non-member out.
    let mask = if group.is_some() { 0o117 } else { 0o177 };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err(path))?;
    if let Some(gid) = group
        && let Err(e) = give_to_group(path, gid)
    {
        // Not yet a `BoundSocket`, whose drop would remove it: leave no socket behind.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    listener.set_nonblocking(true).map_err(io_err(path))?;
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        private: None,
        identity: (meta.dev(), meta.ino()),
        _lock: lock,
    })
}

/// Binds in a new 0700 directory beside the wanted one, with an unpredictable name
/// (`backupnizza-0-3f9c1a7e52d04b18`), and records the socket's path in
/// `state_dir/socket` (mode 0600) for the clients.
pub(crate) fn bind_private(wanted: &Path, state_dir: &Path) -> Result<BoundSocket, SocketError> {
    let dir = wanted.parent().unwrap_or(Path::new("."));
    let base = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let name = wanted.file_name().unwrap_or_default();
    let private = loop {
        let mut suffix = [0u8; 8];
        let _ = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        let hex = crate::digest::hex(&suffix);
        let candidate = dir.with_file_name(format!("{base}-{hex}"));
        // `create` fails if the name exists: nobody can have prepared it for us.
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&candidate)(e)),
        }
    };
    // Only the `$TMPDIR` default comes here, never a control group's configured path.
    let mut bound = bind(&private.join(name), None)?;
    std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let record = state_dir.join(RECORD);
    let temp = state_dir.join(format!(".{RECORD}.tmp"));
    let mut text = bound.path.as_os_str().as_encoded_bytes().to_vec();
    text.push(b'\n');
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .and_then(|()| std::fs::rename(&temp, &record))
        .map_err(io_err(&record))?;
    bound.private = Some((record, private));
    Ok(bound)
}

/// The socket a daemon recorded in `state_dir/socket`, if the record is trustworthy (a
/// regular file of this user, writable by nobody else) and names a socket that exists.
pub(crate) fn recorded(state_dir: &Path) -> Option<PathBuf> {
    let record = state_dir.join(RECORD);
    let meta = std::fs::symlink_metadata(&record).ok()?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&record).ok()?;
    let path = PathBuf::from(text.trim_end_matches('\n'));
    std::fs::symlink_metadata(&path).ok().filter(|m| m.file_type().is_socket()).map(|_| path)
}

/// How long start-up waits for the single-instance lock: a daemon that was just killed
/// holds it until the kernel has finished tearing it down, which can take a moment.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the single-instance lock, waiting up to [`LOCK_PATIENCE`] while another process
/// holds it (it may be a daemon that is exiting: a restart right after a SIGKILL).
fn take_lock(file: File) -> Result<nix::fcntl::Flock<File>, nix::errno::Errno> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let mut file = file;
    let mut said = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                if !said {
                    info!(
                        "another process holds the daemon's lock; waiting up to {}s for it to let go",
                        LOCK_PATIENCE.as_secs()
                    );
                    said = true;
                }
                file = back;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err((_, errno)) => return Err(errno),
        }
    }
}

/// `secretbox.sock` → `secretbox.sock.lock` beside it.
pub(crate) fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

/// Gives `path` (a socket or the directory, never followed if a symlink) to group `gid`.
fn give_to_group(path: &Path, gid: u32) -> Result<(), SocketError> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        None,
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|errno| SocketError::UnsafeDir {
        dir: path.to_path_buf(),
        problem: format!("cannot give it to the `control_group:` (gid {gid}): {errno}"),
        fix: "run the daemon as a member of that group (e.g. its primary group) or as root".into(),
    })
}

/// The mode the socket directory must have: 0700, or 0750 with a control group.
fn dir_mode(group: Option<u32>) -> u32 {
    if group.is_some() { 0o750 } else { 0o700 }
}

fn prepare_dir(dir: &Path, uid: u32, group: Option<u32>) -> Result<(), SocketError> {
    let unsafe_dir = |problem: String, fix: String| SocketError::UnsafeDir {
        dir: dir.to_path_buf(),
        problem,
        fix,
    };
    let mode = dir_mode(group);
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Someone else created it in between: check it like any existing directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return prepare_dir(dir, uid, group);
                }
                Err(e) => return Err(io_err(dir)(e)),
            }
            // Created 0700 and opened to the group only once it is the group's.
            if let Some(gid) = group {
                give_to_group(dir, gid)?;
            }
            // The umask may have taken bits away, never added any; make sure it is exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(dir))?;
            Ok(())
        }
        Err(e) => Err(io_err(dir)(e)),
        Ok(meta) if meta.file_type().is_symlink() => Err(unsafe_dir(
            "is a symbolic link, which another user could redirect".into(),
            "use a real directory for `socket:`".into(),
        )),
        Ok(meta) if !meta.is_dir() => {
            Err(unsafe_dir("is not a directory".into(), "choose another `socket:`".into()))
        }
        Ok(meta) if meta.uid() != uid => Err(unsafe_dir(
            format!("is owned by uid {}, not by this user (uid {uid})", meta.uid()),
            "use a directory you own for `socket:`".into(),
        )),
        Ok(meta) if group.is_none() && meta.mode() & 0o077 != 0 => Err(unsafe_dir(
            format!("has mode {:03o}, so other users can reach the socket", meta.mode() & 0o777),
            format!("run `chmod 700 {}` or choose another `socket:`", dir.display()),
        )),
        Ok(meta) if group.is_some() && meta.mode() & 0o027 != 0 => Err(unsafe_dir(
            format!(
                "has mode {:03o}, so users outside the `control_group:` can reach the socket, or its members can replace it",
                meta.mode() & 0o777
            ),
            format!("run `chmod 750 {}` or choose another `socket:`", dir.display()),
        )),
        Ok(meta) => match group {
            Some(gid) if meta.gid() != gid && meta.mode() & 0o070 != 0 => Err(unsafe_dir(
                format!("is open to group {}, not to the `control_group:` (gid {gid})", meta.gid()),
                format!("run `chgrp {gid} {}` or choose another `socket:`", dir.display()),
            )),
            // Ours and closed to everyone else (0700, as systemd's `RuntimeDirectory=`
            // makes it by default, or already 0750 with the group): open it to the group.
            Some(gid) => {
                if meta.gid() != gid {
                    give_to_group(dir, gid)?;
                }
                if meta.mode() & 0o777 != mode {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                        .map_err(io_err(dir))?;
                }
                Ok(())
            }
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(dir: &Path) -> (u32, u32) {
        let meta = std::fs::metadata(dir).unwrap();
        (meta.mode() & 0o777, meta.gid())
    }

    /// With a control group (our own primary group here, which any user may give its files
    /// to) the directory is made or opened to exactly 0750 of that group; group write or any
    /// bit for others is refused; without a group, 0750 is refused as before.
    #[test]
    fn a_control_group_gets_exactly_group_read_and_search() {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let base = tempfile::tempdir().unwrap();

        let fresh = base.path().join("fresh");
        prepare_dir(&fresh, uid, Some(gid)).unwrap();
        assert_eq!(mode(&fresh), (0o750, gid));

        let closed = base.path().join("closed");
        std::fs::DirBuilder::new().mode(0o700).create(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare_dir(&closed, uid, Some(gid)).unwrap();
        assert_eq!(mode(&closed), (0o750, gid));

        for loose in [0o770, 0o751, 0o755, 0o705] {
            std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = prepare_dir(&closed, uid, Some(gid)).unwrap_err().to_string();
            assert!(err.contains("outside the `control_group:`"), "{loose:o}: {err}");
            assert!(err.contains("chmod 750"), "{loose:o}: {err}");
        }

        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = prepare_dir(&closed, uid, None).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
    }
}
