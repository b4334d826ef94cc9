//! References between sections, checked on the raw tree once the sections themselves are
//! done: every secret a task names (in `secrets:`, `{secret: NAME}` and
//! `{secret_file: NAME}` values, notification URLs, its hooks' `secrets:` and
//! `secretbox get NAME` in its commands) must be declared, a `secretbox get` must be within
//! the scope of the token its process gets (the task's, or its hook's own, none for a plain
//! hook), a `{secret_file:}` and a hook's secrets must be in the task's `secrets:` too, and every
//! declared secret should be used by some task.

use std::collections::BTreeSet;

use super::walk::{Checker, index, join, program_name, suggestion};
use crate::config::tree::{Node, Pos, Value};

/// The keys of notification presets that name a secret: (preset, key).
const PRESET_SECRETS: [(&str, &str); 3] =
    [("ntfy", "token_secret"), ("gotify", "token_secret"), ("email", "password_secret")];

impl Checker {
    /// References between sections: every secret a task names must be declared. This walks
    /// the tree rather than the checked values, so it still runs when a task has other
    /// problems (and reports everything in one go).
    #[expect(clippy::too_many_lines, reason = "a list of cross-references, one after another")]
    pub(super) fn cross_check(&mut self, root: &Node) {
        let declared: Vec<String> = match lookup(root, "secrets") {
            Some((_, node)) => string_keys(node).into_iter().map(|(k, _, _)| k).collect(),
            None => Vec::new(),
        };
        let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let tasks = lookup(root, "tasks").map(|(_, n)| string_keys(n)).unwrap_or_default();
        let names: Vec<String> = tasks.iter().map(|(t, _, _)| t.clone()).collect();
        for (task, _, node) in &tasks {
            self.cross_check_audit(node, task, &names);
        }
        for (task, _, node) in tasks {
            let tpath = join("tasks", &task);
            let scope: Vec<&str> = match lookup(node, "secrets") {
                Some((_, Node { value: Value::Seq(items), .. })) => {
                    let mut scope = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let Value::Str(name) = &item.value else { continue };
                        scope.push(name.as_str());
                        used.insert(name.clone());
                        if !declared.contains(name.as_str()) {
                            self.error(
                                &index(&join(&tpath, "secrets"), i),
                                item.pos,
                                format!(
                                    "task {task:?} names secret {name:?}, which is not declared under `secrets:`{}",
                                    suggestion(name, declared.iter().copied())
                                ),
                            );
                        }
                    }
                    scope
                }
                _ => Vec::new(),
            };
            self.cross_check_hooks(node, &task, &tpath, &scope, &declared);
            // The task's own env and command, then each step's.
            let mut places: Vec<(String, &Node)> = vec![(tpath.clone(), node)];
            if let Some((_, Node { value: Value::Seq(steps), .. })) = lookup(node, "steps") {
                places.extend(
                    steps.iter().enumerate().map(|(i, s)| (index(&join(&tpath, "steps"), i), s)),
                );
            }
            for (path, place) in places {
                if let Some((_, env)) = lookup(place, "env") {
                    for (var, _, value) in string_keys(env) {
                        let vpath = join(&join(&path, "env"), &var);
                        match &value.value {
                            Value::Str(text) => {
                                self.check_secretbox_use(
                                    text,
                                    &scope,
                                    (&vpath, value.pos),
                                    &declared,
                                    &task_fix(&task),
                                );
                            }
                            Value::Map(_) => {
                                let Some((form, Node { value: Value::Str(name), pos })) =
                                    ["secret", "secret_file"]
                                        .into_iter()
                                        .find_map(|k| lookup(value, k).map(|(_, v)| (k, v)))
                                else {
                                    continue;
                                };
                                used.insert(name.clone());
                                if !declared.contains(name.as_str()) {
                                    self.error(
                                        &join(&vpath, form),
                                        *pos,
                                        format!(
                                            "{{{form}: {name}}} in task {task:?} names a secret that is not declared under `secrets:`{}",
                                            suggestion(name, declared.iter().copied())
                                        ),
                                    );
                                } else if form == "secret_file" && !scope.contains(&name.as_str()) {
                                    // The file is the secret handed to the task's processes,
                                    // as a token is: the task's list says what it can touch.
                                    self.error(
                                        &join(&vpath, form),
                                        *pos,
                                        format!(
                                            "{{secret_file: {name}}} hands the secret to task {task:?}, which does not list it: add {name:?} to tasks.{task}.secrets"
                                        ),
                                    );
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if let Some((_, Node { value: Value::Seq(args), .. })) = lookup(place, "command") {
                    for (i, arg) in args.iter().enumerate() {
                        if let Value::Str(text) = &arg.value {
                            let apath = index(&join(&path, "command"), i);
                            self.check_secretbox_use(
                                text,
                                &scope,
                                (&apath, arg.pos),
                                &declared,
                                &task_fix(&task),
                            );
                        }
                    }
                }
            }
        }
        self.cross_check_notify(root, &declared, &mut used);
        if let Some((_, secrets)) = lookup(root, "secrets") {
            for (name, key, _) in string_keys(secrets) {
                if !used.contains(&name) {
                    self.warn(
                        &join("secrets", &name),
                        key.pos,
                        format!("secret {name:?} is not used by any task (add it to a task's `secrets:`)"),
                    );
                }
            }
        }
    }

    /// The secrets notifications name, top level and per task: `{secret: NAME}` URLs and
    /// the presets' `token_secret` and `password_secret`. Each must be declared; none has to
    /// be in a task's `secrets:`, since no process of the task gets it.
    fn cross_check_notify(
        &mut self,
        root: &Node,
        declared: &BTreeSet<&str>,
        used: &mut BTreeSet<String>,
    ) {
        let mut notify_nodes: Vec<(String, &Node)> = Vec::new();
        if let Some((_, n)) = lookup(root, "notify") {
            notify_nodes.push(("notify".into(), n));
        }
        for (task, _, node) in
            lookup(root, "tasks").map(|(_, n)| string_keys(n)).unwrap_or_default()
        {
            if let Some((_, n)) = lookup(node, "notify") {
                notify_nodes.push((join(&join("tasks", &task), "notify"), n));
            }
        }
        for (path, node) in notify_nodes {
            // (key path, how the file wrote it, the name, where)
            let mut names: Vec<(String, String, &str, Option<Pos>)> = Vec::new();
            for key in ["ping", "webhook"] {
                let Some((_, value)) = lookup(node, key) else { continue };
                if let Some((_, Node { value: Value::Str(name), pos })) = lookup(value, "secret") {
                    let shown = format!("{{secret: {name}}}");
                    names.push((join(&join(&path, key), "secret"), shown, name, *pos));
                }
            }
            for (preset, key) in PRESET_SECRETS {
                let Some((_, section)) = lookup(node, preset) else { continue };
                if let Some((_, Node { value: Value::Str(name), pos })) = lookup(section, key) {
                    let shown = format!("`{key}: {name}`");
                    names.push((join(&join(&path, preset), key), shown, name, *pos));
                }
            }
            for (at, shown, name, pos) in names {
                used.insert(name.to_string());
                if !declared.contains(name) {
                    self.error(
                        &at,
                        pos,
                        format!(
                            "{shown} names a secret that is not declared under `secrets:`{}",
                            suggestion(name, declared.iter().copied())
                        ),
                    );
                }
            }
        }
    }

    /// A task's hooks in the map form name secrets of their own: each must be declared and in
    /// the task's `secrets:` (a hook narrows its task's scope, never widens it, so the task's
    /// list stays the one place that says what the task can touch). A `secretbox get NAME`
    /// in a hook's command must be within the hook's own list: a plain hook gets no token.
    /// An audit's and a verifier's `tasks` must name other tasks of this file.
    fn cross_check_audit(&mut self, node: &Node, task: &str, names: &[String]) {
        for (key, verb) in [("audit", "audits"), ("verify", "verifies")] {
            let Some((_, section)) = lookup(node, key) else { continue };
            let Some((_, Node { value: Value::Seq(items), .. })) = lookup(section, "tasks") else {
                continue;
            };
            let path = join(&join(&join("tasks", task), key), "tasks");
            for (i, item) in items.iter().enumerate() {
                let Value::Str(name) = &item.value else { continue };
                if !names.contains(name) {
                    self.error(
                        &index(&path, i),
                        item.pos,
                        format!(
                            "task {task:?} {verb} task {name:?}, which is not in this file{}",
                            suggestion(name, names.iter().map(String::as_str))
                        ),
                    );
                } else if key == "verify" && name == task {
                    self.error(
                        &index(&path, i),
                        item.pos,
                        format!("task {task:?} verifies itself: a verifier makes no snapshots; name the backup tasks whose snapshots it proves"),
                    );
                }
            }
        }
    }

    fn cross_check_hooks(
        &mut self,
        task_node: &Node,
        task: &str,
        tpath: &str,
        task_scope: &[&str],
        declared: &BTreeSet<&str>,
    ) {
        let Some((_, hooks)) = lookup(task_node, "hooks") else { return };
        for (name, _, hook) in string_keys(hooks) {
            let hpath = join(&join(tpath, "hooks"), &name);
            let (command, scope): (Option<&Node>, Vec<&str>) = match &hook.value {
                Value::Seq(_) => (Some(hook), Vec::new()),
                Value::Map(_) => {
                    let mut scope = Vec::new();
                    if let Some((_, Node { value: Value::Seq(items), .. })) =
                        lookup(hook, "secrets")
                    {
                        for (i, item) in items.iter().enumerate() {
                            let Value::Str(secret) = &item.value else { continue };
                            scope.push(secret.as_str());
                            let at = index(&join(&hpath, "secrets"), i);
                            if !declared.contains(secret.as_str()) {
                                self.error(
                                    &at,
                                    item.pos,
                                    format!(
                                        "the {name} hook of task {task:?} names secret {secret:?}, which is not declared under `secrets:`{}",
                                        suggestion(secret, declared.iter().copied())
                                    ),
                                );
                            } else if !task_scope.contains(&secret.as_str()) {
                                self.error(
                                    &at,
                                    item.pos,
                                    format!(
                                        "the {name} hook may fetch only secrets its task may: add {secret:?} to tasks.{task}.secrets too"
                                    ),
                                );
                            }
                        }
                    }
                    (lookup(hook, "command").map(|(_, n)| n), scope)
                }
                _ => continue,
            };
            let Some(Node { value: Value::Seq(args), .. }) = command else { continue };
            let plain = matches!(hook.value, Value::Seq(_));
            let fix = |secret: &str| {
                if plain {
                    format!(
                        "a hook written as a plain command gets no token: write tasks.{task}.hooks.{name} as {{command: [...], secrets: [{secret}]}}"
                    )
                } else {
                    format!("add {secret:?} to tasks.{task}.hooks.{name}.secrets")
                }
            };
            let cpath = if plain { hpath.clone() } else { join(&hpath, "command") };
            for (i, arg) in args.iter().enumerate() {
                if let Value::Str(text) = &arg.value {
                    let apath = index(&cpath, i);
                    self.check_secretbox_use(text, &scope, (&apath, arg.pos), declared, &fix);
                }
            }
        }
    }

    /// `RESTIC_PASSWORD_COMMAND: secretbox get repo` only works if `repo` is in the scope of
    /// the process's token; catching it here saves a failed 3 a.m. backup. `fix` says how to
    /// bring a name into scope.
    fn check_secretbox_use(
        &mut self,
        text: &str,
        scope: &[&str],
        (path, pos): (&str, Option<Pos>),
        declared: &BTreeSet<&str>,
        fix: &dyn Fn(&str) -> String,
    ) {
        let words: Vec<&str> = text.split_whitespace().collect();
        for (i, pair) in words.windows(2).enumerate() {
            if program_name(pair[0]) != "secretbox" || pair[1] != "get" {
                continue;
            }
            let Some(name) = words[i + 2..].iter().find(|w| !w.starts_with('-')) else { continue };
            // In a shell snippet the name may be followed by `;`, `)` or a quote.
            let name = name.trim_start_matches(['"', '\'']);
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .unwrap_or(name.len());
            let name = &name[..end];
            if name.is_empty() {
                continue;
            }
            if !declared.contains(name) {
                self.error(
                    path,
                    pos,
                    format!(
                        "`secretbox get {name}`: secret {name:?} is not declared under `secrets:`{}",
                        suggestion(name, declared.iter().copied())
                    ),
                );
            } else if !scope.contains(&name) {
                self.error(
                    path,
                    pos,
                    format!("`secretbox get {name}` will be refused: {}", fix(name)),
                );
            }
        }
    }
}

/// How to bring a name into the scope of a task's steps.
fn task_fix(task: &str) -> impl Fn(&str) -> String + '_ {
    move |name| format!("add {name:?} to tasks.{task}.secrets")
}

/// `key`'s key and value nodes in a mapping; problems with the mapping itself were already
/// reported by the sections, so anything else is simply not found.
fn lookup<'n>(node: &'n Node, key: &str) -> Option<(&'n Node, &'n Node)> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(k, v)| (k, v)),
        _ => None,
    }
}

/// A mapping's entries with string keys, first occurrence of each.
fn string_keys(node: &Node) -> Vec<(String, &Node, &Node)> {
    let mut out: Vec<(String, &Node, &Node)> = Vec::new();
    if let Value::Map(entries) = &node.value {
        for (k, v) in entries {
            if let Value::Str(name) = &k.value
                && !out.iter().any(|(n, _, _)| n == name)
            {
                out.push((name.clone(), k, v));
            }
        }
    }
    out
}
