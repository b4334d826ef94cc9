//! A private channel between two processes of ours that carries short messages with open
//! descriptors (`SCM_RIGHTS`): the daemon's line to its guardian.
//!
//! On Linux it is a socket pair of sequenced packets: each message arrives whole, and end of
//! file says the other end is gone, however it ended. macOS has no sequenced packets on
//! Unix sockets (`EPROTONOSUPPORT`) and no `SOCK_CLOEXEC`: datagrams keep each message whole
//! (they are reliable on a local socket pair) but give no end of file, so the receiving side
//! also watches that its parent is still the process that started it. (Compile-checked, not
//! run: see docs/platforms.md.)

use std::io::{IoSlice, IoSliceMut};
#[cfg(target_os = "macos")]
use std::os::fd::RawFd;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// The two ends of a new channel, close-on-exec on both (an end passed to a child as its
/// stdin survives the exec, as dup2 clears the flag).
#[cfg(not(target_os = "macos"))]
pub(crate) fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

/// The flag is set after the call on macOS: the daemon has one thread when it makes the
/// channel, so no fork can come in between.
#[cfg(target_os = "macos")]
pub(crate) fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::empty())?;
    set_cloexec(&a)?;
    set_cloexec(&b)?;
    Ok((a, b))
}

#[cfg(target_os = "macos")]
fn set_cloexec(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{F_SETFD, FdFlag, fcntl};
    fcntl(fd, F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

/// Sends `message` with copies of `fds`, without blocking: a message that does not fit now
/// is an error, never a wait.
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    message: &str,
    fds: &[BorrowedFd<'_>],
) -> nix::Result<()> {
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(message.as_bytes())];
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs = if raw.is_empty() { &[][..] } else { &rights[..] };
    sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, None).map(drop)
}

/// Linux: the kernel marks received descriptors close-on-exec as they arrive.
#[cfg(not(target_os = "macos"))]
const RECEIVE_FLAGS: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;
/// macOS cannot; the receiver execs nothing, so marking them after is enough.
#[cfg(target_os = "macos")]
const RECEIVE_FLAGS: MsgFlags = MsgFlags::empty();

/// Most descriptors one message carries.
const MAX_FDS: usize = 4;

/// The next message (at most `max` bytes) with the descriptors it carried, blocking; `None`
/// once the other end is gone.
pub(crate) fn receive(socket: impl AsFd, max: usize) -> Option<(String, Vec<OwnedFd>)> {
    let socket = socket.as_fd().as_raw_fd();
    #[cfg(target_os = "macos")]
    let parent = nix::unistd::getppid();
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
    loop {
        #[cfg(target_os = "macos")]
        if parent_gone(socket, parent) {
            return None;
        }
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(socket, &mut iov, Some(&mut space), RECEIVE_FLAGS) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these descriptors for us; nothing
                        // else owns them.
                        fds.extend(
                            received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                #[cfg(target_os = "macos")]
                for fd in &fds {
                    let _ = set_cloexec(fd);
                }
                let bytes = msg.bytes;
                if bytes == 0 {
                    return None;
                }
                return Some((String::from_utf8_lossy(&buf[..bytes]).into_owned(), fds));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Whether the sender is gone although the socket cannot say so (macOS datagrams): waits at
/// most a second for a message, then checks that the parent is still the process that
/// started this one (an orphan is adopted by launchd).
#[cfg(target_os = "macos")]
fn parent_gone(socket: RawFd, parent: nix::unistd::Pid) -> bool {
    loop {
        let mut poll = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&raw mut poll, 1, 1000) } {
            0 if nix::unistd::getppid() != parent => return true,
            0 => {}
            n if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_arrives_whole_with_its_descriptors_and_then_the_end() {
        let (ours, theirs) = channel().unwrap();
        let (read, write) = std::io::pipe().unwrap();
        send(ours.as_fd(), "+ 42 run", &[write.as_fd()]).unwrap();
        drop(write);
        let (message, fds) = receive(&theirs, 64).unwrap();
        assert_eq!(message, "+ 42 run");
        assert_eq!(fds.len(), 1);
        // The copy that travelled is a working write end of the same pipe.
        let mut copy = std::fs::File::from(fds.into_iter().next().unwrap());
        std::io::Write::write_all(&mut copy, b"x").unwrap();
        drop(copy);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut { read }, &mut got).unwrap();
        assert_eq!(got, "x");
        drop(ours);
        assert!(receive(&theirs, 64).is_none(), "end of file once the sender is gone");
    }
}
