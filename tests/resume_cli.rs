//! A `plumb dpo` process killed with SIGKILL mid-run (`--save-every 1`, killed once a
//! checkpoint exists) and continued with `--resume` ends with the per-step losses and the final
//! weights and AdamW moments of an uninterrupted run, bit for bit.
mod common;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 16;

fn plumb(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().expect("run plumb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    plumb::train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap().iter().map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap())).collect()
}

fn final_file(out: &Path, name: &str) -> Vec<u8> {
    let p = out.join(format!("checkpoint-{STEPS}")).join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The step of `out`'s latest checkpoint, if any.
fn latest_step(out: &Path) -> Option<usize> {
    std::fs::read_to_string(out.join("latest")).ok()?.trim().strip_prefix("checkpoint-")?.parse().ok()
}

#[test]
fn dpo_killed_with_sigkill_resumes_to_the_uninterrupted_run() {
    if common::gpu().is_none() {
        return;
    }
    let t = std::env::temp_dir().join(format!("plumb-resume-cli-{}", std::process::id()));
    let p = |s: &str| t.join(s).display().to_string();
    let (ok, text) = plumb(&["sft", "--model", "gpt-nano", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--out", &p("sft"), "--samples", "0"]);
    assert!(ok, "sft failed:\n{text}");
    let dpo = |out: &str| -> Vec<String> {
        ["dpo", "--init", &p("sft"), "--steps", &STEPS.to_string(), "--batch-size", "2", "--max-pairs", "8", "--max-len", "32", "--save-every", "1", "--out", out]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (ok, text) = plumb(&dpo(&p("a")).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "uninterrupted dpo failed:\n{text}");

    // The same run, killed with SIGKILL once its second checkpoint exists.
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb")).args(dpo(&p("b"))).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while latest_step(&t.join("b")).is_none_or(|s| s < 2) {
        assert!(child.try_wait().unwrap().is_none(), "dpo exited before it could be killed");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint after 300 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let killed_at = latest_step(&t.join("b")).unwrap();
    assert!(killed_at < STEPS, "the run finished before the kill (latest checkpoint {killed_at})");
    eprintln!("killed with SIGKILL; latest checkpoint: step {killed_at} of {STEPS}");

    let mut resume = dpo(&p("b"));
    resume.push("--resume".into());
    let (ok, text) = plumb(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "dpo --resume failed:\n{text}");
    assert_eq!(losses(&t.join("a")), losses(&t.join("b")), "per-step losses differ after the SIGKILL and resume");
    for f in ["model.safetensors", "optimizer.safetensors", "method_state.json"] {
        assert!(final_file(&t.join("a"), f) == final_file(&t.join("b"), f), "{f} of the final checkpoint differs after the resume");
    }
    std::fs::remove_dir_all(&t).ok();
}
