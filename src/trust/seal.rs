//! Execute-only sealed images: how the daemon makes the programs of a task, and the
//! `secretbox` they redeem tokens with, non-dumpable from their first instruction.
//!
//! Linux marks a process non-dumpable when it executes a file its user may not read
//! (`fs/exec.c`, `would_dump`): its `/proc/PID/environ`, `fd/`, `mem`, `maps` and `exe` then
//! belong to root, and ptrace needs `CAP_SYS_PTRACE`, for every other process of the same
//! uid, its own parent included. So a program is copied into a memory file (`memfd`), sealed
//! against any write, made mode `0100` (execute only), and handed on as an `O_PATH`
//! descriptor: a process can execute it through `/proc/self/fd/N`, but nobody can read it
//! through that descriptor (an `O_PATH` one reads nothing) nor open it again for reading
//! (the mode). The bytes that run are the bytes that were copied (and, when pinned, hashed):
//! a file swapped on disk afterwards changes nothing.
//!
//! A script cannot run this way (its interpreter opens it by path and must read it), nor a
//! file the daemon's user cannot read (it is non-dumpable already, and the copy cannot be
//! made): those run from disk. Root is never kept out: it may read any file, so what root
//! executes stays dumpable (tests of this run the daemon as another uid).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// An execute-only sealed program, as an `O_PATH` descriptor (close-on-exec).
#[derive(Debug)]
pub(crate) struct Image {
    fd: OwnedFd,
}

impl Image {
    /// The path that runs it in any process holding this descriptor at the same number.
    pub(crate) fn path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the copy is still execute-only. Its owner is the daemon's uid, so another
    /// process of that uid that reaches it (through `/proc/PID/fd/` of a dumpable process
    /// that inherited it) may `chmod` it, and then read it.
    pub(crate) fn intact(&self) -> bool {
        nix::sys::stat::fstat(&self.fd).is_ok_and(|st| st.st_mode & 0o7777 == 0o100)
    }
}

/// Copies `source` into a memfd that can no longer be written, grown or shrunk, and rewinds
/// it (so it can be hashed).
pub(crate) fn sealed_copy(source: &mut File, name: &str) -> std::io::Result<File> {
    sealed_bytes(name, |copy| std::io::copy(source, copy).map(drop))
}

/// A sealed memfd filled by `fill`.
fn sealed_bytes(
    name: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<File> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // Kernels since 6.3 want executable memfds asked for explicitly; older ones reject the flag.
    let fd = match memfd_create(name, flags | MFdFlags::from_bits_retain(libc::MFD_EXEC)) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(name, flags)?,
        other => other?,
    };
    let mut copy = File::from(fd);
    fill(&mut copy)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&copy, FcntlArg::F_ADD_SEALS(seals))?;
    use std::io::Seek;
    copy.rewind()?;
    Ok(copy)
}

/// Makes a sealed copy execute-only and trades it for an `O_PATH` descriptor: the
/// read-write descriptor `memfd_create` gave is closed here, so no process that inherits
/// the image can read its bytes.
pub(crate) fn execute_only(copy: File) -> std::io::Result<Image> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, fchmod};
    fchmod(&copy, Mode::S_IXUSR)?;
    let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
    let fd = open(path.as_str(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    drop(copy);
    Ok(Image { fd })
}

/// An ELF program's execute-only image; `Ok(None)` for anything else (a script), which
/// must run from disk. Blocking (it copies the whole file).
pub(crate) fn program(path: &Path) -> std::io::Result<Option<Image>> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 4];
    if file.read_exact(&mut head).is_err() || &head != b"\x7fELF" {
        return Ok(None);
    }
    let mut file = File::open(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("program");
    execute_only(sealed_copy(&mut file, name)?).map(Some)
}

/// The `secretbox` image tasks redeem their tokens with: the bytes of `path` (the file the
/// daemon pinned a moment before: whoever could swap it in between could as well have
/// swapped it before the pin) with `key` in its key slot ([`crate::protocol::image`]).
/// Blocking.
pub(crate) fn secretbox(path: &Path, key: &[u8; 32]) -> Result<Image, String> {
    let shown = path.display();
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    crate::protocol::image::fill_slot(&mut bytes, key).map_err(|e| format!("{shown}: {e}"))?;
    let copy = sealed_bytes("secretbox", |copy| std::io::Write::write_all(copy, &bytes))
        .map_err(|e| format!("cannot copy {shown} into sealed memory: {e}"))?;
    execute_only(copy).map_err(|e| format!("cannot make the copy of {shown} execute-only: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_runs_and_cannot_be_read_and_a_script_gets_none() {
        let image = program(Path::new("/bin/true")).unwrap().expect("an ELF program");
        // The descriptor itself reads nothing (O_PATH) ...
        let mut through = File::from(image.fd.try_clone().unwrap());
        assert!(through.read(&mut [0u8; 4]).is_err());
        // ... it still runs, from a process that holds it ...
        let status = std::process::Command::new(image.path()).status().unwrap();
        assert!(status.success());
        // ... and its mode lets nobody but root open it for reading.
        let meta = std::fs::metadata(image.path()).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o100);
        // Its owner can change that through the descriptor's path: it is then not intact.
        assert!(image.intact());
        let readable = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(image.path(), readable).unwrap();
        assert!(!image.intact());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
        assert!(program(&script).unwrap().is_none());
    }
}
