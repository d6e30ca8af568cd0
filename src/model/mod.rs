//! Models: one file per architecture, plain structs over one flat parameter store, and
//! [`Model`], the enum trainers take so that they work with either. Checkpoints are Hugging Face
//! directories: `config.json` + `model.safetensors` (+ `tokenizer.json` when known).
//! A LoRA adapter (src/lora.rs) can be attached, trained alone, switched off for a reference
//! pass, saved and loaded in PEFT's layout, and merged into the weights.

pub mod config;
pub mod frozen;
pub mod gpt;
pub mod memory;
pub mod llama;
pub mod presets;

pub use config::{GptConfig, LlamaConfig, ModelConfig, RopeScaling};
pub use frozen::FrozenBase;
pub use gpt::Gpt;
pub use llama::Llama;

use crate::error::{Error, Result};
use crate::lora::{Lora, LoraConfig, LoraModule};
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

    /// The parameters a trainer updates: the whole model, or with a LoRA adapter attached only
    /// the adapter. Optimizers step this store and zero its gradients.
    pub fn trainable(&self) -> &ParamStore {
        match self.lora() {
            Some(l) => &l.params,
            None => self.params(),
        }
    }

    /// The attached LoRA adapter, if any.
    pub fn lora(&self) -> Option<&Lora> {
        match self {
            Model::Gpt(m) => m.adapter.as_ref(),
            Model::Llama(m) => m.adapter.as_ref(),
        }
    }

    fn adapter_slot(&mut self) -> &mut Option<Lora> {
        match self {
            Model::Gpt(m) => &mut m.adapter,
            Model::Llama(m) => &mut m.adapter,
        }
    }

    /// The projections LoRA may adapt, with their widths.
    pub fn lora_modules(&self) -> Vec<LoraModule> {
        match self {
            Model::Gpt(m) => Gpt::lora_modules(&m.cfg),
            Model::Llama(m) => Llama::lora_modules(&m.cfg),
        }
    }

    /// plumb holds one adapter at a time.
    fn check_no_adapter(&self) -> Result<()> {
        match self.lora() {
            Some(_) => Err(Error::config("LoRA", "an adapter is already attached (merge_lora or remove_lora first)")),
            None => Ok(()),
        }
    }

    /// Attach a fresh LoRA adapter (PEFT's initialisation, deterministic in `seed`): outputs are
    /// unchanged until it trains. Empty `target_modules` means the architecture's defaults.
    /// From now on only the adapter trains ([`Model::trainable`]).
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        self.check_no_adapter()?;
        let mut cfg = cfg.clone();
        if cfg.target_modules.is_empty() {
            cfg.target_modules = LoraConfig::default_targets(&self.config());
        }
        let lora = Lora::new(self.params().gpu(), &cfg, &self.lora_modules(), seed)?;
        *self.adapter_slot() = Some(lora);
        self.params_mut().release_grads()
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        match self {
            Model::Gpt(m) => &mut m.params,
            Model::Llama(m) => &mut m.params,
        }
    }

    /// Detach the adapter and return it (the model is the base model again, with zeroed
    /// gradient buffers: under the adapter the frozen base holds none).
    pub fn remove_lora(&mut self) -> Option<Lora> {
        let lora = self.adapter_slot().take();
        if let Err(e) = self.params_mut().restore_grads() {
            // (out of memory here leaves the model usable for inference; training it fails
            // later with the same error)
            eprintln!("plumb: could not restore the base model's gradient buffers: {e}");
        }
        lora
    }

    /// Switch the adapter on or off; off, a forward pass is the base model's (the DPO/PPO
    /// reference). No effect without an adapter.
    pub fn set_adapters_enabled(&self, on: bool) {
        if let Some(l) = self.lora() {
            l.set_enabled(on)
        }
    }

    /// Keep the base's weight matrices in stored form `kind` from now on (f16, bf16, Q8_0, Q4_0,
    /// Q4_1, Q4_K, Q6_K; a matrix whose rows are not whole blocks of `kind` falls back to Q8_0
    /// or f16, see [`frozen::fitting_type`]): the token embedding, the LM head and every
    /// projection of the blocks (GPT-2's position embedding, norms and biases stay f32). Their
    /// f32 copies leave the GPU. The matrices no longer train: attach a LoRA adapter (before or
    /// after) to fine-tune; without one only the f32 rest (norms, biases) would. Frozen twice,
    /// or saved / merged afterwards: an error.
    pub fn freeze_base(&mut self, kind: crate::ops::quant::StoredType) -> Result<()> {
        if self.frozen().is_some() {
            return Err(Error::config("freeze_base", "the base is already frozen"));
        }
        let (names, transposed) = Self::frozen_names(&self.config());
        let gpu = self.params().gpu().clone();
        let (frozen, rest) = FrozenBase::freeze(self.params(), &names, &transposed, kind)?;
        self.set_frozen(rest, frozen);
        // The old store's buffers go back to the pool: hand them back to the driver.
        gpu.trim_pool();
        Ok(())
    }

    /// The matrices a frozen base keeps in stored form for `cfg` (the token embedding, the LM
    /// head, every block projection), and those of them stored (in, out) in the parameter store
    /// (GPT-2's Conv1D).
    pub(crate) fn frozen_names(cfg: &ModelConfig) -> (Vec<String>, Vec<String>) {
        match cfg {
            ModelConfig::Gpt(c) => {
                let names: Vec<String> = Gpt::lora_modules(c).into_iter().map(|l| format!("{}.weight", l.name)).collect();
                let mut all = names.clone();
                all.push("transformer.wte.weight".into());
                (all, names)
            }
            ModelConfig::Llama(c) => (Llama::param_specs(c).into_iter().filter(|s| s.shape.len() == 2).map(|s| s.name).collect(), vec![]),
        }
    }

    /// Replace the parameter store by `params` (everything not frozen) and keep `frozen`.
    pub(crate) fn set_frozen(&mut self, params: ParamStore, frozen: FrozenBase) {
        match self {
            Model::Gpt(m) => (m.params, m.frozen) = (params, Some(frozen)),
            Model::Llama(m) => (m.params, m.frozen) = (params, Some(frozen)),
        }
    }

    /// The stored-form matrices, when [`Model::freeze_base`] (or a loader) froze the base.
    pub fn frozen(&self) -> Option<&FrozenBase> {
        match self {
            Model::Gpt(m) => m.frozen.as_ref(),
            Model::Llama(m) => m.frozen.as_ref(),
        }
    }

    /// Fold the adapter into the base weights, `W += (α/r)·B·A` in each weight's own layout
    /// (GPT-2's Conv1D is stored (in, out), so it gets `(B·A)ᵀ = Aᵀ·Bᵀ`), then detach it. Runs on
    /// the GPU: one product and one in-place add per module.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(lora) = self.lora() else {
            return Err(Error::config("LoRA", "merge_lora: no adapter is attached"));
        };
        if self.frozen().is_some() {
            return Err(Error::config("merge_lora", "the base is frozen in stored form; save the adapter instead"));
        }
        let conv = matches!(self, Model::Gpt(_));
        let scale = lora.cfg.scale();
        for m in lora.modules() {
            let a = lora.params.value(&crate::lora::tensor_name(&m.name, "A"))?; // (r, in)
            let b = lora.params.value(&crate::lora::tensor_name(&m.name, "B"))?; // (out, r)
            let delta = if conv {
                crate::ops::matmul::matmul_forward(&a, &b, None, true, true)? // Aᵀ·Bᵀ (in, out)
            } else {
                crate::ops::matmul::matmul_forward(&b, &a, None, false, false)? // B·A (out, in)
            };
            crate::ops::elementwise::add_assign(&self.params().value(&format!("{}.weight", m.name))?, &delta, scale)?;
        }
        self.remove_lora();
        Ok(())
    }

    /// Write the adapter as PEFT does: `dir/adapter_model.safetensors` + `dir/adapter_config.json`.
    pub fn save_lora(&self, dir: &Path) -> Result<()> {
        let Some(lora) = self.lora() else {
            return Err(Error::config("LoRA", "save_lora: no adapter is attached"));
        };
        lora.save(dir, matches!(self, Model::Gpt(_)))
    }

    /// Attach the adapter saved in `dir` (by [`Model::save_lora`] or PEFT's `save_pretrained`);
    /// every tensor's name and shape is checked against this model.
    pub fn load_lora(&mut self, dir: &Path) -> Result<()> {
        self.check_no_adapter()?;
        let lora = Lora::load(self.params().gpu(), dir, &self.lora_modules())?;
        *self.adapter_slot() = Some(lora);
        self.params_mut().release_grads()
    }

    /// Recompute each transformer block in the backward instead of keeping its activations
    /// (activation checkpointing: only block inputs stay alive between forward and backward).
    /// Losses and gradients are bit-identical either way; the backward costs one more forward.
    pub fn set_checkpointing(&self, on: bool) {
        match self {
            Model::Gpt(m) => m.checkpoint_activations.set(on),
            Model::Llama(m) => m.checkpoint_activations.set(on),
        }
    }

    /// Per-token [log p(label), entropy, mean logit] (rows, 3) for hidden states (..., C) and labels (...)
    /// through the chunked vocabulary head: the (rows, V) logits never exist. Labels past the
    /// vocabulary give log p 0. With `ops::vocab_head::head_cross_entropy` it is SFT's loss.
    pub fn token_head(&self, tape: Option<&Tape>, hidden: &Var, labels: &Tensor) -> Result<Var> {
        match self {
            Model::Gpt(m) => m.token_head(tape, hidden, labels),
            Model::Llama(m) => m.token_head(tape, hidden, labels),
        }
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
    /// These are the base weights: an attached adapter is saved by [`Model::save_lora`], or
    /// folded in first by [`Model::merge_lora`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        if self.frozen().is_some() {
            return Err(Error::config("save", "the base is frozen in stored form (its matrices are not f32 parameters)"));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = serde_json::to_string_pretty(&self.config().to_json()).expect("config serialises");
        write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_f32(dir.join("model.safetensors"), &self.params().read_all()?, meta)
    }

    /// Load a Hugging Face directory (config.json + model.safetensors), or a `.gguf` file
    /// (dequantized to f32). Names are checked one by one; GPT-2 files without the `transformer.` prefix (the original hub layout) load too.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Model> {
        if dir.is_file() && dir.extension().is_some_and(|e| e == "gguf") {
            return crate::gguf::model::load_model(gpu, dir); // llama.cpp's file (src/gguf/)
        }
        let cfg = ModelConfig::load(dir)?;
        crate::train::checkpoint::verify_manifest(dir)?;
        let file = WeightFile::open(dir.join("model.safetensors"))?;
        let specs = Self::param_specs(&cfg);
        let names: Vec<String> = specs
            .iter()
            .map(|s| match file.contains(&s.name) {
                true => s.name.clone(),
                false => s.name.strip_prefix("transformer.").map(String::from).unwrap_or_else(|| s.name.clone()),
            })
            .collect();
        check_tensor_names(&file, &names)?;
        let store = ParamStore::new(gpu, &specs)?;
        for (s, name) in specs.iter().zip(&names) {
            store.set(&s.name, &file.get_f32(name, &s.shape)?)?;
        }
        Self::from_config_and_params(cfg, store)
    }

    /// A deep copy on the same GPU: its own parameter store with the base weights copied (not
    /// shared, unlike `clone` of the architecture structs), no adapter. This is the frozen
    /// reference of DPO, KTO or PPO without loading the weights again; a model whose base is in
    /// stored form (`freeze_base`) is refused (use its adapters-off reference instead).
    pub fn try_clone(&self) -> Result<Model> {
        if self.frozen().is_some() {
            return Err(Error::config("Model::try_clone", "the base is in stored form (freeze_base): use the adapters-off reference (Reference::Adapters)"));
        }
        let cfg = self.config();
        let store = ParamStore::new(self.params().gpu(), &Self::param_specs(&cfg))?;
        store.write_all(&self.params().read_all()?)?;
        Model::from_config_and_params(cfg, store)
    }

    /// A model over an already filled store in Hugging Face names (checkpoint and GGUF loading).
    pub fn from_config_and_params(cfg: ModelConfig, store: ParamStore) -> Result<Model> {
        Ok(match cfg {
            ModelConfig::Gpt(c) => Model::Gpt(Gpt::from_params(c, store)?),
            ModelConfig::Llama(c) => Model::Llama(Llama::from_params(c, store)?),
        })
    }
}

/// The config and the weight file must name the same tensors: a config with fewer layers than
/// the file (which would drop layers silently) or more (missing tensors) is an error listing them.
/// Buffers Hugging Face files carry that are not weights (GPT-2's causal-mask `attn.bias`,
/// `rotary_emb.inv_freq`, a tied `lm_head.weight`) are ignored.
fn check_tensor_names(file: &WeightFile, expected: &[String]) -> Result<()> {
    let ignorable = |n: &str| {
        n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias") || n.ends_with("rotary_emb.inv_freq") || n == "lm_head.weight"
    };
    let missing: Vec<&str> = expected.iter().filter(|n| !file.contains(n)).map(String::as_str).collect();
    let present = file.names();
    let unexpected: Vec<&str> = present.iter().map(String::as_str).filter(|n| !expected.iter().any(|e| e == n) && !ignorable(n)).collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |v: &[&str]| if v.len() > 8 { format!("{} and {} more", v[..8].join(", "), v.len() - 8) } else { v.join(", ") };
    let mut msg = String::from("does not match its config.json:");
    if !missing.is_empty() {
        msg += &format!(" missing tensors: {};", list(&missing));
    }
    if !unexpected.is_empty() {
        msg += &format!(" unexpected tensors: {};", list(&unexpected));
    }
    Err(Error::format(file.path(), msg.trim_end_matches(';').to_string()))
}

/// The last time step of (B, T, C) as (B, 1, C): viewing (B, T·C) and slicing the last C
/// columns picks row T-1 of every batch.
pub(crate) fn last_token(x: &Tensor, b: usize, t: usize, c: usize) -> Result<Tensor> {
    crate::ops::elementwise::slice_last_forward(&x.reshape(&[b, t * c])?, (t - 1) * c, c)?.reshape(&[b, 1, c])
}
