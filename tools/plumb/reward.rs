//! `plumb reward`: train a reward model (Bradley-Terry) from an SFT checkpoint on preference
//! pairs, report its held-out accuracy, and save it in Hugging Face's sequence-classification
//! layout for `plumb ppo --reward-model` / `plumb grpo --reward-model`.

use crate::common::{builtin_pairs, check_byte_level, cosine, final_checkpoint, load_init, open_pairs, train_config, CommonArgs};
use plumb::align::{Pair, Pairs, Reward, RewardConfig, RewardModel, TrainConfig};
use plumb::demo::data::Split;
use plumb::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb reward                                  # from runs/sft, built-in human-rated review pairs
  plumb reward --steps 500 --center-coef 0.01   # longer, rewards kept near 0
  plumb reward --init runs/sft/checkpoint-300 --data prefs.bin --eval-data prefs-test.bin --out runs/rm")]
pub struct RewardArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Preference pairs from `plumb data prepare`; default: built-in movie-review pairs whose
    /// human ratings differ by at least 2 points (byte-level).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out pairs for the accuracy; default with built-in data: pairs of held-out sentences.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Held-out pairs evaluated, at most.
    #[arg(long, default_value_t = 300)]
    eval_pairs: usize,
    /// Built-in training pairs used, at most.
    #[arg(long, default_value_t = 10000)]
    max_pairs: usize,
    #[arg(long, default_value_t = RewardConfig::default().train.steps)]
    steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = RewardConfig::default().train.batch_size)]
    batch_size: usize,
    /// Peak learning rate (warmup, then cosine to a tenth).
    #[arg(long, default_value_t = RewardConfig::default().train.schedule.lr)]
    lr: f32,
    /// μ of μ·mean((r_chosen + r_rejected)²), keeping rewards centred on 0 (TRL's
    /// center_rewards_coefficient); 0 = off.
    #[arg(long, default_value_t = RewardConfig::default().center_coef)]
    center_coef: f32,
    /// Output: metrics.jsonl, the trainer checkpoint, and the reward model in <out>/model.
    #[arg(long, default_value = "runs/reward")]
    out: PathBuf,
}

/// The first `n` pairs of a file.
fn first_pairs(d: &dyn Pairs, n: usize) -> Result<Vec<Pair>> {
    (0..d.len().min(n)).map(|i| d.pair(i)).collect()
}

pub fn run(a: RewardArgs) -> Result<()> {
    let (_gpu, _, base) = load_init(&a.common.init)?;
    let train = train_config(&a.common, &base, a.steps, a.batch_size, cosine(a.lr, a.steps), &a.out)?;
    let (pairs, held): (Box<dyn Pairs>, Vec<Pair>) = match &a.data {
        None => {
            check_byte_level(&base)?;
            let (tr, held) = (builtin_pairs(Split::Train, train.max_len, a.max_pairs)?, builtin_pairs(Split::Rl, train.max_len, a.eval_pairs)?);
            println!("data: {} built-in preference pairs, {} held out", tr.len(), held.len());
            (Box::new(tr), held)
        }
        Some(path) => {
            let d = open_pairs(path, &base, &a.common)?;
            let held = a.eval_data.as_ref().map(|e| first_pairs(&open_pairs(e, &base, &a.common)?, a.eval_pairs)).transpose()?.unwrap_or_default();
            println!("data: {} preference pairs from {}, {} held out", d.len(), path.display(), held.len());
            (Box::new(d), held)
        }
    };
    let rm = RewardModel::from_model(&base, a.common.seed)?;
    drop(base);
    let cfg = RewardConfig { train, center_coef: a.center_coef, pad_id: 0 };
    // evaluation only chunks by batch size: a larger one is faster
    let eval = Reward::new(RewardConfig { train: TrainConfig { batch_size: 32, ..cfg.train.clone() }, ..cfg.clone() });
    let before = if held.is_empty() { None } else { Some(eval.evaluate(&rm, &held)?) };
    let m = Reward::new(cfg).train(&rm, pairs.as_ref())?;
    println!("trained {} steps:", m.len());
    crate::common::print_first_last(&m, &["loss", "accuracy", "margin"]);
    if let Some((acc0, _)) = before {
        let (acc, margin) = eval.evaluate(&rm, &held)?;
        println!("held-out accuracy {acc0:.3} -> {acc:.3} on {} pairs (mean margin {margin:.3})", held.len());
    }
    let dir = a.out.join("model");
    rm.save(&dir)?;
    println!("reward model: {} (for `plumb ppo --reward-model`)", dir.display());
    println!("trainer checkpoint: {}", final_checkpoint(&a.out));
    Ok(())
}
