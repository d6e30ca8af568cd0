//! Hugging Face checkpoints from `models/fixtures/` (written by `cargo run --bin make-fixtures`,
//! see its README) load into plumb, and plumb's logits equal an independent f64 forward pass
//! written here, from the safetensors file alone: GPT-2 (Conv1D layout, gelu_new, tied head),
//! Llama (GQA, RoPE, SwiGLU, untied f16 head) and Qwen2 (q/k/v bias, tied head, all bf16).
//! Broken checkpoints are errors that name the file and the tensor; a save/load round trip is
//! bit-exact.
mod common;
use common::f64_ops::*;

use plumb::model::Model;
use plumb::Tensor;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 3] = ["tiny-gpt2", "tiny-llama", "tiny-qwen2"];
/// The fixed batch: B = 2 rows of T = 7 ids, below every fixture's vocabulary of 64.
const B: usize = 2;
const T: usize = 7;
const IDS: [u32; B * T] = [3, 17, 42, 0, 63, 8, 8, 50, 1, 29, 33, 12, 60, 5];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures").join(name)
}

// ---------------------------------------------------------------------------------------------
// Reading the checkpoint without plumb: config.json with serde_json, tensors with safetensors.
// ---------------------------------------------------------------------------------------------

/// Every tensor of a safetensors file widened to f64, by name: (shape, values).
struct Weights(HashMap<String, (Vec<usize>, Vec<f64>)>);

impl Weights {
    fn read(path: &Path) -> Weights {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut map = HashMap::new();
        for (name, t) in st.tensors() {
            let d = t.data();
            let values: Vec<f64> = match t.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
                Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
                Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
                other => panic!("{name}: unexpected dtype {other:?} in a fixture"),
            };
            map.insert(name, (t.shape().to_vec(), values));
        }
        Weights(map)
    }

    /// Tensor `name`, checking its shape.
    fn get(&self, name: &str, shape: &[usize]) -> &[f64] {
        let (s, v) = self.0.get(name).unwrap_or_else(|| panic!("fixture has no tensor `{name}`"));
        assert_eq!(s, shape, "shape of `{name}`");
        v
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn usize_field(cfg: &serde_json::Value, key: &str) -> usize {
    cfg[key].as_u64().unwrap_or_else(|| panic!("config has no `{key}`")) as usize
}

// ---------------------------------------------------------------------------------------------
// The two architectures, as Hugging Face's modeling_gpt2.py and modeling_llama.py compute them.
// ---------------------------------------------------------------------------------------------

/// GPT2LMHeadModel: logits (B·T, V).
fn gpt2_forward(cfg: &serde_json::Value, w: &Weights, ids: &[u32], t: usize) -> Vec<f64> {
    let (v, p, c, nh) = (usize_field(cfg, "vocab_size"), usize_field(cfg, "n_positions"), usize_field(cfg, "n_embd"), usize_field(cfg, "n_head"));
    let eps = cfg["layer_norm_epsilon"].as_f64().unwrap();
    assert_eq!(cfg["activation_function"], "gelu_new");
    let wte = w.get("transformer.wte.weight", &[v, c]); // (V, C)
    let wpe = w.get("transformer.wpe.weight", &[p, c]); // (P, C)
    let mut x = embed(wte, ids, c); // (B·T, C)
    for (r, row) in x.chunks_mut(c).enumerate() {
        add_into(row, &wpe[(r % t) * c..][..c]);
    }
    for l in 0..usize_field(cfg, "n_layer") {
        let g = |n: &str, shape: &[usize]| w.get(&format!("transformer.h.{l}.{n}"), shape);
        // x = x + c_proj(attn(c_attn(ln_1(x))))
        let h = layer_norm(&x, g("ln_1.weight", &[c]), g("ln_1.bias", &[c]), eps);
        let qkv = conv1d(&h, g("attn.c_attn.weight", &[c, 3 * c]), Some(g("attn.c_attn.bias", &[3 * c])), c, 3 * c); // (B·T, 3C)
        let part = |k: usize| -> Vec<f64> { qkv.chunks(3 * c).flat_map(|r| r[k * c..(k + 1) * c].to_vec()).collect() };
        let a = causal_attention(&part(0), &part(1), &part(2), t, nh, nh, c / nh); // (B·T, C)
        add_into(&mut x, &conv1d(&a, g("attn.c_proj.weight", &[c, c]), Some(g("attn.c_proj.bias", &[c])), c, c));
        // x = x + c_proj(gelu_new(c_fc(ln_2(x))))
        let h = layer_norm(&x, g("ln_2.weight", &[c]), g("ln_2.bias", &[c]), eps);
        let m: Vec<f64> = conv1d(&h, g("mlp.c_fc.weight", &[c, 4 * c]), Some(g("mlp.c_fc.bias", &[4 * c])), c, 4 * c).into_iter().map(gelu_new).collect();
        add_into(&mut x, &conv1d(&m, g("mlp.c_proj.weight", &[4 * c, c]), Some(g("mlp.c_proj.bias", &[c])), 4 * c, c));
    }
    let x = layer_norm(&x, w.get("transformer.ln_f.weight", &[c]), w.get("transformer.ln_f.bias", &[c]), eps);
    assert!(!w.has("lm_head.weight"), "GPT-2's head is tied: the file should not hold lm_head.weight");
    linear(&x, wte, None, c, v) // ln_f(x) @ wteᵀ
}

/// LlamaForCausalLM / Qwen2ForCausalLM: logits (B·T, V).
fn llama_forward(cfg: &serde_json::Value, w: &Weights, ids: &[u32], t: usize) -> Vec<f64> {
    let (v, c, im) = (usize_field(cfg, "vocab_size"), usize_field(cfg, "hidden_size"), usize_field(cfg, "intermediate_size"));
    let (hq, hkv) = (usize_field(cfg, "num_attention_heads"), usize_field(cfg, "num_key_value_heads"));
    let d = c / hq;
    let (eps, theta) = (cfg["rms_norm_eps"].as_f64().unwrap(), cfg["rope_theta"].as_f64().unwrap());
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap();
    let qkv_bias = cfg["model_type"] == "qwen2" || cfg["attention_bias"] == true;
    let embed_w = w.get("model.embed_tokens.weight", &[v, c]); // (V, C)
    let mut x = embed(embed_w, ids, c); // (B·T, C)
    for l in 0..usize_field(cfg, "num_hidden_layers") {
        let g = |n: &str, shape: &[usize]| w.get(&format!("model.layers.{l}.{n}"), shape);
        let bias = |n: &str, len: usize| qkv_bias.then(|| g(n, &[len]));
        // x = x + o_proj(attn(rope(q), rope(k), v)) on h = rms_norm(x)
        let h = rms_norm(&x, g("input_layernorm.weight", &[c]), eps);
        let mut q = linear(&h, g("self_attn.q_proj.weight", &[hq * d, c]), bias("self_attn.q_proj.bias", hq * d), c, hq * d); // (B, T, Hq, D)
        let mut k = linear(&h, g("self_attn.k_proj.weight", &[hkv * d, c]), bias("self_attn.k_proj.bias", hkv * d), c, hkv * d); // (B, T, Hkv, D)
        let vv = linear(&h, g("self_attn.v_proj.weight", &[hkv * d, c]), bias("self_attn.v_proj.bias", hkv * d), c, hkv * d); // (B, T, Hkv, D)
        rope(&mut q, t, hq, d, theta);
        rope(&mut k, t, hkv, d, theta);
        let a = causal_attention(&q, &k, &vv, t, hq, hkv, d); // (B·T, Hq·D)
        add_into(&mut x, &linear(&a, g("self_attn.o_proj.weight", &[c, hq * d]), None, hq * d, c));
        // x = x + down(silu(gate(h)) * up(h)) on h = rms_norm(x)
        let h = rms_norm(&x, g("post_attention_layernorm.weight", &[c]), eps);
        let gate = linear(&h, g("mlp.gate_proj.weight", &[im, c]), None, c, im);
        let up = linear(&h, g("mlp.up_proj.weight", &[im, c]), None, c, im);
        let m: Vec<f64> = gate.iter().zip(&up).map(|(&a, &b)| silu(a) * b).collect(); // (B·T, I)
        add_into(&mut x, &linear(&m, g("mlp.down_proj.weight", &[c, im]), None, im, c));
    }
    let x = rms_norm(&x, w.get("model.norm.weight", &[c]), eps);
    let head = if tied { embed_w } else { w.get("lm_head.weight", &[v, c]) };
    assert_eq!(tied, !w.has("lm_head.weight"), "lm_head.weight is in the file exactly when the head is untied");
    linear(&x, head, None, c, v)
}

/// The reference logits (B·T, V) of a fixture directory.
fn reference_logits(dir: &Path, ids: &[u32], t: usize) -> Vec<f64> {
    let cfg = read_config(dir);
    let w = Weights::read(&dir.join("model.safetensors"));
    match cfg["model_type"].as_str() {
        Some("gpt2") => gpt2_forward(&cfg, &w, ids, t),
        Some("llama") | Some("qwen2") => llama_forward(&cfg, &w, ids, t),
        other => panic!("{}: model_type {other:?}", dir.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// Each fixture loads, and plumb's logits (B·T, V) equal the f64 forward pass within 1e-4 of
/// the largest |logit|.
#[test]
fn fixture_logits_equal_f64_reference() {
    let Some(gpu) = common::gpu() else { return };
    for name in FIXTURES {
        let dir = fixture(name);
        let model = Model::load(&gpu, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = Tensor::from_u32(&gpu, &IDS, &[B, T]).unwrap();
        let got = model.forward(None, &ids, None).unwrap().to_f32_vec().unwrap();
        let want = reference_logits(&dir, &IDS, T);
        assert_eq!(got.len(), B * T * model.vocab_size(), "{name}: logits shape");
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0.0f64, |m, (&g, w)| m.max((g as f64 - w).abs()));
        println!("{name}: max |logit| {scale:.3}, max |plumb - f64| {err:.2e} ({:.2e} relative)", err / scale);
        // Random, non-trivial weights give logits of order 1; a wrong layout would be off by that much.
        assert!(scale > 0.5, "{name}: logits suspiciously small ({scale})");
        assert!(err <= 1e-4 * scale, "{name}: plumb differs from the f64 reference by {err:.3e} (max |logit| {scale:.3})");
    }
}

/// The parameters plumb loads are the file's values widened to f32, bit for bit (f16 and bf16
/// included), and a save/load round trip changes no bit and no config field.
#[test]
fn fixture_save_load_round_trip_is_bit_exact() {
    let Some(gpu) = common::gpu() else { return };
    for name in FIXTURES {
        let dir = fixture(name);
        let model = Model::load(&gpu, &dir).unwrap();
        let file = Weights::read(&dir.join("model.safetensors"));
        for (pname, shape, values) in model.params().read_all().unwrap() {
            let want: Vec<f32> = file.get(&pname, &shape).iter().map(|&x| x as f32).collect();
            assert_eq!(values, want, "{name}: `{pname}` as loaded differs from the file");
        }
        let out = scratch(&format!("roundtrip-{name}"));
        model.save(&out).unwrap();
        let back = Model::load(&gpu, &out).unwrap();
        assert_eq!(model.config(), back.config(), "{name}: config after a round trip");
        assert_eq!(model.params().read_all().unwrap(), back.params().read_all().unwrap(), "{name}: weights after a round trip");
        std::fs::remove_dir_all(&out).ok();
    }
}

/// A model.safetensors cut short is an error that names the file, for every fixture.
#[test]
fn truncated_weights_are_an_error_naming_the_file() {
    let Some(gpu) = common::gpu() else { return };
    for name in FIXTURES {
        let dir = copy_fixture(name, "truncated");
        let st = dir.join("model.safetensors");
        let len = std::fs::metadata(&st).unwrap().len();
        for keep in [len - 1, len / 2, 6] {
            std::fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(keep).unwrap();
            let msg = match Model::load(&gpu, &dir) {
                Ok(_) => panic!("{name}: a model.safetensors cut to {keep} of {len} bytes loaded"),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains("model.safetensors"), "{name}, {keep} bytes: error does not name the file: {msg}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A config whose hidden size disagrees with the tensors is an error naming the tensor and file.
#[test]
fn config_hidden_size_mismatch_is_an_error_naming_the_tensor() {
    let Some(gpu) = common::gpu() else { return };
    for (name, key, first_tensor) in [
        ("tiny-gpt2", "n_embd", "transformer.wte.weight"),
        ("tiny-llama", "hidden_size", "model.embed_tokens.weight"),
        ("tiny-qwen2", "hidden_size", "model.embed_tokens.weight"),
    ] {
        let dir = copy_fixture(name, "badconfig");
        let mut cfg = read_config(&dir);
        cfg[key] = (2 * usize_field(&cfg, key)).into(); // still a multiple of the head count
        if cfg.get("head_dim").is_some() {
            cfg["head_dim"] = (2 * usize_field(&cfg, "head_dim")).into(); // a consistent config
        }
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let msg = match Model::load(&gpu, &dir) {
            Ok(_) => panic!("{name}: loaded with {key} doubled"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(first_tensor) && msg.contains("model.safetensors"), "{name}: error should name `{first_tensor}` and the file: {msg}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Hugging Face config fields plumb does not implement are errors naming the field, not
/// silently ignored (the checkpoint would load and compute wrong logits).
#[test]
fn unsupported_config_fields_are_errors_naming_the_field() {
    for (field, value) in [
        ("mlp_bias", serde_json::json!(true)),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0})),
        ("head_dim", serde_json::json!(8)),
    ] {
        let mut cfg = read_config(&fixture("tiny-llama"));
        cfg[field] = value;
        let origin = Path::new("config.json");
        match plumb::model::ModelConfig::from_json(&cfg.to_string(), origin) {
            Ok(_) => panic!("a config with {field} = {} parsed", cfg[field]),
            Err(e) => assert!(e.to_string().contains(field), "error should name `{field}`: {e}"),
        }
    }
}

/// A fresh, empty directory under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plumb-hf-fixtures-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A scratch copy of a fixture's config.json and model.safetensors.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dir = scratch(&format!("{tag}-{name}"));
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
    }
    dir
}
