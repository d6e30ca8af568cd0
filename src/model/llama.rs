//! The Llama family (Llama, SmolLM, Qwen2, Mistral-style configs): RMSNorm, rotary positions,
//! SwiGLU MLP, grouped-query attention, tied or untied LM head, optional q/k/v bias (Qwen2).
//! Parameter names and shapes are Hugging Face's `LlamaForCausalLM` ones.
//!     x = x + o_proj(attn(rope(q_proj(h)), rope(k_proj(h)), v_proj(h)))   with h = rms_norm(x)
//!     x = x + down_proj(silu(gate_proj(h)) * up_proj(h))                    with h = rms_norm(x)
//! With a LoRA adapter attached (src/lora.rs) every projection goes through [`Llama::proj`]'s
//! adapter hook, and every base weight enters the tape as a constant.

use super::config::LlamaConfig;
use super::frozen::FrozenBase;
use crate::error::{Error, Result};
use crate::lora::{Lora, LoraModule};
use crate::nn::normal;
use crate::ops::activation::swiglu;
use crate::ops::attention::{attention, AttentionConfig, KvCache};
use crate::ops::elementwise::add;
use crate::ops::embedding::{embedding_chunks, tied_head};
use crate::ops::lora::Base;
use crate::ops::matmul::linear;
use crate::ops::norm::rms_norm;
use crate::ops::quant::{quant_embedding, quant_linear, QuantTensor};
use crate::ops::rope::{rope, rope_table};
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{checkpoint, Tape, Var};
use std::cell::Cell;
use crate::tensor::Tensor;
use crate::Gpu;

/// A Llama-family model: config and parameters in one flat store, and optionally a LoRA adapter
/// (then only the adapter trains). Cloning shares the store.
#[derive(Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    pub params: ParamStore,
    pub adapter: Option<Lora>,
    /// Weight matrices kept in stored form (`Model::freeze_base`); they are not in `params`.
    pub frozen: Option<FrozenBase>,
    /// Recompute each block in the backward instead of keeping its activations.
    pub checkpoint_activations: Cell<bool>,
}

fn layer(i: usize, name: &str) -> String {
    format!("model.layers.{i}.{name}")
}

impl Llama {
    fn kv_heads(cfg: &LlamaConfig) -> usize {
        cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads)
    }

    fn head_dim(cfg: &LlamaConfig) -> usize {
        cfg.hidden_size / cfg.num_attention_heads
    }

    /// Parameter names and shapes in Hugging Face layout (matrices decay, gains and biases not).
    pub fn param_specs(cfg: &LlamaConfig) -> Vec<ParamSpec> {
        let (c, v, im) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (hq, hkv, d) = (cfg.num_attention_heads, Self::kv_heads(cfg), Self::head_dim(cfg));
        let bias = cfg.attention_bias.unwrap_or(false);
        let spec = |name: String, shape: Vec<usize>| ParamSpec { decay: shape.len() > 1, name, shape };
        let mut s = vec![spec("model.embed_tokens.weight".into(), vec![v, c])]; // (V, C)
        for i in 0..cfg.num_hidden_layers {
            s.push(spec(layer(i, "input_layernorm.weight"), vec![c]));
            s.push(spec(layer(i, "self_attn.q_proj.weight"), vec![hq * d, c])); // (Hq·D, C)
            s.push(spec(layer(i, "self_attn.k_proj.weight"), vec![hkv * d, c])); // (Hkv·D, C)
            s.push(spec(layer(i, "self_attn.v_proj.weight"), vec![hkv * d, c])); // (Hkv·D, C)
            if bias {
                s.push(spec(layer(i, "self_attn.q_proj.bias"), vec![hq * d]));
                s.push(spec(layer(i, "self_attn.k_proj.bias"), vec![hkv * d]));
                s.push(spec(layer(i, "self_attn.v_proj.bias"), vec![hkv * d]));
            }
            s.push(spec(layer(i, "self_attn.o_proj.weight"), vec![c, hq * d])); // (C, Hq·D)
            s.push(spec(layer(i, "post_attention_layernorm.weight"), vec![c]));
            s.push(spec(layer(i, "mlp.gate_proj.weight"), vec![im, c])); // (I, C)
            s.push(spec(layer(i, "mlp.up_proj.weight"), vec![im, c])); // (I, C)
            s.push(spec(layer(i, "mlp.down_proj.weight"), vec![c, im])); // (C, I)
        }
        s.push(spec("model.norm.weight".into(), vec![c]));
        if !cfg.tie_word_embeddings {
            s.push(spec("lm_head.weight".into(), vec![v, c])); // (V, C)
        }
        s
    }

    /// The projections LoRA may adapt: every linear layer of the blocks, with its (in, out)
    /// widths. Names are the weights' without `.weight`, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn lora_modules(cfg: &LlamaConfig) -> Vec<LoraModule> {
        Self::param_specs(cfg)
            .into_iter()
            .filter(|s| s.name.starts_with("model.layers.") && s.shape.len() == 2)
            .map(|s| LoraModule {
                name: s.name.trim_end_matches(".weight").to_string(),
                in_features: s.shape[1],
                out_features: s.shape[0],
            })
            .collect()
    }

    fn check(cfg: &LlamaConfig) -> Result<()> {
        let (hq, hkv) = (cfg.num_attention_heads, Self::kv_heads(cfg));
        if hq == 0 || !cfg.hidden_size.is_multiple_of(hq) || hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(Error::config(
                "Llama config",
                format!("hidden_size {} / heads {hq} / kv heads {hkv} do not divide", cfg.hidden_size),
            ));
        }
        Ok(())
    }

    /// A freshly initialised model: N(0, 0.02) matrices, unit RMSNorm gains, zero biases.
    pub fn new(gpu: &Gpu, cfg: LlamaConfig, seed: u64) -> Result<Llama> {
        Self::check(&cfg)?;
        let specs = Self::param_specs(&cfg);
        let params = ParamStore::new(gpu, &specs)?;
        for (k, s) in specs.iter().enumerate() {
            let n: usize = s.shape.iter().product();
            let data = if s.name.ends_with("norm.weight") || s.name.ends_with("layernorm.weight") {
                vec![1.0; n]
            } else if s.shape.len() == 1 {
                vec![0.0; n]
            } else {
                normal(n, 0.02, seed.wrapping_mul(1000).wrapping_add(k as u64))
            };
            params.set(&s.name, &data)?;
        }
        Ok(Llama { cfg, params, adapter: None, frozen: None, checkpoint_activations: Cell::new(false) })
    }

    /// A model over an already filled store (checkpoint loading).
    pub fn from_params(cfg: LlamaConfig, params: ParamStore) -> Result<Llama> {
        Self::check(&cfg)?;
        Ok(Llama { cfg, params, adapter: None, frozen: None, checkpoint_activations: Cell::new(false) })
    }

    /// A parameter as a Var: on the tape when `tape` is given and no adapter is attached, else
    /// a constant.
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
        match self.frozen("model.embed_tokens.weight") {
            Some(q) => Ok(Var::constant(quant_embedding(ids, q)?)),
            None => embedding_chunks(ids, &self.p_chunks(tape, "model.embed_tokens.weight")?),
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

    /// Linear layer `name` of layer `i` (e.g. "self_attn.q_proj") on x (..., in), plus the
    /// adapter's update when one is attached, enabled and targets it: (..., out).
    fn proj(&self, tape: Option<&Tape>, x: &Var, i: usize, name: &str) -> Result<Var> {
        let module = layer(i, name);
        let (wname, bname) = (format!("{module}.weight"), format!("{module}.bias"));
        let b = if self.params.contains(&bname) { Some(self.p(tape, &bname)?) } else { None };
        if let Some(a) = self.adapter.as_ref().filter(|a| a.adapts(&module)) {
            return match self.frozen(&wname) {
                Some(q) => a.project(tape, &module, x, Base::Stored(q), b.as_ref()),
                None => a.project(tape, &module, x, Base::Linear(&self.p(tape, &wname)?), b.as_ref()),
            };
        }
        match self.frozen(&wname) {
            Some(q) => quant_linear(x, q, b.as_ref()),
            None => linear(x, &self.p(tape, &wname)?, b.as_ref()),
        }
    }

    fn mlp(&self, tape: Option<&Tape>, x: &Var, i: usize) -> Result<Var> {
        let h = rms_norm(x, &self.p(tape, &layer(i, "post_attention_layernorm.weight"))?, self.cfg.rms_norm_eps)?;
        let g = self.proj(tape, &h, i, "mlp.gate_proj")?;
        let u = self.proj(tape, &h, i, "mlp.up_proj")?;
        add(x, &self.proj(tape, &swiglu(&g, &u)?, i, "mlp.down_proj")?)
    }

    /// The scaled RoPE frequencies (D/2) when the config has `rope_scaling`, computed once per
    /// forward on the CPU in f64 and uploaded; None: plain RoPE from theta in the kernel.
    fn rope_freqs(&self) -> Result<Option<Tensor>> {
        let Some(s) = &self.cfg.rope_scaling else { return Ok(None) };
        let d = Self::head_dim(&self.cfg);
        let f: Vec<f32> = s.inv_freq(self.cfg.rope_theta as f64, d).iter().map(|&v| v as f32).collect();
        Tensor::from_f32(self.params.gpu(), &f, &[d / 2]).map(Some)
    }

    /// RoPE on (B, T, H, D) at positions offset + t, with the scaled frequencies when given.
    fn rope(&self, x: &Var, freqs: &Option<Tensor>, offset: usize) -> Result<Var> {
        match freqs {
            Some(f) => rope_table(x, f, offset, None),
            None => rope(x, self.cfg.rope_theta, offset, None),
        }
    }

    /// Block `i` on x (B, T, C): attention then the gated MLP, each with its residual; `freqs`
    /// are the scaled RoPE frequencies when the config has `rope_scaling`.
    fn block(&self, tape: Option<&Tape>, x: &Var, i: usize, key_mask: Option<&Tensor>, freqs: &Option<Tensor>) -> Result<Var> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (hq, hkv, d) = (self.cfg.num_attention_heads, Self::kv_heads(&self.cfg), Self::head_dim(&self.cfg));
        let h = rms_norm(x, &self.p(tape, &layer(i, "input_layernorm.weight"))?, self.cfg.rms_norm_eps)?;
        let q = self.proj(tape, &h, i, "self_attn.q_proj")?.reshape(&[b, t, hq, d])?;
        let k = self.proj(tape, &h, i, "self_attn.k_proj")?.reshape(&[b, t, hkv, d])?;
        let v = self.proj(tape, &h, i, "self_attn.v_proj")?.reshape(&[b, t, hkv, d])?;
        let (q, k) = (self.rope(&q, freqs, 0)?, self.rope(&k, freqs, 0)?);
        let a = attention(&q, &k, &v, key_mask, &AttentionConfig::default())?.reshape(&[b, t, hq * d])?;
        let x = add(x, &self.proj(tape, &a, i, "self_attn.o_proj")?)?;
        self.mlp(tape, &x, i)
    }

    /// Final hidden states norm(x), (B, T, C), for ids (B, T).
    pub fn hidden(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        let freqs = self.rope_freqs()?;
        let mut x = self.embed(tape, ids)?; // (B, T, C)
        for i in 0..self.cfg.num_hidden_layers {
            x = match tape {
                Some(tape) if self.checkpoint_activations.get() => {
                    let (me, mask, f) = (self.clone(), key_mask.cloned(), freqs.clone());
                    checkpoint(tape, &x, move |tape, x| me.block(tape, x, i, mask.as_ref(), &f))?
                }
                _ => self.block(tape, &x, i, key_mask, &freqs)?,
            };
        }
        rms_norm(&x, &self.p(tape, "model.norm.weight")?, self.cfg.rms_norm_eps)
    }

    fn head_name(&self) -> &'static str {
        if self.cfg.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" }
    }

    /// Logits (rows, V) for hidden states (..., C). A head split into row chunks gives one
    /// product per chunk ([`tied_head`]).
    pub fn lm_head(&self, tape: Option<&Tape>, x: &Var) -> Result<Var> {
        let c = self.cfg.hidden_size;
        let rows = x.tensor().len() / c;
        let x = x.reshape(&[rows, c])?;
        match self.frozen(self.head_name()) {
            Some(q) => quant_linear(&x, q, None),
            None => match &self.p_chunks(tape, self.head_name())?[..] {
                [w] => linear(&x, w, None),
                chunks => tied_head(&x, chunks),
            },
        }
    }

    /// Logits (B·T, V) for ids (B, T).
    pub fn forward(&self, tape: Option<&Tape>, ids: &Tensor, key_mask: Option<&Tensor>) -> Result<Var> {
        let x = self.hidden(tape, ids, key_mask)?;
        self.lm_head(tape, &x)
    }

    /// Per-token [log p(label), entropy, mean logit] (rows, 3) for hidden states (..., C) through the
    /// chunked vocabulary head (`ops::vocab_head`): the (rows, V) logits never exist.
    pub fn token_head(&self, tape: Option<&Tape>, x: &Var, labels: &Tensor) -> Result<Var> {
        match self.frozen(self.head_name()) {
            Some(q) => crate::ops::vocab_head::vocab_head_stored(x, q, labels),
            None => crate::ops::vocab_head::vocab_head(x, &self.p_chunks(tape, self.head_name())?, labels),
        }
    }

    /// One KV cache per layer.
    pub fn new_caches(&self, batch: usize, max_len: usize) -> Result<Vec<KvCache>> {
        let (hkv, d) = (Self::kv_heads(&self.cfg), Self::head_dim(&self.cfg));
        (0..self.cfg.num_hidden_layers).map(|_| KvCache::new(self.params.gpu(), batch, max_len, hkv, d)).collect()
    }

    /// Inference with the KV cache; returns logits (B, V) of each row's last new token.
    pub fn forward_cached(&self, ids: &Tensor, caches: &mut [KvCache], key_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, tn) = (ids.shape()[0], ids.shape()[1]);
        let (hq, hkv, d) = (self.cfg.num_attention_heads, Self::kv_heads(&self.cfg), Self::head_dim(&self.cfg));
        let c = self.cfg.hidden_size;
        let offset = caches.first().map(|k| k.len()).unwrap_or(0);
        let freqs = self.rope_freqs()?;
        let mut x = self.embed(None, ids)?;
        for (i, cache) in caches.iter_mut().enumerate() {
            let h = rms_norm(&x, &self.p(None, &layer(i, "input_layernorm.weight"))?, self.cfg.rms_norm_eps)?;
            let q = self.proj(None, &h, i, "self_attn.q_proj")?.reshape(&[b, tn, hq, d])?;
            let k = self.proj(None, &h, i, "self_attn.k_proj")?.reshape(&[b, tn, hkv, d])?;
            let v = self.proj(None, &h, i, "self_attn.v_proj")?.reshape(&[b, tn, hkv, d])?;
            let (q, k) = (self.rope(&q, &freqs, offset)?, self.rope(&k, &freqs, offset)?);
            cache.append(k.tensor(), v.tensor())?;
            let a = cache.attend(q.tensor(), key_mask)?.reshape(&[b, tn, hq * d])?;
            x = add(&x, &self.proj(None, &Var::constant(a), i, "self_attn.o_proj")?)?;
            x = self.mlp(None, &x, i)?;
        }
        let last = if tn == 1 {
            x
        } else {
            Var::constant(super::last_token(x.tensor(), b, tn, c)?)
        };
        let x = rms_norm(&last, &self.p(None, "model.norm.weight")?, self.cfg.rms_norm_eps)?;
        Ok(self.lm_head(None, &x)?.tensor().clone())
    }
}
