//! Batched generation with a KV cache. The prompt is one prefill pass; each new token is one
//! cached decode step whose sampling also runs on the GPU, so the whole generation is recorded
//! into one command encoder and the tokens are read back once at the end.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::sample::{sample, SampleState, SamplingConfig};
use crate::tensor::Tensor;

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// New tokens per row at most. Example: 64.
    pub max_new_tokens: usize,
    /// Temperature, top-k, top-p (temperature 0 = greedy).
    pub sampling: SamplingConfig,
    /// Token ids that end a row (kept in the output). Example: the tokenizer's EOS.
    pub stop_ids: Vec<u32>,
    /// Seed of the sampler: the same seed gives the same tokens.
    pub seed: u64,
    /// Id used to left-pad shorter prompts (masked out of attention) and to fill finished rows.
    pub pad_id: u32,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { max_new_tokens: 64, sampling: SamplingConfig::default(), stop_ids: vec![], seed: 0, pad_id: 0 }
    }
}

/// Generate continuations of `prompts` (token ids); returns the new tokens of each row, ending
/// at (and including) the first stop token. Prompts of different lengths are left-padded and
/// the padding is masked out of attention (their learned positions shift by the padding).
pub fn generate(model: &Model, prompts: &[Vec<u32>], cfg: &GenerateConfig) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
    if b == 0 || p == 0 {
        return Err(Error::config("generate", "need at least one non-empty prompt"));
    }
    if cfg.max_new_tokens == 0 {
        return Ok(vec![vec![]; b]);
    }
    let total = p + cfg.max_new_tokens;
    if total > model.max_len() {
        return Err(Error::config("generate", format!("prompt {p} + {} new tokens exceeds the model's {} positions", cfg.max_new_tokens, model.max_len())));
    }
    let gpu = model.params().gpu().clone();
    // The weights do not change while generating: CPU adapters keep their texture copies.
    let _frozen = gpu.freeze_textures(model.params().values());
    let mut ids = Vec::with_capacity(b * p);
    let mut mask = Vec::with_capacity(b * total);
    for pr in prompts {
        let pad = p - pr.len();
        ids.extend(std::iter::repeat_n(cfg.pad_id, pad).chain(pr.iter().copied()));
        mask.extend((0..total).map(|s| u32::from(s >= pad)));
    }
    let padded = prompts.iter().any(|x| x.len() != p);
    let key_mask = if padded { Some(Tensor::from_u32(&gpu, &mask, &[b, total])?) } else { None };
    let mut caches = model.new_caches(b, total)?;
    let state = SampleState::new(&gpu, b, &cfg.stop_ids, cfg.seed)?;
    let out = Tensor::from_u32(&gpu, &vec![cfg.pad_id; b * cfg.max_new_tokens], &[b, cfg.max_new_tokens])?;
    let next = Tensor::from_u32(&gpu, &vec![0; b], &[b, 1])?;
    let prompt = Tensor::from_u32(&gpu, &ids, &[b, p])?;
    let mut logits = model.forward_cached(&prompt, &mut caches, key_mask.as_ref())?; // (B, V)
    for step in 0..cfg.max_new_tokens {
        sample(&logits, &cfg.sampling, &state, step as u32, &next, &out, cfg.pad_id)?;
        if step + 1 < cfg.max_new_tokens {
            logits = model.forward_cached(&next, &mut caches, key_mask.as_ref())?;
        }
    }
    let toks = out.to_u32_vec()?; // the generation's one readback of tokens
    // NaN and Inf propagate through the KV cache, so the last step's logits show any non-finite
    // value met on the way (e.g. NaN weights), which would otherwise sample token 0 silently.
    let last = logits.to_f32_vec()?;
    if let Some(i) = last.iter().position(|x| !x.is_finite()) {
        let v = model.vocab_size();
        return Err(Error::NonFinite {
            what: format!("generation logits (tensor `logits` (B, V) of step {}, row {}, token id {})", cfg.max_new_tokens - 1, i / v, i % v),
            value: last[i] as f64,
        });
    }
    Ok(toks
        .chunks(cfg.max_new_tokens)
        .map(|row| {
            let end = row.iter().position(|t| cfg.stop_ids.contains(t)).map(|i| i + 1).unwrap_or(row.len());
            row[..end].to_vec()
        })
        .collect())
}

/// Generate a continuation of one prompt, handing each new token to `on_token` as soon as it is
/// sampled (streaming: one readback per token instead of one per generation). Stops after
/// `max_new_tokens`, at (and including) a stop token, or when `on_token` returns false. Returns
/// the new tokens; the same seed gives the same tokens as [`generate`].
pub fn generate_stream(model: &Model, prompt: &[u32], cfg: &GenerateConfig, on_token: &mut dyn FnMut(u32) -> bool) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::config("generate", "the prompt has no tokens"));
    }
    let total = prompt.len() + cfg.max_new_tokens;
    if total > model.max_len() {
        return Err(Error::config("generate", format!("prompt {} + {} new tokens exceeds the model's {} positions", prompt.len(), cfg.max_new_tokens, model.max_len())));
    }
    let mut new = Vec::with_capacity(cfg.max_new_tokens);
    if cfg.max_new_tokens == 0 {
        return Ok(new);
    }
    let gpu = model.params().gpu().clone();
    let _frozen = gpu.freeze_textures(model.params().values());
    let mut caches = model.new_caches(1, total)?;
    let state = SampleState::new(&gpu, 1, &cfg.stop_ids, cfg.seed)?;
    let out = Tensor::from_u32(&gpu, &vec![cfg.pad_id; cfg.max_new_tokens], &[1, cfg.max_new_tokens])?;
    let next = Tensor::from_u32(&gpu, &[0], &[1, 1])?;
    let mut logits = model.forward_cached(&Tensor::from_u32(&gpu, prompt, &[1, prompt.len()])?, &mut caches, None)?; // (1, V)
    for step in 0..cfg.max_new_tokens {
        sample(&logits, &cfg.sampling, &state, step as u32, &next, &out, cfg.pad_id)?;
        let tok = next.to_u32_vec()?[0]; // this token's readback
        new.push(tok);
        if !on_token(tok) || cfg.stop_ids.contains(&tok) || step + 1 == cfg.max_new_tokens {
            break;
        }
        logits = model.forward_cached(&next, &mut caches, None)?;
    }
    Ok(new)
}
