//! Model configurations read from a Hugging Face `config.json`. The `model_type` field picks the
//! architecture: "gpt2" for GPT-2, and "llama", "qwen2", "mistral" or "smollm"-style configs for
//! the Llama family. Field names are Hugging Face's, so a `transformers` directory loads as is.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn d_eps() -> f32 {
    1e-5
}
fn d_gelu() -> String {
    "gelu_new".into()
}
fn d_true() -> bool {
    true
}

/// GPT-2 hyperparameters (Hugging Face `GPT2Config` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size. Example: 50257 (GPT-2's BPE), 256 (plumb's byte-level tokenizer).
    pub vocab_size: usize,
    /// Longest sequence; learned position embeddings have this many rows. Example: 1024.
    pub n_positions: usize,
    /// Width of the residual stream. Example: 768.
    pub n_embd: usize,
    /// Number of transformer blocks. Example: 12.
    pub n_layer: usize,
    /// Attention heads; head dim = n_embd / n_head. Example: 12.
    pub n_head: usize,
    /// LayerNorm epsilon. Example: 1e-5.
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f32,
    /// "gelu_new" (tanh approximation, GPT-2's own) or "gelu" (exact, erf).
    #[serde(default = "d_gelu")]
    pub activation_function: String,
    /// GPT-2 always ties the LM head to the token embedding.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

/// Llama-family hyperparameters (Hugging Face `LlamaConfig` / `Qwen2Config` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size. Example: 49152 (SmolLM).
    pub vocab_size: usize,
    /// Width of the residual stream. Example: 576.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP. Example: 1536.
    pub intermediate_size: usize,
    /// Number of blocks. Example: 30.
    pub num_hidden_layers: usize,
    /// Query heads. Example: 9.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads. Example: 3.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest sequence the model was trained for (RoPE needs no table). Example: 2048.
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon. Example: 1e-5.
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f32,
    /// RoPE base. Example: 10000.0.
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    /// Share the LM head with the token embedding. Example: true (SmolLM), false (Llama 2).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections (Qwen2 has it; Llama does not). Set from `model_type`
    /// "qwen2" when absent.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Activation; plumb implements "silu" (SwiGLU).
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// RoPE frequency scaling (Llama 3.1/3.2's `llama3` type); None: plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

/// Hugging Face's `rope_scaling` of type `llama3`: wavelengths longer than
/// `original_max_position_embeddings / low_freq_factor` are stretched by `factor`, shorter than
/// `.. / high_freq_factor` kept, and those between interpolated smoothly.
/// Example (Llama 3.2 1B): factor 32, low 1, high 4, original 8192.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Always "llama3" (other types are refused when the config is read).
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl RopeScaling {
    /// The scaled inverse frequencies for head size `dim` and base `theta` (transformers'
    /// `_compute_llama3_parameters`), in f64.
    pub fn inv_freq(&self, theta: f64, dim: usize) -> Vec<f64> {
        let old = self.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / self.low_freq_factor, old / self.high_freq_factor);
        (0..dim / 2)
            .map(|i| {
                let f = theta.powf(-((2 * i) as f64) / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / self.factor
                } else {
                    let smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor);
                    (1.0 - smooth) * f / self.factor + smooth * f
                }
            })
            .collect()
    }
}

fn d_maxpos() -> usize {
    2048
}
fn d_theta() -> f32 {
    10000.0
}
fn d_act() -> String {
    "silu".into()
}

/// Hugging Face Llama-family fields plumb does not implement. Ignoring them would load the
/// checkpoint and compute wrong logits, so a non-default value is an error naming the field.
fn unsupported_llama_fields(v: &serde_json::Value, origin: &Path) -> Result<()> {
    let no = |msg: String| Err(Error::format(origin, msg));
    if v.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
        return no("`mlp_bias: true`: plumb's SwiGLU MLP has no biases".into());
    }
    if let Some(r) = v.get("rope_scaling").filter(|r| !r.is_null()) {
        let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(|t| t.as_str());
        if kind != Some("llama3") {
            return no(format!("`rope_scaling: {r}`: plumb implements plain RoPE and the `llama3` type"));
        }
        let num = |k: &str| r.get(k).and_then(|x| x.as_f64()).filter(|x| x.is_finite() && *x > 0.0);
        for k in ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] {
            if num(k).is_none() {
                return no(format!("`rope_scaling.{k}` must be a positive number (in {r})"));
            }
        }
        if num("high_freq_factor") <= num("low_freq_factor") {
            return no(format!("`rope_scaling`: high_freq_factor must exceed low_freq_factor (in {r})"));
        }
    }
    let size = |k: &str| v.get(k).and_then(|x| x.as_u64());
    if let (Some(hd), Some(c), Some(h)) = (size("head_dim"), size("hidden_size"), size("num_attention_heads")) {
        if h == 0 || hd * h != c {
            return no(format!("`head_dim: {hd}`: plumb needs hidden_size / num_attention_heads = {c} / {h}"));
        }
    }
    Ok(())
}

/// Largest vocabulary plumb accepts (token ids stay exact in f32 and u32 buffers stay small).
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest sequence length plumb accepts.
pub const MAX_POSITIONS: usize = 1 << 20;
/// Largest width, MLP width, layer or head count plumb accepts.
const MAX_DIM: usize = 1 << 16;

/// `field` must lie in `lo..=hi`; the error names the file and the field.
fn field_in(origin: &Path, field: &str, value: usize, lo: usize, hi: usize) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::format(origin, format!("field `{field}`: {value} is outside {lo}..={hi}")));
    }
    Ok(())
}

/// A positive, finite epsilon.
fn eps_ok(origin: &Path, field: &str, value: f32) -> Result<()> {
    if !(value.is_finite() && value > 0.0 && value < 1.0) {
        return Err(Error::format(origin, format!("field `{field}`: {value} must be a small positive number (example: 1e-5)")));
    }
    Ok(())
}

/// `a` must be a multiple of `b`.
fn divides(origin: &Path, a: (&str, usize), b: (&str, usize)) -> Result<()> {
    if b.1 == 0 || !a.1.is_multiple_of(b.1) {
        return Err(Error::format(origin, format!("field `{}`: {} is not a multiple of `{}` ({})", a.0, a.1, b.0, b.1)));
    }
    Ok(())
}

impl GptConfig {
    /// Check every field's range and how they fit together; errors name `origin` and the field.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        field_in(origin, "vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        field_in(origin, "n_positions", self.n_positions, 1, MAX_POSITIONS)?;
        field_in(origin, "n_embd", self.n_embd, 1, MAX_DIM)?;
        field_in(origin, "n_layer", self.n_layer, 1, MAX_DIM)?;
        field_in(origin, "n_head", self.n_head, 1, MAX_DIM)?;
        divides(origin, ("n_embd", self.n_embd), ("n_head", self.n_head))?;
        eps_ok(origin, "layer_norm_epsilon", self.layer_norm_epsilon)?;
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu") {
            return Err(Error::format(origin, format!("field `activation_function`: `{}`; plumb implements gelu_new and gelu", self.activation_function)));
        }
        if !self.tie_word_embeddings {
            return Err(Error::format(origin, "field `tie_word_embeddings`: false; plumb's GPT-2 ties the LM head to the token embedding"));
        }
        Ok(())
    }
}

impl LlamaConfig {
    /// Check every field's range and how they fit together; errors name `origin` and the field.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        field_in(origin, "vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        field_in(origin, "hidden_size", self.hidden_size, 1, MAX_DIM)?;
        field_in(origin, "intermediate_size", self.intermediate_size, 1, 4 * MAX_DIM)?;
        field_in(origin, "num_hidden_layers", self.num_hidden_layers, 1, MAX_DIM)?;
        field_in(origin, "num_attention_heads", self.num_attention_heads, 1, MAX_DIM)?;
        field_in(origin, "max_position_embeddings", self.max_position_embeddings, 1, MAX_POSITIONS)?;
        divides(origin, ("hidden_size", self.hidden_size), ("num_attention_heads", self.num_attention_heads))?;
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(2) {
            return Err(Error::format(origin, format!("field `hidden_size`: head size {} is odd; RoPE needs an even head size", self.hidden_size / self.num_attention_heads)));
        }
        if let Some(kv) = self.num_key_value_heads {
            field_in(origin, "num_key_value_heads", kv, 1, self.num_attention_heads)?;
            divides(origin, ("num_attention_heads", self.num_attention_heads), ("num_key_value_heads", kv))?;
        }
        eps_ok(origin, "rms_norm_eps", self.rms_norm_eps)?;
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::format(origin, format!("field `rope_theta`: {} must be a finite number above 1 (example: 10000)", self.rope_theta)));
        }
        Ok(())
    }
}

/// A configuration of either architecture.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Gpt(GptConfig),
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Parse a `config.json` text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<ModelConfig> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::format(origin, format!("invalid JSON: {e}")))?;
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
        let mt = mt.as_str();
        let bad = |e: serde_json::Error| Error::format(origin, format!("{mt} config: {e}"));
        match mt {
            "gpt2" => {
                let c: GptConfig = serde_json::from_value(v).map_err(bad)?;
                c.validate(origin)?;
                Ok(ModelConfig::Gpt(c))
            }
            "llama" | "qwen2" | "mistral" => {
                unsupported_llama_fields(&v, origin)?;
                let mut c: LlamaConfig = serde_json::from_value(v).map_err(bad)?;
                if c.attention_bias.is_none() {
                    c.attention_bias = Some(mt == "qwen2");
                }
                if c.hidden_act != "silu" {
                    return Err(Error::format(origin, format!("hidden_act `{}`: plumb implements silu", c.hidden_act)));
                }
                c.validate(origin)?;
                Ok(ModelConfig::Llama(c))
            }
            other => Err(Error::format(
                origin,
                format!("model_type `{other}` is not supported (plumb knows gpt2, llama, qwen2, mistral)"),
            )),
        }
    }

    /// Read `dir/config.json` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        ModelConfig::from_json(&text, &file)
    }

    /// The config as Hugging Face JSON (with `model_type` and `architectures`).
    pub fn to_json(&self) -> serde_json::Value {
        let (mut v, mt, arch) = match self {
            ModelConfig::Gpt(c) => (serde_json::to_value(c), "gpt2", "GPT2LMHeadModel"),
            ModelConfig::Llama(c) => (serde_json::to_value(c), "llama", "LlamaForCausalLM"),
        };
        let v = v.as_mut().map(|v| {
            v["model_type"] = mt.into();
            v["architectures"] = serde_json::json!([arch]);
            v["torch_dtype"] = "float32".into();
            if let ModelConfig::Gpt(c) = self {
                // transformers' GPT2Config also reads these aliases.
                v["n_ctx"] = c.n_positions.into();
            }
            v.clone()
        });
        v.unwrap_or(serde_json::Value::Null)
    }
}
