//! Secret bytes on their own anonymous pages, `mlock`ed (never swapped) and
//! `MADV_DONTDUMP` (left out of core dumps), wiped and unmapped on drop ([`LockedBytes`]).
//!
//! Only the pages that hold secrets are locked, not the whole process (`mlockall` under the
//! default `RLIMIT_MEMLOCK` makes a threaded daemon fail allocations later). Sources read
//! straight into one ([`LockedBytes::spare_mut`]), so no value passes through the ordinary
//! heap, where a growing `Vec` would leave unzeroed copies behind. A protection the kernel
//! refuses is reported as a [`Weakness`], not an error.

use std::ptr::NonNull;

use zeroize::Zeroize;

use super::hardening::Weakness;

/// Secret bytes on private, locked, never-dumped pages. Changed only through `&mut` while a
/// source fills it; shared, it is an immutable byte slice.
pub struct LockedBytes {
    ptr: NonNull<u8>,
    len: usize,
    mapped: usize,
    locked: bool,
}

// SAFETY: the mapping is owned exclusively by this value and mutated only through
// `&mut self` (filling, `zeroize`, `drop`), so sharing `&LockedBytes` across threads is
// sharing an immutable byte slice.
unsafe impl Send for LockedBytes {}
// SAFETY: see `Send`.
unsafe impl Sync for LockedBytes {}

impl LockedBytes {
    /// Copies `bytes` onto fresh locked pages. Returns the value and the protections that
    /// could not be applied (locking, or excluding from core dumps).
    pub fn new(bytes: &[u8]) -> std::io::Result<(LockedBytes, Vec<Weakness>)> {
        let (mut locked, weak) = LockedBytes::with_capacity(bytes.len())?;
        locked.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        locked.len = bytes.len();
        Ok((locked, weak))
    }

    /// Empty, with room for at least `capacity` bytes (whole pages) on fresh locked pages.
    pub fn with_capacity(capacity: usize) -> std::io::Result<(LockedBytes, Vec<Weakness>)> {
        let page = page_size();
        let mapped = capacity.max(1).div_ceil(page) * page;
        let size = std::num::NonZeroUsize::new(mapped).expect("mapped is at least one page");
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
        // SAFETY: an anonymous private mapping aliases no existing memory.
        let raw = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(std::io::Error::from)?;
        let ptr = raw.cast::<u8>();
        let mut weak = Vec::new();
        #[cfg(target_os = "linux")]
        {
            use nix::sys::mman::{MmapAdvise, madvise};
            // SAFETY: `raw` is the start of our own mapping of `mapped` bytes.
            if let Err(e) = unsafe { madvise(raw, mapped, MmapAdvise::MADV_DONTDUMP) } {
                weak.push(Weakness {
                    what: "exclude secret pages from core dumps (MADV_DONTDUMP)",
                    why: e.to_string(),
                });
            }
        }
        // SAFETY: as above; locking pages we own has no effect on other memory.
        let locked = match unsafe { nix::sys::mman::mlock(raw, mapped) } {
            Ok(()) => true,
            Err(e) => {
                weak.push(Weakness {
                    what: "lock secret pages in memory (mlock)",
                    why: format!("{e} (RLIMIT_MEMLOCK may be too low: see `ulimit -l`)"),
                });
                false
            }
        };
        Ok((LockedBytes { ptr, len: 0, mapped, locked }, weak))
    }

    /// The unfilled rest of the pages, for a source to read into; then [`LockedBytes::fill`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: the `mapped` bytes at `ptr` are ours, writable and initialised (fresh
        // anonymous pages are zero); `&mut self` rules out readers; `len <= mapped`.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.mapped - self.len)
        }
    }

    /// Counts `n` more bytes of the spare room as filled.
    pub fn fill(&mut self, n: usize) {
        assert!(n <= self.mapped - self.len, "filled past the end of the locked pages");
        self.len += n;
    }

    /// Moves the contents onto locked pages twice as large (the old ones are wiped and
    /// unmapped), so a value of unknown length never passes through ordinary memory.
    pub fn grow(&mut self) -> std::io::Result<Vec<Weakness>> {
        let (mut bigger, weak) = LockedBytes::with_capacity(self.mapped * 2)?;
        bigger.spare_mut()[..self.len].copy_from_slice(self.as_bytes());
        bigger.len = self.len;
        std::mem::swap(self, &mut bigger);
        Ok(weak)
    }

    /// Shortens the value to `len` bytes, wiping what is cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let old = self.len;
            self.len = len;
            self.spare_mut()[..old - len].zeroize();
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points at `mapped >= len` initialised bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Zeroize for LockedBytes {
    fn zeroize(&mut self) {
        // SAFETY: we own the `mapped` writable bytes at `ptr`; `&mut self` rules out readers.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.mapped) };
        all.zeroize();
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        self.zeroize();
        let raw = self.ptr.cast();
        if self.locked {
            // SAFETY: unlocking our own mapping.
            let _ = unsafe { nix::sys::mman::munlock(raw, self.mapped) };
        }
        // SAFETY: the mapping was created in `new` with this size and is not used after this.
        let _ = unsafe { nix::sys::mman::munmap(raw, self.mapped) };
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_bytes_round_trip_and_report_locking() {
        let (locked, weak) = LockedBytes::new(b"canary-bytes").unwrap();
        assert_eq!(locked.as_bytes(), b"canary-bytes");
        assert_eq!(locked.is_locked(), !weak.iter().any(|w| w.what.contains("mlock")));
        let (empty, _) = LockedBytes::new(b"").unwrap();
        assert!(empty.as_bytes().is_empty());
    }

    #[test]
    fn a_locked_buffer_fills_grows_and_truncates_in_locked_memory() {
        let (mut buf, _) = LockedBytes::with_capacity(1).unwrap();
        assert!(buf.as_bytes().is_empty());
        let room = buf.spare_mut().len();
        buf.spare_mut().fill(b'x');
        buf.fill(room);
        assert!(buf.spare_mut().is_empty());
        buf.grow().unwrap();
        assert_eq!(buf.as_bytes().len(), room);
        assert_eq!(buf.spare_mut().len(), room);
        buf.spare_mut()[..3].copy_from_slice(b"end");
        buf.fill(3);
        assert!(buf.as_bytes().ends_with(b"xend"));
        buf.truncate(2);
        assert_eq!(buf.as_bytes(), b"xx");
        assert!(buf.spare_mut()[..=room].iter().all(|b| *b == 0), "cut bytes are wiped");
    }

    #[test]
    fn zeroize_wipes_the_pages() {
        let (mut locked, _) = LockedBytes::new(&[0xAA; 100]).unwrap();
        locked.zeroize();
        assert!(locked.as_bytes().iter().all(|b| *b == 0));
    }
}
