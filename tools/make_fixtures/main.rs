//! `make-fixtures`: writes the tiny Hugging Face checkpoints under `models/fixtures/` that
//! `tests/hf_fixtures.rs` loads and checks against an independent f64 forward pass.
//!
//! Each fixture is what `transformers`' `save_pretrained` writes for a randomly initialised
//! model: a `config.json` with the class's fields, and a `model.safetensors` with Hugging Face's
//! tensor names and layouts (GPT-2's Conv1D `(in, out)` matrices, Llama's `nn.Linear`
//! `(out, in)` ones, tied heads left out of the file). Nothing here uses plumb's own model or
//! initialisation code, so a wrong name, transpose or bias in plumb cannot cancel out.
//!
//! Every tensor, biases and norm gains included, is random and non-trivial (matrices N(0, 0.2),
//! biases N(0, 0.2), gains 1 + N(0, 0.1)), drawn from one seeded ChaCha stream per fixture:
//! the output is the same bytes on every run.
//!
//!     cargo run --bin make-fixtures            # writes models/fixtures/
//!     cargo run --bin make-fixtures -- OUT_DIR # somewhere else

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How a fixture stores its tensors on disk.
#[derive(Clone, Copy)]
enum Store {
    F32,
    /// f32, except `lm_head.weight` in f16 (a mixed-dtype file, as some exports write).
    F32HeadF16,
    Bf16,
}

impl Store {
    fn dtype(self, name: &str) -> Dtype {
        match self {
            Store::F32 => Dtype::F32,
            Store::F32HeadF16 if name == "lm_head.weight" => Dtype::F16,
            Store::F32HeadF16 => Dtype::F32,
            Store::Bf16 => Dtype::BF16,
        }
    }
}

/// Little-endian bytes of `data` as `dtype` (f16 and bf16 round to nearest even).
fn encode(data: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        Dtype::BF16 => data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// One tensor to write: HF name, shape, values.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// A seeded source of the fixture's random values.
struct Init(ChaCha8Rng);

impl Init {
    fn new(seed: u64) -> Init {
        Init(ChaCha8Rng::seed_from_u64(seed))
    }

    /// One standard normal sample (Box-Muller).
    fn gauss(&mut self) -> f32 {
        let u1: f64 = 1.0 - self.0.random::<f64>(); // (0, 1]
        let u2: f64 = self.0.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A matrix or bias: N(0, 0.2).
    fn weight(&mut self, name: impl Into<String>, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor { name: name.into(), shape: shape.to_vec(), data: (0..n).map(|_| 0.2 * self.gauss()).collect() }
    }

    /// A LayerNorm / RMSNorm gain: 1 + N(0, 0.1).
    fn gain(&mut self, name: impl Into<String>, n: usize) -> Tensor {
        Tensor { name: name.into(), shape: vec![n], data: (0..n).map(|_| 1.0 + 0.1 * self.gauss()).collect() }
    }
}

/// GPT2LMHeadModel: vocab 64, 32 positions, C = 16, 2 layers, 2 heads, gelu_new, tied head.
fn gpt2() -> (Value, Vec<Tensor>) {
    let (v, p, c, layers) = (64, 32, 16, 2);
    let config = json!({
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 63,
        "embd_pdrop": 0.1,
        "eos_token_id": 63,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_embd": c,
        "n_head": 2,
        "n_inner": null,
        "n_layer": layers,
        "n_positions": p,
        "reorder_and_upcast_attn": false,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": false,
        "scale_attn_weights": true,
        "summary_activation": null,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": true,
        "summary_type": "cls_index",
        "summary_use_proj": true,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": true,
        "vocab_size": v
    });
    let mut r = Init::new(2);
    let mut t = vec![
        r.weight("transformer.wte.weight", &[v, c]), // (V, C)
        r.weight("transformer.wpe.weight", &[p, c]), // (P, C)
    ];
    for i in 0..layers {
        let h = |n: &str| format!("transformer.h.{i}.{n}");
        t.push(r.gain(h("ln_1.weight"), c));
        t.push(r.weight(h("ln_1.bias"), &[c]));
        t.push(r.weight(h("attn.c_attn.weight"), &[c, 3 * c])); // Conv1D (in, out) = (C, 3C)
        t.push(r.weight(h("attn.c_attn.bias"), &[3 * c]));
        t.push(r.weight(h("attn.c_proj.weight"), &[c, c])); // (C, C)
        t.push(r.weight(h("attn.c_proj.bias"), &[c]));
        t.push(r.gain(h("ln_2.weight"), c));
        t.push(r.weight(h("ln_2.bias"), &[c]));
        t.push(r.weight(h("mlp.c_fc.weight"), &[c, 4 * c])); // (C, 4C)
        t.push(r.weight(h("mlp.c_fc.bias"), &[4 * c]));
        t.push(r.weight(h("mlp.c_proj.weight"), &[4 * c, c])); // (4C, C)
        t.push(r.weight(h("mlp.c_proj.bias"), &[c]));
    }
    t.push(r.gain("transformer.ln_f.weight", c));
    t.push(r.weight("transformer.ln_f.bias", &[c]));
    // lm_head.weight is tied to wte: save_pretrained leaves it out of the file.
    (config, t)
}

/// Sizes of a Llama-family fixture.
struct LlamaDims {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    qkv_bias: bool,
    tied: bool,
}

/// The tensors of LlamaForCausalLM / Qwen2ForCausalLM (nn.Linear weights are (out, in)).
fn llama_tensors(d: &LlamaDims, seed: u64) -> Vec<Tensor> {
    let (c, hd) = (d.hidden, d.hidden / d.heads);
    let (q, kv) = (d.heads * hd, d.kv_heads * hd);
    let mut r = Init::new(seed);
    let mut t = vec![r.weight("model.embed_tokens.weight", &[d.vocab, c])]; // (V, C)
    for i in 0..d.layers {
        let l = |n: &str| format!("model.layers.{i}.{n}");
        t.push(r.gain(l("input_layernorm.weight"), c));
        t.push(r.weight(l("self_attn.q_proj.weight"), &[q, c])); // (Hq·D, C)
        t.push(r.weight(l("self_attn.k_proj.weight"), &[kv, c])); // (Hkv·D, C)
        t.push(r.weight(l("self_attn.v_proj.weight"), &[kv, c])); // (Hkv·D, C)
        if d.qkv_bias {
            t.push(r.weight(l("self_attn.q_proj.bias"), &[q]));
            t.push(r.weight(l("self_attn.k_proj.bias"), &[kv]));
            t.push(r.weight(l("self_attn.v_proj.bias"), &[kv]));
        }
        t.push(r.weight(l("self_attn.o_proj.weight"), &[c, q])); // (C, Hq·D)
        t.push(r.gain(l("post_attention_layernorm.weight"), c));
        t.push(r.weight(l("mlp.gate_proj.weight"), &[d.inter, c])); // (I, C)
        t.push(r.weight(l("mlp.up_proj.weight"), &[d.inter, c])); // (I, C)
        t.push(r.weight(l("mlp.down_proj.weight"), &[c, d.inter])); // (C, I)
    }
    t.push(r.gain("model.norm.weight", c));
    if !d.tied {
        t.push(r.weight("lm_head.weight", &[d.vocab, c])); // (V, C)
    }
    t
}

/// LlamaForCausalLM: C = 16, I = 40, 2 layers, 4 query heads over 2 KV heads, untied head
/// (stored in f16, the rest in f32).
fn llama() -> (Value, Vec<Tensor>) {
    let d = LlamaDims { vocab: 64, hidden: 16, inter: 40, layers: 2, heads: 4, kv_heads: 2, qkv_bias: false, tied: false };
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": d.hidden / d.heads,
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "initializer_range": 0.02,
        "intermediate_size": d.inter,
        "max_position_embeddings": 32,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": d.heads,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": true,
        "vocab_size": d.vocab
    });
    (config, llama_tensors(&d, 3))
}

/// Qwen2ForCausalLM: C = 32, I = 48, 2 layers, 4 query heads over 1 KV head, q/k/v biases
/// (implied by model_type, not in the config), tied head, rope_theta 1e6; stored as bf16.
fn qwen2() -> (Value, Vec<Tensor>) {
    let d = LlamaDims { vocab: 64, hidden: 32, inter: 48, layers: 2, heads: 4, kv_heads: 1, qkv_bias: true, tied: true };
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 62,
        "eos_token_id": 63,
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "initializer_range": 0.02,
        "intermediate_size": d.inter,
        "max_position_embeddings": 32,
        "max_window_layers": 2,
        "model_type": "qwen2",
        "num_attention_heads": d.heads,
        "num_hidden_layers": d.layers,
        "num_key_value_heads": d.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": null,
        "rope_theta": 1000000.0,
        "sliding_window": null,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": d.vocab
    });
    (config, llama_tensors(&d, 4))
}

/// safetensors bytes for `tensors`, each stored in the dtype `store` gives it.
fn safetensors_bytes(tensors: &[Tensor], store: Store) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(&t.data, store.dtype(&t.name))).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(store.dtype(&t.name), t.shape.clone(), b).map_err(|e| format!("tensor `{}`: {e}", t.name))?;
        views.push((t.name.clone(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

/// Write `dir/config.json` and `dir/model.safetensors`.
fn write_fixture(dir: &Path, config: &Value, tensors: &[Tensor], store: Store) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut text = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
    text.push('\n');
    write("config.json", text.as_bytes())?;
    let st = safetensors_bytes(tensors, store)?;
    write("model.safetensors", &st)?;
    let params: usize = tensors.iter().map(|t| t.data.len()).sum();
    println!("{}: {} tensors, {params} parameters, {} bytes of weights", dir.display(), tensors.len(), st.len());
    Ok(())
}

/// A fixture's maker: its config.json and tensors.
type Fixture = fn() -> (Value, Vec<Tensor>);

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures"));
    let fixtures: [(&str, Fixture, Store); 3] =
        [("tiny-gpt2", gpt2, Store::F32), ("tiny-llama", llama, Store::F32HeadF16), ("tiny-qwen2", qwen2, Store::Bf16)];
    for (name, make, store) in fixtures {
        let (config, tensors) = make();
        if let Err(e) = write_fixture(&out.join(name), &config, &tensors, store) {
            eprintln!("make-fixtures: {e}");
            std::process::exit(1);
        }
    }
}
