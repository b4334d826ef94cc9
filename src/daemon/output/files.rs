//! Tasks' `output_file`s: every line a run's steps and hooks print, redacted as the log is,
//! each prefixed with the time (UTC), the run id and the stream, in a file the user names,
//! rotated past its `max_size` to `PATH.1` (older generations moving up to `PATH.keep`).
//!
//! One thread writes every task's file, so a slow disk never blocks the async workers and
//! one file's writes are never interleaved with another writer's rotation. What waits for it
//! is bounded by bytes ([`QUEUE_BYTES`], a semaphore the thread gives back as it writes): a
//! run whose lines find the queue full waits for room, but at most [`PATIENCE`] in all, and
//! then drops what does not fit, counts it, and says so in the file and the log. A file that
//! cannot be written is reported once per run at ERROR; the run goes on.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tracing::{error, warn};

use crate::config::OutputFile;

/// Most bytes of output waiting for the writer, over all tasks.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// What a queued line costs beyond its text (the message around it), so many short lines
/// are bounded too.
const LINE_OVERHEAD: usize = 64;
/// Longest line written to a file; longer ones are cut (after redaction) and marked.
pub(super) const MAX_FILE_LINE: usize = 64 * 1024;
/// Longest a run waits, over all its lines, for room in the queue before it drops lines:
/// a disk that stalls may slow a backup's output this long, never stop the backup.
const PATIENCE: Duration = Duration::from_secs(10);

enum Message {
    Line {
        file: Arc<OutputFile>,
        task: Arc<str>,
        run_id: Arc<str>,
        text: String,
    },
    /// The run is over: close its file (and say how many lines were dropped).
    End {
        file: Arc<OutputFile>,
        run_id: Arc<str>,
        dropped: u64,
    },
}

/// Sends lines to the output-file thread. Cloned into every run of a task with a file.
#[derive(Clone)]
pub(crate) struct OutputWriter {
    queue: std::sync::mpsc::Sender<Message>,
    room: Arc<Semaphore>,
}

/// Resolves when the output-file thread has written everything and exited.
pub(crate) struct OutputClosed(oneshot::Receiver<()>);

impl OutputClosed {
    /// Waits for the thread to drain its queue; it exits once every writer is dropped.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

impl OutputWriter {
    pub(crate) fn start() -> std::io::Result<(OutputWriter, OutputClosed)> {
        let (queue, lines) = std::sync::mpsc::channel();
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let (done, closed) = oneshot::channel();
        let given_back = room.clone();
        std::thread::Builder::new().name("output-files".into()).spawn(move || {
            write_files(&lines, &given_back);
            let _ = done.send(());
        })?;
        Ok((OutputWriter { queue, room }, OutputClosed(closed)))
    }

    /// A handle for one run of `task`.
    pub(crate) fn run(&self, file: &OutputFile, task: &str, run_id: &str) -> RunOutput {
        RunOutput {
            writer: self.clone(),
            file: Arc::new(file.clone()),
            task: Arc::from(task),
            run_id: Arc::from(run_id),
            dropped: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
        }
    }
}

/// One run's lines into its task's file. Shared by the run's two pumps (hence atomics).
pub(crate) struct RunOutput {
    writer: OutputWriter,
    file: Arc<OutputFile>,
    task: Arc<str>,
    run_id: Arc<str>,
    dropped: AtomicU64,
    /// Time spent waiting for room, against [`PATIENCE`].
    waited_ms: AtomicU64,
}

impl RunOutput {
    /// Queues one line (already redacted) of `stream`.
    pub(super) async fn line(&self, stream: &str, redacted: &str) {
        let at = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
        let text =
            format!("{at} {} {stream} {}\n", self.run_id, super::cut(redacted, MAX_FILE_LINE));
        let cost = text.len() + LINE_OVERHEAD;
        if !self.make_room(cost).await {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = Message::Line {
            file: self.file.clone(),
            task: self.task.clone(),
            run_id: self.run_id.clone(),
            text,
        };
        if self.writer.queue.send(message).is_err() {
            // Only if the thread died; give the room back so nothing else waits for it.
            self.writer.room.add_permits(cost);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes `cost` bytes of the queue, waiting while the run's patience lasts.
    async fn make_room(&self, cost: usize) -> bool {
        let cost = cost as u32;
        if let Ok(permit) = self.writer.room.try_acquire_many(cost) {
            permit.forget();
            return true;
        }
        let waited = Duration::from_millis(self.waited_ms.load(Ordering::Relaxed));
        let Some(left) = PATIENCE.checked_sub(waited).filter(|d| !d.is_zero()) else {
            return false;
        };
        let began = Instant::now();
        let got = tokio::time::timeout(left, self.writer.room.acquire_many(cost)).await;
        self.waited_ms.fetch_add(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        match got {
            Ok(Ok(permit)) => {
                permit.forget();
                true
            }
            _ => false,
        }
    }

    /// Closes the run's file, saying how many lines did not reach it.
    pub(crate) fn finish(self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                file = %self.file.path.display(),
                "{dropped} lines of output were not written to the output file: the disk did not keep up"
            );
        }
        let _ = self.writer.queue.send(Message::End {
            file: self.file.clone(),
            run_id: self.run_id.clone(),
            dropped,
        });
    }
}

/// An output file being written.
struct Open {
    out: BufWriter<File>,
    size: u64,
}

/// The thread: writes lines in the order sent, flushing whenever the queue is empty.
fn write_files(lines: &std::sync::mpsc::Receiver<Message>, room: &Semaphore) {
    use std::sync::mpsc::TryRecvError;
    let mut open: HashMap<PathBuf, Open> = HashMap::new();
    // Runs whose file failed, already reported (once per run).
    let mut failed: HashSet<Arc<str>> = HashSet::new();
    loop {
        let message = match lines.try_recv() {
            Ok(message) => message,
            Err(TryRecvError::Empty) => {
                // Nothing waiting: a good moment to put what is buffered on disk.
                for (path, file) in &mut open {
                    if let Err(e) = file.out.flush() {
                        error!(file = %path.display(), "cannot write the output file: {e}");
                    }
                }
                match lines.recv() {
                    Ok(message) => message,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match message {
            Message::Line { file, task, run_id, text } => {
                if let Err(e) = append(&mut open, &file, text.as_bytes()) {
                    open.remove(&file.path);
                    if failed.insert(run_id.clone()) {
                        error!(
                            task = %task,
                            run_id = %run_id,
                            file = %file.path.display(),
                            "cannot write the output file: {e}; the run goes on, and its output still goes to the log (said once per run)"
                        );
                    }
                }
                room.add_permits(text.len() + LINE_OVERHEAD);
            }
            Message::End { file, run_id, dropped } => {
                if dropped > 0 {
                    let at = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
                    let note = format!(
                        "{at} {run_id} backupnizza {dropped} lines of this run were not written here: the disk did not keep up\n"
                    );
                    let _ = append(&mut open, &file, note.as_bytes());
                }
                if let Some(mut done) = open.remove(&file.path)
                    && let Err(e) = done.out.flush()
                    && !failed.contains(&run_id)
                {
                    error!(run_id = %run_id, file = %file.path.display(), "cannot write the output file: {e}");
                }
                failed.remove(&run_id);
            }
        }
    }
    for (path, mut file) in open {
        if let Err(e) = file.out.flush() {
            error!(file = %path.display(), "cannot write the output file: {e}");
        }
    }
}

/// Appends `bytes` to the file, rotating first if they would take it past `max_size`.
fn append(
    open: &mut HashMap<PathBuf, Open>,
    file: &OutputFile,
    bytes: &[u8],
) -> std::io::Result<()> {
    let n = bytes.len() as u64;
    if let Some(current) = open.get_mut(&file.path)
        && current.size > 0
        && current.size + n > file.max_size
    {
        current.out.flush()?;
        open.remove(&file.path);
        crate::journal::rotate(&file.path, file.keep as usize)?;
    }
    let current = match open.entry(file.path.clone()) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => {
            let mut opened = open_file(&file.path)?;
            if opened.size > 0 && opened.size + n > file.max_size {
                // Full from an earlier run (or an earlier daemon).
                drop(opened);
                crate::journal::rotate(&file.path, file.keep as usize)?;
                opened = open_file(&file.path)?;
            }
            entry.insert(opened)
        }
    };
    current.out.write_all(bytes)?;
    current.size += n;
    Ok(())
}

/// Opens for appending, creating the parent directory (0700) and the file (0600); an
/// existing file is narrowed to 0600, since it holds the task's output.
///
/// Nothing planted in the file's place is written through: the directory must pass
/// StrictModes ([`crate::trust::check_trusted`]: the daemon's user's or root's, not
/// writable by group or others, nor any directory above it by others unless sticky), it is
/// opened with `O_NOFOLLOW`, and the file is opened relative to it, also with `O_NOFOLLOW`;
/// the file must be a regular file of the daemon's user with one link. (A link to
/// `~/.profile` there was followed, chmodded 0600 and appended to.) Rotation renames within
/// that directory, and a rename never follows a link.
fn open_file(path: &Path) -> std::io::Result<Open> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    use std::os::unix::fs::MetadataExt as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("the path names no file"));
    };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let uid = nix::unistd::geteuid().as_raw();
    // The directory may be reached through the user's own links; once resolved, nothing
    // on the way is a link, and nobody but the daemon's user and root can make one.
    let dir = std::fs::canonicalize(dir)?;
    // A sticky directory of the daemon's user or root (as /tmp) is fine whoever may write
    // it: nobody else can rename or remove the file there, and what they plant before it
    // exists is refused below. Otherwise the directory itself must pass StrictModes.
    let meta = std::fs::metadata(&dir)?;
    let sticky = meta.mode() & 0o1000 != 0 && (meta.uid() == uid || meta.uid() == 0);
    let checked = match dir.parent() {
        Some(parent) if sticky => parent,
        _ => dir.as_path(),
    };
    crate::trust::check_trusted(checked, "the output file's directory", uid)
        .map_err(std::io::Error::other)?;
    let flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir_fd =
        nix::fcntl::open(&dir, flags | OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| link_or(e, "its directory"))?;
    let fd = openat(
        &dir_fd,
        name,
        // O_NONBLOCK: a FIFO in the file's place fails at once instead of blocking the writer.
        flags | OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        // What is in the way says more than the errno: the kernel refuses a link with
        // ELOOP, or (in a sticky directory, with protected_symlinks) EACCES.
        nix::errno::Errno::ELOOP | nix::errno::Errno::EACCES => {
            match nix::sys::stat::fstatat(&dir_fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    link_or(nix::errno::Errno::ELOOP, "it")
                }
                Ok(st) if st.st_uid != uid => not_ours(st.st_uid, uid),
                _ => link_or(e, "it"),
            }
        }
        e => link_or(e, "it"),
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.uid() != uid {
        return Err(not_ours(meta.uid(), uid));
    }
    if meta.nlink() != 1 {
        return Err(std::io::Error::other(format!(
            "it has {} hard links, so writing it would write another file too: not written; remove it",
            meta.nlink()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(Open { out: BufWriter::with_capacity(64 * 1024, file), size: meta.len() })
}

/// A file of another user (`owner`) in the output file's place.
fn not_ours(owner: u32, uid: u32) -> std::io::Error {
    std::io::Error::other(format!(
        "it belongs to uid {owner}, not to the daemon's user (uid {uid}): not written; remove it"
    ))
}

/// `O_NOFOLLOW` refuses a symbolic link with ELOOP (or ENOTDIR for a directory), whose
/// text would send the reader looking for a loop.
fn link_or(e: nix::errno::Errno, what: &str) -> std::io::Error {
    match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => std::io::Error::other(format!(
            "{what} is a symbolic link, which is not followed: not written; remove the link"
        )),
        e => std::io::Error::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
    }

    #[test]
    fn rotation_keeps_generations_under_the_cap_and_the_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = OutputFile { path: dir.path().join("sub/out.log"), max_size: 1000, keep: 2 };
        let mut open = HashMap::new();
        for i in 0..100 {
            append(&mut open, &file, format!("line {i:03} {}\n", "x".repeat(40)).as_bytes())
                .unwrap();
        }
        open.clear();
        let mode = std::fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("sub")).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let g = |n: &str| dir.path().join(format!("sub/out.log{n}"));
        for path in [g(""), g(".1"), g(".2")] {
            assert!(std::fs::metadata(&path).unwrap().len() <= 1000, "{}", path.display());
        }
        assert!(!g(".3").exists());
        assert!(lines_of(&g("")).last().unwrap().starts_with("line 099"));
        // Generations follow each other: .2, then .1, then the current file.
        let all: Vec<String> = [g(".2"), g(".1"), g("")].iter().flat_map(|p| lines_of(p)).collect();
        let numbers: Vec<u32> = all.iter().map(|l| l[5..8].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }
}
