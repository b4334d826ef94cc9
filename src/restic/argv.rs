//! Reading a restic command line: which subcommand it runs, and, for a `forget`, the
//! `snapshots` command that lists the same repository with the same credentials. The daemon
//! runs that listing before and after a forget step, so it knows what the step removed
//! whether or not it passed `--json` (and whether or not restic said so truthfully: restic
//! 0.18 exits 0 when an append-only server refuses the removals).

/// restic's global options that take a value (restic 0.14 to 0.19), with their short forms:
/// what a listing must keep (the repository, the password, TLS, the cache, backend options).
const GLOBAL_WITH_VALUE: &[&str] = &[
    "-r",
    "--repo",
    "--repository-file",
    "-p",
    "--password-file",
    "--key-hint",
    "--password-command",
    "--retry-lock",
    "--cache-dir",
    "--cacert",
    "--tls-client-cert",
    "--compression",
    "--limit-upload",
    "--limit-download",
    "--pack-size",
    "-o",
    "--option",
    "--http-user-agent",
    "--stuck-request-timeout",
];

/// Global flags without a value that change how the repository is reached.
const GLOBAL_FLAGS: &[&str] =
    &["--no-cache", "--insecure-tls", "--insecure-no-password", "--no-extra-verify"];

/// Options of `forget` that take a value: skipped with it (the listing is of every snapshot).
const FORGET_WITH_VALUE: &[&str] = &[
    "-l",
    "--keep-last",
    "-H",
    "--keep-hourly",
    "-d",
    "--keep-daily",
    "-w",
    "--keep-weekly",
    "-m",
    "--keep-monthly",
    "-y",
    "--keep-yearly",
    "--keep-within",
    "--keep-within-hourly",
    "--keep-within-daily",
    "--keep-within-weekly",
    "--keep-within-monthly",
    "--keep-within-yearly",
    "--keep-tag",
    "--host",
    "--hostname",
    "--tag",
    "--path",
    "-g",
    "--group-by",
    "--max-unused",
    "--max-repack-size",
    "--repack-smaller-than",
];

/// Whether a restic command line's repository (`-r`/`--repo`, else `repository_env`, the
/// step's `RESTIC_REPOSITORY`) is on restic's `rclone:` backend, with the `rclone` restic
/// starts left to its default (no `-o rclone.program=` given).
pub(crate) fn starts_rclone(argv: &[String], repository_env: Option<&str>) -> bool {
    let Some((program, args)) = argv.split_first() else { return false };
    if program.rsplit('/').next() != Some("restic")
        || args.iter().any(|a| a.contains("rclone.program="))
    {
        return false;
    }
    let mut repository = repository_env.map(str::to_string);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "-r" || arg == "--repo" {
            repository = args.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--repo=") {
            repository = Some(value.to_string());
        }
    }
    repository.is_some_and(|r| r.starts_with("rclone:"))
}

/// Whether a command line is `restic ... backup ...`.
pub(crate) fn is_backup(argv: &[String]) -> bool {
    subcommand(argv) == Some("backup")
}

/// The subcommand of a restic command line (`backup`, `forget`, ...), or `None` when the
/// program is not restic or no subcommand is given.
fn subcommand(argv: &[String]) -> Option<&str> {
    let (program, args) = argv.split_first()?;
    if program.rsplit('/').next() != Some("restic") {
        return None;
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if GLOBAL_WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// For a `restic ... forget ...` command line: `restic <its global options> snapshots
/// --json --no-lock`, which lists every snapshot of the same repository with the same
/// credentials (the step's environment does the rest). `None` for anything else.
pub(crate) fn listing_for_forget(argv: &[String]) -> Option<Vec<String>> {
    if subcommand(argv)? != "forget" {
        return None;
    }
    let mut listing = vec![argv[0].clone()];
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        let inline = arg.contains('=');
        if GLOBAL_WITH_VALUE.contains(&name) {
            listing.push(arg.clone());
            if !inline && let Some(value) = args.next() {
                listing.push(value.clone());
            }
        } else if GLOBAL_FLAGS.contains(&name) {
            listing.push(arg.clone());
        } else if FORGET_WITH_VALUE.contains(&name) && !inline {
            args.next();
        }
        // Everything else (the subcommand, forget's flags, snapshot ids, -v, -q, --json)
        // has no place in the listing.
    }
    listing.extend(["snapshots", "--json", "--no-lock"].map(String::from));
    Some(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rclone_backend_is_seen_in_the_arguments_or_the_environment() {
        let argv = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(starts_rclone(&argv(&["restic", "backup", "."]), Some("rclone:b2:x")));
        assert!(starts_rclone(&argv(&["restic", "-r", "rclone:b2:x", "backup"]), Some("/local")));
        assert!(starts_rclone(&argv(&["/usr/bin/restic", "--repo=rclone:x:", "init"]), None));
        assert!(!starts_rclone(
            &argv(&["restic", "--repo", "/local", "backup"]),
            Some("rclone:x:")
        ));
        assert!(!starts_rclone(
            &argv(&["restic", "-o", "rclone.program=/opt/rclone", "init"]),
            Some("rclone:x:")
        ));
        assert!(!starts_rclone(&argv(&["rclone", "serve", "restic"]), Some("rclone:x:")));
        assert!(!starts_rclone(&argv(&["restic", "backup"]), None));
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_forget_becomes_a_listing_of_the_same_repository() {
        let forget = argv(
            "/usr/bin/restic -r rest:http://h/r --password-command=secretbox_get -o s3.region=x forget --keep-last 3 --keep-within=1y --host h --prune -v --insecure-tls abc12345",
        );
        assert_eq!(
            listing_for_forget(&forget).unwrap().join(" "),
            "/usr/bin/restic -r rest:http://h/r --password-command=secretbox_get -o s3.region=x --insecure-tls snapshots --json --no-lock"
        );
        assert_eq!(
            listing_for_forget(&argv("restic forget -l 1 --prune")).unwrap().join(" "),
            "restic snapshots --json --no-lock"
        );
    }

    #[test]
    fn other_commands_have_no_listing() {
        assert_eq!(listing_for_forget(&argv("restic backup /d")), None);
        assert_eq!(listing_for_forget(&argv("restic -r forget backup /d")), None);
        assert_eq!(listing_for_forget(&argv("sh -c restic forget")), None);
        assert_eq!(subcommand(&argv("restic --repo x --json snapshots")), Some("snapshots"));
        assert_eq!(subcommand(&argv("restic")), None);
    }
}
