//! GPT-2: learned positions, pre-LayerNorm blocks, fused qkv, GELU MLP, tied embeddings.
//! Parameter names and shapes are Hugging Face's `GPT2LMHeadModel` ones, so checkpoints move
//! between plumb and `transformers` unchanged. Reads like nanoGPT's model.py:
//!     x = x + attn(ln_1(x));  x = x + mlp(ln_2(x));  logits = ln_f(x) @ wteᵀ
//! With a LoRA adapter attached (src/lora.rs) every Conv1D goes through [`Gpt::conv`], which adds
//! the adapter's update, and every base weight enters the tape as a constant.

use super::config::GptConfig;
use crate::error::{Error, Result};
use crate::lora::{Lora, LoraModule};
use crate::nn::{conv1d, gelu_conv1d, normal};
use crate::ops::quant::{quant_embedding, quant_linear, QuantTensor};
use super::frozen::FrozenBase;
use crate::ops::activation::{gelu, GeluKind};
use crate::ops::attention::{attention_fused_qkv, AttentionConfig, KvCache};
use crate::ops::elementwise::add;
use crate::ops::embedding::{add_positions, embedding_chunks, tied_head};
use crate::ops::lora::Base;
use crate::ops::matmul::matmul;
use crate::ops::norm::layer_norm;
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{checkpoint, Tape, Var};
use std::cell::Cell;
use crate::tensor::Tensor;
use crate::Gpu;

/// A GPT-2 model: its config and all its parameters in one flat store, and optionally a LoRA
/// adapter (then only the adapter trains). Cloning shares the store.
#[derive(Clone)]
pub struct Gpt {
    pub cfg: GptConfig,
    pub params: ParamStore,
    pub adapter: Option<Lora>,
    /// Weight matrices kept in stored form (`Model::freeze_base`, Conv1D weights transposed to
    /// (out, in)); they are not in `params`.
    pub frozen: Option<FrozenBase>,
    /// Recompute each block in the backward instead of keeping its activations.
    pub checkpoint_activations: Cell<bool>,
}

fn layer(i: usize, name: &str) -> String {
    format!("transformer.h.{i}.{name}")
}

impl Gpt {
    /// Parameter names and shapes in Hugging Face layout. Matrices get weight decay; biases and
    /// LayerNorm gains do not.
    pub fn param_specs(cfg: &GptConfig) -> Vec<ParamSpec> {
        let (c, v, p) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions);
        let spec = |name: String, shape: Vec<usize>| ParamSpec { decay: shape.len() > 1, name, shape };
        let mut s = vec![
            spec("transformer.wte.weight".into(), vec![v, c]), // (V, C)
            spec("transformer.wpe.weight".into(), vec![p, c]), // (P, C)
        ];
        for i in 0..cfg.n_layer {
            s.push(spec(layer(i, "ln_1.weight"), vec![c]));
            s.push(spec(layer(i, "ln_1.bias"), vec![c]));
            s.push(spec(layer(i, "attn.c_attn.weight"), vec![c, 3 * c])); // (C, 3C)
            s.push(spec(layer(i, "attn.c_attn.bias"), vec![3 * c]));
            s.push(spec(layer(i, "attn.c_proj.weight"), vec![c, c])); // (C, C)
            s.push(spec(layer(i, "attn.c_proj.bias"), vec![c]));
            s.push(spec(layer(i, "ln_2.weight"), vec![c]));
            s.push(spec(layer(i, "ln_2.bias"), vec![c]));
            s.push(spec(layer(i, "mlp.c_fc.weight"), vec![c, 4 * c])); // (C, 4C)
            s.push(spec(layer(i, "mlp.c_fc.bias"), vec![4 * c]));
            s.push(spec(layer(i, "mlp.c_proj.weight"), vec![4 * c, c])); // (4C, C)
            s.push(spec(layer(i, "mlp.c_proj.bias"), vec![c]));
        }
        s.push(spec("transformer.ln_f.weight".into(), vec![c]));
        s.push(spec("transformer.ln_f.bias".into(), vec![c]));
        s
    }

    /// The projections LoRA may adapt: every Conv1D, with its (in, out) widths. Module names are
    /// the weights' names without `.weight`, e.g. `transformer.h.0.attn.c_attn`.
    pub fn lora_modules(cfg: &GptConfig) -> Vec<LoraModule> {
        Self::param_specs(cfg)
            .into_iter()
            .filter(|s| s.name.starts_with("transformer.h.") && s.shape.len() == 2)
            .map(|s| LoraModule {
                name: s.name.trim_end_matches(".weight").to_string(),
                in_features: s.shape[0],
                out_features: s.shape[1],
            })
            .collect()
    }

    fn check(cfg: &GptConfig) -> Result<()> {
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(Error::config("GPT config", format!("n_embd {} is not a multiple of n_head {}", cfg.n_embd, cfg.n_head)));
        }
        if !["gelu_new", "gelu", "gelu_pytorch_tanh"].contains(&cfg.activation_function.as_str()) {
            return Err(Error::config("GPT config", format!("activation `{}` (plumb has gelu_new, gelu)", cfg.activation_function)));
        }
        Ok(())
    }

    /// A freshly initialised model (GPT-2's scheme: N(0, 0.02), residual projections scaled by
    /// 1/sqrt(2·n_layer), zero biases, unit LayerNorm gains), deterministic in `seed`.
    pub fn new(gpu: &Gpu, cfg: GptConfig, seed: u64) -> Result<Gpt> {
        Self::check(&cfg)?;
        let specs = Self::param_specs(&cfg);
        let params = ParamStore::new(gpu, &specs)?;
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
        for (k, s) in specs.iter().enumerate() {
            let n: usize = s.shape.iter().product();
            let data = if s.name.ends_with("ln_1.weight") || s.name.ends_with("ln_2.weight") || s.name.ends_with("ln_f.weight") {
                vec![1.0; n]
            } else if s.shape.len() == 1 {
                vec![0.0; n]
            } else if s.name.ends_with("c_proj.weight") {
                normal(n, proj_std, seed.wrapping_mul(1000).wrapping_add(k as u64))
            } else {
                normal(n, 0.02, seed.wrapping_mul(1000).wrapping_add(k as u64))
            };
            params.set(&s.name, &data)?;
        }
        Ok(Gpt { cfg, params, adapter: None, frozen: None, checkpoint_activations: Cell::new(false) })
    }

    /// A model whose parameters come from a store already filled (checkpoint loading).
    pub fn from_params(cfg: GptConfig, params: ParamStore) -> Result<Gpt> {
        Self::check(&cfg)?;
        Ok(Gpt { cfg, params, adapter: None, frozen: None, checkpoint_activations: Cell::new(false) })
    }

    fn gelu_kind(&self) -> GeluKind {
        if self.cfg.activation_function == "gelu" { GeluKind::Erf } else { GeluKind::Tanh }
    }

    /// A parameter as a Var: on the tape (with gradient) when `tape` is given and no adapter is
    /// attached, else a constant.
    fn p(&self, tape: Option<&Tape>, name: &str) -> Result<Var> {
        match tape {
            Some(t) if self.adapter.is_none() => self.params.var(t, name),
            _ => Ok(Var::constant(self.params.value(name)?)),
        }
    }

    /// The stored-form matrix `name`, when the base is frozen that way.
    fn frozen(&self, name: &str) -> Option<&QuantTensor> {
        self.frozen.as_ref().and_then(|f| f.get(name))
    }

    /// Token embeddings (B, T, C) for ids (B, T), from stored rows when frozen.
    fn embed(&self, tape: Option<&Tape>, ids: &Tensor) -> Result<Var> {
        match self.frozen("transformer.wte.weight") {
            Some(q) => Ok(Var::constant(quant_embedding(ids, q)?)),
            None => embedding_chunks(ids, &self.p_chunks(tape, "transformer.wte.weight")?),
        }
    }

    /// A parameter split into row chunks (a table bigger than one binding) as one Var per
    /// chunk, on the tape or constant as [`Self::p`].
    fn p_chunks(&self, tape: Option<&Tape>, name: &str) -> Result<Vec<Var>> {
        match tape {
            Some(t) if self.adapter.is_none() => self.params.chunk_vars(t, name),
            _ => Ok(self.params.value_chunks(name)?.tensors().iter().cloned().map(Var::constant).collect()),
        }
    }

    /// Conv1D `module` of layer `i` (e.g. "attn.c_attn") on x (..., in), plus the adapter's
    /// update when one is attached, enabled and targets it: (..., out).
    fn conv(&self, tape: Option<&Tape>, x: &Var, i: usize, module: &str) -> Result<Var> {
        let name = layer(i, module);
        let (wname, bias) = (format!("{name}.weight"), self.p(tape, &format!("{name}.bias"))?);
        if let Some(a) = self.adapter.as_ref().filter(|a| a.adapts(&name)) {
            return match self.frozen(&wname) {
                Some(q) => a.project(tape, &name, x, Base::Stored(q), Some(&bias)),
                None => a.project(tape, &name, x, Base::Conv1d(&self.p(tape, &wname)?), Some(&bias)),
            };
        }
        match self.frozen(&wname) {
            Some(q) => quant_linear(x, q, Some(&bias)),
            None => conv1d(x, &self.p(tape, &wname)?, &bias),
        }
    }

    /// The MLP's output projection of layer `i` on gelu(h), h (B, T, 4C): without an adapter
    /// on it, one op that recomputes gelu(h) in the backward instead of holding it.
    fn mlp_proj(&self, tape: Option<&Tape>, h: &Var, i: usize) -> Result<Var> {
        let name = layer(i, "mlp.c_proj");
        if self.adapter.as_ref().is_some_and(|a| a.targets(&name)) || self.frozen(&format!("{name}.weight")).is_some() {
            return self.conv(tape, &gelu(h, self.gelu_kind())?, i, "mlp.c_proj");
        }
        gelu_conv1d(h, self.gelu_kind(), &self.p(tape, &format!("{name}.weight"))?, &self.p(tape, &format!("{name}.bias"))?)
    }

    /// Block `i` on x (B, T, C): `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`.
    fn block(&self, tape: Option<&Tape>, x: &Var, i: usize, key_mask: Option<&Tensor>) -> Result<Var> {
        let (h, eps) = (self.cfg.n_head, self.cfg.layer_norm_epsilon);
        let w = |n: &str| self.p(tape, &layer(i, n));
        let hn = layer_norm(x, &w("ln_1.weight")?, &w("ln_1.bias")?, eps)?;
        let qkv = self.conv(tape, &hn, i, "attn.c_attn")?; // (B, T, 3C)
        let a = attention_fused_qkv(&qkv, h, h, key_mask, &AttentionConfig::default())?; // (B, T, C)
        let x = add(x, &self.conv(tape, &a, i, "attn.c_proj")?)?;
        let hn = layer_norm(&x, &w("ln_2.weight")?, &w("ln_2.bias")?, eps)?;
        let h = self.conv(tape, &hn, i, "mlp.c_fc")?; // (B, T, 4C)
        add(&x, &self.mlp_proj(tape, &h, i)?)
    }

    /// The final hidden states ln_f(x), (B, T, C), for token ids (B, T). With a tape, every
    /// op is recorded for backward; without one nothing is. `key_mask` (B, T) u32 marks
    /// padding keys with 0.
    pub fn hidden(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        if t > self.cfg.n_positions {
            return Err(Error::shape("Gpt::forward", format!("sequence of {t} tokens, the model has {} positions", self.cfg.n_positions)));
        }
        let (c, eps) = (self.cfg.n_embd, self.cfg.layer_norm_epsilon);
        let mut x = self.embed(tape, ids)?; // (B, T, C)
        x = add_positions(&x, &self.p(tape, "transformer.wpe.weight")?, 0)?;
        for i in 0..self.cfg.n_layer {
            x = match tape {
                Some(tape) if self.checkpoint_activations.get() => {
                    let (me, mask) = (self.clone(), key_mask.cloned());
                    checkpoint(tape, &x, move |tape, x| me.block(tape, x, i, mask.as_ref()))?
                }
                _ => self.block(tape, &x, i, key_mask)?,
            };
        }
        let x = layer_norm(&x, &self.p(tape, "transformer.ln_f.weight")?, &self.p(tape, "transformer.ln_f.bias")?, eps)?;
        debug_assert_eq!(x.shape(), &[b, t, c]);
        Ok(x)
    }

    /// Logits (B·T, V) for token ids (B, T): ln_f(x) @ wteᵀ.
    pub fn forward(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        let x = self.hidden(tape, ids, key_mask)?;
        self.lm_head(tape, &x)
    }

    /// Logits for hidden states (..., C): (rows, V). A table split into row chunks gives one
    /// product per chunk ([`tied_head`]).
    pub fn lm_head(&self, tape: Option<&Tape>, x: &Var) -> Result<Var> {
        let c = self.cfg.n_embd;
        let rows = x.tensor().len() / c;
        let x = x.reshape(&[rows, c])?;
        match self.frozen("transformer.wte.weight") {
            Some(q) => quant_linear(&x, q, None),
            None => match &self.p_chunks(tape, "transformer.wte.weight")?[..] {
                [wte] => matmul(&x, wte, false, true),
                chunks => tied_head(&x, chunks),
            },
        }
    }

    /// Per-token [log p(label), entropy, mean logit] (rows, 3) for hidden states (..., C) through the
    /// chunked vocabulary head (`ops::vocab_head`): the (rows, V) logits never exist.
    pub fn token_head(&self, tape: Option<&Tape>, x: &Var, labels: &Tensor) -> Result<Var> {
        match self.frozen("transformer.wte.weight") {
            Some(q) => crate::ops::vocab_head::vocab_head_stored(x, q, labels),
            None => crate::ops::vocab_head::vocab_head(x, &self.p_chunks(tape, "transformer.wte.weight")?, labels),
        }
    }

    /// One KV cache per layer for batched generation of up to `max_len` tokens.
    pub fn new_caches(&self, batch: usize, max_len: usize) -> Result<Vec<KvCache>> {
        let hd = self.cfg.n_embd / self.cfg.n_head;
        (0..self.cfg.n_layer).map(|_| KvCache::new(self.params.gpu(), batch, max_len, self.cfg.n_head, hd)).collect()
    }

    /// Inference step with the KV cache: ids (B, T_new) at positions cache.len()..; returns the
    /// logits of the last new token of each row, (B, V). No tape.
    pub fn forward_cached(&self, ids: &Tensor, caches: &mut [KvCache], key_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, tn) = (ids.shape()[0], ids.shape()[1]);
        let (c, h, eps) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.layer_norm_epsilon);
        let offset = caches.first().map(|k| k.len()).unwrap_or(0);
        if offset + tn > self.cfg.n_positions {
            return Err(Error::shape("Gpt::forward_cached", format!("position {} past the model's {}", offset + tn, self.cfg.n_positions)));
        }
        let mut x = self.embed(None, ids)?;
        x = add_positions(&x, &self.p(None, "transformer.wpe.weight")?, offset)?;
        for (i, cache) in caches.iter_mut().enumerate() {
            let w = |n: &str| self.p(None, &layer(i, n));
            let hn = layer_norm(&x, &w("ln_1.weight")?, &w("ln_1.bias")?, eps)?;
            let qkv = self.conv(None, &hn, i, "attn.c_attn")?;
            // k and v go from the fused qkv straight into the cache; q is read in place
            cache.append_fused_qkv(qkv.tensor(), h)?;
            let a = cache.attend_fused_qkv(qkv.tensor(), h, key_mask)?;
            x = add(&x, &self.conv(None, &Var::constant(a), i, "attn.c_proj")?)?;
            let hn = layer_norm(&x, &w("ln_2.weight")?, &w("ln_2.bias")?, eps)?;
            let m = gelu(&self.conv(None, &hn, i, "mlp.c_fc")?, self.gelu_kind())?;
            x = add(&x, &self.conv(None, &m, i, "mlp.c_proj")?)?;
        }
        let last = if tn == 1 { x } else { Var::constant(super::last_token(x.tensor(), b, tn, c)?) };
        let x = layer_norm(&last, &self.p(None, "transformer.ln_f.weight")?, &self.p(None, "transformer.ln_f.bias")?, eps)?;
        Ok(self.lm_head(None, &x)?.tensor().clone())
    }
}
