//! `plumb ppo`: RLHF with PPO (InstructGPT's recipe, TRL's PPOTrainer): the policy starts from an
//! SFT checkpoint, samples completions of prompts, is scored by a reward model from
//! `plumb reward` minus a KL penalty to a frozen copy of itself, and is updated by the clipped
//! objective with a value head and GAE.

use crate::common::{check_rollout_fits, final_checkpoint, load_init, load_reward_model, print_first_last, print_samples, prompts, train_config, CommonArgs, Decoder};
use plumb::align::{Ppo, PpoConfig, Reference, Rewards, RolloutConfig};
use plumb::model::Model;
use plumb::ops::ppo::KlKind;
use plumb::train::schedule::Schedule;
use plumb::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb ppo                                     # runs/sft policy, runs/reward/model, built-in openings
  plumb ppo --kl-coef 0.1 --kl-estimator k3 --steps 200
  plumb ppo --kl-target 6 --kl-horizon 10000    # adaptive KL coefficient
  plumb ppo --data prompts.bin --tokenizer gpt2 --reward-model runs/rm/model --missing-eos-penalty -1")]
pub struct PpoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompts from `plumb data prepare` (prompt rows); default: built-in movie-review openings
    /// such as "The film " (byte-level), completions ending at a newline.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Decode the printed samples: byte, gpt2, or a tokenizer.json path.
    #[arg(long)]
    tokenizer: Option<String>,
    /// A reward model from `plumb reward` (its <out>/model or run directory).
    #[arg(long, default_value = "runs/reward/model")]
    reward_model: PathBuf,
    /// Rollout + update rounds [default: PpoConfig's, 100].
    #[arg(long)]
    steps: Option<usize>,
    /// Prompts per rollout [default: PpoConfig's, 8].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Constant learning rate, policy and value head [default: PpoConfig's, 1e-5].
    #[arg(long)]
    lr: Option<f32>,
    /// β_KL: weight of the per-token KL penalty to the reference in the reward [default: PpoConfig's, 0.05].
    #[arg(long)]
    kl_coef: Option<f32>,
    /// Per-token KL estimator: k1 (log π − log π_ref) or k3 (never negative) [default: k1].
    #[arg(long)]
    kl_estimator: Option<KlKind>,
    /// Adaptive KL controller: target KL per completion (default: a fixed --kl-coef).
    #[arg(long)]
    kl_target: Option<f32>,
    /// Horizon of the adaptive KL controller, in completions.
    #[arg(long, default_value_t = plumb::align::ppo::DEFAULT_KL_HORIZON)]
    kl_horizon: f32,
    /// Passes over each rollout batch [default: PpoConfig's, 4].
    #[arg(long)]
    ppo_epochs: Option<usize>,
    /// Minibatches per pass, must divide --batch-size [default: PpoConfig's, 1].
    #[arg(long)]
    minibatches: Option<usize>,
    /// New tokens per completion at most [default: RolloutConfig's, 32].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Added to the score of a completion that did not end with the stop token, e.g. -1.
    #[arg(long, allow_hyphen_values = true)]
    missing_eos_penalty: Option<f32>,
    /// Clip scores to ±this.
    #[arg(long)]
    reward_clip: Option<f32>,
    /// Samples printed at the end.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Output: metrics.jsonl and the final checkpoint.
    #[arg(long, default_value = "runs/ppo")]
    out: PathBuf,
}

pub fn run(a: PpoArgs) -> Result<()> {
    // every default is the library's (PpoConfig::default)
    let d = PpoConfig::default();
    let max_new_tokens = a.max_new_tokens.unwrap_or(d.rollout.max_new_tokens);
    let schedule = a.lr.map_or(d.train.schedule.clone(), Schedule::constant);
    let (gpu, init, policy) = load_init(&a.common.init, false)?;
    let train = train_config(&a.common, &policy, a.steps.unwrap_or(d.train.steps), a.batch_size.unwrap_or(d.train.batch_size), schedule, &a.out)?;
    let (prompts, stop) = prompts(a.data.as_deref(), &policy, train.max_prompt_len, &a.common)?;
    check_rollout_fits(&prompts, max_new_tokens, &policy)?;
    let dec = Decoder::new(a.tokenizer.as_deref(), &policy)?;
    let rm = load_reward_model(&gpu, &a.reward_model, &policy)?;
    let reference = Model::load(&gpu, &init)?;
    let rewards = Rewards::Model { model: &rm, max_len: train.max_len.min(rm.model.max_len()) };
    let cfg = PpoConfig {
        train,
        rollout: RolloutConfig { max_new_tokens, stop_ids: stop.clone(), ..d.rollout.clone() },
        ppo_epochs: a.ppo_epochs.unwrap_or(d.ppo_epochs),
        minibatches: a.minibatches.unwrap_or(d.minibatches),
        kl_coef: a.kl_coef.unwrap_or(d.kl_coef),
        kl_estimator: a.kl_estimator.unwrap_or(d.kl_estimator),
        kl_target: a.kl_target.map(|t| (t, a.kl_horizon)),
        missing_eos_penalty: a.missing_eos_penalty,
        reward_clip: a.reward_clip,
        ..d
    };
    let m = Ppo::new(cfg).train(&policy, &prompts, &rewards, Reference::Model(&reference))?;
    println!("trained {} steps:", m.len());
    print_first_last(&m, &["objective/scores", "objective/kl", "objective/rlhf_reward", "objective/entropy", "completion_length"]);
    print_samples(&policy, &prompts, a.samples, max_new_tokens, &stop, &dec, a.common.seed)?;
    println!("checkpoint: {}", final_checkpoint(&a.out));
    Ok(())
}
