//! `plumb kto` end to end through the built binary: a tiny SFT run, then KTO on the built-in
//! thumbs data (frozen reference), on prepared unpaired JSONL with LoRA, and `--help` examples;
//! a bad loss type is a clear error.
mod common;
use std::process::Command;

/// Run `plumb ARGS`; returns (success, stdout + stderr).
fn plumb(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().expect("run plumb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn sft_then_kto_on_builtin_thumbs_and_prepared_jsonl() {
    if common::gpu().is_none() {
        return;
    }
    let t = std::env::temp_dir().join(format!("plumb-cli-kto-{}", std::process::id()));
    let p = |s: &str| t.join(s).display().to_string();
    let (ok, text) = plumb(&["sft", "--model", "gpt-nano", "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--out", &p("sft"), "--samples", "0"]);
    assert!(ok, "sft failed:\n{text}");
    let (ok, text) = plumb(&["kto", "--init", &p("sft"), "--steps", "2", "--batch-size", "4", "--max-rows", "8", "--max-len", "32", "--out", &p("kto")]);
    assert!(ok, "kto failed:\n{text}");
    assert!(text.contains("8 desirable, 8 undesirable") && text.contains("kl "), "{text}");
    let log = std::fs::read_to_string(t.join("kto/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    assert!(t.join("kto/latest").is_file(), "no final checkpoint");

    std::fs::write(t.join("thumbs.jsonl"), "{\"prompt\": \"\\n\", \"completion\": \"good\\n\", \"label\": true}\n{\"prompt\": \"\\n\", \"completion\": \"bad\\n\", \"label\": false}\n").unwrap();
    let (ok, text) = plumb(&["data", "prepare", &p("thumbs.jsonl"), &p("thumbs.bin"), "--tokenizer", "byte"]);
    assert!(ok && text.contains("unpaired"), "prepare failed:\n{text}");
    let (ok, text) = plumb(&["kto", "--init", &p("sft"), "--data", &p("thumbs.bin"), "--steps", "1", "--batch-size", "2", "--lora", "2", "--max-len", "32", "--loss", "apo_zero_unpaired", "--out", &p("kto-lora")]);
    assert!(ok, "kto --lora failed:\n{text}");
    assert!(t.join("kto-lora/adapter/adapter_model.safetensors").is_file());

    let (ok, text) = plumb(&["kto", "--init", &p("sft"), "--loss", "sigmoid"]);
    assert!(!ok && text.contains("sigmoid") && text.contains("apo_zero_unpaired"), "unclear error:\n{text}");
    let (ok, text) = plumb(&["kto", "--help"]);
    assert!(ok && text.contains("Examples:") && text.contains("plumb kto --loss apo_zero_unpaired"), "{text}");
    std::fs::remove_dir_all(&t).ok();
}
