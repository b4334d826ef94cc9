//! A task's `output_file:`: a path alone, or `{path, max_size, keep}`. Paths expand `~/` and
//! `$VARS` like every path in the file; a relative one is relative to `state_dir`, which is
//! private to the daemon (0700) and is where the history already lives. Sizes are bytes, or a
//! number with a unit (`512KiB`, `10MiB`, `1GB`).

use std::path::Path;

use super::walk::{Checker, join};
use crate::config::tree::{Node, Value};
use crate::config::{
    DEFAULT_OUTPUT_KEEP, DEFAULT_OUTPUT_MAX_SIZE, Environment, MAX_OUTPUT_KEEP,
    MIN_OUTPUT_MAX_SIZE, OutputFile,
};

const OUTPUT_FILE_KEYS: &[&str] = &["path", "max_size", "keep"];
/// Units a size may carry, case-insensitive; bare numbers are bytes.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
];

impl Checker {
    pub(super) fn output_file(
        &mut self,
        node: &Node,
        path: &str,
        env: &Environment,
        state_dir: Option<&Path>,
    ) -> Option<OutputFile> {
        if !matches!(node.value, Value::Map(_)) {
            let file = self.output_path(node, path, env, state_dir)?;
            return Some(OutputFile {
                path: file,
                max_size: DEFAULT_OUTPUT_MAX_SIZE,
                keep: DEFAULT_OUTPUT_KEEP,
            });
        }
        let f = self.fields(
            node,
            path,
            "a path, or a mapping {path: PATH, max_size: 10MiB, keep: 3}",
            Some(OUTPUT_FILE_KEYS),
        )?;
        let file = self
            .required(&f, path, "path", node.pos)
            .and_then(|n| self.output_path(n, &join(path, "path"), env, state_dir));
        let max_size =
            self.with_default(&f, path, "max_size", DEFAULT_OUTPUT_MAX_SIZE, Checker::max_size);
        let keep = self.with_default(&f, path, "keep", DEFAULT_OUTPUT_KEEP, Checker::keep);
        Some(OutputFile { path: file?, max_size: max_size?, keep: keep? })
    }

    fn output_path(
        &mut self,
        node: &Node,
        path: &str,
        env: &Environment,
        state_dir: Option<&Path>,
    ) -> Option<std::path::PathBuf> {
        let raw = self.non_empty_string(node, path)?;
        if raw.ends_with('/') {
            self.error(path, node.pos, format!("{raw:?} names a directory: name the file"));
            return None;
        }
        match env.expand_path(&raw) {
            Ok(p) if p.is_absolute() => Some(p),
            // Without a state_dir the file is invalid anyway, and that is reported there.
            Ok(p) => Some(state_dir.map_or(p.clone(), |dir| dir.join(&p))),
            Err(e) => {
                self.error(path, node.pos, e);
                None
            }
        }
    }

    fn max_size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let size = match &node.value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => parse_size(s),
            _ => None,
        };
        let Some(size) = size else {
            self.type_error(
                path,
                node,
                "a size such as 10MiB, 512KiB or 1GB (a bare number is bytes)",
            );
            return None;
        };
        if size < MIN_OUTPUT_MAX_SIZE {
            self.error(
                path,
                node.pos,
                format!(
                    "{size} bytes is too small: at least {} KiB, so each file holds whole lines",
                    MIN_OUTPUT_MAX_SIZE / 1024
                ),
            );
            return None;
        }
        Some(size)
    }

    fn keep(&mut self, node: &Node, path: &str) -> Option<u32> {
        match node.value {
            Value::Int(i) if (1..=i128::from(MAX_OUTPUT_KEEP)).contains(&i) => Some(i as u32),
            Value::Int(i) => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "{i} is out of range 1-{MAX_OUTPUT_KEEP}: how many rotated files (PATH.1, PATH.2, ...) to keep besides PATH"
                    ),
                );
                None
            }
            _ => {
                self.type_error(path, node, &format!("a whole number from 1 to {MAX_OUTPUT_KEEP}"));
                None
            }
        }
    }
}

/// `10MiB` → 10485760; `None` for anything else than digits and one known unit.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..].trim().to_ascii_lowercase();
    if unit.is_empty() {
        return Some(number);
    }
    let (_, scale) = SIZE_UNITS.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*scale)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("512 kib"), Some(512 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("10 MB"), Some(10_000_000));
        for bad in ["", "MiB", "1.5MiB", "10 MiBs", "-1", "10m", "99999999999999999999GiB"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
