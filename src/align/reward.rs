//! Reward models (TRL's RewardTrainer): a transformer whose scalar head reads the hidden state
//! of each row's last real token, trained on preference pairs with the Bradley-Terry loss
//!
//! ```text
//! L = mean_i −log σ(r(x, y_c) − r(x, y_r) − m_i) + μ · mean_i (r_c + r_r)²
//! ```
//!
//! ([`crate::ops::reward::bradley_terry`], one fused kernel). The head is Hugging Face's
//! `score.weight` (1, C), kept in the same flat parameter store as the trunk, so one AdamW and
//! one gradient clip cover both and the checkpoint loads into `AutoModelForSequenceClassification`.

use super::batching::{pair_rows, split_pairs, step_indices, Pairs};
use super::common::TrainConfig;
use super::seqs::{SeqBatch, SeqTensors};
use crate::train::trainer::{self, read_norm, Method, MicroBatch, MicroMetrics};
use crate::error::{Error, Result};
use crate::model::{Gpt, Llama, Model, ModelConfig};
use crate::nn::normal;
use crate::ops::embedding::embedding;
use crate::ops::matmul::matmul;
use crate::ops::reward::bradley_terry;
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::weights::{save_f32, write_atomic, WeightFile};
use crate::Gpu;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The head's tensor name (HF `*ForSequenceClassification`).
pub const SCORE: &str = "score.weight";

/// A transformer with a scalar head: `r(x) = score · h_last(x)`.
pub struct RewardModel {
    /// The trunk; its parameter store also holds `score.weight`.
    pub model: Model,
}

fn with_score(cfg: &ModelConfig, store: ParamStore) -> Result<Model> {
    Ok(match cfg {
        ModelConfig::Gpt(c) => Model::Gpt(Gpt::from_params(c.clone(), store)?),
        ModelConfig::Llama(c) => Model::Llama(Llama::from_params(c.clone(), store)?),
    })
}

fn specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let mut s = Model::param_specs(cfg);
    let c = match cfg {
        ModelConfig::Gpt(c) => c.n_embd,
        ModelConfig::Llama(c) => c.hidden_size,
    };
    s.push(ParamSpec::new(SCORE, &[1, c], false));
    s
}

impl RewardModel {
    /// A reward model whose trunk starts from `base` (e.g. the SFT model, as in InstructGPT) and
    /// whose head is N(0, 0.02) (HF's init), deterministic in `seed`.
    pub fn from_model(base: &Model, seed: u64) -> Result<RewardModel> {
        let cfg = base.config();
        let store = ParamStore::new(base.params().gpu(), &specs(&cfg))?;
        let c = base.hidden_size();
        let mut tensors = base.params().read_all()?;
        tensors.push((SCORE.to_string(), vec![1, c], normal(c, 0.02, seed ^ 0x5c0e)));
        store.write_all(&tensors)?;
        Ok(RewardModel { model: with_score(&cfg, store)? })
    }

    /// Scores (B) of the rows of `s` at their last real token; on `tape` when given.
    pub fn scores(&self, tape: Option<&Tape>, s: &SeqTensors) -> Result<Var> {
        let c = self.model.hidden_size();
        let h = self.model.hidden(tape, &s.ids, s.key_mask.as_ref())?.reshape(&[s.rows * s.seq, c])?; // (B·T, C)
        let last = embedding(&s.last, &h)?.reshape(&[s.rows, c])?; // (B, C): gather the last rows
        let w = match tape {
            Some(t) => self.model.params().var(t, SCORE)?,
            None => Var::constant(self.model.params().value(SCORE)?),
        };
        matmul(&last, &w, false, true)?.reshape(&[s.rows]) // (B)
    }

    /// Score token rows (prompt ++ completion), `batch` at a time; returns one reward per row.
    pub fn score_rows(&self, rows: &[(&[u32], &[u32])], max_len: usize, pad: u32, batch: usize) -> Result<Vec<f32>> {
        let gpu = self.model.params().gpu();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(batch.max(1)) {
            let s = SeqBatch::right_padded(chunk, max_len, max_len - 1, pad)?.upload(gpu)?;
            out.extend(self.scores(None, &s)?.to_f32_vec()?);
        }
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite { what: format!("reward score (tensor `scores`) of row {i}"), value: out[i] as f64 });
        }
        Ok(out)
    }

    /// Write an HF directory: config.json (`*ForSequenceClassification`, one label) and
    /// model.safetensors with the trunk and `score.weight`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut cfg = self.model.config().to_json();
        let arch = match self.model {
            Model::Gpt(_) => "GPT2ForSequenceClassification",
            Model::Llama(_) => "LlamaForSequenceClassification",
        };
        cfg["architectures"] = serde_json::json!([arch]);
        cfg["num_labels"] = 1.into();
        cfg["id2label"] = serde_json::json!({"0": "LABEL_0"});
        cfg["label2id"] = serde_json::json!({"LABEL_0": 0});
        if cfg.get("pad_token_id").is_none_or(|v| v.is_null()) {
            cfg["pad_token_id"] = 0.into();
        }
        write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json").as_bytes())?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        save_f32(dir.join("model.safetensors"), &self.model.params().read_all()?, meta)
    }

    /// Load a directory written by [`RewardModel::save`] (or by `transformers`).
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<RewardModel> {
        let cfg = ModelConfig::load(dir)?;
        let file = WeightFile::open(dir.join("model.safetensors"))?;
        let specs = specs(&cfg);
        let store = ParamStore::new(gpu, &specs)?;
        for s in &specs {
            store.set(&s.name, &file.get_f32(&s.name, &s.shape)?)?;
        }
        Ok(RewardModel { model: with_score(&cfg, store)? })
    }
}

/// Reward-model settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RewardConfig {
    pub train: TrainConfig,
    /// μ of the centering term (TRL's `center_rewards_coefficient`); 0 turns it off. Example: 0.01.
    pub center_coef: f32,
    /// Pad token id.
    pub pad_id: u32,
}

impl Default for RewardConfig {
    fn default() -> Self {
        let schedule = crate::train::schedule::Schedule { lr: 1e-4, warmup: 10, total: 0, min_lr: 1e-5 };
        RewardConfig { train: TrainConfig { steps: 200, batch_size: 16, schedule, ..TrainConfig::default() }, center_coef: 0.0, pad_id: 0 }
    }
}

/// One reward-model step's metrics, as named in `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardMetrics {
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping (absent without clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// Share of pairs scored chosen above rejected.
    pub accuracy: f32,
    /// Mean of r_chosen − r_rejected.
    pub margin: f32,
    /// Mean, least and largest score over both rows of every pair.
    pub mean_reward: f32,
    pub min_reward: f32,
    pub max_reward: f32,
    #[serde(default)]
    pub elapsed_s: f64,
}

/// Trains reward models: `Reward::new(cfg).train(&rm, &pairs)`.
pub struct Reward {
    pub cfg: RewardConfig,
}

impl Reward {
    pub fn new(cfg: RewardConfig) -> Reward {
        Reward { cfg }
    }

    /// Train `rm` on `pairs`; returns each step's metrics (loss, accuracy, margin, rewards).
    pub fn train(&self, rm: &RewardModel, pairs: &dyn Pairs) -> Result<Vec<RewardMetrics>> {
        let cfg = &self.cfg;
        cfg.train.check("reward training")?;
        if pairs.is_empty() {
            return Err(Error::config("reward training", "no preference pairs"));
        }
        let run = cfg.train.loop_config(2 * cfg.train.batch_size);
        Ok(trainer::train(&run, &rm.model, &mut RewardMethod { rm, pairs, cfg })?.metrics)
    }

    /// Held-out accuracy and mean margin of `rm` on `pairs` (all of them).
    pub fn evaluate(&self, rm: &RewardModel, pairs: &dyn Pairs) -> Result<(f32, f32)> {
        let gpu = rm.model.params().gpu().clone();
        let (mut correct, mut margin) = (0usize, 0.0f64);
        let all: Vec<_> = (0..pairs.len()).map(|i| pairs.pair(i)).collect::<Result<_>>()?;
        for chunk in all.chunks(self.cfg.train.batch_size.max(1)) {
            let s = pair_rows(chunk, &self.cfg.train, self.cfg.pad_id)?.upload(&gpu)?;
            let r = rm.scores(None, &s)?.to_f32_vec()?;
            for p in r.chunks(2) {
                correct += usize::from(p[0] > p[1]);
                margin += (p[0] - p[1]) as f64;
            }
        }
        let n = all.len().max(1) as f64;
        Ok(((correct as f64 / n) as f32, (margin / n) as f32))
    }
}

/// The reward model's step in the training loop: Bradley-Terry on a batch of pairs.
struct RewardMethod<'a> {
    rm: &'a RewardModel,
    pairs: &'a dyn Pairs,
    cfg: &'a RewardConfig,
}

impl Method for RewardMethod<'_> {
    type Metrics = RewardMetrics;
    type Part = Tensor;

    fn name(&self) -> &'static str {
        "reward"
    }

    fn settings(&self) -> serde_json::Value {
        self.cfg.train.settings(serde_json::to_value(self.cfg).expect("json"))
    }

    fn backward(&mut self, mb: MicroBatch) -> Result<Tensor> {
        let (cfg, b) = (self.cfg, self.cfg.train.batch_size);
        let model = &self.rm.model;
        let batch: Vec<_> = step_indices(cfg.train.seed, self.pairs.len(), mb.index(), b).map(|i| self.pairs.pair(i)).collect::<Result<_>>()?;
        let rows = pair_rows(&batch, &cfg.train, cfg.pad_id)?.upload(model.params().gpu())?;
        let tape = Tape::new();
        let (rc, rr) = split_pairs(&self.rm.scores(Some(&tape), &rows)?, b)?;
        let (loss, metrics) = bradley_terry(&rc, &rr, None, cfg.center_coef)?;
        tape.backward(&mb.scaled(&loss)?)?;
        Ok(metrics.tensor().clone()) // [loss, REWARD_METRIC_NAMES...]
    }

    /// Means over the micro-batches; min_reward and max_reward over all of them.
    fn finish(&mut self, parts: Vec<Tensor>, grad_norm: Option<Tensor>) -> Result<RewardMetrics> {
        let v = MicroMetrics::read(&parts)?;
        debug_assert_eq!(crate::ops::reward::REWARD_METRIC_NAMES, ["accuracy", "margin", "mean_reward", "min_reward", "max_reward"]);
        Ok(RewardMetrics {
            loss: v.mean(0),
            grad_norm: read_norm(grad_norm)?,
            accuracy: v.mean(1),
            margin: v.mean(2),
            mean_reward: v.mean(3),
            min_reward: v.min(4),
            max_reward: v.max(5),
            ..Default::default()
        })
    }

    fn loss(m: &RewardMetrics) -> f32 {
        m.loss
    }

    fn stamp(&self, m: &mut RewardMetrics, done: usize, lr: f32, elapsed_s: f64, _: usize) {
        (m.step, m.lr, m.elapsed_s) = (done, lr, elapsed_s);
    }
}
