//! The `tasks:` section: each task's schedule and zone, what it runs (one `command` or a list
//! of `steps`, each optionally pinned by `sha256`), its environment, the secrets it may
//! fetch, its limits and defaults, its hooks and its notifications (the same `notify` shape
//! serves the top level), and its `output_file` ([`super::output`]), which no two tasks may
//! share. Whether the secrets it names exist is [`super::cross`]'s job.

use std::path::Path;
use std::time::Duration;

use super::walk::{Checker, index, join, program_name};
use crate::config::tree::{Node, Pos, Value};
use crate::config::{
    DEFAULT_MAX_LATENESS, DEFAULT_REDEEM_LIMIT, Environment, Hooks, Members, Overlap, Step, Task,
    When, Zone,
};
use crate::schedule::Schedule;

const TASK_KEYS: &[&str] = &[
    "schedule",
    "timezone",
    "command",
    "steps",
    "pipeline",
    "env",
    "secrets",
    "timeout",
    "kill_grace",
    "on_overlap",
    "working_dir",
    "redeem_limit",
    "max_lateness",
    "random_delay",
    "warning_exit_codes",
    "sha256",
    "hooks",
    "notify",
    "output_file",
    "redeemers",
    "retry",
    "lock",
    "audit",
    "parallel",
    "unlock_stale",
    "nice",
    "io",
    "inhibit_sleep",
    "when",
    "force_after",
    "blackout",
    "resume_settle",
    "members",
    "read_all",
    "seal",
    "verify",
];
const STEP_KEYS: &[&str] =
    &["command", "pipeline", "env", "continue_on_error", "sha256", "read_all"];
/// Variables the daemon sets itself in every child.
/// What every task's check needs from the rest of the file and from the environment.
pub(super) struct TaskDefaults<'a> {
    /// The top-level `timezone`.
    pub(super) zone: &'a Zone,
    pub(super) env: &'a Environment,
    /// Relative `output_file` paths live here (none when it is itself invalid).
    pub(super) state_dir: Option<&'a Path>,
    /// The top-level `kill_grace`.
    pub(super) kill_grace: Duration,
    /// The top-level `resume_settle`.
    pub(super) resume_settle: Duration,
}

impl Checker {
    pub(super) fn tasks(&mut self, node: &Node, defaults: &TaskDefaults<'_>) -> Option<Vec<Task>> {
        let fields = self.fields(node, "tasks", "a mapping of task names to tasks", None)?;
        if fields.entries.is_empty() {
            self.error("tasks", node.pos, "no tasks defined: add at least one task");
            return None;
        }
        let mut out: Vec<Task> = Vec::new();
        let mut ok = true;
        for (name, key, value) in &fields.entries {
            let path = join("tasks", name);
            if !self.name_key(name, key, &path, "task") {
                ok = false;
                continue;
            }
            match self.task(name, value, &path, key.pos, defaults) {
                Some(task) => {
                    // Two writers would rotate each other's generations away.
                    if let Some(file) = &task.output_file
                        && let Some(first) = out
                            .iter()
                            .find(|t| t.output_file.as_ref().is_some_and(|o| o.path == file.path))
                    {
                        let pos = match &value.value {
                            Value::Map(entries) => entries
                                .iter()
                                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == "output_file"))
                                .and_then(|(_, v)| v.pos),
                            _ => None,
                        };
                        self.error(
                            &join(&path, "output_file"),
                            pos,
                            format!(
                                "{} is already the output file of task {:?}: give each task its own file",
                                file.path.display(),
                                first.name
                            ),
                        );
                        ok = false;
                    }
                    out.push(task);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    #[expect(
        clippy::too_many_lines,
        reason = "the task's keys, one after another, as the docs list them"
    )]
    fn task(
        &mut self,
        name: &str,
        node: &Node,
        path: &str,
        key_pos: Option<Pos>,
        defaults: &TaskDefaults<'_>,
    ) -> Option<Task> {
        let TaskDefaults { zone: default_zone, env, state_dir, kill_grace, resume_settle } =
            *defaults;
        let f = self.fields(
            node,
            path,
            "a mapping with at least `schedule` and `command`",
            Some(TASK_KEYS),
        )?;
        let pos = f.pos.or(key_pos);
        let schedule = self.required(&f, path, "schedule", pos).and_then(|n| {
            let p = join(path, "schedule");
            let text = self.string(n, &p)?;
            match Schedule::parse(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.error(&p, n.pos, format!("invalid schedule {text:?}: {e}"));
                    None
                }
            }
        });
        let zone = self.with_default(&f, path, "timezone", default_zone.clone(), Checker::zone);
        let verify = self.optional(&f, path, "verify", |c, n, p| c.verify(n, p, env));
        let steps = match (f.get("command").or(f.get("pipeline")), f.get("steps")) {
            (Some(c), _) | (None, Some(c)) if f.get("verify").is_some() => {
                self.error(
                    path,
                    c.pos.or(pos),
                    "a task with `verify:` runs the daemon's checks, not commands: remove `command`/`steps` (or move `verify:` to a task of its own)",
                );
                None
            }
            (None, None) if f.get("verify").is_some() => Some(Vec::new()),
            (Some(_), Some(s)) => {
                self.error(
                    path,
                    s.pos.or(pos),
                    "both `command` and `steps`: give one (a single command, or a list of steps)",
                );
                None
            }
            (None, None) => {
                self.error(path, pos, "missing `command` (or `steps`): what should this task run?");
                None
            }
            (Some(_), None) => {
                let sha256 = self.optional(&f, path, "sha256", Checker::sha256);
                let read_all = self.optional(&f, path, "read_all", Checker::boolean);
                self.program(&f, path).zip(sha256.zip(read_all)).map(
                    |((command, pipe_into), (sha256, read_all))| {
                        vec![Step {
                            command,
                            pipe_into,
                            env: Vec::new(),
                            continue_on_error: false,
                            sha256,
                            read_all,
                        }]
                    },
                )
            }
            (None, Some(s)) => {
                for (key, what) in [
                    ("sha256", "pin each step's program with its own `sha256`"),
                    ("read_all", "give each step that needs it its own `read_all`"),
                ] {
                    if let Some(n) = f.get(key) {
                        self.error(&join(path, key), n.pos, format!("with `steps:`, {what}"));
                    }
                }
                self.steps(s, &join(path, "steps"))
            }
        };
        let env_vars = self.with_default(&f, path, "env", Vec::new(), Checker::env);
        let secrets = self.with_default(&f, path, "secrets", Vec::new(), Checker::secret_list);
        let timeout = self.optional(&f, path, "timeout", Checker::positive_duration);
        let kill_grace =
            self.with_default(&f, path, "kill_grace", kill_grace, Checker::positive_duration);
        let on_overlap = self.with_default(&f, path, "on_overlap", Overlap::Skip, |c, n, p| {
            c.choice(n, p, &[("skip", Overlap::Skip), ("queue", Overlap::Queue)])
        });
        let working_dir = self.optional(&f, path, "working_dir", |c, n, p| c.path_value(n, p, env));
        // Each step's token must cover what its restic asks for (a copy: both passwords).
        let needed: Option<(u32, String, Vec<String>)> = match (&steps, &env_vars) {
            (Some(steps), Some(env)) => steps
                .iter()
                .flat_map(|step| super::redeem::uses(env, step))
                .map(|(name, (times, places))| (times, name, places))
                .max_by_key(|(times, ..)| *times),
            _ => None,
        };
        let default_limit =
            needed.as_ref().map_or(DEFAULT_REDEEM_LIMIT, |(n, ..)| (*n).max(DEFAULT_REDEEM_LIMIT));
        let redeem_limit =
            self.with_default(&f, path, "redeem_limit", default_limit, Checker::redeem_limit);
        if let (Some(limit), Some((times, name, places)), Some(node)) =
            (redeem_limit, &needed, f.get("redeem_limit"))
            && limit < *times
        {
            self.warn(
                &join(path, "redeem_limit"),
                node.pos,
                format!(
                    "a run's restic fetches secret {name:?} {times} times ({}), but redeem_limit is {limit}: the later fetches will be refused; set redeem_limit: {times} (or remove it: that is the default here)",
                    places.join(", ")
                ),
            );
        }
        let max_lateness =
            self.with_default(&f, path, "max_lateness", DEFAULT_MAX_LATENESS, Checker::duration);
        let random_delay = self.optional(&f, path, "random_delay", Checker::duration);
        let hooks = self.with_default(&f, path, "hooks", Hooks::default(), Checker::hooks);
        let task_notify = self.optional(&f, path, "notify", Checker::notify);
        let output_file =
            self.optional(&f, path, "output_file", |c, n, p| c.output_file(n, p, env, state_dir));
        let redeemers = self.with_default(&f, path, "redeemers", Vec::new(), |c, n, p| {
            c.path_list(n, p, env, "a list of programs such as [~/bin/my-restic-wrapper]")
        });
        let retry = self.optional(&f, path, "retry", Checker::retry);
        let lock = self.optional(&f, path, "lock", Checker::lock_name);
        let audit = self.optional(&f, path, "audit", Checker::audit);
        if let (Some(_), Some(n)) = (f.get("verify"), f.get("audit")) {
            self.error(&join(path, "audit"), n.pos, "a verifier runs no `restic snapshots --json` for an audit: give the audit a task of its own");
        }
        let parallel = self.with_default(&f, path, "parallel", false, Checker::boolean);
        let nice = self.optional(&f, path, "nice", Checker::nice);
        let io = self.optional(&f, path, "io", Checker::io_class);
        let inhibit_sleep = self.with_default(&f, path, "inhibit_sleep", true, Checker::boolean);
        let when = self.with_default(&f, path, "when", When::default(), Checker::when);
        let force_after = self.optional(&f, path, "force_after", Checker::positive_duration);
        let blackout = self.with_default(&f, path, "blackout", Vec::new(), Checker::blackout);
        let resume_settle =
            self.with_default(&f, path, "resume_settle", resume_settle, Checker::duration);
        let members = self.with_default(&f, path, "members", Members::All, Checker::members);
        let seal = self.with_default(&f, path, "seal", true, Checker::boolean);
        // restic exits 3 when some files could not be read: the snapshot exists.
        let runs_restic = matches!(&steps, Some(steps) if steps.iter().flat_map(Step::stages).any(|argv| program_name(&argv[0]) == "restic"));
        // A task that runs restic unlocks what a stopped run left, unless it says otherwise.
        let unlock_stale =
            self.with_default(&f, path, "unlock_stale", runs_restic, Checker::boolean);
        if let (Some(true), Some(steps)) = (unlock_stale, &steps)
            && !steps.iter().flat_map(Step::stages).any(|a| program_name(&a[0]) == "restic")
            && let Some(n) = f.get("unlock_stale")
        {
            self.error(
                &join(path, "unlock_stale"),
                n.pos,
                "unlock_stale runs `restic unlock` with the restic of the task's steps, and no step runs restic",
            );
        }
        let warning_codes = if runs_restic { vec![3] } else { Vec::new() };
        let warning_exit_codes =
            self.with_default(&f, path, "warning_exit_codes", warning_codes, Checker::exit_codes);
        Some(Task {
            name: name.to_string(),
            schedule: schedule?,
            zone: zone?,
            steps: steps?,
            env: env_vars?,
            secrets: secrets?,
            timeout: timeout?,
            kill_grace: kill_grace?,
            on_overlap: on_overlap?,
            working_dir: working_dir?,
            redeem_limit: redeem_limit?,
            max_lateness: max_lateness?,
            random_delay: random_delay?,
            warning_exit_codes: warning_exit_codes?,
            hooks: hooks?,
            notify: task_notify?,
            output_file: output_file?,
            redeemers: redeemers?,
            retry: retry?,
            lock: lock?,
            audit: audit?,
            parallel: parallel?,
            unlock_stale: unlock_stale?,
            nice: nice?,
            io: io?,
            inhibit_sleep: inhibit_sleep?,
            when: when?,
            force_after: force_after?,
            blackout: blackout?,
            resume_settle: resume_settle?,
            members: members?,
            seal: seal?,
            verify: verify?,
        })
    }

    /// `members: all`, `members: none`, or `members: [USER...]` (names of users of this
    /// machine, resolved now, as `control_group:` is).
    fn members(&mut self, node: &Node, path: &str) -> Option<Members> {
        const EXPECTED: &str = "all, none, or a list of user names such as [alice]";
        match &node.value {
            Value::Str(word) if word == "all" => Some(Members::All),
            Value::Str(word) if word == "none" => Some(Members::None),
            Value::Seq(items) => {
                let mut users = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let name = self.non_empty_string(item, &p)?;
                    let Ok(Some(user)) = nix::unistd::User::from_name(&name) else {
                        self.error(
                            &p,
                            item.pos,
                            format!("no user {name:?} on this machine: members are user names (`getent passwd NAME` shows them)"),
                        );
                        return None;
                    };
                    users.push(user.uid.as_raw());
                }
                Some(Members::Only(users))
            }
            _ => {
                self.type_error(path, node, EXPECTED);
                None
            }
        }
    }

    /// A step's `command` (one process), or its `pipeline` (the first stage, then the
    /// others); one of the two is there.
    fn program(
        &mut self,
        f: &super::walk::Fields<'_>,
        path: &str,
    ) -> Option<(Vec<String>, Vec<Vec<String>>)> {
        let (command, pipeline) = (f.get("command"), f.get("pipeline"));
        if let (Some(_), Some(p)) = (command, pipeline) {
            self.error(
                &join(path, "pipeline"),
                p.pos,
                "both `command` and `pipeline`: give one (a pipeline's first stage is its command)",
            );
            return None;
        }
        if let Some(c) = command {
            return self.argv(c, &join(path, "command")).map(|argv| (argv, Vec::new()));
        }
        let node = pipeline?;
        let p = join(path, "pipeline");
        let Value::Seq(items) = &node.value else {
            self.type_error(&p, node, "a list of commands, each [PROGRAM, ARGS...]");
            return None;
        };
        if items.len() < 2 {
            self.error(
                &p,
                node.pos,
                "a pipeline needs at least two stages; for one command, write `command:`",
            );
            return None;
        }
        if let Some(n) = f.get("sha256") {
            self.error(
                &join(path, "sha256"),
                n.pos,
                "a pipeline's stages cannot be pinned with `sha256`; pin_binaries pins the first stage",
            );
        }
        let mut stages = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.argv(item, &index(&p, i)) {
                Some(argv) => stages.push(argv),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let first = stages.remove(0);
        Some((first, stages))
    }

    fn redeem_limit(&mut self, node: &Node, path: &str) -> Option<u32> {
        match node.value {
            Value::Int(i) if (1..=1000).contains(&i) => Some(i as u32),
            Value::Int(i) => {
                self.error(path, node.pos, format!("{i} is out of range 1-1000"));
                None
            }
            _ => {
                self.type_error(path, node, "a whole number from 1 to 1000");
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, path: &str) -> Option<Vec<Step>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of steps, each {command: [...]}");
            return None;
        };
        if items.is_empty() {
            self.error(path, node.pos, "empty list of steps: give at least one step");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(f) = self.fields(item, &p, "a step mapping {command: [...]}", Some(STEP_KEYS))
            else {
                ok = false;
                continue;
            };
            let command = if f.get("command").is_none() && f.get("pipeline").is_none() {
                self.required(&f, &p, "command", item.pos);
                None
            } else {
                self.program(&f, &p)
            };
            let env = self.with_default(&f, &p, "env", Vec::new(), Checker::env);
            let continue_on_error =
                self.with_default(&f, &p, "continue_on_error", false, Checker::boolean);
            let sha256 = self.optional(&f, &p, "sha256", Checker::sha256);
            let read_all = self.optional(&f, &p, "read_all", Checker::boolean);
            match (command, env, continue_on_error, sha256.zip(read_all)) {
                (
                    Some((command, pipe_into)),
                    Some(env),
                    Some(continue_on_error),
                    Some((sha256, read_all)),
                ) => {
                    out.push(Step { command, pipe_into, env, continue_on_error, sha256, read_all });
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A SHA-256 digest as 64 hex digits (as `sha256sum` prints it).
    fn sha256(&mut self, node: &Node, path: &str) -> Option<[u8; 32]> {
        let text = self.string(node, path)?;
        let hex = text.trim().as_bytes();
        // Only ASCII hex digits: slicing multi-byte text, or `+` (which from_str_radix takes), must not pass.
        let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let digest = (hex.len() == 64 && hex.iter().all(u8::is_ascii_hexdigit))
            .then(|| {
                hex.chunks(2)
                    .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten();
        if let Some(bytes) = digest {
            bytes.try_into().ok()
        } else {
            self.error(
                path,
                node.pos,
                format!("invalid sha256 {text:?}: write the 64 hex digits that `sha256sum PROGRAM` prints"),
            );
            None
        }
    }

    fn exit_codes(&mut self, node: &Node, path: &str) -> Option<Vec<i32>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(path, node, "a list of exit codes such as [3]");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.value {
                Value::Int(code) if (1..=255).contains(&code) => out.push(code as i32),
                _ => {
                    self.type_error(&index(path, i), item, "an exit code from 1 to 255");
                    return None;
                }
            }
        }
        Some(out)
    }
}
