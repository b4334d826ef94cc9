//! The idle daemon's resident memory: what start-up and a finished run leave behind is
//! given back, so a daemon that sleeps between nightly backups weighs about what cron does.
//!
//! Two things are released, both only when nothing runs (after READY, and when the last
//! active run ends):
//!
//! - the heap's free memory (`malloc_trim`, glibc): parsing a task file of a thousand tasks,
//!   reading the keychain and a restic run's output leave free chunks glibc would keep;
//! - the program's clean file-backed pages: code and read-only data that start-up touched
//!   (YAML parsing, D-Bus, the keychain clients) stays mapped, and counted in the RSS, long
//!   after it last ran. `MADV_DONTNEED` on a private, read-only file mapping without a single
//!   modified (anonymous) page only drops our page-table entries: the pages stay in the page
//!   cache, and a later access maps them again from there, exactly as after the kernel
//!   reclaimed them under memory pressure. Mappings with any copy-on-write page (relocated
//!   data, RELRO), writable ones and anonymous memory (the heap, stacks, the locked secret
//!   store) are never touched: `MADV_DONTNEED` would throw their contents away.
//!
//! The figures, and what this does and does not change, are in docs/benchmarks.md.

/// Releases what the idle daemon need not hold; returns the bytes of mappings released (for
/// the debug log). Cheap enough to call at every idle moment: one read of `/proc/self/smaps`.
#[cfg(target_os = "linux")]
pub(crate) fn shed() -> usize {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system; it takes the allocator's
    // own locks.
    unsafe {
        libc::malloc_trim(0);
    }
    let Some(smaps) = super::proc::own_smaps() else { return 0 };
    let mut released = 0;
    for (start, len) in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole private, read-only file mapping with no modified
        // page (see `clean_file_mappings`): dropping it loses nothing, and nothing can write
        // it meanwhile. Locked mappings refuse with EINVAL, which is fine.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += len;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn shed() -> usize {
    0
}

/// The mappings of `smaps` that are backed by a file, private, not writable, resident in
/// part, and hold no anonymous (copy-on-write) page: `(start, length)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    struct Mapping {
        start: usize,
        len: usize,
        candidate: bool,
        rss: Option<u64>,
        anonymous: Option<u64>,
    }
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    let finish = |m: Option<Mapping>, found: &mut Vec<(usize, usize)>| {
        if let Some(m) = m
            && m.candidate
            && m.rss.is_some_and(|r| r > 0)
            && m.anonymous == Some(0)
        {
            found.push((m.start, m.len));
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
        {
            // A new mapping: "start-end perms offset dev inode [path]".
            finish(current.take(), &mut found);
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("0");
            let path = fields.next().unwrap_or("");
            let candidate = perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && inode != "0"
                && path.starts_with('/');
            current = Some(Mapping {
                start,
                len: end.saturating_sub(start),
                candidate,
                rss: None,
                anonymous: None,
            });
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let kib = fields.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => m.rss = kib,
            "Anonymous:" => m.anonymous = kib,
            _ => {}
        }
    }
    finish(current.take(), &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fe:00 1234 /usr/bin/backupnizza
Rss:                 900 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0c00000 r-xp 00100000 fe:00 1234 /usr/bin/backupnizza
Rss:                2048 kB
Anonymous:             0 kB
55d0c0c00000-55d0c0c10000 r--p 00200000 fe:00 1234 /usr/bin/backupnizza
Rss:                  64 kB
Anonymous:            64 kB
55d0c0c10000-55d0c0c20000 rw-p 00210000 fe:00 1234 /usr/bin/backupnizza
Rss:                  64 kB
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 512 kB
Anonymous:           512 kB
7f0000000000-7f0000100000 r-xp 00026000 fe:00 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 700 kB
Anonymous:             0 kB
7f0000100000-7f0000101000 r--s 00000000 fe:00 77 /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7f0000200000-7f0000201000 r--p 00000000 fe:00 78 /usr/lib/locale/C.utf8/LC_CTYPE
Rss:                   0 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![
                (0x55d0_c0a0_0000, 0x10_0000),
                (0x55d0_c0b0_0000, 0x10_0000),
                (0x7f00_0000_0000, 0x10_0000),
            ]
        );
    }

    #[test]
    fn a_mapping_without_its_fields_is_left_alone() {
        let cut = "55d0c0a00000-55d0c0b00000 r--p 00000000 fe:00 1234 /usr/bin/backupnizza\n";
        assert!(clean_file_mappings(cut).is_empty());
    }

    /// Released pages come back intact on the next access: this process's own code and
    /// read-only data keep working (the test binary would crash otherwise) and read the same.
    #[cfg(target_os = "linux")]
    #[test]
    fn shedding_keeps_this_process_working() {
        static TABLE: [u64; 4096] = {
            let mut t = [0u64; 4096];
            let mut i = 0;
            while i < t.len() {
                t[i] = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                i += 1;
            }
            t
        };
        let before: u64 = TABLE.iter().fold(0, |a, v| a ^ v);
        let released = shed();
        assert!(released > 0, "nothing was released");
        let after: u64 = TABLE.iter().fold(0, |a, v| a ^ v);
        assert_eq!(before, after);
        assert!(!format!("{:?}", std::env::current_exe()).is_empty());
    }
}
