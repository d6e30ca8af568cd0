//! LoRA adapters (Hu et al. 2021) in PEFT's layout: a targeted projection `y = base(x)` becomes
//! ```text
//! y = base(x) + (α/r) · (x·Aᵀ)·Bᵀ        A (r, in), B (out, r)
//! ```
//! while the adapters are enabled (the models run it as one op, [`crate::ops::lora`], whose
//! sums ride on the products' stores). Only A and B train; the base weights enter the tape as
//! constants, so no gradient is computed for them and they never change. With the adapters
//! switched off the model *is* the base model, which is what DPO and PPO use as their reference:
//! one copy of the weights serves both.
//!
//! Tensor names, shapes, initialisation and `adapter_config.json` follow PEFT, so an adapter saved
//! here loads with `PeftModel.from_pretrained` and back:
//! ```text
//! base_model.model.transformer.h.0.attn.c_attn.lora_A.weight      (r, in)
//! base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight  (out, r)
//! ```
//! A starts kaiming-uniform (PEFT's `a=√5`: U(-1/√in, 1/√in)), B at zero, so a fresh adapter
//! leaves the model's outputs unchanged. Target modules match PEFT's way: a module is targeted
//! when its name equals a target or ends with `.` + target (`c_proj` is both GPT-2's attention
//! and MLP output). Dropout on the adapter input is not implemented (PEFT's `lora_dropout` 0).
//!
//! Weight decay: A and B take it (`decay: true`), as in TRL, whose optimizer (the `transformers`
//! Trainer's) decays every weight except biases and norm gains; the rate is the optimizer's.

use crate::error::{Error, Result};
use crate::ops::elementwise::scale;
use crate::ops::lora::{adapted_linear, Base};
use crate::ops::matmul::linear;
use crate::params::{ParamSpec, ParamStore};
use crate::tape::{Tape, Var};
use crate::Gpu;
use crate::weights::{save_f32, write_atomic, WeightFile};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

fn d_r() -> usize {
    8
}
fn d_alpha() -> f32 {
    16.0
}

/// LoRA hyperparameters (PEFT's `LoraConfig` meaning; `lora_alpha` is read as `alpha`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update. Example: 8.
    #[serde(default = "d_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by alpha / r. Example: 16.
    #[serde(default = "d_alpha", alias = "lora_alpha")]
    pub alpha: f32,
    /// Module names to adapt, matched as suffixes. Example: `["q_proj", "v_proj"]`. Empty: the
    /// architecture's defaults ([`LoraConfig::default_targets`]).
    #[serde(default)]
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: d_r(), alpha: d_alpha(), target_modules: vec![] }
    }
}

impl LoraConfig {
    /// Every projection of the architecture: GPT-2 `c_attn`, `c_proj` (attention and MLP),
    /// `c_fc`; Llama/Qwen2 `q/k/v/o_proj`, `gate/up/down_proj`.
    pub fn default_targets(cfg: &crate::model::ModelConfig) -> Vec<String> {
        let names: &[&str] = match cfg {
            crate::model::ModelConfig::Gpt(_) => &["c_attn", "c_proj", "c_fc"],
            crate::model::ModelConfig::Llama(_) => &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The update's scale alpha / r.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("LoRA r", "the rank must be at least 1"));
        }
        if !self.alpha.is_finite() {
            return Err(Error::config("LoRA alpha", format!("{} must be finite", self.alpha)));
        }
        Ok(())
    }
}

/// One projection a model offers for adaptation: `name` is its module path in Hugging Face's
/// model (e.g. `transformer.h.0.attn.c_attn`), with its input and output widths.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// PEFT's tensor name of the A (`"A"`) or B (`"B"`) matrix of `module`.
pub fn tensor_name(module: &str, ab: &str) -> String {
    format!("base_model.model.{module}.lora_{ab}.weight")
}

/// An attached adapter: its config (targets resolved), the adapted modules and A/B for each in
/// one flat store of its own. Cloning shares the store (a checkpointed block keeps a clone to
/// recompute its forward in the backward).
#[derive(Clone)]
pub struct Lora {
    pub cfg: LoraConfig,
    pub params: ParamStore,
    /// Adapted module name -> (in, out).
    modules: HashMap<String, (usize, usize)>,
    enabled: Cell<bool>,
    /// Written to `adapter_config.json` (PEFT reads it to find the base model); kept on load.
    pub base_model_name_or_path: Option<String>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lora(r {}, alpha {}, {} modules, enabled {})", self.cfg.r, self.cfg.alpha, self.modules.len(), self.enabled.get())
    }
}

impl Lora {
    /// An adapter on the modules of `available` that `cfg.target_modules` matches (each target
    /// must match at least one), initialised like PEFT and deterministic in `seed`.
    pub fn new(gpu: &Gpu, cfg: &LoraConfig, available: &[LoraModule], seed: u64) -> Result<Lora> {
        cfg.validate()?;
        if cfg.target_modules.is_empty() {
            return Err(Error::config("LoRA target_modules", "no target modules given"));
        }
        let hits = |t: &str, m: &LoraModule| m.name == t || m.name.ends_with(&format!(".{t}"));
        for t in &cfg.target_modules {
            if !available.iter().any(|m| hits(t, m)) {
                let mut names: Vec<&str> = available.iter().filter_map(|m| m.name.rsplit('.').next()).collect();
                names.sort();
                names.dedup();
                return Err(Error::config("LoRA target_modules", format!("`{t}` matches no module; this model has {}", names.join(", "))));
            }
        }
        let chosen: Vec<&LoraModule> = available.iter().filter(|m| cfg.target_modules.iter().any(|t| hits(t, m))).collect();
        let mut specs = Vec::with_capacity(2 * chosen.len());
        for m in &chosen {
            specs.push(ParamSpec::new(tensor_name(&m.name, "A"), &[cfg.r, m.in_features], true)); // (r, in)
            specs.push(ParamSpec::new(tensor_name(&m.name, "B"), &[m.out_features, cfg.r], true)); // (out, r)
        }
        let params = ParamStore::new(gpu, &specs)?; // zero-filled: B = 0
        for (k, m) in chosen.iter().enumerate() {
            let bound = 1.0 / (m.in_features as f32).sqrt();
            params.set(&tensor_name(&m.name, "A"), &uniform(cfg.r * m.in_features, bound, seed.wrapping_mul(1000).wrapping_add(k as u64)))?;
        }
        let modules = chosen.iter().map(|m| (m.name.clone(), (m.in_features, m.out_features))).collect();
        Ok(Lora { cfg: cfg.clone(), params, modules, enabled: Cell::new(true), base_model_name_or_path: None })
    }

    /// Whether the adapters take part in forward passes.
    pub fn enabled(&self) -> bool {
        self.enabled.get()
    }

    /// Switch the adapters on or off (off: the base model, e.g. a DPO/PPO reference pass).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.set(on)
    }

    /// The adapted modules with their (in, out) widths, sorted by name.
    pub fn modules(&self) -> Vec<LoraModule> {
        let mut v: Vec<LoraModule> =
            self.modules.iter().map(|(n, &(i, o))| LoraModule { name: n.clone(), in_features: i, out_features: o }).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// True when `module` carries an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.modules.contains_key(module)
    }

    fn p(&self, tape: Option<&Tape>, name: &str) -> Result<Var> {
        match tape {
            Some(t) => self.params.var(t, name),
            None => Ok(Var::constant(self.params.value(name)?)),
        }
    }

    /// Whether projection `module` takes this adapter's update now: the adapters are enabled
    /// and `module` is targeted.
    pub fn adapts(&self, module: &str) -> bool {
        self.enabled.get() && self.targets(module)
    }

    /// Projection `module` with this adapter's update, as one op: `base(x) (+ bias) +
    /// (α/r)·(x·Aᵀ)·Bᵀ` (see [`crate::ops::lora`]). For a module this adapter
    /// [`adapts`](Self::adapts).
    pub fn project(&self, tape: Option<&Tape>, module: &str, x: &Var, base: Base, bias: Option<&Var>) -> Result<Var> {
        let a = self.p(tape, &tensor_name(module, "A"))?;
        let b = self.p(tape, &tensor_name(module, "B"))?;
        adapted_linear(x, base, bias, &a, &b, self.cfg.scale())
    }
}

/// The adapter directory's two files, as PEFT's `save_pretrained` writes them.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// See [`WEIGHTS_FILE`].
pub const CONFIG_FILE: &str = "adapter_config.json";

impl Lora {
    /// Write `dir/adapter_model.safetensors` and `dir/adapter_config.json` (atomically, creating
    /// `dir`). `fan_in_fan_out` is true for GPT-2, whose Conv1D weights are stored (in, out).
    pub fn save(&self, dir: &Path, fan_in_fan_out: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let targets: Vec<&String> = self.cfg.target_modules.iter().collect();
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "r": self.cfg.r,
            "lora_alpha": self.cfg.alpha,
            "lora_dropout": 0.0,
            "target_modules": targets,
            "fan_in_fan_out": fan_in_fan_out,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "inference_mode": true,
        });
        let text = serde_json::to_string_pretty(&cfg).expect("adapter config serialises");
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        save_f32(dir.join(WEIGHTS_FILE), &self.params.read_all()?, meta)
    }

    /// Read an adapter directory written by [`Lora::save`] or PEFT for a model offering
    /// `available`. Every tensor is checked by name and shape (an error names the tensor);
    /// options plumb does not implement (DoRA, rsLoRA, trained biases, per-layer ranks, regex
    /// targets) are refused rather than ignored.
    pub fn load(gpu: &Gpu, dir: &Path, available: &[LoraModule]) -> Result<Lora> {
        let cpath = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(&cpath, format!("not valid JSON: {e}")))?;
        let bad = |msg: String| Error::format(&cpath, msg);
        if v.get("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(bad(format!("peft_type is {}, plumb reads \"LORA\"", v.get("peft_type").unwrap_or(&Value::Null))));
        }
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let empty = |k: &str| v.get(k).is_none_or(|x| x.is_null() || x.as_object().is_some_and(|o| o.is_empty()));
        if flag("use_dora") || flag("use_rslora") || !empty("rank_pattern") || !empty("alpha_pattern") {
            return Err(bad("DoRA, rsLoRA and per-module rank/alpha patterns are not supported".into()));
        }
        if v.get("bias").and_then(Value::as_str).unwrap_or("none") != "none" {
            return Err(bad("trained biases (bias != \"none\") are not supported".into()));
        }
        let Some(targets) = v.get("target_modules").and_then(Value::as_array) else {
            return Err(bad("target_modules must be a list of names (regex targets are not supported)".into()));
        };
        let target_modules = targets.iter().map(|t| t.as_str().map(String::from)).collect::<Option<Vec<_>>>();
        let target_modules = target_modules.ok_or_else(|| bad("target_modules must hold strings".into()))?;
        let r = v.get("r").and_then(Value::as_u64).ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
        let alpha = v.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("`lora_alpha` must be a number".into()))? as f32;
        let cfg = LoraConfig { r, alpha, target_modules };
        let mut lora = Lora::new(gpu, &cfg, available, 0)?;
        lora.base_model_name_or_path = v.get("base_model_name_or_path").and_then(Value::as_str).map(String::from);
        let file = WeightFile::open(dir.join(WEIGHTS_FILE))?;
        let mut tensors = Vec::with_capacity(lora.params.entries().len());
        for e in lora.params.entries() {
            tensors.push((e.name.clone(), e.shape.clone(), file.get_f32(&e.name, &e.shape)?));
        }
        let extra: Vec<String> = file.names().into_iter().filter(|n| !lora.params.contains(n)).collect();
        if !extra.is_empty() {
            return Err(Error::format(file.path(), format!("tensors this model has no adapted module for: {}", extra.join(", "))));
        }
        lora.params.write_all(&tensors)?;
        Ok(lora)
    }
}

/// The LoRA update `scale · (x·Aᵀ)·Bᵀ`: x (..., in), a (r, in), b (out, r) -> (..., out). The
/// scale is applied to the narrow (..., r) middle, the cheapest place.
pub fn lora_delta(x: &Var, a: &Var, b: &Var, scale_by: f32) -> Result<Var> {
    let h = scale(&linear(x, a, None)?, scale_by)?; // (..., r)
    linear(&h, b, None) // (..., out)
}

/// Deterministic U(-bound, bound) values from a seed (ChaCha8).
fn uniform(n: usize, bound: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-bound..bound)).collect()
}

/// CPU reference (f64) for the gradient-check table.
pub mod reference {
    /// `scale · (x·Aᵀ)·Bᵀ` for `dims = (rows, in, r, out)`: x (rows, in), a (r, in), b (out, r).
    pub fn lora_delta(x: &[f64], a: &[f64], b: &[f64], dims: (usize, usize, usize, usize), scale: f64) -> Vec<f64> {
        let (rows, inp, r, out) = dims;
        let mut y = vec![0.0; rows * out];
        for i in 0..rows {
            let h: Vec<f64> = (0..r).map(|k| scale * (0..inp).map(|j| x[i * inp + j] * a[k * inp + j]).sum::<f64>()).collect();
            for o in 0..out {
                y[i * out + o] = (0..r).map(|k| h[k] * b[o * r + k]).sum();
            }
        }
        y
    }
}
