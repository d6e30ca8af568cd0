//! A `plumb` training process killed with SIGKILL mid-run (`--save-every 1`, killed once its
//! second checkpoint exists) and continued with `--resume` ends with the per-step metrics and
//! the final weights and AdamW moments of an uninterrupted run, bit for bit: `plumb dpo`,
//! `plumb dpo --precompute-ref` (the resumed run reuses the killed run's `pairs.bin` and its
//! reference log-probs) and `plumb rloo` (sampling, the VADER reward, a frozen reference).
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 16;

fn plumb(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().expect("run plumb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Every record of metrics.jsonl without its wall-clock time.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let mut all = plumb::train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    for r in &mut all {
        r.as_object_mut().unwrap().remove("elapsed_s");
    }
    all
}

fn final_file(out: &Path, name: &str) -> Vec<u8> {
    let p = out.join(format!("checkpoint-{STEPS}")).join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The step of `out`'s latest checkpoint, if any.
fn latest_step(out: &Path) -> Option<usize> {
    std::fs::read_to_string(out.join("latest")).ok()?.trim().strip_prefix("checkpoint-")?.parse().ok()
}

/// A scratch directory with an SFT checkpoint of gpt-nano (one step) in `sft/`.
fn sft_init(name: &str) -> PathBuf {
    let t = std::env::temp_dir().join(format!("plumb-resume-cli-{name}-{}", std::process::id()));
    let sft = t.join("sft").display().to_string();
    let (ok, text) = plumb(&strings(&["sft", "--model", "gpt-nano", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--out", &sft, "--samples", "0"]));
    assert!(ok, "sft failed:\n{text}");
    t
}

/// `train(out)` (the command line of a run into `out`) uninterrupted into `t/a`; into `t/b`
/// killed with SIGKILL once its second checkpoint exists, then again with `--resume`: the same
/// metrics and final checkpoint files.
fn killed_and_resumed_matches_uninterrupted(t: &Path, train: &dyn Fn(&str) -> Vec<String>, files: &[&str]) {
    let (a, b) = (t.join("a"), t.join("b"));
    let (ok, text) = plumb(&train(&a.display().to_string()));
    assert!(ok, "uninterrupted run failed:\n{text}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb")).args(train(&b.display().to_string())).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while latest_step(&b).is_none_or(|s| s < 2) {
        assert!(child.try_wait().unwrap().is_none(), "the run exited before it could be killed");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let killed_at = latest_step(&b).unwrap();
    assert!(killed_at < STEPS, "the run finished before the kill (latest checkpoint {killed_at})");
    eprintln!("killed with SIGKILL; latest checkpoint: step {killed_at} of {STEPS}");

    let mut resume = train(&b.display().to_string());
    resume.push("--resume".into());
    let (ok, text) = plumb(&resume);
    assert!(ok, "--resume failed:\n{text}");
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), STEPS);
    assert_eq!(ma, mb, "per-step metrics differ after the SIGKILL and resume");
    for f in files {
        assert!(final_file(&a, f) == final_file(&b, f), "{f} of the final checkpoint differs after the resume");
    }
}

#[test]
fn dpo_killed_with_sigkill_resumes_to_the_uninterrupted_run() {
    if common::gpu().is_none() {
        return;
    }
    let t = sft_init("dpo");
    let init = t.join("sft").display().to_string();
    let dpo = |out: &str| strings(&["dpo", "--init", &init, "--steps", &STEPS.to_string(), "--batch-size", "2", "--max-pairs", "8", "--max-len", "32", "--save-every", "1", "--out", out]);
    killed_and_resumed_matches_uninterrupted(&t, &dpo, &["model.safetensors", "optimizer.safetensors", "method_state.json"]);
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn dpo_with_precomputed_reference_resumes_from_its_own_pairs_file() {
    if common::gpu().is_none() {
        return;
    }
    let t = sft_init("dpo-precomputed");
    let init = t.join("sft").display().to_string();
    let dpo = |out: &str| {
        let args = ["dpo", "--init", &init, "--precompute-ref", "--steps", &STEPS.to_string(), "--batch-size", "2", "--max-pairs", "8", "--max-len", "32"];
        strings(&[&args[..], &["--save-every", "1", "--out", out]].concat())
    };
    killed_and_resumed_matches_uninterrupted(&t, &dpo, &["model.safetensors", "optimizer.safetensors", "method_state.json"]);
    // the resumed run trained on the killed run's pairs.bin, whose reference log-probs are the
    // uninterrupted run's
    let pairs = |run: &str| std::fs::read(t.join(run).join("pairs.bin")).unwrap();
    assert!(pairs("a") == pairs("b"), "pairs.bin with its reference log-probs differs between the runs");
    assert!(t.join("b").join("pairs.bin.reference.json").is_file());
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn rloo_killed_with_sigkill_resumes_to_the_uninterrupted_run() {
    if common::gpu().is_none() {
        return;
    }
    let t = sft_init("rloo");
    let init = t.join("sft").display().to_string();
    let rloo = |out: &str| {
        let args = ["rloo", "--init", &init, "--steps", &STEPS.to_string(), "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "4", "--lr", "1e-3"];
        strings(&[&args[..], &["--max-len", "32", "--samples", "0", "--save-every", "1", "--out", out]].concat())
    };
    killed_and_resumed_matches_uninterrupted(&t, &rloo, &["model.safetensors", "optimizer.safetensors"]);
    std::fs::remove_dir_all(&t).ok();
}
