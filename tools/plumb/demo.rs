//! `plumb demo`: RLHF (reward model + PPO) against DPO on the built-in human ratings, end to end,
//! with a side-by-side table, samples and training curves. The pipeline is `plumb::demo::run`.

use plumb::demo::{run, DemoConfig};
use plumb::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb demo                          # the whole comparison, < 10 min on a 2-core CPU
  plumb demo --seed 1 --out runs/demo-1
  plumb demo --scale 4                # every stage 4x longer
  plumb demo --model models/presets/gpt-w2 --sft-steps 2000")]
pub struct DemoArgs {
    #[arg(long, default_value_t = DemoConfig::default().seed)]
    seed: u64,
    /// Where results.md, results.json, curves.svg and every stage's checkpoint go.
    #[arg(long, default_value_os_t = DemoConfig::default().out_dir)]
    out: PathBuf,
    /// Model preset or HF directory (byte-level, vocab 256).
    #[arg(long)]
    model: Option<String>,
    /// Multiply every stage's steps (and the pairs and prompts) by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f32,
    #[arg(long)]
    sft_steps: Option<usize>,
    #[arg(long)]
    reward_steps: Option<usize>,
    #[arg(long)]
    ppo_steps: Option<usize>,
    #[arg(long)]
    dpo_steps: Option<usize>,
    #[arg(long)]
    onpolicy_steps: Option<usize>,
    /// Human preference pairs for the reward model and DPO.
    #[arg(long)]
    pairs: Option<usize>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Held-out openings the judge scores.
    #[arg(long)]
    eval_openings: Option<usize>,
    /// Size of the BPE trained on the reviews; 0 = byte-level.
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    ppo_lr: Option<f32>,
    #[arg(long)]
    dpo_lr: Option<f32>,
    /// PPO's KL penalty coefficient.
    #[arg(long)]
    kl_coef: Option<f32>,
    /// DPO's β.
    #[arg(long)]
    beta: Option<f32>,
    /// Added to PPO's reward of completions that do not end within --max-new-tokens, e.g. -1.
    #[arg(long)]
    missing_eos_penalty: Option<f32>,
}

pub fn run_cli(a: DemoArgs) -> Result<()> {
    let d = DemoConfig::default();
    let s = |x: usize| ((x as f32 * a.scale).round() as usize).max(1);
    let cfg = DemoConfig {
        seed: a.seed,
        out_dir: a.out.clone(),
        model: a.model.unwrap_or(d.model),
        sft_steps: a.sft_steps.unwrap_or(s(d.sft_steps)),
        pairs: a.pairs.unwrap_or(s(d.pairs)),
        reward_steps: a.reward_steps.unwrap_or(s(d.reward_steps)),
        ppo_steps: a.ppo_steps.unwrap_or(s(d.ppo_steps)),
        dpo_steps: a.dpo_steps.unwrap_or(s(d.dpo_steps)),
        onpolicy_prompts: s(d.onpolicy_prompts),
        onpolicy_steps: a.onpolicy_steps.unwrap_or(s(d.onpolicy_steps)),
        max_new_tokens: a.max_new_tokens.unwrap_or(d.max_new_tokens),
        eval_openings: a.eval_openings.unwrap_or(d.eval_openings),
        vocab_size: a.vocab_size.unwrap_or(d.vocab_size),
        ppo_lr: a.ppo_lr.unwrap_or(d.ppo_lr),
        dpo_lr: a.dpo_lr.unwrap_or(d.dpo_lr),
        kl_coef: a.kl_coef.unwrap_or(d.kl_coef),
        beta: a.beta.unwrap_or(d.beta),
        missing_eos_penalty: a.missing_eos_penalty.or(d.missing_eos_penalty),
        progress: true,
        ..d
    };
    let t0 = std::time::Instant::now();
    let report = run(&cfg)?;
    println!("\n{}", report.markdown());
    println!("total {:.0} s; results in {} (results.md, results.json, curves.svg)", t0.elapsed().as_secs_f32(), a.out.display());
    Ok(())
}
