//! Issue 14's defects as a user meets them, through the built `plumb` binary: data prepared with
//! another tokenizer refused by `sft`, `data prepare X X` refused with X intact, a finished run
//! not overwritten by a fresh one, `--resume` that cannot resume, settings changed on resume,
//! `--steps 0` / `--grad-accum 0` / a negative loss weight refused, reference log-probs used at
//! another max-len refused, and `generate` on NaN weights an error. Models are gpt-nano, runs a
//! step or two.
mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn plumb(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().expect("run plumb");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn fails(args: &[&str], want: &str) -> String {
    let (ok, text) = plumb(args);
    assert!(!ok, "plumb {} must fail:\n{text}", args.join(" "));
    assert!(text.contains(want), "plumb {}: expected `{want}` in:\n{text}", args.join(" "));
    text
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plumb-relcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cat<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn data_prepare_refuses_to_overwrite_its_input() {
    let d = scratch("prepare");
    let x = d.join("x.jsonl");
    let text = "{\"text\": \"a review\"}\n";
    std::fs::write(&x, text).unwrap();
    fails(&["data", "prepare", &s(&x), &s(&x), "--tokenizer", "byte"], "would destroy the input");
    assert_eq!(std::fs::read_to_string(&x).unwrap(), text, "the input must survive");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sft_refuses_data_from_another_tokenizer() {
    if common::gpu().is_none() {
        return;
    }
    let d = scratch("tokenizer");
    let x = d.join("x.jsonl");
    std::fs::write(&x, "{\"text\": \"The film was a delight from start to finish, and the cast shines.\"}\n".repeat(20)).unwrap();
    let bin = d.join("gpt2.bin");
    let (ok, text) = plumb(&["data", "prepare", &s(&x), &s(&bin), "--tokenizer", "gpt2"]);
    assert!(ok, "{text}");
    let out = d.join("run");
    fails(&["sft", "--model", "gpt-nano", "--data", &s(&bin), "--steps", "1", "--seq-len", "8", "--out", &s(&out)], "another tokenizer");
    assert!(!out.join("latest").exists(), "nothing may be trained");
    // a token byte flipped: the token checksum catches it (unless --no-verify)
    let byte = d.join("byte.bin");
    assert!(plumb(&["data", "prepare", &s(&x), &s(&byte), "--tokenizer", "byte"]).0);
    let mut b = std::fs::read(&byte).unwrap();
    b[130] ^= 1;
    std::fs::write(&byte, &b).unwrap();
    fails(&["data", "inspect", &s(&byte)], "corrupted token ids");
    fails(&["sft", "--model", "gpt-nano", "--data", &s(&byte), "--steps", "1", "--seq-len", "8", "--out", &s(&out)], "corrupted token ids");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn run_directories_belong_to_one_run() {
    if common::gpu().is_none() {
        return;
    }
    let d = scratch("rundir");
    let out = s(&d.join("run"));
    let base = ["sft", "--model", "gpt-nano", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "--samples", "0", "--out", &out];
    fails(&cat(&base, &["--steps", "0"]), "must be positive");
    fails(&cat(&base, &["--steps", "1", "--grad-accum", "0"]), "must be positive");
    fails(&cat(&base, &["--steps", "2", "--resume"]), "no checkpoint to resume from");
    let (ok, text) = plumb(&cat(&base, &["--steps", "2"]));
    assert!(ok && text.contains("checkpoint-2"), "{text}");
    let metrics = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    // a fresh run over the finished one: refused, nothing touched
    fails(&cat(&base, &["--steps", "2"]), "holds another run");
    assert_eq!(std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap(), metrics);
    // resuming with another learning rate or batch: refused unless allowed
    fails(&cat(&base, &["--steps", "3", "--resume", "--lr", "0.01"]), "schedule.lr");
    let (ok, text) = plumb(&cat(&base, &["--steps", "3", "--resume"]));
    assert!(ok, "{text}");
    assert!(d.join("run/checkpoint-3/manifest.json").is_file());
    // a broken `latest` or a missing trainer state: an error, never a fresh start
    std::fs::write(d.join("run/latest"), "checkpoint-77").unwrap();
    fails(&cat(&base, &["--steps", "4", "--resume"]), "not a checkpoint directory");
    std::fs::write(d.join("run/latest"), "checkpoint-3").unwrap();
    std::fs::write(d.join("run/checkpoint-3/model.safetensors"), b"garbage").unwrap();
    fails(&cat(&base, &["--steps", "4", "--resume"]), "does not match manifest.json");
    std::fs::remove_file(d.join("run/checkpoint-3/trainer_state.json")).unwrap();
    fails(&cat(&base, &["--steps", "4", "--resume"]), "trainer_state.json");
    // --overwrite replaces the run
    let (ok, text) = plumb(&cat(&base, &["--steps", "1", "--overwrite"]));
    assert!(ok, "{text}");
    assert!(!d.join("run/checkpoint-3").exists() && d.join("run/checkpoint-1").is_dir());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn precomputed_reference_at_another_max_len_is_refused() {
    if common::gpu().is_none() {
        return;
    }
    let d = scratch("reference");
    let sft = s(&d.join("sft"));
    let (ok, text) = plumb(&["sft", "--model", "gpt-nano", "--steps", "1", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "--samples", "0", "--out", &sft]);
    assert!(ok, "{text}");
    let dpo = d.join("dpo");
    let common = ["--init", &sft, "--steps", "1", "--batch-size", "2", "--max-pairs", "4"];
    fails(&[&["dpo", "--loss", "sigmoid:-1", "--out", &s(&dpo)][..], &common].concat(), "must be a finite number >= 0");
    let (ok, text) = plumb(&[&["dpo", "--precompute-ref", "--max-len", "64", "--out", &s(&dpo)][..], &common].concat());
    assert!(ok, "{text}");
    let pairs = s(&dpo.join("pairs.bin"));
    assert!(dpo.join("pairs.bin.reference.json").is_file());
    // a second run into the finished one is refused before it rewrites the pairs
    let before = std::fs::read(dpo.join("pairs.bin")).unwrap();
    fails(&[&["dpo", "--precompute-ref", "--max-len", "48", "--out", &s(&dpo)][..], &common].concat(), "holds another run");
    assert_eq!(std::fs::read(dpo.join("pairs.bin")).unwrap(), before);
    let out2 = s(&d.join("dpo2"));
    let text = fails(&[&["dpo", "--data", &pairs, "--reference", "precomputed", "--max-len", "32", "--out", &out2][..], &common].concat(), "max_len");
    assert!(text.contains("--precompute-ref"), "the error must say how to regenerate: {text}");
    let (ok, text) = plumb(&[&["dpo", "--data", &pairs, "--reference", "precomputed", "--max-len", "64", "--out", &out2][..], &common].concat());
    assert!(ok, "same settings must pass: {text}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn generate_on_nan_weights_is_an_error() {
    let Some(gpu) = common::gpu() else { return };
    let d = scratch("generate");
    let model = plumb::model::Model::new(&gpu, &plumb::model::presets::resolve("gpt-nano").unwrap(), 0).unwrap();
    let (name, n) = model.params().entries().iter().find(|e| e.name.contains("wte")).map(|e| (e.name.clone(), e.shape.iter().product::<usize>())).unwrap();
    model.params().set(&name, &vec![f32::NAN; n]).unwrap();
    model.save(&d).unwrap();
    fails(&["generate", &s(&d), "--prompt", "The film", "--max-new-tokens", "4"], "non-finite");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_wrong_adapter_name_is_not_a_missing_driver_and_xdg_is_quiet() {
    if common::gpu().is_none() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(["info"]).env_remove("XDG_RUNTIME_DIR").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("XDG_RUNTIME_DIR"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(["generate", "nowhere", "--prompt", "a"]).env("PLUMB_ADAPTER", "nonexistent").output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("PLUMB_ADAPTER") && !text.contains("Install a GPU driver"), "{text}");
}

#[test]
fn generate_refuses_a_tokenizer_other_than_the_models() {
    let Some(gpu) = common::gpu() else { return };
    let d = scratch("gen-tokenizer");
    plumb::model::Model::new(&gpu, &plumb::model::presets::resolve("gpt-nano").unwrap(), 0).unwrap().save(&d).unwrap();
    plumb::tokenizer::Tokenizer::byte_level().save(d.join("tokenizer.json")).unwrap();
    fails(&["generate", &s(&d), "--prompt", "The film", "--tokenizer", "gpt2"], "is not the model's tokenizer");
    let (ok, text) = plumb(&["generate", &s(&d), "--prompt", "The film", "--max-new-tokens", "2", "--tokenizer", "byte"]);
    assert!(ok, "the built-in byte tokenizer is the saved one: {text}");
    std::fs::remove_dir_all(&d).ok();
}
