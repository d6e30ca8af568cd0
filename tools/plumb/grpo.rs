//! `plumb grpo`: GRPO (DeepSeekMath; TRL's GRPOTrainer) from an SFT checkpoint: each prompt is
//! sampled several times and each completion's reward, normalised within its group, is its
//! advantage; no value head. The reward is a Rust function (by default the VADER lexicon judge:
//! the mean valence of the completion's words) or a reward model from `plumb reward`.

use crate::common::{check_rollout_fits, final_checkpoint, load_init, load_reward_model, print_first_last, print_samples, prompts, train_config, CommonArgs, Decoder};
use plumb::align::{Grpo, GrpoConfig, Reference, Rewards, RolloutConfig};
use plumb::data::corpus::{vader_judge, vader_lexicon};
use plumb::model::Model;
use plumb::train::schedule::Schedule;
use plumb::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb grpo                                    # runs/sft policy, VADER sentiment reward, built-in openings
  plumb grpo --beta 0                           # no KL term: no reference model in memory
  plumb grpo --reward-model runs/reward/model --num-generations 4
  plumb grpo --loss-type dr_grpo --scale-rewards none      # Dr. GRPO
  plumb grpo --importance-sampling-level sequence          # GSPO
  plumb grpo --loss-type dapo --epsilon-high 0.28 --mask-truncated-completions   # DAPO
  plumb grpo --data prompts.bin --tokenizer gpt2 --init runs/sft-gpt2
  plumb grpo --model SmolLM2-135M-Instruct.Q4_1.gguf --lora 16 --data prompts.bin")]
pub struct GrpoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompts from `plumb data prepare` (prompt rows); default: built-in movie-review openings
    /// such as "The film " (byte-level), completions ending at a newline.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Decode completions (for --reward vader and the samples): byte, gpt2, or a tokenizer.json.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Programmatic reward: vader = mean VADER valence (-4..4) of the completion's words, 0 if none.
    #[arg(long, value_enum, default_value_t = RewardArg::Vader)]
    reward: RewardArg,
    /// Score with a reward model from `plumb reward` instead of --reward.
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// Steps [default: GrpoConfig's, 100].
    #[arg(long)]
    steps: Option<usize>,
    /// Prompts per step, each sampled --num-generations times [default: GrpoConfig's, 4].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Completions per prompt G, at least 2 [default: GrpoConfig's, 8].
    #[arg(long)]
    num_generations: Option<usize>,
    /// Constant learning rate [default: GrpoConfig's, 1e-5].
    #[arg(long)]
    lr: Option<f32>,
    /// β of the k3 KL to a frozen copy of the init model; 0 = no reference in memory [default: GrpoConfig's, 0.04].
    #[arg(long)]
    beta: Option<f32>,
    /// ε of the clipped objective [default: GrpoConfig's, 0.2].
    #[arg(long)]
    epsilon: Option<f32>,
    /// Upper clip ε_high (clip-higher); default: ε.
    #[arg(long)]
    epsilon_high: Option<f32>,
    /// How token losses are averaged: grpo, bnpo, dr_grpo, dapo [default: GrpoConfig's, dapo as TRL].
    #[arg(long)]
    loss_type: Option<String>,
    /// Importance weights per token (GRPO) or per sequence (GSPO) [default: token].
    #[arg(long)]
    importance_sampling_level: Option<String>,
    /// Std that scales the advantages: group, batch or none [default: group].
    #[arg(long)]
    scale_rewards: Option<String>,
    /// Leave completions that never reached a stop token out of the loss.
    #[arg(long)]
    mask_truncated_completions: bool,
    /// New tokens per completion at most [default: RolloutConfig's, 32].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Samples printed at the end.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Train LoRA adapters of this rank instead of every weight (a GGUF base stays in its
    /// stored types); the KL reference is then the base with its adapters off (no second copy).
    /// The adapter is saved in PEFT's layout to <out>/adapter.
    #[arg(long)]
    lora: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = plumb::lora::LoraConfig::default().alpha)]
    lora_alpha: f32,
    /// Output: metrics.jsonl and the final checkpoint.
    #[arg(long, default_value = "runs/grpo")]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RewardArg {
    Vader,
}

pub fn run(a: GrpoArgs) -> Result<()> {
    // every default is the library's (GrpoConfig::default)
    let d = GrpoConfig::default();
    let max_new_tokens = a.max_new_tokens.unwrap_or(d.rollout.max_new_tokens);
    let beta = a.beta.unwrap_or(d.beta);
    let schedule = a.lr.map_or(d.train.schedule.clone(), Schedule::constant);
    let (gpu, init, mut policy) = load_init(&a.common.init, a.lora.is_some())?;
    let train = train_config(&a.common, &policy, a.steps.unwrap_or(d.train.steps), a.batch_size.unwrap_or(d.train.batch_size), schedule, &a.out)?;
    let (prompts, stop) = prompts(a.data.as_deref(), &policy, train.max_prompt_len, &a.common)?;
    check_rollout_fits(&prompts, max_new_tokens, &policy)?;
    // a GGUF base carries its tokenizer: decode with it unless --tokenizer says otherwise
    let own = crate::common::is_gguf(&init).then(|| init.display().to_string());
    let dec = Decoder::new(a.tokenizer.as_deref().or(own.as_deref()), &policy)?;
    let rm = a.reward_model.as_ref().map(|d| load_reward_model(&gpu, d, &policy)).transpose()?;
    let lexicon = vader_lexicon()?;
    let vader = |_: &[u32], c: &[u32]| vader_judge(&dec.decode(c), &lexicon).unwrap_or(0.0);
    let rewards = match (&rm, a.reward) {
        (Some(rm), _) => Rewards::Model { model: rm, max_len: train.max_len.min(rm.model.max_len()) },
        (None, RewardArg::Vader) if dec.can_decode() => {
            println!("reward: VADER lexicon judge (mean valence of the completion's words)");
            Rewards::Fn(&vader)
        }
        (None, RewardArg::Vader) => return Err(Error::config("--reward vader", "reads text: pass --tokenizer for a model that is not byte-level")),
    };
    if let Some(r) = a.lora {
        policy.add_lora(&plumb::lora::LoraConfig { r, alpha: a.lora_alpha, ..Default::default() }, a.common.seed)?;
        println!("{}", crate::common::lora_line(&policy, r));
    }
    let reference = if beta != 0.0 && a.lora.is_none() { Some(Model::load(&gpu, &init)?) } else { None };
    let cfg = GrpoConfig {
        train,
        rollout: RolloutConfig { max_new_tokens, stop_ids: stop.clone(), ..d.rollout.clone() },
        num_generations: a.num_generations.unwrap_or(d.num_generations),
        epsilon: a.epsilon.unwrap_or(d.epsilon),
        epsilon_high: a.epsilon_high.or(d.epsilon_high),
        beta,
        loss_type: a.loss_type.as_deref().map_or(Ok(d.loss_type), str::parse)?,
        importance_sampling_level: a.importance_sampling_level.as_deref().map_or(Ok(d.importance_sampling_level), str::parse)?,
        scale_rewards: a.scale_rewards.as_deref().map_or(Ok(d.scale_rewards), str::parse)?,
        mask_truncated_completions: a.mask_truncated_completions || d.mask_truncated_completions,
        ..d
    };
    let r = match &reference {
        Some(m) => Reference::Model(m),
        None if beta != 0.0 => Reference::Adapters,
        None => Reference::None,
    };
    println!("reference: {} ({} model(s) in memory)", r.describe(), r.models_in_memory());
    let m = Grpo::new(cfg).train(&policy, &prompts, &rewards, r)?;
    println!("trained {} steps:", m.len());
    let keys: &[&str] = if beta != 0.0 { &["reward", "reward_std", "kl", "completion_length"] } else { &["reward", "reward_std", "completion_length"] };
    print_first_last(&m, keys);
    print_samples(&policy, &prompts, a.samples, max_new_tokens, &stop, &dec, a.common.seed)?;
    println!("checkpoint: {}", final_checkpoint(&a.out));
    if a.lora.is_some() {
        policy.save_lora(&a.out.join("adapter"))?;
        println!("adapter (PEFT layout): {}", a.out.join("adapter").display());
    }
    Ok(())
}
