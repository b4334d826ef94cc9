//! `GET /v1/events?after=N&wait=SECONDS`: what happened to the tasks (runs ended, tasks
//! overdue or recovered), for `backupnizza watch`, which shows them where the daemon cannot:
//! a system daemon has no desktop session, its members do. Events are numbered; a client
//! asks from the number after the last it saw and waits for more, as `trigger --follow` does
//! for a run's output ([`super::feed`]). A member reads the events of the tasks whose
//! `members:` let it read them, and only those.

use std::time::Duration;

use hyper::{Method, StatusCode};

use super::control::Control;
use super::reply::{Resp, json, not_allowed};
use crate::protocol;

pub(super) async fn route(
    method: &Method,
    query: Option<&str>,
    control: &Control,
    member: Option<u32>,
) -> Resp {
    if method != Method::GET {
        return not_allowed("GET");
    }
    let number = |key: &str| {
        query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let wait = Duration::from_secs(number("wait=").min(protocol::MAX_WAIT_SECS));
    json(StatusCode::OK, &control.read_events(number("after="), wait, member).await)
}
