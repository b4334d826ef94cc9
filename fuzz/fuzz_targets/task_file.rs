//! The task-file parser and validator on arbitrary bytes: never a panic, a hang or an
//! unbounded allocation, whatever the YAML (or JSON) says.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = backupnizza::config::Environment::default();
    let checked = backupnizza::config::parse(text, Path::new("fuzz.yaml"), &env);
    // Rendering every problem exercises the message formatting too.
    for p in &checked.problems {
        let _ = p.display(Path::new("fuzz.yaml")).to_string();
    }
});
