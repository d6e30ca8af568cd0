//! The engine core (`src/gpu/`, `tensor.rs`, `tape.rs`, `params.rs`) builds and reads without
//! the op families or anything above them: no core file names a crate module outside the core.
//! Op families, models and trainers depend on the core, never the other way round (see the
//! header of `src/gpu/mod.rs`). CPU only: it reads the sources.

use std::path::Path;

/// The crate modules the core may name: itself, its error type and the `shader!` macro.
const CORE: &[&str] = &["error", "gpu", "params", "shader", "tape", "tensor"];

/// Every `crate::<module>` (or `crate::{<module>, ...}`) in `text` outside [`CORE`], with its
/// line number: comments and doc links included, so a core file does not even point upwards.
fn upward_paths(text: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for (no, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group.split(['}', ',']).map(|s| ident(s.trim())).collect(),
                None => vec![ident(rest)],
            };
            found.extend(names.into_iter().filter(|n| !n.is_empty() && !CORE.contains(&n.as_str())).map(|n| (no + 1, n)));
        }
    }
    found
}

fn core_files() -> Vec<std::path::PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(src.join("gpu")).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend(["tensor.rs", "tape.rs", "params.rs"].map(|f| src.join(f)));
    files.retain(|p| p.extension().is_some_and(|x| x == "rs"));
    files.sort();
    files
}

#[test]
fn the_scanner_finds_upward_paths() {
    let text = "use crate::error::Result;\nlet x = crate::ops::elementwise::fill(&t, 0.0);\nuse crate::{gpu, model};\n/// [`crate::params::RowChunks`]";
    assert_eq!(upward_paths(text), vec![(2, "ops".to_string()), (3, "model".to_string())]);
}

#[test]
fn the_engine_core_names_no_op_family() {
    let files = core_files();
    assert!(files.len() >= 9, "expected src/gpu/*.rs, tensor.rs, tape.rs, params.rs: {files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, name) in upward_paths(&text) {
            bad.push(format!("{}:{line}: crate::{name}", f.display()));
        }
    }
    assert!(bad.is_empty(), "the engine core names modules above it:\n{}", bad.join("\n"));
}
