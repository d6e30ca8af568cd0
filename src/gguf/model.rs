//! GGUF models to plumb's models and back. llama.cpp's converter renames Hugging Face tensors
//! (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`), reverses shapes into
//! ggml's `ne` order, transposes GPT-2's Conv1D weights into (out, in), and for the `llama`
//! architecture permutes the rows of q and k from Hugging Face's rotate-half RoPE pairs
//! (i, i + D/2) to ggml's interleaved pairs (2i, 2i + 1). Reading undoes all of it, so a loaded
//! model is the Hugging Face model and computes its logits; writing does it again.
//!
//! Metadata becomes a [`ModelConfig`]; a key or tensor plumb does not implement is refused by name
//! rather than ignored, since ignoring it would load the file and compute wrong logits.

use super::{GgmlType, GgufFile, StoredTensor, Value};
use super::writer::GgufWriter;
use crate::error::{Error, Result};
use crate::model::{GptConfig, LlamaConfig, Model, ModelConfig};
use crate::params::ParamStore;
use std::borrow::Cow;
use std::path::Path;

/// The GGUF architectures plumb reads (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama, SmolLM, Mistral-style: q/k rows permuted for ggml's RoPE.
    Llama,
    /// Qwen2: q/k/v biases, rotate-half RoPE (ggml's NEOX mode), rows not permuted.
    Qwen2,
    /// GPT-2: learned positions, LayerNorm, GELU, Conv1D weights stored transposed.
    Gpt2,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gpt2 => "gpt2",
        }
    }
}

/// A GGUF model's architecture and plumb config.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufModelInfo {
    pub arch: Arch,
    pub config: ModelConfig,
}

/// Per-layer tensor names: (ggml, Hugging Face) for the Llama family.
const LLAMA_LAYER: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];
const LLAMA_GLOBAL: &[(&str, &str)] =
    &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];
/// GPT-2's (ggml, Hugging Face) names.
const GPT2_LAYER: &[(&str, &str)] = &[
    ("attn_norm", "ln_1"),
    ("attn_qkv", "attn.c_attn"),
    ("attn_output", "attn.c_proj"),
    ("ffn_norm", "ln_2"),
    ("ffn_up", "mlp.c_fc"),
    ("ffn_down", "mlp.c_proj"),
];
const GPT2_GLOBAL: &[(&str, &str)] = &[
    ("token_embd", "transformer.wte"),
    ("position_embd", "transformer.wpe"),
    ("output_norm", "transformer.ln_f"),
    ("output", "lm_head"),
];

/// (ggml name, Hugging Face name) pairs.
type NameTable = &'static [(&'static str, &'static str)];

/// (global names, per-layer names, Hugging Face layer prefix) of `arch`.
fn tables(arch: Arch) -> (NameTable, NameTable, &'static str) {
    match arch {
        Arch::Llama | Arch::Qwen2 => (LLAMA_GLOBAL, LLAMA_LAYER, "model.layers."),
        Arch::Gpt2 => (GPT2_GLOBAL, GPT2_LAYER, "transformer.h."),
    }
}

/// Split `stem.weight` / `stem.bias` into (stem, suffix).
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    name.strip_suffix(".weight").map(|s| (s, "weight")).or_else(|| name.strip_suffix(".bias").map(|s| (s, "bias")))
}

/// The Hugging Face name of ggml tensor `name`, e.g. `blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`.
pub fn hf_name(arch: Arch, name: &str) -> Option<String> {
    let (global, per_layer, prefix) = tables(arch);
    let (stem, suffix) = split_suffix(name)?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (i, t) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let hf = per_layer.iter().find(|(g, _)| *g == t)?.1;
        return Some(format!("{prefix}{i}.{hf}.{suffix}"));
    }
    global.iter().find(|(g, _)| *g == stem).map(|(_, hf)| format!("{hf}.{suffix}"))
}

/// The ggml name of Hugging Face tensor `name` (the inverse of [`hf_name`]).
pub fn gguf_name(arch: Arch, name: &str) -> Option<String> {
    let (global, per_layer, prefix) = tables(arch);
    let (stem, suffix) = split_suffix(name)?;
    if let Some(rest) = stem.strip_prefix(prefix) {
        let (i, t) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let g = per_layer.iter().find(|(_, hf)| *hf == t)?.0;
        return Some(format!("blk.{i}.{g}.{suffix}"));
    }
    global.iter().find(|(_, hf)| *hf == stem).map(|(g, _)| format!("{g}.{suffix}"))
}

/// GPT-2's Conv1D weights: stored (in, out) by Hugging Face, (out, in) in GGUF.
fn is_conv1d(arch: Arch, hf: &str) -> bool {
    arch == Arch::Gpt2 && hf.starts_with("transformer.h.") && hf.ends_with(".weight") && !hf.contains(".ln_")
}

/// Heads whose rows llama.cpp permutes in `hf` (q: query heads, k: key/value heads), if any.
fn permuted_heads(arch: Arch, cfg: &ModelConfig, hf: &str) -> Option<usize> {
    let ModelConfig::Llama(c) = cfg else { return None };
    if arch != Arch::Llama {
        return None;
    }
    if hf.contains(".self_attn.q_proj.") {
        Some(c.num_attention_heads)
    } else if hf.contains(".self_attn.k_proj.") {
        Some(c.num_key_value_heads.unwrap_or(c.num_attention_heads))
    } else {
        None
    }
}

/// Permute the rows (each `row_bytes` long) of an (heads·D, ...) tensor between Hugging Face's
/// order, row `h·D + i·D/2 + j`, and ggml's, row `h·D + 2j + i` (i in {0, 1}, j < D/2).
/// `to_hf` picks the direction. This is llama.cpp's `permute` (reshape (H, 2, D/2), swap the
/// last two axes) and its inverse.
pub fn permute_rows(data: &[u8], rows: usize, heads: usize, to_hf: bool) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..d / 2 {
                let hf = h * d + i * (d / 2) + j;
                let gg = h * d + 2 * j + i;
                let (src, dst) = if to_hf { (gg, hf) } else { (hf, gg) };
                out[dst * row_bytes..(dst + 1) * row_bytes].copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Keys under `<arch>.` that plumb reads or knows to be harmless.
const KNOWN_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.layer_norm_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "vocab_size",
    "expert_count",
    "expert_used_count",
];

impl GgufModelInfo {
    /// The architecture and config of `g`, refusing what plumb does not implement.
    pub fn read(g: &GgufFile) -> Result<GgufModelInfo> {
        let path = g.path();
        let no = |msg: String| Err(Error::format(path, msg));
        if let Some(t) = g.get("general.type").and_then(Value::as_str) {
            if t != "model" {
                return no(format!("`general.type` is `{t}`: this is not a model (a LoRA adapter loads with --adapter)"));
            }
        }
        let arch = match g.get_str("general.architecture")? {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gpt2" => Arch::Gpt2,
            other => return no(format!("`general.architecture` is `{other}`: plumb reads llama, qwen2 and gpt2")),
        };
        let a = arch.name();
        for (k, v) in &g.metadata {
            if k.starts_with("split.") {
                return no(format!("key `{k}`: split GGUF files are not supported; merge them with llama-gguf-split --merge"));
            }
            let Some(rest) = k.strip_prefix(a).and_then(|r| r.strip_prefix('.')) else { continue };
            if !KNOWN_KEYS.contains(&rest) {
                return no(format!("key `{k}` = {v:?}: plumb does not implement it"));
            }
        }
        let key = |k: &str| format!("{a}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let c = u("embedding_length")?;
        let layers = u("block_count")?;
        let heads = u("attention.head_count")?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => u("attention.head_count_kv")?,
            None => heads,
        };
        if heads == 0 || c % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return no(format!("`{a}.embedding_length` {c}, `{a}.attention.head_count` {heads}, `{a}.attention.head_count_kv` {kv_heads} do not divide"));
        }
        let hd = c / heads;
        for k in ["attention.key_length", "attention.value_length", "rope.dimension_count"] {
            if let Some(v) = g.get(&key(k)) {
                if v.as_u64() != Some(hd as u64) {
                    return no(format!("key `{a}.{k}` = {v:?}: plumb needs the head size embedding_length / head_count = {hd}"));
                }
            }
        }
        if let Some(v) = g.get(&key("rope.scaling.type")) {
            if v.as_str() != Some("none") {
                return no(format!("key `{a}.rope.scaling.type` = {v:?}: plumb implements plain RoPE for GGUF files"));
            }
        }
        for k in ["expert_count", "expert_used_count"] {
            if let Some(v) = g.get(&key(k)) {
                if v.as_u64() != Some(0) {
                    return no(format!("key `{a}.{k}` = {v:?}: mixture-of-experts models are not supported"));
                }
            }
        }
        for t in &g.tensors {
            if hf_name(arch, &t.name).is_none() {
                return no(format!("tensor `{}`: plumb does not implement it for `{a}`", t.name));
            }
        }
        let embd = g.info("token_embd.weight").ok_or_else(|| Error::format(path, "missing tensor `token_embd.weight`"))?;
        let vocab = embd.shape[0];
        if let Some(v) = g.get(&key("vocab_size")) {
            if v.as_u64() != Some(vocab as u64) {
                return no(format!("key `{a}.vocab_size` = {v:?} but `token_embd.weight` has {vocab} rows"));
            }
        }
        let tied = g.info("output.weight").is_none();
        let config = match arch {
            Arch::Llama | Arch::Qwen2 => {
                let eps = g.get_f64_opt(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32;
                let bias = g.info("blk.0.attn_q.bias").is_some();
                ModelConfig::Llama(LlamaConfig {
                    vocab_size: vocab,
                    hidden_size: c,
                    intermediate_size: u("feed_forward_length")?,
                    num_hidden_layers: layers,
                    num_attention_heads: heads,
                    num_key_value_heads: Some(kv_heads),
                    max_position_embeddings: u("context_length")?,
                    rms_norm_eps: eps,
                    rope_theta: g.get_f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
                    tie_word_embeddings: tied,
                    attention_bias: Some(bias),
                    hidden_act: "silu".into(),
                    rope_scaling: None,
                })
            }
            Arch::Gpt2 => {
                if kv_heads != heads {
                    return no(format!("`{a}.attention.head_count_kv` {kv_heads} != head_count {heads}: GPT-2 has no grouped-query attention"));
                }
                let ff = u("feed_forward_length")?;
                if ff != 4 * c {
                    return no(format!("`{a}.feed_forward_length` {ff}: plumb's GPT-2 has an MLP of 4 x {c}"));
                }
                if !tied && g.tensor("output.weight")?.data != g.tensor("token_embd.weight")?.data {
                    return no("tensor `output.weight` differs from `token_embd.weight`: plumb's GPT-2 ties its head".into());
                }
                ModelConfig::Gpt(GptConfig {
                    vocab_size: vocab,
                    n_positions: u("context_length")?,
                    n_embd: c,
                    n_layer: layers,
                    n_head: heads,
                    layer_norm_epsilon: g.get_f64_opt(&key("attention.layer_norm_epsilon"))?.unwrap_or(1e-5) as f32,
                    activation_function: "gelu_new".into(),
                    tie_word_embeddings: true,
                })
            }
        };
        Ok(GgufModelInfo { arch, config })
    }

    /// Hugging Face tensor `hf` in its stored form: ggml type, Hugging Face row order (q/k rows
    /// un-permuted, moving whole rows of blocks), raw bytes. GPT-2's Conv1D weights come as GGUF
    /// stores them, (out, in): a quantized block cannot be transposed, and (out, in) is the
    /// layout a linear layer's dequantizing matmul reads.
    pub fn stored<'a>(&self, g: &'a GgufFile, hf: &str) -> Result<StoredTensor<'a>> {
        let name = gguf_name(self.arch, hf)
            .ok_or_else(|| Error::format(g.path(), format!("no GGUF name for tensor `{hf}`")))?;
        let mut t = g.tensor(&name)?;
        if let Some(heads) = permuted_heads(self.arch, &self.config, hf) {
            let rows = t.shape[0];
            if rows % heads != 0 || (rows / heads) % 2 != 0 {
                return Err(Error::format(g.path(), format!("tensor `{name}`: {rows} rows do not split into {heads} heads of even size")));
            }
            t.data = Cow::Owned(permute_rows(&t.data, rows, heads, true));
        }
        Ok(t)
    }

    /// Hugging Face tensor `hf` as f32 in Hugging Face layout, checked against `shape`.
    pub fn tensor_f32(&self, g: &GgufFile, hf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.stored(g, hf)?;
        let v = t.to_f32();
        let conv = is_conv1d(self.arch, hf);
        let have: Vec<usize> = if conv && t.shape.len() == 2 { vec![t.shape[1], t.shape[0]] } else { t.shape.clone() };
        if have != shape {
            return Err(Error::format(
                g.path(),
                format!("tensor `{}` ({hf}) has shape {have:?} in Hugging Face layout, the model expects {shape:?}", gguf_name(self.arch, hf).unwrap_or_default()),
            ));
        }
        Ok(if conv { transpose(&v, t.shape[0], t.shape[1]) } else { v })
    }
}

/// (rows, cols) row-major -> (cols, rows).
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Load a GGUF model into plumb's f32 model (every tensor dequantized on the CPU).
pub fn load_model(gpu: &crate::Gpu, path: &Path) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let info = GgufModelInfo::read(&g)?;
    let specs = Model::param_specs(&info.config);
    let store = ParamStore::new(gpu, &specs)?;
    for s in &specs {
        store.set(&s.name, &info.tensor_f32(&g, &s.name, &s.shape)?)?;
    }
    if specs.len() != g.tensors.len() {
        let wanted: std::collections::HashSet<String> = specs.iter().filter_map(|s| gguf_name(info.arch, &s.name)).collect();
        let extra: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).filter(|n| !wanted.contains(*n) && *n != "output.weight").collect();
        if !extra.is_empty() {
            return Err(Error::format(path, format!("tensors the model does not use: {}", extra.join(", "))));
        }
    }
    Model::from_config_and_params(info.config, store)
}

/// Load a GGUF model with its weight matrices kept on the GPU as the file stores them (F16,
/// BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K blocks, dequantized inside the matmul and the embedding
/// lookup: [`crate::model::FrozenBase`]); norms, biases and matrices the file keeps in F32 go
/// to an f32 parameter store. No f32 copy of the model is made. The matrices are frozen: attach
/// a LoRA adapter to fine-tune (its reference is then the base with the adapter off).
pub fn load_model_stored(gpu: &crate::Gpu, path: &Path) -> Result<Model> {
    use crate::model::FrozenBase;
    use crate::ops::quant::{QuantTensor, StoredType};
    let g = GgufFile::open(path)?;
    let info = GgufModelInfo::read(&g)?;
    let (names, _) = Model::frozen_names(&info.config);
    let mut frozen = FrozenBase::default();
    let mut rest = Vec::new();
    for spec in Model::param_specs(&info.config) {
        if names.contains(&spec.name) {
            let t = info.stored(&g, &spec.name)?;
            if let Some(kind) = StoredType::from_ggml_type(t.ty.id()) {
                // (out, in) as the quant kernels read it: GGUF's own layout, GPT-2's Conv1D included.
                let shape = [t.shape[0], t.shape.get(1).copied().unwrap_or(1)];
                let want = if is_conv1d(info.arch, &spec.name) { [spec.shape[1], spec.shape[0]] } else { [spec.shape[0], spec.shape[1]] };
                if shape != want {
                    return Err(Error::format(path, format!("tensor `{}` has shape {:?}, the model expects {want:?}", spec.name, t.shape)));
                }
                frozen.insert(spec.name.clone(), QuantTensor::from_bytes(gpu, kind, shape, &t.data)?);
                continue;
            }
        }
        rest.push(spec);
    }
    let store = ParamStore::new(gpu, &rest)?;
    for s in &rest {
        store.set(&s.name, &info.tensor_f32(&g, &s.name, &s.shape)?)?;
    }
    let mut model = Model::from_config_and_params(info.config, store.clone())?;
    model.set_frozen(store, frozen);
    Ok(model)
}

/// What loading `path` in stored form ([`load_model_stored`]) puts on the GPU, without loading
/// it: the config, the bytes of the matrices kept in their stored types and the names of those
/// types (e.g. `["Q4_1", "Q8_0"]`), and the bytes of the f32 rest (norms, biases, F32 matrices).
pub fn stored_footprint(path: &Path) -> Result<(ModelConfig, u64, Vec<&'static str>, u64)> {
    use crate::ops::quant::StoredType;
    let g = GgufFile::open(path)?;
    let info = GgufModelInfo::read(&g)?;
    let (names, _) = Model::frozen_names(&info.config);
    let (mut stored, mut rest, mut types) = (0u64, 0u64, Vec::new());
    for spec in Model::param_specs(&info.config) {
        let name = gguf_name(info.arch, &spec.name).ok_or_else(|| Error::format(path, format!("no GGUF name for tensor `{}`", spec.name)))?;
        let t = g.tensor(&name)?; // as stored: the row permutation of q/k does not change a size
        if names.contains(&spec.name) && StoredType::from_ggml_type(t.ty.id()).is_some() {
            stored += t.data.len() as u64;
            if !types.contains(&t.ty.name()) {
                types.push(t.ty.name());
            }
        } else {
            rest += 4 * spec.shape.iter().product::<usize>() as u64;
        }
    }
    Ok((info.config, stored, types, rest))
}

/// The architecture a plumb config is written as.
fn arch_of(cfg: &ModelConfig) -> Arch {
    match cfg {
        ModelConfig::Gpt(_) => Arch::Gpt2,
        ModelConfig::Llama(c) if c.attention_bias == Some(true) => Arch::Qwen2,
        ModelConfig::Llama(_) => Arch::Llama,
    }
}

/// Metadata keys of `cfg` for a model or adapter file.
fn put_config(w: &mut GgufWriter, cfg: &ModelConfig) {
    let arch = arch_of(cfg);
    let a = arch.name();
    let u = |v: usize| Value::U32(v as u32);
    w.set("general.architecture", Value::Str(a.into()));
    match cfg {
        ModelConfig::Llama(c) => {
            let kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
            w.set(&format!("{a}.context_length"), u(c.max_position_embeddings));
            w.set(&format!("{a}.embedding_length"), u(c.hidden_size));
            w.set(&format!("{a}.block_count"), u(c.num_hidden_layers));
            w.set(&format!("{a}.feed_forward_length"), u(c.intermediate_size));
            w.set(&format!("{a}.attention.head_count"), u(c.num_attention_heads));
            w.set(&format!("{a}.attention.head_count_kv"), u(kv));
            w.set(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps));
            w.set(&format!("{a}.rope.freq_base"), Value::F32(c.rope_theta));
            w.set(&format!("{a}.rope.dimension_count"), u(c.hidden_size / c.num_attention_heads));
        }
        ModelConfig::Gpt(c) => {
            w.set(&format!("{a}.context_length"), u(c.n_positions));
            w.set(&format!("{a}.embedding_length"), u(c.n_embd));
            w.set(&format!("{a}.block_count"), u(c.n_layer));
            w.set(&format!("{a}.feed_forward_length"), u(4 * c.n_embd));
            w.set(&format!("{a}.attention.head_count"), u(c.n_head));
            w.set(&format!("{a}.attention.layer_norm_epsilon"), Value::F32(c.layer_norm_epsilon));
        }
    }
}

/// Hugging Face tensor (name, shape, values) to (ggml name, shape, values) in GGUF layout: renamed,
/// q/k rows permuted for `llama`, GPT-2 Conv1D transposed to (out, in).
fn to_gguf_layout(cfg: &ModelConfig, hf: &str, shape: &[usize], v: &[f32]) -> Result<(String, Vec<usize>, Vec<f32>)> {
    let arch = arch_of(cfg);
    let name = gguf_name(arch, hf).ok_or_else(|| Error::config("GGUF export", format!("tensor `{hf}` has no GGUF name")))?;
    if is_conv1d(arch, hf) {
        return Ok((name, vec![shape[1], shape[0]], transpose(v, shape[0], shape[1])));
    }
    if let Some(heads) = permuted_heads(arch, cfg, hf) {
        let bytes: &[u8] = bytemuck::cast_slice(v);
        let p = permute_rows(bytes, shape[0], heads, false);
        return Ok((name, shape.to_vec(), bytemuck::cast_slice(&p).to_vec()));
    }
    Ok((name, shape.to_vec(), v.to_vec()))
}

/// Write `model`'s base weights as a GGUF model file: matrices in `ty` (F16, BF16 or F32), norms,
/// biases and other vectors in F32 (as llama.cpp's converter does), with the `tokenizer.*` keys
/// (vocabulary, merges, chat template) of `tokenizer_from` when the base came from a GGUF file.
pub fn save_model_gguf(model: &Model, tokenizer_from: Option<&GgufFile>, ty: GgmlType, path: &Path) -> Result<()> {
    save_model_gguf_typed(model, tokenizer_from, |_, shape| if shape.len() == 2 { ty } else { GgmlType::F32 }, path)
}

/// Write `model`'s base weights as a GGUF model file with each tensor in the type `type_of`
/// picks from its GGUF name and shape (GGUF layout, outermost first): any type plumb reads,
/// quantized on the CPU ([`GgufWriter::add_f32`]). Example: Q4_1 blocks and a Q8_0 embedding,
/// as llama.cpp's `llama-quantize` lays out a Q4_1 model.
pub fn save_model_gguf_typed(model: &Model, tokenizer_from: Option<&GgufFile>, type_of: impl Fn(&str, &[usize]) -> GgmlType, path: &Path) -> Result<()> {
    let cfg = model.config();
    let mut w = GgufWriter::new();
    put_config(&mut w, &cfg);
    w.set("general.type", Value::Str("model".into()));
    w.set("general.name", Value::Str("plumb export".into()));
    if let Some(src) = tokenizer_from {
        super::tokenizer::copy_tokenizer_keys(src, &mut w);
    }
    for (name, shape, values) in model.params().read_all()? {
        let (gname, gshape, gv) = to_gguf_layout(&cfg, &name, &shape, &values)?;
        w.add_f32(&gname, type_of(&gname, &gshape), &gshape, &gv)?;
    }
    w.write(path)
}

/// Write `model`'s base weights as a GGUF model file in the types `base` (the GGUF file the model
/// came from) stores each tensor in: a Q4_1 matrix is written Q4_1, a Q8_0 embedding Q8_0, F32
/// norms F32, with `base`'s tokenizer keys. A tensor whose values are still exactly what `base`
/// decodes to (not touched by a merged adapter) is copied byte for byte; the others are
/// quantized on the CPU (ggml's reference quantizers for Q8_0 / Q4_0 / Q4_1).
pub fn save_model_gguf_like(model: &Model, base: &GgufFile, path: &Path) -> Result<()> {
    let cfg = model.config();
    let src = GgufModelInfo::read(base)?;
    if src.config != cfg {
        return Err(Error::config("GGUF export", format!("{} holds another model than the one being written", base.path().display())));
    }
    let mut w = GgufWriter::new();
    put_config(&mut w, &cfg);
    w.set("general.type", Value::Str("model".into()));
    w.set("general.name", Value::Str("plumb export".into()));
    super::tokenizer::copy_tokenizer_keys(base, &mut w);
    for (name, shape, values) in model.params().read_all()? {
        let (gname, gshape, gv) = to_gguf_layout(&cfg, &name, &shape, &values)?;
        let stored = base.tensor(&gname)?;
        if src.tensor_f32(base, &name, &shape)? == values {
            w.add_raw(&gname, stored.ty, &gshape, stored.data.into_owned())?;
        } else {
            w.add_f32(&gname, stored.ty, &gshape, &gv)?;
        }
    }
    w.write(path)
}

/// Write the attached LoRA adapter as llama.cpp's GGUF LoRA adapter: `general.type` = `adapter`,
/// `adapter.type` = `lora`, `adapter.lora.alpha` (f32), the base's architecture keys, and for
/// every adapted weight `blk.N.<name>.weight.lora_a` (ne [in, r], i.e. PEFT's (r, in)) and
/// `.lora_b` (ne [r, out], PEFT's (out, r)), in `ty` (F32 or F16). For `llama`, B's rows are
/// permuted as the base's q/k rows are (the update B·A is then in ggml's row order); GPT-2's
/// Conv1D modules are (out, in) in GGUF already, so their A/B need no change.
pub fn save_lora_gguf(model: &Model, ty: GgmlType, path: &Path) -> Result<()> {
    let Some(lora) = model.lora() else {
        return Err(Error::config("LoRA", "save_lora_gguf: no adapter is attached"));
    };
    let cfg = model.config();
    let arch = arch_of(&cfg);
    let mut w = GgufWriter::new();
    put_config(&mut w, &cfg);
    w.set("general.type", Value::Str("adapter".into()));
    w.set("general.name", Value::Str("plumb LoRA adapter".into()));
    w.set("adapter.type", Value::Str("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(lora.cfg.alpha));
    for m in lora.modules() {
        let hf = format!("{}.weight", m.name);
        let gname = gguf_name(arch, &hf).ok_or_else(|| Error::config("GGUF adapter", format!("module `{}` has no GGUF name", m.name)))?;
        let a = lora.params.get(&crate::lora::tensor_name(&m.name, "A"))?; // (r, in)
        let mut b = lora.params.get(&crate::lora::tensor_name(&m.name, "B"))?; // (out, r)
        if let Some(heads) = permuted_heads(arch, &cfg, &hf) {
            b = bytemuck::cast_slice(&permute_rows(bytemuck::cast_slice(&b), m.out_features, heads, false)).to_vec();
        }
        let r = lora.cfg.r;
        w.add_f32(&format!("{gname}.lora_a"), ty, &[r, m.in_features], &a)?;
        w.add_f32(&format!("{gname}.lora_b"), ty, &[m.out_features, r], &b)?;
    }
    w.write(path)
}
