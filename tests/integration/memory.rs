//! "One copy, locked": the daemon's memory as an attacker with its swap
//! file or a core dump would see it. The real daemon loads a canary secret from every kind of
//! source (kernel keyutils, the Secret Service, `command:`, `file:`, `env:`), real `secretbox`
//! processes redeem each several times, and then every byte of the daemon's address space is
//! read through `/proc/PID/mem` and each occurrence of a canary is placed in its mapping from
//! `/proc/PID/smaps`.
//!
//! The rule: every occurrence lies in a mapping the kernel keeps locked as a whole (`lo` in
//! `VmFlags`, and `Locked:` equal to `Size:`, so every page of it is resident and unevictable,
//! not just the page of the hit) and leaves out of core dumps (`dd`). Whole-mapping rather than
//! per-page: a locked mapping is a unit for the kernel (mlock sets a flag on the mapping and
//! faults in all of it), so a mapping that is only partly locked means the lock failed, and
//! the secret store allocates its own mappings, so nothing else shares them. Two controls keep
//! the scan honest: each canary must be found (on its locked page), and a string the daemon
//! keeps in its ordinary heap (the scratch directory's path, from the task file) must be
//! found in an unlocked mapping — a scan that read nothing would otherwise pass.
//!
//! Reading another process's memory, like a swap file, needs root (the daemon is not
//! dumpable): without root the test says SKIPPED and passes, as the other root-only tests do;
//! CI runs as root. The Secret Service part needs `.ci/test`'s private D-Bus session.

use std::os::unix::fs::FileExt;
use std::process::Command;

use crate::daemon::{require_secret_service, seed_keychains};
use crate::harness::{Scratch, TRIGGERED, canary, sha256_hex, trigger, write_private};

/// One mapping of the daemon, from `/proc/PID/smaps`.
#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    header: String,
    size_kb: u64,
    /// Resident and swapped-out memory: what a swap file or a core could hold.
    present_kb: u64,
    locked_kb: u64,
    flags: Vec<String>,
}

impl Mapping {
    /// Locked as a whole (every page resident and unevictable) and left out of core dumps.
    fn locked(&self) -> bool {
        self.flags.iter().any(|f| f == "lo")
            && self.flags.iter().any(|f| f == "dd")
            && self.locked_kb == self.size_kb
    }
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            out.push(Mapping {
                start,
                end,
                header: line.to_string(),
                size_kb: 0,
                present_kb: 0,
                locked_kb: 0,
                flags: Vec::new(),
            });
            continue;
        }
        let Some(current) = out.last_mut() else { continue };
        let kb = || words.clone().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        match first {
            "Size:" => current.size_kb = kb(),
            "Rss:" | "Swap:" => current.present_kb += kb(),
            "Locked:" => current.locked_kb = kb(),
            "VmFlags:" => current.flags = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    out
}

/// Where each needle occurs in the daemon's memory: (address, index of its mapping).
fn scan(pid: u32, maps: &[Mapping], needles: &[&[u8]]) -> Vec<Vec<(u64, usize)>> {
    const CHUNK: u64 = 1 << 20;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) as u64 - 1;
    let mut hits = vec![Vec::new(); needles.len()];
    let mut buf = vec![0u8; (CHUNK + overlap) as usize];
    for (i, map) in maps.iter().enumerate() {
        // The vsyscall page lies beyond what a file offset can address; a mapping with no
        // page in memory or swap (reserved, never touched) holds nothing.
        if map.start > i64::MAX as u64 || map.present_kb == 0 {
            continue;
        }
        let mut at = map.start;
        while at < map.end {
            let want = (map.end - at).min(CHUNK + overlap) as usize;
            // Pages that cannot be read (guard pages, I/O mappings) hold nothing to find.
            let Ok(got) = mem.read_at(&mut buf[..want], at) else {
                at += CHUNK;
                continue;
            };
            for (n, needle) in needles.iter().enumerate() {
                let window = &buf[..got];
                let mut from = 0;
                while let Some(pos) = find(&window[from..], needle) {
                    let addr = at + (from + pos) as u64;
                    // A hit inside the overlap is found again by the next chunk.
                    if ((from + pos) as u64) < CHUNK {
                        hits[n].push((addr, i));
                    }
                    from += pos + 1;
                }
            }
            at += CHUNK;
        }
    }
    hits
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Scans for every canary and checks the rule and both controls; `when` names the moment.
fn check_memory(pid: u32, when: &str, canaries: &[(&str, Vec<u8>)], heap_marker: &[u8]) {
    let maps = mappings(pid);
    let mut needles: Vec<&[u8]> = canaries.iter().map(|(_, v)| v.as_slice()).collect();
    needles.push(heap_marker);
    let hits = scan(pid, &maps, &needles);
    let mut problems = Vec::new();
    for ((name, _), found) in canaries.iter().zip(&hits) {
        if !found.iter().any(|(_, m)| maps[*m].locked()) {
            problems.push(format!("{when}: {name}: not found on a locked page (scan is blind?)"));
        }
        for (addr, m) in found.iter().filter(|(_, m)| !maps[*m].locked()) {
            let map = &maps[*m];
            problems.push(format!(
                "{when}: {name}: a copy at {addr:#x} in an unlocked mapping: {} (Size {} kB, Locked {} kB, VmFlags {})",
                map.header,
                map.size_kb,
                map.locked_kb,
                map.flags.join(" ")
            ));
        }
    }
    let control = hits.last().expect("the heap marker's hits");
    assert!(
        control.iter().any(|(_, m)| !maps[*m].locked()),
        "{when}: the heap control (the task file's directory) was not found in unlocked memory: the scan reads nothing"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Regression: an `env:` source stayed, for the daemon's whole life, in
/// the snapshot of the environment taken at start (`Environment::from_process`), and in
/// freed copies of it; read buffers of `file:` and `command:` sources grew by reallocation
/// and left unzeroed copies behind; each redemption copied the value into an unlocked heap
/// buffer for the response.
#[test]
fn every_copy_of_a_secret_in_the_daemons_memory_is_on_locked_pages() {
    if !nix::unistd::getuid().is_root() {
        eprintln!(
            "SKIPPED: reading the daemon's memory through /proc/PID/mem needs root (CI runs as root)"
        );
        return;
    }
    require_secret_service();
    let scratch = Scratch::new();
    let unique = canary();
    let names = ["keyutils", "secret_service", "command", "file", "env"];
    // The file's value holds a quote and a backslash: its escaped forms are copies too.
    let values: Vec<(&str, String)> = names
        .iter()
        .map(|n| (*n, if *n == "file" { format!("{}\"q\\", canary()) } else { canary() }))
        .collect();
    let value = |name: &str| values.iter().find(|(n, _)| *n == name).unwrap().1.clone();

    seed_keychains(
        (&format!("keyring:mem@{unique}"), &value("keyutils")),
        ("backupnizza memory test", &unique, "mem", &value("secret_service")),
    );
    let helper_out = scratch.path().join("helper-output");
    std::fs::write(&helper_out, format!("{}\n", value("command"))).unwrap();
    let file = scratch.path().join("secret-file");
    write_private(&file, format!("{}\n", value("file")).as_bytes());

    let script: String = names
        .iter()
        .map(|n| format!("secretbox get --no-newline {n} | sha256sum | cut -c1-64 >> digests; "))
        .collect();
    let config = scratch.config(&format!(
        "secrets:
  keyutils: {{keyring: {{service: {unique}, account: mem, store: keyutils}}}}
  secret_service: {{keyring: {{service: {unique}, account: mem, store: secret-service}}}}
  command: {{command: [cat, {}]}}
  file: {{file: {}}}
  env: {{env: BNZ_TEST_MEMORY_SECRET}}
tasks:
  all:
    {TRIGGERED}
    command: [sh, -c, '{script}']
    secrets: [{}]
",
        helper_out.display(),
        file.display(),
        names.join(", ")
    ));
    let daemon = scratch.start_daemon_with(&config, |cmd| {
        cmd.env("BNZ_TEST_MEMORY_SECRET", value("env"));
    });
    let pid = daemon.pid();

    let escaped = serde_json::to_string(&value("file")).unwrap();
    let mut canaries: Vec<(&str, Vec<u8>)> =
        values.iter().map(|(n, v)| (*n, v.as_bytes().to_vec())).collect();
    canaries.push(("file (JSON-escaped)", escaped.trim_matches('"').as_bytes().to_vec()));
    let heap_marker = scratch.path().as_os_str().as_encoded_bytes().to_vec();

    check_memory(pid, "after start", &canaries, &heap_marker);

    const RUNS: usize = 3;
    for _ in 0..RUNS {
        trigger(&scratch, &config, "all", true).expect_code(0);
    }
    let digests = std::fs::read_to_string(scratch.path().join("digests")).unwrap();
    let expected: Vec<String> =
        (0..RUNS).flat_map(|_| names.iter().map(|n| sha256_hex(value(n).as_bytes()))).collect();
    assert_eq!(
        digests.lines().collect::<Vec<_>>(),
        expected,
        "every redemption got its value\n{}",
        daemon.log_text()
    );

    check_memory(pid, "after redemptions", &canaries, &heap_marker);

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        find(&environ, value("env").as_bytes()).is_none(),
        "the env source is still in the daemon's /proc/PID/environ"
    );
    assert!(daemon.stop().success());
    let _ =
        Command::new("secret-tool").args(["clear", "service", &unique, "username", "mem"]).output();
    let _ =
        Command::new("keyctl").args(["purge", "user", &format!("keyring:mem@{unique}")]).output();
}
