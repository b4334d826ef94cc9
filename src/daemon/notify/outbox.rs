//! Where notifications wait and are delivered: on threads of their own, never on the async
//! runtime's workers nor on its blocking pool, which the start of every run needs (the sleep
//! inhibitor, secret files, the ledger). An endpoint that accepts a connection and never
//! answers costs one thread for its timeout (and one retry), and delays only its own
//! notification.
//!
//! At most [`MAX_DELIVERING`] deliveries run at once; more wait their turn, at most
//! [`MAX_WAITING`] of them, and past that a notification is dropped with a warning rather
//! than let memory grow without bound. Shutdown waits a bounded time for what is in flight,
//! then abandons it and says how many ([`Outbox::close`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Deliveries running at once, each on a thread of its own.
const MAX_DELIVERING: usize = 16;
/// Notifications waiting for a delivery thread; past this one is dropped.
const MAX_WAITING: usize = 256;

/// The notifications of one event, in flight.
pub(crate) type Sent = tokio::task::JoinHandle<()>;

/// The daemon's notifications in flight.
#[derive(Clone)]
pub(crate) struct Outbox {
    tracker: TaskTracker,
    delivering: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox {
            tracker: TaskTracker::new(),
            delivering: Arc::new(Semaphore::new(MAX_DELIVERING)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Outbox {
    /// Posts one event's notifications: once `after` (an earlier event's, which must not be
    /// overtaken) is out, `deliver` runs on a delivery thread, then `then` on the runtime.
    pub(crate) fn post(
        &self,
        after: Option<Sent>,
        deliver: Option<Box<dyn FnOnce() + Send>>,
        then: impl Future<Output = ()> + Send + 'static,
    ) -> Sent {
        let (delivering, waiting) = (self.delivering.clone(), self.waiting.clone());
        self.tracker.spawn(async move {
            if let Some(earlier) = after {
                let _ = earlier.await;
            }
            if let Some(deliver) = deliver {
                on_a_thread(&delivering, &waiting, deliver).await;
            }
            then.await;
        })
    }

    /// Stops taking notifications and waits up to `grace` for those in flight; returns how
    /// many were abandoned (their threads end with the process).
    pub(crate) async fn close(&self, grace: Duration) -> usize {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

/// Runs `deliver` on a thread of its own once a delivery slot is free, and waits for it.
async fn on_a_thread(
    delivering: &Arc<Semaphore>,
    waiting: &AtomicUsize,
    deliver: Box<dyn FnOnce() + Send>,
) {
    if waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
        waiting.fetch_sub(1, Ordering::Relaxed);
        warn!(
            "{MAX_WAITING} notifications are already waiting for delivery (endpoints that do not answer?); this one is dropped"
        );
        return;
    }
    let slot = delivering.clone().acquire_owned().await;
    waiting.fetch_sub(1, Ordering::Relaxed);
    let Ok(slot) = slot else { return };
    let (done, finished) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("notify".into()).spawn(move || {
        deliver();
        drop(slot);
        let _ = done.send(());
    });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => warn!("cannot start a thread to deliver a notification ({e}); it is dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery that never ends (an endpoint that never answers) holds its own thread only:
    /// the next notification is delivered meanwhile.
    #[tokio::test]
    async fn a_hung_delivery_does_not_hold_up_the_next() {
        let outbox = Outbox::default();
        let (release, hung) = std::sync::mpsc::channel::<()>();
        outbox.post(
            None,
            Some(Box::new(move || {
                let _ = hung.recv();
            })),
            async {},
        );
        let (tx, rx) = oneshot::channel();
        outbox.post(
            None,
            Some(Box::new(move || {
                let _ = tx.send(());
            })),
            async {},
        );
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the second notification waited for the hung one")
            .unwrap();
        assert_eq!(outbox.close(Duration::from_millis(50)).await, 1, "the hung one is abandoned");
        drop(release);
    }

    /// An end waits for its start's notifications: never the other way round.
    #[tokio::test]
    async fn an_event_waits_for_the_one_it_follows() {
        let outbox = Outbox::default();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o1, o2) = (order.clone(), order.clone());
        let first = outbox.post(
            None,
            Some(Box::new(move || {
                std::thread::sleep(Duration::from_millis(100));
                o1.lock().unwrap().push("start");
            })),
            async {},
        );
        outbox.post(Some(first), Some(Box::new(move || o2.lock().unwrap().push("end"))), async {});
        assert_eq!(outbox.close(Duration::from_secs(10)).await, 0);
        assert_eq!(*order.lock().unwrap(), ["start", "end"]);
    }
}
