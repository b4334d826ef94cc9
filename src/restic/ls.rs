//! `restic ls --json SNAPSHOT`, read for a spot check: one JSON object per line, the
//! snapshot first (`"struct_type":"snapshot"`), then one per node (`"struct_type":"node"`).
//! The [`Sampler`] keeps a uniform random sample of the snapshot's regular files as the
//! lines stream past (reservoir sampling), so a snapshot of millions of files costs memory
//! for the sample alone, and the lines never reach the log.
//!
//! The choice is made by a seeded generator (SplitMix64, written out here so that a seed
//! chooses the same files in every version): the same seed over the same snapshot chooses
//! the same files, which is what lets a verification run be repeated.

use serde::Deserialize;

/// A regular file of the snapshot, as `restic ls --json` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// The path inside the snapshot (what `restore --include` matches).
    pub path: String,
    pub size: u64,
    /// As restic wrote it: RFC 3339 with nanoseconds.
    pub mtime: String,
}

#[derive(Deserialize)]
struct NodeLine {
    struct_type: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    mtime: String,
}

/// SplitMix64: small, fast, and the same in every release.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0), without modulo bias worth speaking of for n < 2^40.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Keeps `want` files chosen uniformly among those streamed past.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    want: usize,
    rng: SplitMix64,
    /// Regular files seen.
    pub files: u64,
    /// Nodes of every kind seen (a listing that printed none did not list).
    pub nodes: u64,
    pub picked: Vec<Node>,
}

impl Sampler {
    pub(crate) fn new(want: u32, seed: u64) -> Sampler {
        Sampler {
            want: want as usize,
            rng: SplitMix64(seed),
            files: 0,
            nodes: 0,
            picked: Vec::new(),
        }
    }

    /// Reads one stdout line; `true` when it was `ls --json`'s (and so is not to be logged).
    pub(crate) fn line(&mut self, line: &str) -> bool {
        let trimmed = line.trim();
        if !trimmed.starts_with('{') || !trimmed.contains("\"struct_type\"") {
            return false;
        }
        let Ok(node) = serde_json::from_str::<NodeLine>(trimmed) else { return false };
        match node.struct_type.as_str() {
            "snapshot" => true,
            "node" => {
                self.nodes += 1;
                if node.kind == "file" {
                    self.offer(Node { path: node.path, size: node.size, mtime: node.mtime });
                }
                true
            }
            _ => false,
        }
    }

    /// Reservoir sampling (Algorithm R): the n-th file replaces a kept one with
    /// probability want/n.
    fn offer(&mut self, node: Node) {
        self.files += 1;
        if self.picked.len() < self.want {
            self.picked.push(node);
            return;
        }
        let j = self.rng.below(self.files) as usize;
        if j < self.want {
            self.picked[j] = node;
        }
    }
}

/// `path` as a `restore --include` pattern that matches it alone: restic's patterns are
/// shell globs, and `\` escapes a character.
pub(crate) fn include_pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str) -> String {
        format!(
            r#"{{"name":"x","type":"file","path":"{path}","size":3,"mtime":"2026-01-01T00:00:00.5Z","struct_type":"node"}}"#
        )
    }

    #[test]
    fn the_same_seed_picks_the_same_files_and_every_file_can_be_picked() {
        let paths: Vec<String> = (0..200).map(|i| format!("/d/f{i}")).collect();
        let pick = |seed| {
            let mut s = Sampler::new(5, seed);
            assert!(s.line(r#"{"time":"t","paths":["/d"],"struct_type":"snapshot"}"#));
            assert!(s.line(r#"{"name":"d","type":"dir","path":"/d","struct_type":"node"}"#));
            for p in &paths {
                assert!(s.line(&line(p)));
            }
            assert_eq!((s.files, s.nodes), (200, 201));
            s.picked.into_iter().map(|n| n.path).collect::<Vec<_>>()
        };
        assert_eq!(pick(7), pick(7));
        assert_eq!(pick(7).len(), 5);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..400 {
            seen.extend(pick(seed));
        }
        // Uniform: over 400 draws of 5, all but a handful of the 200 files come up.
        assert!(seen.len() > 190, "{}", seen.len());
    }

    #[test]
    fn other_lines_are_not_taken_and_fewer_files_than_wanted_are_all_kept() {
        let mut s = Sampler::new(20, 1);
        assert!(!s.line("restoring snapshot 1234"));
        assert!(!s.line(r#"{"message_type":"status"}"#));
        assert!(s.line(&line("/a")));
        assert_eq!(s.picked.len(), 1);
        assert_eq!(s.picked[0].mtime, "2026-01-01T00:00:00.5Z");
    }

    #[test]
    fn a_pattern_escapes_the_glob_characters() {
        assert_eq!(include_pattern("/a/we*ird[1]?.txt"), r"/a/we\*ird\[1\]\?.txt");
        assert_eq!(include_pattern(r"/a\b"), r"/a\\b");
    }
}
