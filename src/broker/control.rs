//! The contract between the socket server and the daemon's state owner: control requests
//! travel as messages, each with a `oneshot` for its answer.
//!
//! The server holds a [`Control`] (a channel sender), never the daemon itself, so the daemon
//! and the broker do not refer to each other and both are dropped at shutdown. When the
//! daemon has stopped listening, every request answers [`FireError::Stopping`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::{RunBody, RunRef, StatusBody};

/// A control request, as the daemon's state owner receives it.
pub(crate) enum Request {
    /// Run a task now (or queue it, per `on_overlap`).
    Trigger { task: String, reply: oneshot::Sender<Result<RunRef, FireError>> },
    /// The `GET /v1/status` body.
    Status { reply: oneshot::Sender<StatusBody> },
    /// Hold the named tasks' occurrences (every task's for none); answers their names.
    Pause {
        request: PauseRequest,
        reply: oneshot::Sender<Result<crate::protocol::PausedBody, FireError>>,
    },
    /// Lift the named tasks' pauses (every task's for none); answers the names resumed.
    Resume {
        tasks: Vec<String>,
        reply: oneshot::Sender<Result<crate::protocol::PausedBody, FireError>>,
    },
    /// Follow a run: a receiver of its state, or `None` for an unknown run id.
    Subscribe { run_id: String, reply: oneshot::Sender<Option<watch::Receiver<RunBody>>> },
    /// A run's output feed, or `None` for an unknown run id.
    Follow { run_id: String, reply: oneshot::Sender<Option<std::sync::Arc<super::feed::Feed>>> },
}

/// `POST /v1/pause`: which tasks (none: all), and for how many seconds (none: until
/// `resume`).
#[derive(Debug, Clone, Default)]
pub(crate) struct PauseRequest {
    pub(crate) tasks: Vec<String>,
    pub(crate) seconds: Option<u64>,
}

/// Why a control request was not carried out. The server maps each to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FireError {
    #[error("no task named {name:?}{}", hint.as_ref().map(|h| format!(" (did you mean {h:?}?)")).unwrap_or_default())]
    NoSuchTask { name: String, hint: Option<String> },
    #[error("task {task:?} is running and {why}")]
    Busy { task: String, why: &'static str },
    #[error("the daemon is stopping")]
    Stopping,
}

/// The server's handle on the daemon's state owner, and where the daemon keeps its run
/// history (read here, off the state owner: reading a file is no state change).
#[derive(Clone)]
pub(crate) struct Control {
    requests: mpsc::Sender<Request>,
    state_dir: PathBuf,
    /// History answers being written at once, for the daemon's own user and for members
    /// (other uids) apart, so that members who do not read cannot keep the user from the
    /// history: each holds a blocking thread while its client reads (or does not).
    history_streams: [Arc<tokio::sync::Semaphore>; 2],
    /// Each task's `members:`: which members may trigger it and read its output.
    members: Arc<HashMap<String, crate::config::Members>>,
    /// What happened to the tasks, for `watch` (`GET /v1/events`): the state owner writes.
    events: Arc<super::feed::Feed>,
}

/// History answers written at once for the daemon's user, and for members; more wait for
/// one to finish.
pub(crate) const HISTORY_STREAMS: usize = 2;
/// How long a history request waits for its turn before it is told the daemon is busy.
const HISTORY_WAIT: Duration = Duration::from_secs(10);

/// Why the history cannot be sent.
pub(crate) enum HistoryError {
    /// [`HISTORY_STREAMS`] answers are being written and none finished in time.
    Busy,
    Unreadable(std::io::Error),
}

/// Control requests waiting for the state owner; more wait for room (the routes are the
/// user's own commands, never a hot path).
const QUEUE: usize = 64;

impl Control {
    /// A handle and the receiving end for the state owner; `GET /v1/history` is served from
    /// the history files in `state_dir`.
    /// [`Control::channel`] for the task file's `state_dir` and tasks' `members:`.
    pub(crate) fn for_config(config: &crate::config::Config) -> (Control, mpsc::Receiver<Request>) {
        let members = config.tasks.iter().map(|t| (t.name.clone(), t.members.clone())).collect();
        Control::channel(&config.state_dir, members)
    }

    pub(crate) fn channel(
        state_dir: &Path,
        members: HashMap<String, crate::config::Members>,
    ) -> (Control, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let history_streams =
            [(); 2].map(|()| Arc::new(tokio::sync::Semaphore::new(HISTORY_STREAMS)));
        let members = Arc::new(members);
        let events = Arc::new(super::feed::Feed::new());
        let control = Control {
            requests: tx,
            state_dir: state_dir.to_path_buf(),
            history_streams,
            members,
            events,
        };
        (control, rx)
    }

    /// The events feed, for the state owner to write.
    pub(crate) fn events(&self) -> Arc<super::feed::Feed> {
        self.events.clone()
    }

    /// Events from number `after` on, waiting up to `wait` for one; a member (`member`, its
    /// uid) gets those of the tasks it may read, the numbering unchanged. An `after` beyond
    /// the last event is a number of an earlier daemon's: the answer is at once, empty, with
    /// `next` 0, so the client reads this daemon's events from its first.
    pub(crate) async fn read_events(
        &self,
        after: u64,
        wait: Duration,
        member: Option<u32>,
    ) -> crate::protocol::OutputBody {
        if after > self.events.next_number() {
            return crate::protocol::OutputBody {
                lines: Vec::new(),
                next: 0,
                ended: false,
                missed: 0,
            };
        }
        let mut body = self.events.read(after, wait).await;
        if let Some(uid) = member {
            body.lines.retain(|l| self.member_may(&l.stream, uid));
        }
        body
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, FireError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(make(reply)).await.map_err(|_| FireError::Stopping)?;
        answer.await.map_err(|_| FireError::Stopping)
    }

    pub(crate) async fn trigger(&self, task: &str) -> Result<RunRef, FireError> {
        self.ask(|reply| Request::Trigger { task: task.to_string(), reply }).await?
    }

    pub(crate) async fn pause(
        &self,
        request: PauseRequest,
    ) -> Result<crate::protocol::PausedBody, FireError> {
        self.ask(|reply| Request::Pause { request, reply }).await?
    }

    pub(crate) async fn resume(
        &self,
        tasks: Vec<String>,
    ) -> Result<crate::protocol::PausedBody, FireError> {
        self.ask(|reply| Request::Resume { tasks, reply }).await?
    }

    pub(crate) async fn status(&self) -> Result<StatusBody, FireError> {
        self.ask(|reply| Request::Status { reply }).await
    }

    /// A run's state, waiting up to `wait` for it to end; `None` for an unknown run.
    pub(crate) async fn run(
        &self,
        run_id: &str,
        wait: Duration,
    ) -> Result<Option<RunBody>, FireError> {
        let Some(mut receiver) =
            self.ask(|reply| Request::Subscribe { run_id: run_id.to_string(), reply }).await?
        else {
            return Ok(None);
        };
        let _ = tokio::time::timeout(wait, receiver.wait_for(|b| b.status.is_done())).await;
        let body = receiver.borrow().clone();
        Ok(Some(body))
    }

    /// A run's output from line `after` on, waiting up to `wait` for a line; `None` for an
    /// unknown run.
    pub(crate) async fn output(
        &self,
        run_id: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<crate::protocol::OutputBody>, FireError> {
        let Some(feed) =
            self.ask(|reply| Request::Follow { run_id: run_id.to_string(), reply }).await?
        else {
            return Ok(None);
        };
        Ok(Some(feed.read(after, wait).await))
    }

    /// The run history, every generation, for `task` (all tasks for `None`), as the JSON
    /// chunks of `GET /v1/history`: written on a blocking thread as the files are read, at
    /// most [`HISTORY_STREAMS`] at once for the daemon's user and as many for members
    /// (`member`), each waiting for its client to take what it wrote.
    /// A history of tens of MiB never sits whole in memory, however many clients ask.
    /// Whether a member (a uid other than the daemon's) may trigger `task`, follow its runs
    /// and read its history: its `members:` says. A task the daemon does not know is left
    /// to the route to refuse.
    pub(crate) fn member_may(&self, task: &str, uid: u32) -> bool {
        self.members.get(task).is_none_or(|m| m.allows(uid))
    }

    pub(crate) async fn history(
        &self,
        task: Option<&str>,
        member: Option<u32>,
    ) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, HistoryError> {
        // A member reads nothing of the tasks whose `members:` leave them out.
        let hidden: Vec<String> = match member {
            Some(uid) => {
                self.members.keys().filter(|t| !self.member_may(t, uid)).cloned().collect()
            }
            None => Vec::new(),
        };
        let streams = self.history_streams[usize::from(member.is_some())].clone();
        let permit = tokio::time::timeout(HISTORY_WAIT, streams.acquire_owned())
            .await
            .map_err(|_| HistoryError::Busy)?
            .map_err(|_| HistoryError::Busy)?;
        // Every file is opened first: an error then is an answer; a later one cuts it short.
        let dir = self.state_dir.clone();
        let files = tokio::task::spawn_blocking(move || crate::history::open_all(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(HistoryError::Unreadable)?;
        let task = task.map(str::to_string);
        let (mut out, rx) = super::reply::ChunkWriter::channel();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(e) = crate::history::write_json(files, (task.as_deref(), &hidden), &mut out)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                tracing::warn!(error = %e, "the run history sent to a client was cut short");
            }
        });
        Ok(rx)
    }
}
