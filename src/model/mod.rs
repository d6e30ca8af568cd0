//! Models: one file per architecture, plain structs over one flat parameter store, and
//! [`Model`], the enum trainers take so that they work with either. Checkpoints are Hugging Face
//! directories: `config.json` + `model.safetensors` (+ `tokenizer.json` when known).

pub mod config;
pub mod gpt;
pub mod llama;
pub mod presets;

pub use config::{GptConfig, LlamaConfig, ModelConfig};
pub use gpt::Gpt;
pub use llama::Llama;

use crate::error::{Error, Result};
use crate::ops::attention::KvCache;
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::weights::{save_f32, write_atomic, WeightFile};
use crate::Gpu;
use std::collections::HashMap;
use std::path::Path;

/// A causal language model of either architecture.
pub enum Model {
    Gpt(Gpt),
    Llama(Llama),
}

impl Model {
    /// A freshly initialised model for `cfg`, deterministic in `seed`.
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, seed: u64) -> Result<Model> {
        Ok(match cfg {
            ModelConfig::Gpt(c) => Model::Gpt(Gpt::new(gpu, c.clone(), seed)?),
            ModelConfig::Llama(c) => Model::Llama(Llama::new(gpu, c.clone(), seed)?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Gpt(m) => ModelConfig::Gpt(m.cfg.clone()),
            Model::Llama(m) => ModelConfig::Llama(m.cfg.clone()),
        }
    }

    /// All parameters (one flat buffer) and their gradients.
    pub fn params(&self) -> &ParamStore {
        match self {
            Model::Gpt(m) => &m.params,
            Model::Llama(m) => &m.params,
        }
    }

    /// The parameters a trainer updates: the whole model (with LoRA adapters attached, only the
    /// adapters). Optimizers step this store and zero its gradients.
    pub fn trainable(&self) -> &ParamStore {
        self.params()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Gpt(m) => m.cfg.vocab_size,
            Model::Llama(m) => m.cfg.vocab_size,
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Model::Gpt(m) => m.cfg.n_embd,
            Model::Llama(m) => m.cfg.hidden_size,
        }
    }

    /// Longest sequence the model takes (GPT-2: its position table).
    pub fn max_len(&self) -> usize {
        match self {
            Model::Gpt(m) => m.cfg.n_positions,
            Model::Llama(m) => m.cfg.max_position_embeddings,
        }
    }

    /// Final hidden states (B, T, C) for ids (B, T); recorded on `tape` when given.
    pub fn hidden(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        match self {
            Model::Gpt(m) => m.hidden(tape, ids, key_mask),
            Model::Llama(m) => m.hidden(tape, ids, key_mask),
        }
    }

    /// LM-head logits (rows, V) for hidden states (..., C).
    pub fn lm_head(&self, tape: Option<&Tape>, x: &Var) -> Result<Var> {
        match self {
            Model::Gpt(m) => m.lm_head(tape, x),
            Model::Llama(m) => m.lm_head(tape, x),
        }
    }

    /// Logits (B·T, V) for ids (B, T).
    pub fn forward(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        match self {
            Model::Gpt(m) => m.forward(tape, ids, key_mask),
            Model::Llama(m) => m.forward(tape, ids, key_mask),
        }
    }

    /// One KV cache per layer.
    pub fn new_caches(&self, batch: usize, max_len: usize) -> Result<Vec<KvCache>> {
        match self {
            Model::Gpt(m) => m.new_caches(batch, max_len),
            Model::Llama(m) => m.new_caches(batch, max_len),
        }
    }

    /// Cached inference step: logits (B, V) of each row's last new token.
    pub fn forward_cached(&self, ids: &Tensor, caches: &mut [KvCache], key_mask: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Model::Gpt(m) => m.forward_cached(ids, caches, key_mask),
            Model::Llama(m) => m.forward_cached(ids, caches, key_mask),
        }
    }

    /// Parameter names and shapes of `cfg` in Hugging Face layout.
    pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
        match cfg {
            ModelConfig::Gpt(c) => Gpt::param_specs(c),
            ModelConfig::Llama(c) => Llama::param_specs(c),
        }
    }

    /// Write `dir/config.json` and `dir/model.safetensors` (each atomically), creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = serde_json::to_string_pretty(&self.config().to_json()).expect("config serialises");
        write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_f32(dir.join("model.safetensors"), &self.params().read_all()?, meta)
    }

    /// Load a Hugging Face directory (config.json + model.safetensors). Names are checked one by
    /// one; GPT-2 files without the `transformer.` prefix (the original hub layout) load too.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Model> {
        let cfg = ModelConfig::load(dir)?;
        let file = WeightFile::open(dir.join("model.safetensors"))?;
        let specs = Self::param_specs(&cfg);
        let store = ParamStore::new(gpu, &specs)?;
        for s in &specs {
            let name = if file.contains(&s.name) {
                s.name.clone()
            } else {
                s.name.strip_prefix("transformer.").map(String::from).unwrap_or_else(|| s.name.clone())
            };
            store.set(&s.name, &file.get_f32(&name, &s.shape)?)?;
        }
        Ok(match cfg {
            ModelConfig::Gpt(c) => Model::Gpt(Gpt::from_params(c, store)?),
            ModelConfig::Llama(c) => Model::Llama(Llama::from_params(c, store)?),
        })
    }
}

/// The last time step of (B, T, C) as (B, 1, C): viewing (B, T·C) and slicing the last C
/// columns picks row T-1 of every batch.
pub(crate) fn last_token(x: &Tensor, b: usize, t: usize, c: usize) -> Result<Tensor> {
    crate::ops::elementwise::slice_last_forward(&x.reshape(&[b, t * c])?, (t - 1) * c, c)?.reshape(&[b, 1, c])
}
