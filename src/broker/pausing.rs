//! `POST /v1/pause` and `POST /v1/resume`: holding tasks' scheduled runs, and lifting the
//! hold, for the daemon's own user (the state owner keeps the pauses: `daemon::owner::vigil`).

use hyper::{Method, StatusCode};
use tracing::info;

use super::control::{Control, PauseRequest};
use super::peer::Peer;
use super::reply::{Resp, error, fire_error, json, not_allowed, query_value};
use crate::protocol::{self, Rejection};

/// `POST /v1/pause` and `/v1/resume`: the daemon's own user's alone (a member's task may be
/// another member's too; holding it is the owner's call).
/// The longest timed pause: a year. Longer is "until resumed", which says so.
const MAX_PAUSE_SECS: u64 = 366 * 24 * 3600;

pub(super) async fn route(
    path: &str,
    method: &Method,
    query: Option<&str>,
    control: &Control,
    (peer, member): (Peer, Option<u32>),
) -> Resp {
    if method != Method::POST {
        return not_allowed("POST");
    }
    let pause = path == protocol::ROUTE_PAUSE;
    if let Some(uid) = member {
        return error(
            StatusCode::FORBIDDEN,
            Rejection::Forbidden.as_str(),
            format!("only the daemon's own user may pause or resume tasks; you are uid {uid}"),
        );
    }
    let value = |key: &str| query_value(query, key).unwrap_or("");
    let tasks: Vec<String> =
        value("tasks=").split(',').filter(|t| !t.is_empty()).map(str::to_string).collect();
    let seconds = match value("for=") {
        "" => None,
        text => match text.parse::<u64>() {
            Ok(s) if (1..=MAX_PAUSE_SECS).contains(&s) => Some(s),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    protocol::errors::BAD_REQUEST,
                    format!(
                        "`for` must be a number of seconds from 1 to {MAX_PAUSE_SECS} (a year), not {text:?}; pause without it to pause until resumed"
                    ),
                );
            }
        },
    };
    let answer = if pause {
        control.pause(PauseRequest { tasks, seconds }).await
    } else {
        control.resume(tasks).await
    };
    match answer {
        Ok(body) => {
            let what = if pause { "paused" } else { "resumed" };
            info!(tasks = %body.tasks.join(","), seconds, peer_pid = peer.pid.unwrap_or_default(), exe = %peer.exe(), "{what} through the socket");
            json(StatusCode::OK, &body)
        }
        Err(e) => fire_error(&e),
    }
}
