//! `plumb kto`: Kahneman-Tversky Optimisation of an SFT checkpoint on unpaired feedback (one
//! completion per row, thumbs up or down), TRL's `kto` or `apo_zero_unpaired` loss, against a
//! frozen copy of the model or, with LoRA, the base model with its adapters off.

use crate::common::{check_byte_level, check_dataset, cosine, final_checkpoint, load_init, train_config, CommonArgs};
use plumb::align::{Completion, Completions, Kto, KtoTrainConfig, Reference};
use plumb::data::UnpairedDataset;
use plumb::demo::data::{thumbs, Split};
use plumb::model::Model;
use plumb::ops::kto::{KtoConfig, KtoLoss};
use plumb::tokenizer::Tokenizer;
use plumb::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  plumb kto                                   # from runs/sft, built-in thumbs (review ratings), frozen reference
  plumb kto --loss apo_zero_unpaired          # no KL term: push desirable up, undesirable down
  plumb kto --desirable-weight 1.33           # fewer thumbs-up than thumbs-down: weigh them up
  plumb kto --lora 8                          # LoRA adapters; reference = base model, one copy
  plumb data prepare thumbs.jsonl thumbs.bin --tokenizer gpt2   # rows {\"prompt\", \"completion\", \"label\": true|false}
  plumb kto --data thumbs.bin --init runs/sft/checkpoint-300 --out runs/kto")]
pub struct KtoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Unpaired feedback from `plumb data prepare` (rows with prompt, completion, label);
    /// default: built-in movie-review sentences, those rated clearly positive (mean >= 1.5 of
    /// 4) desirable, clearly negative undesirable (byte-level).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Built-in rows used, at most, of each label.
    #[arg(long, default_value_t = 5000)]
    max_rows: usize,
    #[arg(long, default_value_t = KtoTrainConfig::default().train.steps)]
    steps: usize,
    /// Rows per step (at least 2 for `kto`: the KL rows pair prompts with other rows' completions).
    #[arg(long, default_value_t = KtoTrainConfig::default().train.batch_size)]
    batch_size: usize,
    /// Peak learning rate (TRL's KTOConfig defaults to 1e-6 for large models; small ones take more).
    #[arg(long, default_value_t = KtoTrainConfig::default().train.schedule.lr)]
    lr: f32,
    /// Loss type: kto or apo_zero_unpaired.
    #[arg(long, default_value = "kto")]
    loss: String,
    /// β, the inverse temperature of the implicit reward.
    #[arg(long, default_value_t = KtoConfig::default().beta)]
    beta: f32,
    /// Weight of desirable rows' losses.
    #[arg(long, default_value_t = KtoConfig::default().desirable_weight)]
    desirable_weight: f32,
    /// Weight of undesirable rows' losses.
    #[arg(long, default_value_t = KtoConfig::default().undesirable_weight)]
    undesirable_weight: f32,
    /// No reference model (reference-free log-ratios: r = log π(y|x)).
    #[arg(long)]
    no_reference: bool,
    /// Train LoRA adapters of this rank instead of every weight; the reference is then the base
    /// model with its adapters off (one copy of the weights). Saved in PEFT's layout to
    /// <out>/adapter.
    #[arg(long)]
    lora: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = plumb::lora::LoraConfig::default().alpha)]
    lora_alpha: f32,
    /// Output: metrics.jsonl and the final checkpoint.
    #[arg(long, default_value = "runs/kto")]
    out: PathBuf,
}

pub fn run(a: KtoArgs) -> Result<()> {
    let loss = KtoConfig { beta: a.beta, loss_type: a.loss.parse::<KtoLoss>()?, desirable_weight: a.desirable_weight, undesirable_weight: a.undesirable_weight };
    loss.check()?; // before loading anything
    let (gpu, init, mut policy) = load_init(&a.common.init, a.lora.is_some())?;
    let cfg = KtoTrainConfig { train: train_config(&a.common, &policy, a.steps, a.batch_size, cosine(a.lr, a.steps), &a.out)?, loss, pad_id: 0 };
    let file = match &a.data {
        Some(p) => {
            let d = UnpairedDataset::open(p)?;
            if d.is_empty() {
                return Err(Error::format(p, "no rows"));
            }
            check_dataset(d.dataset(), &policy, Some(&init), !a.common.no_verify)?;
            Some(d)
        }
        None => None,
    };
    let memory: Vec<Completion> = match &file {
        Some(_) => vec![],
        None => {
            check_byte_level(&policy)?;
            let max_chars = cfg.train.max_len.saturating_sub(2).min(120);
            thumbs(&Tokenizer::byte_level(), Split::Train, 1.5, max_chars, a.max_rows)?
        }
    };
    let data: &dyn Completions = match &file {
        Some(d) => d,
        None => &memory,
    };
    let ups = (0..data.len()).map(|i| data.completion(i).map(|c| usize::from(c.label))).sum::<Result<usize>>()?;
    println!("data: {} rows ({ups} desirable, {} undesirable)", data.len(), data.len() - ups);
    let ratio = (cfg.loss.desirable_weight * ups as f32) / (cfg.loss.undesirable_weight * (data.len() - ups) as f32);
    if !(1.0..=4.0 / 3.0).contains(&ratio) {
        // TRL's advice: desirable_weight·#desirable : undesirable_weight·#undesirable in [1, 4/3]
        println!("note: desirable:undesirable weighted ratio {ratio:.2} is outside TRL's advised [1, 4/3]; see --desirable-weight / --undesirable-weight");
    }
    if let Some(r) = a.lora {
        policy.add_lora(&plumb::lora::LoraConfig { r, alpha: a.lora_alpha, ..Default::default() }, a.common.seed)?;
        println!("{}", crate::common::lora_line(&policy, r));
    }
    let frozen = if a.no_reference || a.lora.is_some() { None } else { Some(Model::load(&gpu, &init)?) };
    let r = match (&frozen, a.no_reference) {
        (_, true) => Reference::None,
        (Some(m), _) => Reference::Model(m),
        (None, _) => Reference::Adapters,
    };
    println!("reference: {} ({} model(s) in memory)", r.describe(), r.models_in_memory());
    let m = Kto::new(cfg).train(&policy, data, r)?;
    println!("trained {} steps:", m.len());
    let show = |name: &str, f: &dyn Fn(&plumb::align::KtoMetrics) -> Option<f32>| {
        let v: Vec<f32> = m.iter().filter_map(f).collect();
        if let (Some(a), Some(b)) = (v.first(), v.last()) {
            println!("  {name:<28} {a:>9.4} -> {b:.4}");
        }
    };
    show("loss", &|x| Some(x.loss));
    show("rewards/chosen", &|x| x.rewards_chosen);
    show("rewards/rejected", &|x| x.rewards_rejected);
    show("rewards/margins", &|x| x.rewards_margins);
    show("kl", &|x| Some(x.kl));
    println!("checkpoint: {}", final_checkpoint(&a.out));
    if a.lora.is_some() {
        policy.save_lora(&a.out.join("adapter"))?;
        println!("adapter (PEFT layout): {}", a.out.join("adapter").display());
    }
    Ok(())
}
