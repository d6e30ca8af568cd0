//! The alignment subcommands end to end through the built `plumb` binary on a tiny chain:
//! sft -> reward -> dpo (precomputed reference) -> ppo (with that reward model) -> grpo (VADER) -> rloo,
//! each exiting 0 and logging its metrics; a missing --init is a clear error naming the path.
mod common;
use std::path::Path;
use std::process::Command;

/// Run `plumb ARGS`; returns (success, stdout + stderr).
fn plumb(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().expect("run plumb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Run `plumb ARGS`, which must succeed, and check that every line of `<out>/metrics.jsonl`
/// holds `keys` as finite numbers.
fn run_ok(args: &[&str], out: &Path, steps: usize, keys: &[&str]) {
    let (ok, text) = plumb(args);
    assert!(ok, "plumb {} failed:\n{text}", args.join(" "));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_else(|e| panic!("{}: {e}\n{text}", out.display()));
    let recs: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), steps, "{}: {log}", out.display());
    for k in keys {
        assert!(recs.iter().all(|r| r[*k].as_f64().is_some_and(f64::is_finite)), "{}: no finite `{k}` in {log}", out.display());
    }
    assert!(out.join("latest").is_file(), "{}: no final checkpoint", out.display());
}

#[test]
fn sft_reward_dpo_ppo_grpo_chain() {
    if common::gpu().is_none() {
        return;
    }
    let t = std::env::temp_dir().join(format!("plumb-cli-align-{}", std::process::id()));
    let p = |s: &str| t.join(s).display().to_string();
    let (sft, reward, dpo, ppo, grpo) = (p("sft"), p("reward"), p("dpo"), p("ppo"), p("grpo"));
    let tiny = ["--max-len", "32", "--seed", "1"];
    let (ok, text) = plumb(&["sft", "--model", "gpt-nano", "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--out", &sft, "--samples", "0"]);
    assert!(ok, "sft failed:\n{text}");

    let args = [&["reward", "--init", &sft, "--steps", "2", "--batch-size", "2", "--eval-pairs", "4", "--out", &reward][..], &tiny].concat();
    run_ok(&args, &t.join("reward"), 2, &["loss", "accuracy", "margin", "grad_norm"]);
    assert!(t.join("reward/model/model.safetensors").is_file() && t.join("reward/model/config.json").is_file());

    let args = [&["dpo", "--init", &sft, "--steps", "2", "--batch-size", "2", "--max-pairs", "6", "--precompute-ref", "--loss", "sigmoid:1,sft:0.5", "--out", &dpo][..], &tiny].concat();
    run_ok(&args, &t.join("dpo"), 2, &["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]);
    let pairs = plumb::data::PreferenceDataset::open(t.join("dpo/pairs.bin")).unwrap();
    assert!(pairs.len() == 6 && pairs.get(0).unwrap().reference_logps.is_some(), "precomputed reference missing");

    let lora = p("dpo-lora");
    let args = [&["dpo", "--init", &sft, "--steps", "2", "--batch-size", "2", "--max-pairs", "6", "--lora", "4", "--out", &lora][..], &tiny].concat();
    run_ok(&args, &t.join("dpo-lora"), 2, &["loss", "rewards/margins"]);
    assert!(t.join("dpo-lora/adapter/adapter_model.safetensors").is_file() && t.join("dpo-lora/adapter/adapter_config.json").is_file());

    let rm = p("reward/model");
    let args = [&["ppo", "--init", &sft, "--reward-model", &rm, "--steps", "1", "--batch-size", "2", "--max-new-tokens", "4", "--ppo-epochs", "1", "--samples", "1", "--out", &ppo][..], &tiny].concat();
    run_ok(&args, &t.join("ppo"), 1, &["loss", "objective/scores", "objective/kl", "objective/rlhf_reward", "policy/approxkl_avg", "loss/value_avg"]);

    let args = [&["grpo", "--init", &sft, "--steps", "1", "--batch-size", "1", "--num-generations", "2", "--max-new-tokens", "4", "--samples", "1", "--out", &grpo][..], &tiny].concat();
    run_ok(&args, &t.join("grpo"), 1, &["loss", "reward", "reward_std", "kl", "completion_length"]);

    let rloo = p("rloo");
    let args = [&["rloo", "--init", &sft, "--steps", "1", "--batch-size", "1", "--num-generations", "3", "--max-new-tokens", "4", "--samples", "1", "--reward-clip-range=-2,2", "--out", &rloo][..], &tiny].concat();
    run_ok(&args, &t.join("rloo"), 1, &["loss", "reward", "reward_std", "kl", "frac_reward_zero_std", "clip_ratio/region_mean"]);
    let (ok, text) = plumb(&["rloo", "--help"]);
    assert!(ok && text.contains("Examples:") && text.contains("--num-generations"), "plumb rloo --help:\n{text}");
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn missing_init_is_a_clear_error() {
    let (ok, text) = plumb(&["dpo", "--init", "/nonexistent/plumb-run", "--steps", "1"]);
    assert!(!ok, "dpo with a missing --init succeeded:\n{text}");
    assert!(text.contains("/nonexistent/plumb-run") && text.contains("plumb sft"), "unclear error:\n{text}");
}
