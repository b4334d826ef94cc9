//! What the daemon trusts before it runs or reads anything: where a program is (found as
//! `execvp` finds it), whether a file is safe to trust (OpenSSH's StrictModes: not writable by
//! group or others, owned by the daemon's user or root, and no directory above it that
//! another user could change), and pinning.
//!
//! A pinned program (`sha256:` on a task or step, or every program under `pin_binaries:
//! true`, which records each digest at start) is, before every run, copied into a sealed
//! memory file (`memfd`, sealed against any write), hashed there, and executed from that
//! descriptor (`/proc/self/fd/N`, which is what `fexecve` does) on Linux. So the bytes that
//! were checked are exactly the bytes that run: neither swapping the file on disk nor
//! writing into it in place between the check and the exec changes what runs, and a changed
//! program is refused without a token being minted. (In `ps` such a process shows the
//! descriptor number as its name and `/proc/PID/exe` shows `/memfd:NAME`; its argv is normal.)
//! Elsewhere the file is hashed and then executed by path, which leaves a small window.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Sha256Digest, hex, sha256_file};

#[cfg(target_os = "linux")]
pub(crate) mod seal;

/// A program whose digest is checked before every run.
#[derive(Debug, Clone)]
pub(crate) struct Pinned {
    pub path: PathBuf,
    pub digest: Sha256Digest,
}

/// Expands a leading `~/` (or a lone `~`).
pub(crate) fn expand_tilde(arg: &str, home: Option<&Path>) -> OsString {
    match (arg.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            let mut out = home.as_os_str().to_os_string();
            out.push(rest);
            out
        }
        _ => arg.into(),
    }
}

/// The directory of the running binary when `secretbox` is installed beside it: the one
/// every task's `PATH` gets first, so a task finds the `secretbox` that came with its daemon.
pub(crate) fn secretbox_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent().filter(|d| d.join("secretbox").exists()).map(Path::to_path_buf)
}

/// `path` (a `PATH` value) with `dir` first, unless it is on it already.
pub(crate) fn dir_first(path: &OsStr, dir: &Path) -> OsString {
    if std::env::split_paths(path).any(|p| p == dir) {
        return path.to_os_string();
    }
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(path)))
        .unwrap_or_else(|_| path.to_os_string())
}

/// Finds a program the way `execvp` would: a name with a `/` is a path (a leading `~/` is
/// expanded, a relative one is taken from `working_dir`); otherwise the first executable
/// file of that name on `path`.
pub(crate) fn resolve(
    program: &str,
    path: Option<&OsStr>,
    home: Option<&Path>,
    working_dir: Option<&Path>,
) -> Option<PathBuf> {
    let expanded = PathBuf::from(expand_tilde(program, home));
    if program.contains('/') {
        let full = match (expanded.is_relative(), working_dir) {
            (true, Some(dir)) => dir.join(&expanded),
            _ => expanded,
        };
        return is_executable(&full).then_some(full);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// StrictModes for a file the daemon trusts (the task file, a program): not writable by
/// group or others, owned by `uid` or root; and each directory above it, up to `/`, not
/// writable by others nor owned by another user unless sticky (as `/tmp` is): whoever may
/// rename a directory on the way may swap everything below it. The message names the file
/// and the fix.
pub(crate) fn check_trusted(path: &Path, what: &str, uid: u32) -> Result<(), String> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| format!("cannot resolve {what} {}: {e}", path.display()))?;
    let meta = std::fs::metadata(&real)
        .map_err(|e| format!("cannot stat {what} {}: {e}", real.display()))?;
    let shown = real.display();
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {shown} is writable by group or others (mode {:03o}), so another user could change it: run `chmod go-w {shown}`",
            mode & 0o777
        ));
    }
    if !trusted_owner(&real, meta.uid(), uid) {
        return Err(format!(
            "{what} {shown} is owned by uid {}, not by the daemon's user (uid {uid}) or root: run `chown {uid} {shown}` or use a copy you own",
            meta.uid()
        ));
    }
    for (i, dir) in real.ancestors().skip(1).enumerate() {
        let dmeta =
            std::fs::metadata(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        let dmode = dmeta.mode() & 0o7777;
        let sticky = dmode & 0o1000 != 0;
        let which = if i == 0 { "the directory of" } else { "a directory above" };
        if dmode & 0o002 != 0 && !sticky {
            return Err(format!(
                "{which} {what} {shown} ({}) is writable by others, so the file could be replaced: run `chmod o-w {}`",
                dir.display(),
                dir.display()
            ));
        }
        if !trusted_owner(dir, dmeta.uid(), uid) && !sticky {
            return Err(format!(
                "{which} {what} {shown} ({}) is owned by uid {}, who could replace the file: move the file to a directory you own",
                dir.display(),
                dmeta.uid()
            ));
        }
    }
    Ok(())
}

/// Whether files owned by `owner` may be trusted by the daemon running as `uid`: its own, and
/// root's. In a user namespace that does not map root (a sandboxed systemd user service:
/// `PrivateTmp=` and friends imply `PrivateUsers=`), root's files show up as the kernel's
/// overflow uid (65534); there, and only there, that uid stands for root.
fn trusted_owner(path: &Path, owner: u32, uid: u32) -> bool {
    owner == uid
        || owner == 0
        || (owner == crate::sys::proc::overflow_uid() && root_unmapped() && is_system_path(path))
}

/// Every unmapped owner shows as the overflow uid, not only root; so that reading is trusted
/// only where files belong to root on any sane system.
fn is_system_path(path: &Path) -> bool {
    ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/nix/store", "/etc", "/"]
        .iter()
        .any(|prefix| path == Path::new(prefix) || (*prefix != "/" && path.starts_with(prefix)))
}

/// Whether this process lives in a user namespace where uid 0 of the host is not mapped.
fn root_unmapped() -> bool {
    let Some(map) = crate::sys::proc::own_uid_map() else { return false };
    // Each line: inside-start outside-start count. The initial namespace maps everything.
    !map.lines().any(|line| {
        let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        f.len() == 3 && f[1] == 0 && f[2] > 0
    })
}

/// The program a `command:` secret source runs, found the way its spawn finds it (the
/// daemon's own `PATH` for a bare name; a relative path from the daemon's working directory;
/// no `~` expansion), and checked like a step's program. `Ok(None)` when there is no such
/// program: loading the secret then fails and says how to fix it. The caller runs the
/// returned path, so a later `PATH` lookup cannot find another file.
pub(crate) fn check_source_program(
    program: &str,
    path: Option<&OsStr>,
    uid: u32,
) -> Result<Option<PathBuf>, String> {
    let Some(found) = resolve(program, path, None, None) else { return Ok(None) };
    check_trusted(&found, "program", uid)?;
    Ok(Some(found))
}

/// Hashes a program for pinning; scripts are refused (executing from a descriptor cannot
/// pass the script to its interpreter, and pinning a script would not pin the interpreter).
pub(crate) fn pin(program: &Path) -> Result<Sha256Digest, String> {
    let mut file =
        File::open(program).map_err(|e| format!("cannot open {}: {e}", program.display()))?;
    let mut head = [0u8; 2];
    if file.read_exact(&mut head).is_ok() && &head == b"#!" {
        return Err(format!(
            "{} is a script: pin its interpreter's binary instead, or do not pin it",
            program.display()
        ));
    }
    let mut file =
        File::open(program).map_err(|e| format!("cannot open {}: {e}", program.display()))?;
    sha256_file(&mut file).map_err(|e| format!("cannot read {}: {e}", program.display()))
}

/// The daemon's sealed `secretbox` (Linux, [`seal::secretbox`]): what the password commands
/// of sealing tasks run. Elsewhere there is none (the type cannot be made).
#[derive(Debug)]
pub(crate) struct SecretboxImage {
    #[cfg(target_os = "linux")]
    image: seal::Image,
    #[cfg(not(target_os = "linux"))]
    never: std::convert::Infallible,
}

impl SecretboxImage {
    /// Seals the `secretbox` at `path` with `key`.
    #[cfg(target_os = "linux")]
    pub(crate) fn new(path: &Path, key: &[u8; 32]) -> Result<Self, String> {
        seal::secretbox(path, key).map(|image| SecretboxImage { image })
    }

    /// `/proc/self/fd/N`: what runs it in a process that inherited it.
    pub(crate) fn path(&self) -> String {
        #[cfg(target_os = "linux")]
        return self.image.path();
        #[cfg(not(target_os = "linux"))]
        match self.never {}
    }

    /// Whether it is still execute-only (see [`seal::Image::intact`]).
    pub(crate) fn intact(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.image.intact();
        #[cfg(not(target_os = "linux"))]
        match self.never {}
    }

    /// The descriptor number processes inherit it at.
    pub(crate) fn raw_fd(&self) -> i32 {
        #[cfg(target_os = "linux")]
        return self.image.raw_fd();
        #[cfg(not(target_os = "linux"))]
        match self.never {}
    }
}

/// Why a pinned program was refused before a run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    #[error("cannot open pinned program {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[cfg(target_os = "linux")]
    #[error("cannot copy pinned program {} into sealed memory: {source}", path.display())]
    Copy { path: PathBuf, source: std::io::Error },
    #[error("cannot read pinned program {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("pinned program {} changed: its sha256 is now {}, expected {}; refusing to run it (no token was issued)", path.display(), hex(actual), hex(expected))]
    Changed { path: PathBuf, actual: Sha256Digest, expected: Sha256Digest },
    #[cfg(not(target_os = "linux"))]
    #[error("cannot rewind pinned program {}: {source}", path.display())]
    Rewind { path: PathBuf, source: std::io::Error },
}

/// What a pinned program runs from once checked: on Linux its execute-only sealed copy
/// whose digest was verified ([`seal`]), elsewhere the program file itself.
#[cfg(target_os = "linux")]
pub(crate) type Verified = seal::Image;
#[cfg(not(target_os = "linux"))]
pub(crate) type Verified = File;

/// Checks a pinned program and returns what to execute (see [`Verified`]). Blocking (it
/// reads the whole program): call it from `spawn_blocking`.
pub(crate) fn open_verified(pinned: &Pinned) -> Result<Verified, PinError> {
    let path = || pinned.path.clone();
    let original =
        File::open(&pinned.path).map_err(|source| PinError::Open { path: path(), source })?;
    #[cfg(target_os = "linux")]
    let mut checked = {
        let mut original = original;
        let name = pinned.path.file_name().and_then(|n| n.to_str()).unwrap_or("pinned");
        seal::sealed_copy(&mut original, name)
            .map_err(|source| PinError::Copy { path: path(), source })?
    };
    #[cfg(not(target_os = "linux"))]
    let mut checked = original;
    let actual =
        sha256_file(&mut checked).map_err(|source| PinError::Read { path: path(), source })?;
    if actual != pinned.digest {
        return Err(PinError::Changed { path: path(), actual, expected: pinned.digest });
    }
    #[cfg(target_os = "linux")]
    return seal::execute_only(checked).map_err(|source| PinError::Copy { path: path(), source });
    #[cfg(not(target_os = "linux"))]
    {
        use std::io::Seek;
        checked.rewind().map_err(|source| PinError::Rewind { path: path(), source })?;
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = Some(Path::new("/home/u"));
        assert_eq!(expand_tilde("~/Documents", home), OsString::from("/home/u/Documents"));
        assert_eq!(expand_tilde("~", home), OsString::from("/home/u"));
        assert_eq!(expand_tilde("~other/x", home), OsString::from("~other/x"));
        assert_eq!(expand_tilde("a~/b", home), OsString::from("a~/b"));
        assert_eq!(expand_tilde("$HOME/x", home), OsString::from("$HOME/x"));
    }

    #[test]
    fn resolves_like_execvp() {
        let path = OsString::from("/nonexistent:/bin:/usr/bin");
        assert!(resolve("sh", Some(&path), None, None).is_some_and(|p| p.ends_with("sh")));
        assert_eq!(resolve("no-such-program-anywhere", Some(&path), None, None), None);
        assert_eq!(resolve("/bin/sh", None, None, None), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("sh", None, None, None), None);
    }

    #[test]
    fn strict_modes_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prog");
        std::fs::write(&file, "x").unwrap();
        let uid = nix::unistd::getuid().as_raw();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_trusted(&file, "program", uid), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = check_trusted(&file, "program", uid).unwrap_err();
        assert!(err.contains("mode 775") && err.contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_trusted(&file, "program", uid).unwrap_err();
        assert!(err.contains("chmod o-w"), "{err}");
        // Any directory on the way, not only the nearest: renaming it swaps all below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let deeper = dir.path().join("a/b");
        std::fs::create_dir_all(&deeper).unwrap();
        let prog = deeper.join("prog");
        std::fs::write(&prog, "x").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_trusted(&prog, "program", uid), Ok(()));
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = check_trusted(&prog, "program", uid).unwrap_err();
        assert!(err.contains("a directory above") && err.contains("chmod o-w"), "{err}");
    }
}
