//! `plumb dpo`: Direct Preference Optimization of an SFT checkpoint on preference pairs, with any
//! loss of the DPO family (or a weighted mixture) and the reference log-probs from a frozen copy
//! of the model, precomputed into the data file (one model in memory), or none.

use crate::common::{builtin_chat_pairs, builtin_pairs, check_byte_level, cosine, final_checkpoint, load_init, open_pairs, print_first_last, train_config, write_pairs, CommonArgs};
use plumb::align::provenance::{check_reference_provenance, ReferenceProvenance};
use plumb::align::{precompute_reference, Dpo, DpoTrainConfig, Pairs, Reference};
use plumb::demo::data::Split;
use plumb::model::Model;
use plumb::ops::dpo::{DpoConfig, DpoLoss};
use plumb::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb dpo                                     # from runs/sft, built-in review pairs, frozen reference
  plumb dpo --precompute-ref                    # reference log-probs computed once: one model in memory
  plumb dpo --loss sigmoid:1,sft:0.5 --beta 0.2 # RPO-style mixture
  plumb dpo --lora 8                            # LoRA adapters; reference = base model, one copy
  plumb dpo --loss sigmoid_norm --simpo-gamma 0.5 --reference none   # SimPO-style, no reference
  plumb dpo --loss simpo --beta 2 --simpo-gamma 0.5  # SimPO (CPO simpo): one model, no reference
  plumb dpo --loss orpo --beta 0.1             # ORPO: NLL + λ·odds ratio (λ = --beta), no reference
  plumb dpo --loss sigmoid:0.8,bco_pair:0.2,sft:1   # MPO-style mixture with loss_weights
  plumb dpo --save-every 20 --resume            # continue a killed run exactly (every method has both)
  plumb dpo --loss discopop --discopop-tau 0.05      # also exo_pair, nca_pair, sppo_hard
  plumb dpo --loss aot                          # AOT: sorted log-ratios over the batch (also aot_unpaired)
  plumb dpo --data prefs.bin --init runs/sft/checkpoint-300 --precompute-ref --out runs/dpo-hh
  plumb dpo --model SmolLM2-135M-Instruct.Q4_1.gguf --lora 16   # built-in pairs in the model's chat form")]
pub struct DpoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Preference pairs from `plumb data prepare`; default: built-in movie-review pairs whose
    /// human ratings differ by at least 2 points (byte-level; for a GGUF model in its chat form).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Built-in training pairs used, at most.
    #[arg(long, default_value_t = 10000)]
    max_pairs: usize,
    #[arg(long, default_value_t = DpoTrainConfig::default().train.steps)]
    steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = DpoTrainConfig::default().train.batch_size)]
    batch_size: usize,
    /// Peak learning rate (warmup, then cosine to a tenth).
    #[arg(long, default_value_t = DpoTrainConfig::default().train.schedule.lr)]
    lr: f32,
    /// Loss type or weighted mixture TYPE[:WEIGHT],...: sigmoid, hinge, ipo, robust, bco_pair,
    /// apo_zero, apo_down, sigmoid_norm, sft, exo_pair, nca_pair, sppo_hard, discopop, orpo,
    /// aot, aot_unpaired.
    /// Example: sigmoid:1,sft:0.5. Alone, `simpo` (= sigmoid_norm) and `orpo` are
    /// reference-free: no reference model is loaded.
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    /// β, the inverse temperature of the implicit reward.
    #[arg(long, default_value_t = DpoConfig::default().beta)]
    beta: f32,
    /// ε for sigmoid (conservative DPO) and robust.
    #[arg(long, default_value_t = DpoConfig::default().label_smoothing)]
    label_smoothing: f32,
    /// Margin γ of sigmoid_norm (SimPO).
    #[arg(long, default_value_t = DpoConfig::default().simpo_gamma)]
    simpo_gamma: f32,
    /// Temperature τ of discopop's log-ratio modulation.
    #[arg(long, default_value_t = DpoConfig::default().discopop_tau)]
    discopop_tau: f32,
    /// Where the reference log-probs come from: a frozen copy of the init model, values stored
    /// in the --data file, or none (reference-free losses).
    #[arg(long, value_enum, default_value_t = RefArg::Model)]
    reference: RefArg,
    /// Compute the init model's log-probs into the data file first (built-in data: written to
    /// <out>/pairs.bin), then train with them: implies --reference precomputed.
    #[arg(long)]
    precompute_ref: bool,
    /// Train LoRA adapters of this rank instead of every weight; the reference is then the
    /// base model with its adapters off (one copy of the weights) unless --reference says
    /// otherwise. The adapter is saved in PEFT's layout to <out>/adapter.
    #[arg(long)]
    lora: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = plumb::lora::LoraConfig::default().alpha)]
    lora_alpha: f32,
    /// Output: metrics.jsonl and the final checkpoint.
    #[arg(long, default_value = "runs/dpo")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RefArg {
    Model,
    Precomputed,
    None,
}

/// `sigmoid` or `sigmoid:1,sft:0.5` into weighted loss types.
fn parse_losses(s: &str) -> Result<Vec<(DpoLoss, f32)>> {
    s.split(',')
        .map(|item| {
            let (name, w) = item.split_once(':').unwrap_or((item, "1"));
            let w: f32 = w.trim().parse().map_err(|_| Error::config("--loss", format!("`{w}` in `{item}` is not a weight")))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::config("--loss", format!("weight {w} in `{item}` must be a finite number >= 0")));
            }
            Ok((name.parse::<DpoLoss>()?, w))
        })
        .collect()
}

pub fn run(a: DpoArgs) -> Result<()> {
    // SimPO and ORPO alone are reference-free: one model in memory
    let reference_free = matches!(a.loss.trim(), "simpo" | "orpo");
    let losses = if a.loss.trim() == "simpo" { vec![(DpoLoss::SigmoidNorm, 1.0)] } else { parse_losses(&a.loss)? };
    let loss = DpoConfig { beta: a.beta, label_smoothing: a.label_smoothing, losses, simpo_gamma: a.simpo_gamma, discopop_tau: a.discopop_tau };
    loss.weights()?; // check the settings before loading anything
    if reference_free && (a.precompute_ref || a.reference == RefArg::Precomputed) {
        return Err(Error::config("--loss", format!("{} is reference-free: drop --precompute-ref / --reference precomputed", a.loss)));
    }
    let reference = if reference_free { RefArg::None } else if a.precompute_ref { RefArg::Precomputed } else { a.reference };
    if a.precompute_ref && a.reference == RefArg::None {
        return Err(Error::config("--precompute-ref", "conflicts with --reference none"));
    }
    let (gpu, init, mut policy) = load_init(&a.common.init, a.lora.is_some())?;
    let cfg = DpoTrainConfig { train: train_config(&a.common, &policy, a.steps, a.batch_size, cosine(a.lr, a.steps), &a.out)?, loss, pad_id: 0 };
    // Built-in pairs stay in memory unless the reference is precomputed into a file.
    let mut file = a.data.clone();
    let mut memory = vec![];
    if a.data.is_none() {
        memory = match builtin_chat_pairs(&init, Split::Train, cfg.train.max_len, a.max_pairs)? {
            Some(chat) => {
                println!("data: {} built-in preference pairs in chat form (\"{}\" -> the better-rated sentence)", chat.len(), plumb::demo::data::REVIEW_REQUEST);
                chat
            }
            None => {
                check_byte_level(&policy)?;
                let pairs = builtin_pairs(Split::Train, cfg.train.max_len, a.max_pairs)?;
                println!("data: {} built-in preference pairs", pairs.len());
                pairs
            }
        };
        if a.precompute_ref && a.common.resume {
            // the killed run wrote them, with the reference's log-probs (checked below)
            file = Some(a.out.join("pairs.bin"));
        } else if a.precompute_ref {
            // Claim --out (lock, no other run there unless --overwrite) before writing into it;
            // the trainer opens it again to train.
            drop(plumb::train::rundir::RunDir::open(&a.out, false, &cfg.train.run)?);
            let path = a.out.join("pairs.bin");
            write_pairs(&path, &memory, policy.vocab_size())?;
            file = Some(path);
        } else if reference == RefArg::Precomputed {
            return Err(Error::config("--reference", "the built-in pairs have no precomputed reference log-probs; add --precompute-ref"));
        }
    }
    if let (Some(path), true) = (&file, a.precompute_ref && !a.common.resume) {
        // the init model before training is the reference: compute its log-probs once
        let n = precompute_reference(&policy, path, &cfg)?;
        println!("reference log-probs of {n} pairs stored in {}", path.display());
    }
    let data = file.as_ref().map(|p| open_pairs(p, &policy, &a.common)).transpose()?;
    if let (Some(d), RefArg::Precomputed) = (&data, reference) {
        // the stored values must come from this init model, this data and these lengths
        let now = ReferenceProvenance::of(&policy, d.dataset(), &cfg)?;
        check_reference_provenance(d.dataset().path(), &now)?;
    }
    if let Some(d) = &data {
        println!("data: {} preference pairs from {}", d.len(), d.dataset().path().display());
    }
    let pairs: &dyn Pairs = match &data {
        Some(d) => d,
        None => &memory,
    };
    if let Some(r) = a.lora {
        policy.add_lora(&plumb::lora::LoraConfig { r, alpha: a.lora_alpha, ..Default::default() }, a.common.seed)?;
        println!("{}", crate::common::lora_line(&policy, r));
    }
    let adapters_ref = a.lora.is_some() && reference == RefArg::Model;
    let frozen = match reference {
        RefArg::Model if !adapters_ref => Some(Model::load(&gpu, &init)?),
        _ => None,
    };
    let r = match (reference, &frozen) {
        (RefArg::Model, _) if adapters_ref => Reference::Adapters,
        (RefArg::Model, Some(m)) => Reference::Model(m),
        (RefArg::Precomputed, _) => Reference::Precomputed,
        _ => Reference::None,
    };
    println!("reference: {} ({} model(s) in memory)", r.describe(), r.models_in_memory());
    let m = Dpo::new(cfg).train(&policy, pairs, r)?;
    println!("trained {} steps:", m.len());
    print_first_last(&m, &["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]);
    println!("checkpoint: {}", final_checkpoint(&a.out));
    if a.lora.is_some() {
        policy.save_lora(&a.out.join("adapter"))?;
        println!("adapter (PEFT layout): {}", a.out.join("adapter").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn losses_parse_with_and_without_weights() {
        use plumb::ops::dpo::DpoLoss::*;
        assert_eq!(super::parse_losses("sigmoid").unwrap(), vec![(Sigmoid, 1.0)]);
        assert_eq!(super::parse_losses("sigmoid:1,sft:0.5").unwrap(), vec![(Sigmoid, 1.0), (Sft, 0.5)]);
        assert!(super::parse_losses("sigmoid:x").is_err() && super::parse_losses("nope").is_err());
        assert!(super::parse_losses("sigmoid:-1").is_err() && super::parse_losses("sigmoid:inf").is_err());
    }
}
