//! `backupnizza watch`: follows the daemon's events (`GET /v1/events`: runs ended, tasks
//! overdue or recovered) and prints one line each, or one JSON object with `--json`; with
//! `--notify` it shows each on this session's desktop too, as the daemon's `desktop:`
//! preset would. A system daemon has no desktop session; a member running this in theirs
//! sees the tasks its `members:` let them read.
//!
//! It starts at the present (what happened before is in `history`), and outlives the daemon:
//! while the daemon is away it says so once and tries again every few seconds, and a new
//! daemon's events are all new to it (they are numbered from zero again).

use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use super::control::{Target, call, client_for, target};
use super::{load_config, print};
use crate::cli::WatchArgs;
use crate::client::Client;
use crate::config::Environment;
use crate::desktop::Notice;
use crate::protocol::{self, EventBody, OutputBody, VersionBody};

/// How long a desktop notification may take before it is given up.
const SHOW_WITHIN: Duration = Duration::from_secs(10);
/// How often an absent daemon is looked for.
const RETRY: Duration = Duration::from_secs(5);

/// Where the watch stands.
struct Place {
    /// The daemon followed (its pid), once known.
    daemon: Option<u32>,
    /// The next event number to ask for.
    after: u64,
    /// Whether the daemon must be looked up again (at first, and after it was away).
    lost: bool,
}

/// Why a round ended early.
enum Trouble {
    /// The daemon did not answer as it should: try again later.
    Away(anyhow::Error),
    /// Our own output failed (a closed pipe): stop.
    Fatal(anyhow::Error),
}

pub fn watch(args: &WatchArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    let target = target(&config, env, args.socket.as_deref());
    let client = client_for(&target);
    let mut place = Place { daemon: None, after: 0, lost: true };
    let mut away = false;
    loop {
        match follow(&client, &target, &mut place, args) {
            Ok(()) => away = false,
            Err(Trouble::Fatal(e)) => return Err(e),
            // The first contact failed: a wrong socket or no daemon is the user's to fix.
            Err(Trouble::Away(e)) if place.daemon.is_none() => return Err(e),
            Err(Trouble::Away(e)) => {
                if !away {
                    eprintln!("backupnizza watch: {e:#}; trying again every {}s", RETRY.as_secs());
                    away = true;
                }
                place.lost = true;
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// One round: finds the daemon again when it was lost, then reads and shows the next
/// events.
fn follow(
    client: &Client,
    target: &Target,
    place: &mut Place,
    args: &WatchArgs,
) -> Result<(), Trouble> {
    if place.lost {
        let version: VersionBody = call(client, target, Method::GET, protocol::ROUTE_VERSION)
            .and_then(|a| serde_json::from_slice(&a.body).context("unexpected version answer"))
            .map_err(Trouble::Away)?;
        place.after = match place.daemon {
            // The same daemon after a failed request: on from where we were (the feed keeps
            // the last 2,000 events). A new daemon: everything it has said is news.
            Some(pid) if pid == version.pid => place.after,
            Some(_) => 0,
            // The first contact: from now on.
            None => present(client, target).map_err(Trouble::Away)?,
        };
        place.daemon = Some(version.pid);
        place.lost = false;
    }
    let body =
        events(client, target, place.after, protocol::MAX_WAIT_SECS).map_err(Trouble::Away)?;
    for line in &body.lines {
        let Ok(event) = serde_json::from_str::<EventBody>(&line.text) else { continue };
        show(&event, &line.text, args).map_err(Trouble::Fatal)?;
    }
    // Lower than asked: the daemon restarted between two requests; its events from the first.
    place.after = body.next;
    Ok(())
}

/// The number after the last event the daemon has now (a member's answers skip the events
/// it may not read, so the number, not the lines, tells the end).
fn present(client: &Client, target: &Target) -> anyhow::Result<u64> {
    let mut after = 0;
    loop {
        let body = events(client, target, after, 0)?;
        if body.next <= after {
            return Ok(body.next);
        }
        after = body.next;
    }
}

fn events(client: &Client, target: &Target, after: u64, wait: u64) -> anyhow::Result<OutputBody> {
    let path = format!("{}?after={after}&wait={wait}", protocol::ROUTE_EVENTS);
    let response = call(client, target, Method::GET, &path)?;
    serde_json::from_slice(&response.body).context("unexpected events answer")
}

/// Prints one event, and shows it on the desktop when asked.
fn show(event: &EventBody, json: &str, args: &WatchArgs) -> anyhow::Result<()> {
    let result = event.result();
    if args.json {
        print(|out| writeln!(out, "{json}"))?;
    } else {
        let reason = protocol::reason_beside(&result, &event.reason)
            .map_or_else(String::new, |reason| format!(": {reason}"));
        print(|out| writeln!(out, "{} {} {result}{reason}", event.at, event.task))?;
    }
    let wanted = match args.notify.as_deref() {
        Some("all") => true,
        Some(_) => event.failed(),
        None => false,
    };
    if wanted {
        let notice = Notice::of(&event.task, &event.status, &result, &event.reason, event.failed());
        if let Err(e) = crate::desktop::show(&notice, SHOW_WITHIN) {
            eprintln!(
                "backupnizza watch: cannot show a notification on {}: {e}",
                crate::desktop::DESTINATION
            );
        }
    }
    Ok(())
}
