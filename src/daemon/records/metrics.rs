//! Prometheus metrics as a text file (`metrics_textfile:`), for node_exporter's textfile
//! collector: rewritten atomically (a temporary file renamed over the old one) at start and
//! after every run. Labels are task names and rejection reasons only: never a secret, a
//! repository URL or a path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use jiff::Timestamp;

/// What the daemon knows about one task, for the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskMetrics {
    pub last_start: Option<Timestamp>,
    pub last_end: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_exit_code: Option<i32>,
    pub last_duration_seconds: Option<f64>,
    /// Since the daemon started.
    pub runs: u64,
    pub failures: u64,
    /// Occurrences that did not run (overlap, too late, superseded, a `before` hook's 75).
    pub skips: u64,
    /// Runs that had to wait for their `when:` or `blackout:` since the daemon started.
    pub deferrals: u64,
    pub next: Option<Timestamp>,
    /// The figures of the last run that saved restic snapshots (added up over its steps).
    pub last_backup: Option<crate::restic::BackupSummary>,
    /// What the task's last audit found (audit tasks only).
    pub audit_findings: Option<usize>,
}

/// What one ended run (seen as it ends, or read back from its End record at start) tells
/// the metrics that its End record holds.
pub(crate) struct Ended<'a> {
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub ok: bool,
    pub backups: &'a [crate::restic::BackupSummary],
    /// `Some(findings)` for an audit task's run.
    pub audit: Option<usize>,
}

impl TaskMetrics {
    pub(crate) fn ended(&mut self, run: &Ended<'_>) {
        self.last_exit_code = run.exit_code;
        self.last_duration_seconds = Some(run.seconds);
        if let Some(total) = crate::restic::total(run.backups) {
            self.last_backup = Some(total);
        }
        // A failed audit without findings (restic could not list) measured nothing.
        if let Some(findings) = run.audit.filter(|n| run.ok || *n > 0) {
            self.audit_findings = Some(findings);
        }
    }
}

/// Token counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenMetrics {
    pub minted: u64,
    pub redeemed: u64,
    pub rejected: Vec<(&'static str, u64)>,
}

fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// Renders the exposition text.
pub(crate) fn render(
    tasks: &[(&str, &TaskMetrics)],
    tokens: &TokenMetrics,
    started: Timestamp,
) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
    // Masked raw, before the exposition format escapes it (a task name is no secret, but
    // this file is world-readable).
    let label = |task: &str| {
        let task = crate::redact::redact(task);
        format!("{{task=\"{}\"}}", task.replace('\\', "\\\\").replace('"', "\\\""))
    };
    let per_task = |f: &dyn Fn(&TaskMetrics) -> Option<f64>| -> Vec<(String, f64)> {
        tasks.iter().filter_map(|(name, m)| f(m).map(|v| (label(name), v))).collect()
    };
    family(
        "backupnizza_start_time_seconds",
        "gauge",
        "When the daemon started (Unix time).",
        &mut std::iter::once((String::new(), seconds(started))),
    );
    family(
        "backupnizza_task_last_start_timestamp_seconds",
        "gauge",
        "When the task's last run started.",
        &mut per_task(&|m| m.last_start.map(seconds)).into_iter(),
    );
    family(
        "backupnizza_task_last_end_timestamp_seconds",
        "gauge",
        "When the task's last run ended.",
        &mut per_task(&|m| m.last_end.map(seconds)).into_iter(),
    );
    family(
        "backupnizza_task_last_success_timestamp_seconds",
        "gauge",
        "When the task last ended successfully (success or warning).",
        &mut per_task(&|m| m.last_success.map(seconds)).into_iter(),
    );
    family(
        "backupnizza_task_last_exit_code",
        "gauge",
        "Exit code of the last run's deciding step (-1 when it had none: timeout, refused).",
        &mut per_task(&|m| m.last_end.map(|_| f64::from(m.last_exit_code.unwrap_or(-1))))
            .into_iter(),
    );
    family(
        "backupnizza_task_last_duration_seconds",
        "gauge",
        "How long the last run took.",
        &mut per_task(&|m| m.last_duration_seconds).into_iter(),
    );
    family(
        "backupnizza_task_runs_total",
        "counter",
        "Runs since the daemon started.",
        &mut per_task(&|m| Some(m.runs as f64)).into_iter(),
    );
    family(
        "backupnizza_task_failures_total",
        "counter",
        "Failed runs since the daemon started.",
        &mut per_task(&|m| Some(m.failures as f64)).into_iter(),
    );
    family(
        "backupnizza_task_skips_total",
        "counter",
        "Occurrences that did not run since the daemon started.",
        &mut per_task(&|m| Some(m.skips as f64)).into_iter(),
    );
    family(
        "backupnizza_task_deferrals_total",
        "counter",
        "Runs that waited for their run conditions (when:, blackout:) since the daemon started.",
        &mut per_task(&|m| Some(m.deferrals as f64)).into_iter(),
    );
    family(
        "backupnizza_task_next_fire_timestamp_seconds",
        "gauge",
        "When the task fires next.",
        &mut per_task(&|m| m.next.map(seconds)).into_iter(),
    );
    let backup = |f: fn(&crate::restic::BackupSummary) -> f64| {
        per_task(&|m: &TaskMetrics| m.last_backup.as_ref().map(f))
    };
    for (name, help, value) in [
        (
            "backupnizza_task_last_backup_data_added_bytes",
            "Bytes the last restic backup added to the repository.",
            (|b| b.data_added as f64) as fn(&crate::restic::BackupSummary) -> f64,
        ),
        (
            "backupnizza_task_last_backup_files_new",
            "Files the last restic backup found new.",
            |b| b.files_new as f64,
        ),
        (
            "backupnizza_task_last_backup_files_changed",
            "Files the last restic backup found changed.",
            |b| b.files_changed as f64,
        ),
        (
            "backupnizza_task_last_backup_files_unmodified",
            "Files the last restic backup found unchanged.",
            |b| b.files_unmodified as f64,
        ),
        (
            "backupnizza_task_last_backup_processed_bytes",
            "Bytes the last restic backup read.",
            |b| b.total_bytes_processed as f64,
        ),
        (
            "backupnizza_task_last_backup_duration_seconds",
            "How long the last restic backup took, as restic measured it.",
            |b| b.total_duration,
        ),
    ] {
        family(name, "gauge", help, &mut backup(value).into_iter());
    }
    family(
        "backupnizza_audit_findings",
        "gauge",
        "Problems the task's last snapshot audit found (missing, replaced, changed, unrecorded or stale snapshots).",
        &mut per_task(&|m| m.audit_findings.map(|n| n as f64)).into_iter(),
    );
    family(
        "backupnizza_tokens_minted_total",
        "counter",
        "One-time tokens issued.",
        &mut std::iter::once((String::new(), tokens.minted as f64)),
    );
    family(
        "backupnizza_tokens_redeemed_total",
        "counter",
        "Secrets handed out for a token.",
        &mut std::iter::once((String::new(), tokens.redeemed as f64)),
    );
    family(
        "backupnizza_tokens_rejected_total",
        "counter",
        "Refused redemptions and connections, by reason.",
        &mut tokens.rejected.iter().map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64)),
    );
    out
}

/// Writes `text` to `path` atomically: a temporary file beside it, then a rename.
pub(crate) fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".backupnizza-metrics").tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_data()?;
    // node_exporter runs as another user: the file is readable by all (it holds no secrets).
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_help_and_type() {
        let m = TaskMetrics {
            runs: 2,
            last_exit_code: Some(0),
            last_end: Some(Timestamp::from_second(100).unwrap()),
            ..Default::default()
        };
        let text = render(
            &[("docs", &m)],
            &TokenMetrics { minted: 3, redeemed: 2, rejected: vec![("used", 1)] },
            Timestamp::UNIX_EPOCH,
        );
        assert!(
            text.contains("# TYPE backupnizza_task_runs_total counter\nbackupnizza_task_runs_total{task=\"docs\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("backupnizza_task_last_end_timestamp_seconds{task=\"docs\"} 100\n"),
            "{text}"
        );
        assert!(text.contains("backupnizza_tokens_rejected_total{reason=\"used\"} 1\n"), "{text}");
        assert!(
            !text.contains("last_start_timestamp_seconds{"),
            "absent values are not invented: {text}"
        );
    }
}
