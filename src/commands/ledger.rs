//! `backupnizza ledger [--json]` and `backupnizza ledger forget ID... --reason TEXT`: the
//! snapshot ledger in `state_dir` read and listed (no daemon needed), and deletions
//! acknowledged, so that audits stop reporting a snapshot removed on purpose as missing.
//!
//! An id that names no recorded snapshot, or several, is a usage error (exit 2) and nothing
//! is written; a ledger that cannot be read or written is a runtime failure (exit 1).

use anyhow::Context as _;

use super::history::short_id as short;
use super::{load_config, print};
use crate::cli::{LedgerArgs, LedgerCommand, LedgerForgetArgs};
use crate::config::Environment;
use crate::exit::Exit;
use crate::ledger::{self, AckError, Ledger};

pub fn run(args: &LedgerArgs, env: &Environment) -> anyhow::Result<()> {
    if let Some(LedgerCommand::Forget(forget_args)) = &args.command {
        return forget(forget_args, env);
    }
    let config = load_config(&args.config, env)?;
    let file = config.state_dir.join(ledger::FILE_NAME);
    let loaded = Ledger::load(&config.state_dir)
        .with_context(|| format!("cannot read the snapshot ledger {}", file.display()))?;
    let rows = loaded.rows();
    print(|out| {
        if args.json {
            let text = serde_json::to_string_pretty(&rows).map_err(std::io::Error::other)?;
            return writeln!(out, "{text}");
        }
        if rows.is_empty() {
            writeln!(out, "no snapshot recorded in {}", file.display())?;
        }
        for row in &rows {
            let id = if row.snapshot_id.is_empty() { "-" } else { short(&row.snapshot_id) };
            let task = row.task.as_deref().unwrap_or("-");
            let partial = if row.partial { " (partial: its step failed)" } else { "" };
            let detail =
                if row.detail.is_empty() { String::new() } else { format!("  {}", row.detail) };
            writeln!(out, "{}  {id:<8}  {task}  {}{partial}{detail}", row.at, row.state)?;
        }
        Ok(())
    })?;
    if let Some(skipped) = loaded.unreadable_summary() {
        eprintln!("backupnizza: warning: {skipped}");
    }
    Ok(())
}

fn forget(args: &LedgerForgetArgs, env: &Environment) -> anyhow::Result<()> {
    let config = load_config(&args.config, env)?;
    let at = crate::time::rfc3339(jiff::Timestamp::now(), &jiff::tz::TimeZone::system());
    // A bad id is the caller's (exit 2); a ledger that cannot be read or written, a
    // runtime failure (exit 1).
    let recorded = ledger::acknowledge(&config.state_dir, &args.ids, &args.reason, &at).map_err(
        |e| match e {
            AckError::Request(why) => anyhow::Error::from(Exit::usage(why)),
            AckError::File(why) => anyhow::anyhow!(why),
        },
    )?;
    print(|out| {
        for id in &recorded {
            writeln!(out, "acknowledged {}: {}", short(id), args.reason.trim())?;
        }
        Ok(())
    })
}
