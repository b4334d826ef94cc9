//! `GET /v1/events?after=N&wait=SECONDS`: what happened to the tasks (runs ended, tasks
//! overdue or recovered), for `backupnizza watch`, which shows them where the daemon cannot:
//! a system daemon has no desktop session, its members do. Events are numbered; a client
//! asks from the number after the last it saw and waits for more, as `trigger --follow` does
//! for a run's output ([`super::feed`]). A member reads the events of the tasks whose
//! `members:` let it read them, and only those.

use std::time::Duration;

use hyper::{Method, StatusCode};

use super::control::Control;
use super::reply::{Resp, json, not_allowed, query_number};
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
    let wait = Duration::from_secs(query_number(query, "wait=").min(protocol::MAX_WAIT_SECS));
    json(StatusCode::OK, &control.read_events(query_number(query, "after="), wait, member).await)
}
