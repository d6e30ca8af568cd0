//! Model presets shipped inside the binary (the same files as `models/presets/*/config.json`),
//! so `plumb sft --model gpt-w2` works from anywhere.

use super::config::ModelConfig;
use crate::error::{Error, Result};
use std::path::Path;

/// (name, config.json text) of every preset.
pub const PRESETS: &[(&str, &str)] = &[
    ("gpt-w2", include_str!("../../models/presets/gpt-w2/config.json")),
    ("gpt-nano", include_str!("../../models/presets/gpt-nano/config.json")),
    ("gpt-demo", include_str!("../../models/presets/gpt-demo/config.json")),
    ("llama-nano", include_str!("../../models/presets/llama-nano/config.json")),
    ("smollm2-135m", include_str!("../../models/presets/smollm2-135m/config.json")),
];

/// The config of preset `name`, or of `name` read as a path (a directory or a config.json).
pub fn resolve(name: &str) -> Result<ModelConfig> {
    if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) {
        return ModelConfig::from_json(text, Path::new(name));
    }
    let p = Path::new(name);
    if p.exists() {
        return ModelConfig::load(p);
    }
    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    Err(Error::config("model", format!("`{name}` is neither a preset ({}) nor a path", names.join(", "))))
}
