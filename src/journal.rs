//! Append-only JSON-lines files that stay whole through crashes, full disks and files swapped
//! behind the daemon's back: the machinery under the run history ([`crate::history`]) and
//! the snapshot ledger ([`crate::ledger`]).
//!
//! [`Journal`] appends each line with one `write` on an `O_APPEND` file followed by
//! `fdatasync`, so a crash leaves at most one torn last line. It keeps the file ending on a
//! line boundary: a write that fails part-way is cut back, and a line torn by anyone else is
//! terminated before the next line goes in. It opens with `O_NOFOLLOW`, so a symbolic link
//! in the file's place is refused rather than followed. It checks before each append that
//! the file at its path is still the one it has open, and ends where it left it; otherwise
//! it opens the path again. A journal may rotate ([`Rotation`]); one that must keep every
//! line has none. [`read_lines`] reads a file line by line as bytes, and skips and counts
//! the lines that do not parse (torn fragments, invalid UTF-8, garbage) instead of failing.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// When a journal's file is rotated, and how many old generations are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rotation {
    /// The size past which the file is rotated.
    pub(crate) at: u64,
    /// How many rotated files (`PATH.1` ... `PATH.keep`) are kept.
    pub(crate) keep: usize,
}

/// One append-only JSON-lines file, owned by one writer.
///
/// It keeps the file ending on a line boundary whatever fails: a write or sync that fails
/// part-way (a full disk) is cut back to the last good length, and a file that cannot even
/// be cut is opened again before the next line, which terminates the torn line first. The
/// caller keeps what could not be written and tries again.
pub(crate) struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// What the file is, for the log ("the run history").
    what: &'static str,
    /// `None` until opened, and again after a failure that left the file in doubt.
    file: Option<File>,
    /// The length of the file up to its last complete line.
    good_len: u64,
    rotation: Option<Rotation>,
    /// Whether the last rotation failed (said once, not at every append).
    rotation_failing: bool,
}

impl Journal {
    /// A journal for `dir/file_name`; nothing is opened until the first append (or
    /// [`open`]).
    ///
    /// [`open`]: Journal::open
    pub(crate) fn new(
        dir: &Path,
        file_name: &str,
        what: &'static str,
        rotation: Option<Rotation>,
    ) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            path: dir.join(file_name),
            what,
            file: None,
            good_len: 0,
            rotation,
            rotation_failing: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating the directory with mode 0700 and the file with 0600) for appending,
    /// and terminates a line torn by a crash, so the next line starts on its own.
    pub(crate) fn open(&mut self) -> std::io::Result<()> {
        self.file = None;
        if !self.dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        }
        let mut file = open_append(&self.path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                file.sync_data()?;
                len += 1;
            }
        }
        self.file = Some(file);
        self.good_len = len;
        Ok(())
    }

    /// Appends `value` as one line, durably, or leaves the file as it was and says why.
    pub(crate) fn append<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if !self.is_current() {
            self.open()?;
        }
        let Some(file) = self.file.as_mut() else { return Err(std::io::Error::other("not open")) };
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut a partial line back off; if even that fails, open again (and terminate
            // the fragment) before the next line.
            if file.set_len(self.good_len).and_then(|()| file.sync_data()).is_err() {
                self.file = None;
            }
            return Err(e);
        }
        self.good_len += line.len() as u64;
        if let Some(rotation) = self.rotation
            && self.good_len > rotation.at
        {
            self.rotate(rotation.keep);
        }
        Ok(())
    }

    /// Whether the open file is still the one at the path and ends where the last append
    /// left it. A file moved away or replaced would never reach a reader again. A file
    /// someone else wrote to may end in a torn line, and one cut short would be extended
    /// with zeros by the next cut back to `good_len`.
    fn is_current(&self) -> bool {
        let Some(file) = &self.file else { return false };
        let (Ok(open), Ok(named)) = (file.metadata(), std::fs::symlink_metadata(&self.path)) else {
            return false;
        };
        open.dev() == named.dev() && open.ino() == named.ino() && open.len() == self.good_len
    }

    /// Moves the full file to `PATH.1` (older generations up by one, the oldest of `keep`
    /// dropped) and starts a new one. The line is written whatever happens here: a failure
    /// is logged, not returned, or the caller would write the line again.
    fn rotate(&mut self, keep: usize) {
        let rotated = rotate(&self.path, keep)
            // The renames are durable only once the directory is.
            .and_then(|()| File::open(&self.dir)?.sync_all())
            .and_then(|()| self.open());
        match rotated {
            Ok(()) => {
                self.rotation_failing = false;
                tracing::info!(file = %self.path.display(), keep, "rotated {}", self.what);
            }
            Err(e) if !self.rotation_failing => {
                self.rotation_failing = true;
                tracing::warn!(file = %self.path.display(), error = %e, "cannot rotate {}; it keeps growing until it can", self.what);
            }
            Err(_) => {}
        }
    }
}

/// `PATH.N`, generation `N` of the file at `path`.
pub(crate) fn generation_of(path: &Path, generation: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{generation}"));
    PathBuf::from(name)
}

/// Rotates the file at `path`: it becomes `PATH.1`, each older generation moves up by one,
/// and `PATH.keep` is overwritten by the one before it. Shared by the history and the
/// tasks' output files; the caller makes the renames durable if it needs them to be.
pub(crate) fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    for generation in (1..keep).rev() {
        let from = generation_of(path, generation);
        if from.exists() {
            std::fs::rename(&from, generation_of(path, generation + 1))?;
        }
    }
    std::fs::rename(path, generation_of(path, 1))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    // Read as well, for the last byte; O_NONBLOCK so that a FIFO in the file's place fails
    // at once instead of blocking the writer (a regular file ignores the flag).
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(explain_link)?;
    regular(file)
}

/// Opens `path` for reading without following a symbolic link in its place; `None` when
/// there is no file.
pub(crate) fn open_read(path: &Path) -> std::io::Result<Option<File>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    match opened {
        Ok(file) => regular(file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(explain_link(e)),
    }
}

/// The file, if it is a regular one: a directory or a device in its place is an error.
fn regular(file: File) -> std::io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(std::io::Error::other("not a regular file"))
    }
}

/// `O_NOFOLLOW` refuses a symbolic link with ELOOP, whose text ("too many levels of
/// symbolic links") would send the reader looking for a loop.
fn explain_link(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(e.kind(), "a symbolic link, which is not followed")
    } else {
        e
    }
}

/// What [`read_lines`] found in one file.
#[derive(Debug)]
pub(crate) struct Lines<T> {
    /// The lines that parsed, in order.
    pub(crate) parsed: Vec<T>,
    /// The numbers (from 1) of the lines that did not.
    pub(crate) bad: Vec<usize>,
}

/// Reads `reader` line by line as bytes. Each line that parses as a `T` is kept; each that
/// does not (a torn fragment, invalid UTF-8, a record from a newer version) is counted by
/// its number; empty lines are passed over. Only an error reading the file fails it.
pub(crate) fn read_lines<T: DeserializeOwned>(reader: impl Read) -> std::io::Result<Lines<T>> {
    let mut lines = Lines { parsed: Vec::new(), bad: Vec::new() };
    for_each_line(reader, |number, parsed| {
        match parsed {
            Some(value) => lines.parsed.push(value),
            None => lines.bad.push(number),
        }
        Ok(())
    })?;
    Ok(lines)
}

/// [`read_lines`], one line at a time: `each` gets every non-empty line's number (from 1)
/// and what it parsed as, if anything, and may stop the reading with an error. Only one
/// line is in memory at a time.
pub(crate) fn for_each_line<T: DeserializeOwned>(
    reader: impl Read,
    mut each: impl FnMut(usize, Option<T>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for (i, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        each(i + 1, serde_json::from_slice::<T>(&line).ok())?;
    }
    Ok(())
}

/// "line 3", "lines 3, 7", "lines 1, 2, ..., 10 and 4 more": where the bad lines are.
pub(crate) fn line_numbers(lines: &[usize]) -> String {
    let shown: Vec<String> = lines.iter().take(10).map(usize::to_string).collect();
    let more =
        if lines.len() > 10 { format!(" and {} more", lines.len() - 10) } else { String::new() };
    format!("line{} {}{more}", if lines.len() == 1 { "" } else { "s" }, shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path) -> Journal {
        Journal::new(dir, "j.jsonl", "the test journal", None)
    }

    fn text(dir: &Path) -> String {
        String::from_utf8_lossy(&std::fs::read(dir.join("j.jsonl")).unwrap()).into_owned()
    }

    /// Regression (the snapshot ledger): a line torn while the writer had the file open
    /// swallowed the next line written after it.
    #[test]
    fn a_fragment_written_behind_an_open_journal_is_terminated_before_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal(dir.path());
        j.append(&1).unwrap();
        let mut other = OpenOptions::new().append(true).open(dir.path().join("j.jsonl")).unwrap();
        other.write_all(b"{\"torn").unwrap();
        j.append(&2).unwrap();
        assert_eq!(text(dir.path()), "1\n{\"torn\n2\n");
        // The same at open, after a crash.
        drop(j);
        other.write_all(b"{\"torn again").unwrap();
        journal(dir.path()).append(&3).unwrap();
        assert_eq!(text(dir.path()), "1\n{\"torn\n2\n{\"torn again\n3\n");
    }

    #[test]
    fn a_replaced_or_truncated_file_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut j = journal(dir.path());
        j.append(&1).unwrap();
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        j.append(&2).unwrap();
        assert_eq!(text(dir.path()), "2\n", "the line reaches the file at the path");
        // Cut short by someone else: the length is taken again, not assumed.
        std::fs::write(&path, "").unwrap();
        j.append(&3).unwrap();
        assert_eq!(text(dir.path()), "3\n");
    }

    #[test]
    fn a_symbolic_link_or_a_directory_in_the_files_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("j.jsonl")).unwrap();
        let e = journal(dir.path()).append(&1).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"", "the link's target is not written");
        assert!(open_read(&dir.path().join("j.jsonl")).is_err(), "nor read");
        std::fs::remove_file(dir.path().join("j.jsonl")).unwrap();
        std::fs::create_dir(dir.path().join("j.jsonl")).unwrap();
        assert!(journal(dir.path()).append(&1).is_err());
        let e = open_read(&dir.path().join("j.jsonl")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(open_read(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn unreadable_lines_are_skipped_and_counted_by_number() {
        let bytes = b"1\n{\"torn\n\n\xff\xfe\n2\nnot json\n3";
        let lines = read_lines::<u32>(&bytes[..]).unwrap();
        assert_eq!(lines.parsed, [1, 2, 3]);
        assert_eq!(lines.bad, [2, 4, 6]);
    }
}
