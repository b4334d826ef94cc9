//! The docs' claims about tests are checked like code: every mitigation row of
//! docs/security.md names at least one test, and every test it names exists.

use std::path::Path;

/// `FILE.rs::name` references in a text, with the file as written.
fn references(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for piece in text.split('`') {
        if let Some((file, name)) = piece.split_once("::")
            && Path::new(file).extension().is_some_and(|e| e == "rs")
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push((file.to_string(), name.to_string()));
        }
    }
    out
}

#[test]
fn every_mitigation_in_security_md_names_a_test_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let mitigations = text.split("## Surfaces and mitigations").nth(1).unwrap();
    let mitigations = mitigations.split("\n## ").next().unwrap();
    let mut rows = 0;
    for line in mitigations.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split(" | ").collect();
        if line.starts_with("| threat") || line.starts_with("|---") {
            continue;
        }
        rows += 1;
        let proof = cells.last().unwrap();
        assert!(!references(proof).is_empty(), "a mitigation names no test: {line}");
    }
    assert!(rows >= 30, "only {rows} mitigation rows found: did the table format change?");
    let refs = references(&text);
    // The introduction's `tests/integration/FILE.rs::test` is the pattern, not a test.
    for (file, name) in refs.iter().filter(|(f, _)| !f.contains("FILE")) {
        let candidates = [root.join("tests/integration").join(file), root.join(file)];
        let source = candidates
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| panic!("docs/security.md names {file}, which does not exist"));
        assert!(
            source.contains(&format!("fn {name}(")),
            "docs/security.md names {file}::{name}, which is not a function there"
        );
    }
}

/// The restic recipes of docs/operations.md, put together as one task file (the first block
/// holds the shared anchor, the others are tasks), pass `validate`.
#[test]
fn the_restic_recipes_in_operations_md_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let start = text.find("## Recipes for restic tasks").expect("the recipes section");
    let section = &text[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let blocks: Vec<&str> =
        section.split("```yaml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(blocks.len() >= 4, "{blocks:?}");
    let scratch = crate::harness::Scratch::new();
    let file = scratch.write(
        "recipes.yaml",
        format!(
            "{}secrets:\n  repo: {{keyring: {{service: b, account: repo}}}}\n  offsite: {{keyring: {{service: b, account: o}}}}\n  rclone-config: {{keyring: {{service: b, account: r}}}}\ntasks:\n{}",
            blocks[0],
            blocks[1..].concat()
        ),
    );
    // Recipes, not this machine's tasks: pg_dump and the like need not be installed.
    let run = scratch.backupnizza(["validate", "--portable", "-c"]).run_with(&file);
    run.expect_code(0);
    assert!(run.stdout().contains("offsite") && run.stdout().contains("database"), "{run}");
}
