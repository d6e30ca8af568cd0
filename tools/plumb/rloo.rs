//! `plumb rloo`: RLOO, REINFORCE leave-one-out (TRL's RLOOTrainer), from an SFT checkpoint: each
//! prompt is sampled k times, each completion's reward minus β times its KL to the init model,
//! less the mean of the other k − 1, is its advantage; no value head. The reward is a Rust
//! function (by default the VADER lexicon judge) or a reward model from `plumb reward`.

use crate::common::{check_rollout_fits, final_checkpoint, load_init, load_reward_model, print_first_last, print_samples, prompts, train_config, CommonArgs, Decoder};
use plumb::align::{Reference, Rewards, Rloo, RlooConfig, RolloutConfig};
use plumb::data::corpus::{vader_judge, vader_lexicon};
use plumb::model::Model;
use plumb::train::schedule::Schedule;
use plumb::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb rloo                                    # runs/sft policy, VADER reward, 2 completions per prompt
  plumb rloo --num-generations 4 --lr 1e-4      # more samples per prompt, a small model's learning rate
  plumb rloo --beta 0                           # no KL in the reward: no reference model in memory
  plumb rloo --reward-model runs/reward/model --normalize-advantages
  plumb rloo --reward-clip-range=-2,2 --epsilon-high 0.28
  plumb rloo --data prompts.bin --tokenizer gpt2 --init runs/sft-gpt2")]
pub struct RlooArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompts from `plumb data prepare` (prompt rows); default: built-in movie-review openings
    /// such as "The film " (byte-level), completions ending at a newline.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Decode completions (for the VADER reward and the samples): byte, gpt2, or a tokenizer.json.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Score with a reward model from `plumb reward` instead of the VADER judge (the mean
    /// valence, -4..4, of the completion's words).
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// Steps [default: RlooConfig's].
    #[arg(long)]
    steps: Option<usize>,
    /// Prompts per step, each sampled --num-generations times [default: RlooConfig's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Completions per prompt k, at least 2 [default: RlooConfig's, 2 as TRL].
    #[arg(long)]
    num_generations: Option<usize>,
    /// Constant learning rate [default: RlooConfig's, 1e-6 as TRL; small byte-level models want ~1e-4].
    #[arg(long)]
    lr: Option<f32>,
    /// β of the summed KL to a frozen copy of the init model, subtracted from the reward; 0 = no
    /// reference in memory [default: RlooConfig's, 0.05].
    #[arg(long)]
    beta: Option<f32>,
    /// ε of the clipped objective [default: RlooConfig's, 0.2].
    #[arg(long)]
    epsilon: Option<f32>,
    /// Upper clip ε_high (clip-higher); default: ε.
    #[arg(long)]
    epsilon_high: Option<f32>,
    /// Normalise the advantages over the batch (mean 0, std 1).
    #[arg(long)]
    normalize_advantages: bool,
    /// Clip the rewards to MIN,MAX before the KL term.
    #[arg(long, value_parser = parse_range)]
    reward_clip_range: Option<(f32, f32)>,
    /// Leave completions that never reached a stop token out of the loss.
    #[arg(long)]
    mask_truncated_completions: bool,
    /// New tokens per completion at most [default: RolloutConfig's].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Samples printed at the end.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Output: metrics.jsonl and the final checkpoint.
    #[arg(long, default_value = "runs/rloo")]
    out: PathBuf,
}

/// `MIN,MAX` into a range.
fn parse_range(s: &str) -> std::result::Result<(f32, f32), String> {
    let (lo, hi) = s.split_once(',').ok_or_else(|| format!("`{s}` is not MIN,MAX"))?;
    let num = |x: &str| x.trim().parse::<f32>().map_err(|_| format!("`{x}` in `{s}` is not a number"));
    let (lo, hi) = (num(lo)?, num(hi)?);
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(format!("`{s}`: need finite MIN <= MAX"));
    }
    Ok((lo, hi))
}

pub fn run(a: RlooArgs) -> Result<()> {
    // every default is the library's (RlooConfig::default)
    let d = RlooConfig::default();
    let max_new_tokens = a.max_new_tokens.unwrap_or(d.rollout.max_new_tokens);
    let beta = a.beta.unwrap_or(d.beta);
    let schedule = a.lr.map_or(d.train.schedule.clone(), Schedule::constant);
    let (gpu, init, policy) = load_init(&a.common.init, false)?;
    let train = train_config(&a.common, &policy, a.steps.unwrap_or(d.train.steps), a.batch_size.unwrap_or(d.train.batch_size), schedule, &a.out)?;
    let (prompts, stop) = prompts(a.data.as_deref(), &policy, train.max_prompt_len, &a.common)?;
    check_rollout_fits(&prompts, max_new_tokens, &policy)?;
    let dec = Decoder::new(a.tokenizer.as_deref(), &policy)?;
    let rm = a.reward_model.as_ref().map(|d| load_reward_model(&gpu, d, &policy)).transpose()?;
    let lexicon = vader_lexicon()?;
    let vader = |_: &[u32], c: &[u32]| vader_judge(&dec.decode(c), &lexicon).unwrap_or(0.0);
    let rewards = match &rm {
        Some(rm) => Rewards::Model { model: rm, max_len: train.max_len.min(rm.model.max_len()) },
        None if dec.can_decode() => {
            println!("reward: VADER lexicon judge (mean valence of the completion's words)");
            Rewards::Fn(&vader)
        }
        None => return Err(Error::config("rloo reward", "the VADER judge reads text: pass --tokenizer for a model that is not byte-level, or --reward-model")),
    };
    let reference = if beta != 0.0 { Some(Model::load(&gpu, &init)?) } else { None };
    let cfg = RlooConfig {
        train,
        rollout: RolloutConfig { max_new_tokens, stop_ids: stop.clone(), ..d.rollout.clone() },
        num_generations: a.num_generations.unwrap_or(d.num_generations),
        beta,
        epsilon: a.epsilon.unwrap_or(d.epsilon),
        epsilon_high: a.epsilon_high.or(d.epsilon_high),
        normalize_advantages: a.normalize_advantages || d.normalize_advantages,
        reward_clip_range: a.reward_clip_range.or(d.reward_clip_range),
        mask_truncated_completions: a.mask_truncated_completions || d.mask_truncated_completions,
        ..d
    };
    let r = reference.as_ref().map_or(Reference::None, Reference::Model);
    let m = Rloo::new(cfg).train(&policy, &prompts, &rewards, r)?;
    println!("trained {} steps:", m.len());
    let keys: &[&str] = if beta != 0.0 { &["reward", "reward_std", "kl", "completion_length"] } else { &["reward", "reward_std", "completion_length"] };
    print_first_last(&m, keys);
    print_samples(&policy, &prompts, a.samples, max_new_tokens, &stop, &dec, a.common.seed)?;
    println!("checkpoint: {}", final_checkpoint(&a.out));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn reward_clip_ranges_parse_or_say_why_not() {
        assert_eq!(parse_range("-2,2"), Ok((-2.0, 2.0)));
        assert!(parse_range("2").is_err() && parse_range("2,-2").is_err() && parse_range("a,1").is_err());
    }
}
