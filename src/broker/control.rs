//! The contract between the socket server and the daemon's state owner: control requests
//! travel as messages, each with a `oneshot` for its answer.
//!
//! The server holds a [`Control`] (a channel sender), never the daemon itself, so the daemon
//! and the broker do not refer to each other and both are dropped at shutdown. When the
//! daemon has stopped listening, every request answers [`FireError::Stopping`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::{RunBody, RunRef, StatusBody};

/// A control request, as the daemon's state owner receives it.
pub(crate) enum Request {
    /// Run a task now (or queue it, per `on_overlap`).
    Trigger { task: String, reply: oneshot::Sender<Result<RunRef, FireError>> },
    /// The `GET /v1/status` body.
    Status { reply: oneshot::Sender<StatusBody> },
    /// Follow a run: a receiver of its state, or `None` for an unknown run id.
    Subscribe { run_id: String, reply: oneshot::Sender<Option<watch::Receiver<RunBody>>> },
    /// A run's output feed, or `None` for an unknown run id.
    Follow { run_id: String, reply: oneshot::Sender<Option<std::sync::Arc<super::feed::Feed>>> },
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
}

/// Control requests waiting for the state owner; more wait for room (the routes are the
/// user's own commands, never a hot path).
const QUEUE: usize = 64;

impl Control {
    /// A handle and the receiving end for the state owner; `GET /v1/history` is served from
    /// the history files in `state_dir`.
    pub(crate) fn channel(state_dir: &Path) -> (Control, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Control { requests: tx, state_dir: state_dir.to_path_buf() }, rx)
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

    /// The run history, every generation, for `task` (all tasks for `None`). Read on a
    /// blocking thread: it can be tens of MiB.
    pub(crate) async fn history(
        &self,
        task: Option<&str>,
    ) -> std::io::Result<crate::history::Loaded> {
        let dir = self.state_dir.clone();
        let task = task.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            crate::history::read_all(&dir).map(|l| l.for_task(task.as_deref()))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}
