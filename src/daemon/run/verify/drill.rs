//! The restore drill: the whole snapshot restored into a private directory on disk (with
//! restic 0.17's `restore --verify`, which reads every restored file back, where the
//! restic is that new), after a check that the filesystem has room for it (`restic stats
//! --mode restore-size`), and the entries and bytes restored counted against what the
//! snapshot holds. The directory is wiped afterwards, also when the run's timeout stopped
//! the restore.

use tracing::info;

use super::scratch::{self, Scratch};
use super::{Target, Verifier, short};
use crate::history::Drill;

impl Verifier<'_> {
    pub(super) async fn drill(&mut self, t: &Target) {
        let id = t.newest.id.clone();
        let args = vec![
            "stats".into(),
            "--json".into(),
            "--mode".into(),
            "restore-size".into(),
            id.clone(),
        ];
        let Some(called) =
            self.restic_ok("drill: sizing the snapshot", "verify-stats", args, None).await
        else {
            return;
        };
        let Some(stats) = called.stats else {
            self.problem(
                "drill: restic printed no size for the snapshot (`restic stats --json`)".into(),
            );
            return;
        };
        let root = self.disk_root.clone();
        if !scratch::fits(&root, stats.total_size) {
            let free = scratch::free_bytes(&root).unwrap_or(0);
            self.problem(format!(
                "drill: snapshot {} of task {:?} needs {} bytes, and {} has {free} free: set `verify.scratch` to a larger filesystem",
                short(&id), t.task, stats.total_size, root.display()
            ));
            return;
        }
        let scratch = match Scratch::create(&root, self.run_id, "drill") {
            Ok(s) => s,
            Err(e) => {
                self.problem(format!(
                    "drill: cannot make a private directory in {}: {e}",
                    root.display()
                ));
                return;
            }
        };
        let target = scratch.path().join("restored");
        let mut args = vec![
            "restore".into(),
            id.clone(),
            "--target".into(),
            target.to_string_lossy().into_owned(),
        ];
        if self.modern {
            args.push("--verify".into());
        }
        info!(task = %t.task, "drill: restoring snapshot {} ({} bytes)", short(&id), stats.total_size);
        let restored =
            self.restic_ok("drill: the restore", "verify-drill", args, None).await.is_some();
        if restored {
            let counted = tokio::task::spawn_blocking(move || scratch::count(&target)).await;
            match counted {
                Ok(Ok((files, bytes))) => {
                    let drill = Drill {
                        files,
                        bytes,
                        expected_files: stats.total_file_count,
                        expected_bytes: stats.total_size,
                        restic_verified: self.modern,
                    };
                    if (files, bytes) != (stats.total_file_count, stats.total_size) {
                        self.problem(format!(
                            "drill: snapshot {} of task {:?} restored {files} entries and {bytes} bytes, but it holds {} entries and {} bytes",
                            short(&id), t.task, stats.total_file_count, stats.total_size
                        ));
                    }
                    self.record.drill = Some(drill);
                }
                Ok(Err(e)) => self.problem(format!("drill: cannot count what was restored: {e}")),
                Err(e) => self.problem(format!("drill: counting what was restored failed: {e}")),
            }
        }
        scratch.wipe().await;
    }
}
