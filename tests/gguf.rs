//! GGUF in and out, on small files the tests write themselves: the reader's errors, the block
//! formats' dequantize, random-init Llama (GQA, untied), Qwen2 (q/k/v biases, tied) and GPT-2
//! models written as GGUF and loaded back into the engine with the same logits as the safetensors
//! path, and LoRA adapters in llama.cpp's GGUF layout checked by the test's own GGUF reader
//! (tests/gguf_ref) against llama.cpp's semantics: base + alpha/r · lora_b · lora_a in file layout
//! equals the merged model plumb writes.

mod common;
mod gguf_ref;

use gguf_ref::{dequant, RefGguf};
use plumb::gguf::model::{load_model, save_lora_gguf, save_model_gguf, GgufModelInfo};
use plumb::gguf::writer::GgufWriter;
use plumb::gguf::{dequantize, GgmlType, GgufFile, Value};
use plumb::lora::LoraConfig;
use plumb::model::{GptConfig, LlamaConfig, Model, ModelConfig};
use plumb::Tensor;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plumb-gguf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn llama_cfg(bias: bool, tied: bool) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 97,
        hidden_size: 48,
        intermediate_size: 80,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: Some(2),
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: tied,
        attention_bias: Some(bias),
        hidden_act: "silu".into(),
        rope_scaling: None,
    })
}

fn gpt_cfg() -> ModelConfig {
    ModelConfig::Gpt(GptConfig {
        vocab_size: 97,
        n_positions: 32,
        n_embd: 48,
        n_layer: 2,
        n_head: 4,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
        tie_word_embeddings: true,
    })
}

/// Give every parameter (biases and gains included) random values, so nothing loads trivially.
fn randomize(m: &Model, seed: u64) {
    for (k, (name, shape, _)) in m.params().read_all().unwrap().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        m.params().set(&name, &common::rand_vec(n, seed + k as u64, -0.3, 0.3)).unwrap();
    }
}

#[test]
fn reader_errors_name_offset_key_and_tensor() {
    let dir = scratch("errors");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let err = |p: PathBuf| GgufFile::open(&p).err().expect("must fail").to_string();
    assert!(err(write("magic.gguf", b"GGML\x03\0\0\0")).contains("not a GGUF file"));
    let mut v1 = b"GGUF".to_vec();
    v1.extend(1u32.to_le_bytes());
    v1.extend([0u8; 16]);
    assert!(err(write("v1.gguf", &v1)).contains("version 1"));
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("llama".into()));
    w.add_f32("t", GgmlType::F32, &[2, 32], &[1.0; 64]).unwrap();
    let good = w.to_bytes();
    let trunc = err(write("trunc.gguf", &good[..good.len() - 8]));
    assert!(trunc.contains("tensor `t`") && trunc.contains("past the end"), "{trunc}");
    let cut = err(write("cut.gguf", &good[..62])); // inside the value of the first key
    assert!(cut.contains("byte offset") && cut.contains("general.architecture"), "{cut}");
    // An unknown tensor type names the tensor and the type.
    let mut bad = good.clone();
    let name_at = bad.windows(9).position(|w| w == b"\x01\0\0\0\0\0\0\0t").unwrap() + 9; // name "t"
    let ty_at = name_at + 4 + 16; // n_dims, two dims
    bad[ty_at..ty_at + 4].copy_from_slice(&13u32.to_le_bytes());
    let q5k = err(write("q5k.gguf", &bad));
    assert!(q5k.contains("tensor `t`") && q5k.contains("Q5_K"), "{q5k}");
    // An unsupported key is refused by name.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("llama.attention.sliding_window", Value::U32(4096));
    w.write(&dir.join("swa.gguf")).unwrap();
    let g = GgufFile::open(dir.join("swa.gguf")).unwrap();
    let e = GgufModelInfo::read(&g).unwrap_err().to_string();
    assert!(e.contains("llama.attention.sliding_window"), "{e}");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("mamba".into()));
    w.write(&dir.join("mamba.gguf")).unwrap();
    let e = GgufModelInfo::read(&GgufFile::open(dir.join("mamba.gguf")).unwrap()).unwrap_err().to_string();
    assert!(e.contains("general.architecture") && e.contains("mamba"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn f16b(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

#[test]
fn block_formats_dequantize_as_ggml_defines_them() {
    // Q4_0 / Q4_1 / Q8_0: nibble j and j+16 share byte j.
    let mut q4_0 = f16b(0.5).to_vec();
    q4_0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &q4_0);
    assert_eq!((y[0], y[1], y[16], y[31]), (-4.0, -3.5, 3.5, -4.0));
    let mut q4_1 = f16b(0.25).to_vec();
    q4_1.extend(f16b(-1.0));
    q4_1.extend((0..16u8).map(|j| j | (j << 4)));
    let y = dequantize(GgmlType::Q4_1, &q4_1);
    assert_eq!((y[3], y[19]), (-0.25, -0.25));
    let mut q8 = f16b(2.0).to_vec();
    q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
    assert_eq!(dequantize(GgmlType::Q8_0, &q8)[..3], [-32.0, -30.0, -28.0]);
    // Q4_K: 8 sub-blocks of 32 with 6-bit scales/mins; the last four packed with high bits.
    let mut q4k = f16b(1.0).to_vec();
    q4k.extend(f16b(0.5));
    q4k.extend([1, 2, 3, 4, 5, 6, 7, 8, 0x21, 0x43, 0x65, 0x87]);
    q4k.extend([0x53u8; 128]);
    let y = dequantize(GgmlType::Q4_K, &q4k);
    let want = [0.5, 7.0, 5.5, 16.0, 2.0, 13.0, 12.0, 31.0]; // d·sc·q - dmin·m per sub-block
    for (s, w) in want.iter().enumerate() {
        assert!(y[s * 32..s * 32 + 32].iter().all(|v| v == w), "sub-block {s}: {} vs {w}", y[s * 32]);
    }
    // Q6_K: 6-bit q = 4 low bits (ql) + 2 high bits (qh), minus 32, times d·scale (i8).
    let scales: Vec<i8> = (0..16).map(|i| i as i8 - 5).collect();
    let mut q6k = vec![0x21u8; 128];
    q6k.extend([0xE4u8; 64]);
    q6k.extend(scales.iter().map(|&s| s as u8));
    q6k.extend(f16b(0.5));
    let y = dequantize(GgmlType::Q6_K, &q6k);
    for (e, v) in y.iter().enumerate() {
        let (half, r) = (e / 128, e % 128);
        let (group, l) = (r / 32, r % 32);
        let q = [-31.0, -15.0, 2.0, 18.0][group];
        let want = 0.5 * scales[half * 8 + l / 16 + 2 * group] as f32 * q;
        assert_eq!(*v, want, "element {e}");
    }
}

fn logits(gpu: &plumb::Gpu, m: &Model) -> Vec<f32> {
    let ids = Tensor::from_u32(gpu, &[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], &[2, 6]).unwrap();
    m.forward(None, &ids, None).unwrap().to_f32_vec().unwrap()
}

#[test]
fn models_round_trip_through_gguf_with_the_same_logits() {
    let Some(gpu) = common::gpu() else { return };
    let dir = scratch("models");
    for (name, cfg) in [("llama", llama_cfg(false, false)), ("qwen2", llama_cfg(true, true)), ("gpt2", gpt_cfg())] {
        let m = Model::new(&gpu, &cfg, 7).unwrap();
        randomize(&m, 100);
        m.save(&dir.join(name)).unwrap();
        let st = Model::load(&gpu, &dir.join(name)).unwrap();
        let path = dir.join(format!("{name}.gguf"));
        save_model_gguf(&m, None, GgmlType::F32, &path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let info = GgufModelInfo::read(&g).unwrap();
        assert_eq!(info.arch.name(), name);
        assert_eq!(info.config, cfg, "{name}: config");
        let back = load_model(&gpu, &path).unwrap();
        assert_eq!(back.params().read_all().unwrap(), st.params().read_all().unwrap(), "{name}: weights");
        assert_eq!(logits(&gpu, &back), logits(&gpu, &st), "{name}: logits");
        // F16 matrices: the same logits within f16 rounding of the weights.
        save_model_gguf(&m, None, GgmlType::F16, &path).unwrap();
        let half = logits(&gpu, &load_model(&gpu, &path).unwrap());
        let full = logits(&gpu, &st);
        let err = half.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 2e-2, "{name}: f16 logits differ by {err}");
        // The file holds llama.cpp's layout, read by the test's own parser: names, ne order, q/k
        // rows permuted for `llama` only, GPT-2 Conv1D as (out, in).
        save_model_gguf(&m, None, GgmlType::F32, &path).unwrap();
        let r = RefGguf::open(&path);
        assert_eq!(r.meta["general.architecture"].str(), name);
        let hf = m.params().read_all().unwrap();
        let get = |n: &str| hf.iter().find(|t| t.0 == n).unwrap().2.clone();
        if name == "gpt2" {
            let w = get("transformer.h.0.mlp.c_fc.weight"); // (C, 4C)
            let f = dequant(r.t("blk.0.ffn_up.weight")); // (4C, C)
            assert_eq!(r.t("blk.0.ffn_up.weight").ne, vec![48, 192]);
            assert_eq!(f[5 * 48 + 7], w[7 * 192 + 5] as f64);
        } else {
            let q = get("model.layers.1.self_attn.q_proj.weight"); // (6·8, 48)
            let f = dequant(r.t("blk.1.attn_q.weight"));
            let d = 8;
            for (h, i, j) in [(0, 0, 0), (0, 1, 0), (2, 0, 3), (5, 1, 2)] {
                let (hf_row, gg_row) = (h * d + i * d / 2 + j, h * d + 2 * j + i);
                let want = if name == "llama" { gg_row } else { hf_row };
                assert_eq!(f[want * 48 + 3], q[hf_row * 48 + 3] as f64, "{name} q row {hf_row}");
            }
            assert_eq!(r.tensors.contains_key("output.weight"), name == "llama");
            assert_eq!(r.tensors.contains_key("blk.0.attn_k.bias"), name == "qwen2");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lora_adapter_gguf_matches_llama_cpp_semantics() {
    let Some(gpu) = common::gpu() else { return };
    let dir = scratch("lora");
    for (name, cfg) in [("llama", llama_cfg(false, false)), ("gpt2", gpt_cfg())] {
        let mut m = Model::new(&gpu, &cfg, 3).unwrap();
        randomize(&m, 200);
        let lcfg = LoraConfig { r: 4, alpha: 8.0, target_modules: vec![] };
        m.add_lora(&lcfg, 5).unwrap();
        let lora = m.lora().unwrap();
        for (k, (n, shape, _)) in lora.params.read_all().unwrap().into_iter().enumerate() {
            lora.params.set(&n, &common::rand_vec(shape.iter().product(), 300 + k as u64, -0.2, 0.2)).unwrap();
        }
        let adapter = dir.join(format!("{name}-adapter.gguf"));
        save_lora_gguf(&m, GgmlType::F32, &adapter).unwrap();
        let with_adapter = logits(&gpu, &m);
        let base_path = dir.join(format!("{name}-base.gguf"));
        m.set_adapters_enabled(false);
        save_model_gguf(&m, None, GgmlType::F32, &base_path).unwrap();
        m.set_adapters_enabled(true);
        m.merge_lora().unwrap();
        let merged_path = dir.join(format!("{name}-merged.gguf"));
        save_model_gguf(&m, None, GgmlType::F32, &merged_path).unwrap();
        // The merged model computes what base + adapter computed.
        let merged_logits = logits(&gpu, &load_model(&gpu, &merged_path).unwrap());
        let err = with_adapter.iter().zip(&merged_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{name}: merged logits differ by {err}");
        // llama.cpp's view, by the test's own reader: metadata, names, ne, and in file layout
        // W_merged = W_base + alpha/r · lora_b · lora_a for every adapted weight.
        let (a, b, mg) = (RefGguf::open(&adapter), RefGguf::open(&base_path), RefGguf::open(&merged_path));
        assert_eq!(a.meta["general.type"].str(), "adapter");
        assert_eq!(a.meta["adapter.type"].str(), "lora");
        assert_eq!(a.meta_types["adapter.lora.alpha"], 6, "alpha must be float32");
        assert_eq!(a.meta["adapter.lora.alpha"].float(), 8.0);
        assert_eq!(a.meta["general.architecture"].str(), name);
        let mut pairs = 0;
        for tname in a.order.iter().filter(|n| n.ends_with(".lora_a")) {
            let base = tname.trim_end_matches(".lora_a");
            let (la, lb) = (a.t(tname), a.t(&format!("{base}.lora_b")));
            let w = b.t(base);
            let (n_in, n_out) = (w.ne[0], w.ne[1]);
            assert_eq!((la.ne.clone(), lb.ne.clone()), (vec![n_in, 4], vec![4, n_out]), "{base}");
            let (av, bv, wv, mv) = (dequant(la), dequant(lb), dequant(w), dequant(mg.t(base)));
            for o in (0..n_out).step_by(5) {
                for i in (0..n_in).step_by(7) {
                    let delta: f64 = (0..4).map(|k| bv[o * 4 + k] * av[k * n_in + i]).sum();
                    let want = wv[o * n_in + i] + 2.0 * delta;
                    assert!((mv[o * n_in + i] - want).abs() < 1e-5, "{base} [{o}, {i}]");
                }
            }
            pairs += 1;
        }
        let per_layer = if name == "llama" { 7 } else { 4 };
        assert_eq!(pairs, 2 * per_layer, "{name}: adapted weights");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `plumb export` end to end on a small Llama GGUF with a PEFT adapter: the llama.cpp adapter file
/// equals the library's, and the merged safetensors and GGUF models compute base + adapter.
#[test]
fn plumb_export_writes_lora_gguf_and_merged_models() {
    let Some(gpu) = common::gpu() else { return };
    let dir = scratch("export");
    let mut m = Model::new(&gpu, &llama_cfg(false, true), 9).unwrap();
    randomize(&m, 400);
    let base = dir.join("base.gguf");
    save_model_gguf(&m, None, GgmlType::F32, &base).unwrap();
    m.add_lora(&LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["q_proj".into(), "v_proj".into()] }, 1).unwrap();
    let lora = m.lora().unwrap();
    for (k, (n, shape, _)) in lora.params.read_all().unwrap().into_iter().enumerate() {
        lora.params.set(&n, &common::rand_vec(shape.iter().product(), 500 + k as u64, -0.2, 0.2)).unwrap();
    }
    m.save_lora(&dir.join("adapter")).unwrap();
    let want = logits(&gpu, &m);
    let lib_adapter = dir.join("lib-adapter.gguf");
    save_lora_gguf(&m, GgmlType::F32, &lib_adapter).unwrap();
    let plumb = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().unwrap();
        assert!(out.status.success(), "plumb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let p = |x: &str| dir.join(x).display().to_string();
    let (b, a) = (base.display().to_string(), p("adapter"));
    plumb(&["export", &b, "--adapter", &a, "--out", &p("cli-adapter.gguf"), "--format", "lora-gguf"]);
    assert_eq!(std::fs::read(p("cli-adapter.gguf")).unwrap(), std::fs::read(&lib_adapter).unwrap());
    plumb(&["export", &b, "--adapter", &a, "--out", &p("merged"), "--format", "safetensors"]);
    plumb(&["export", &b, "--adapter", &a, "--out", &p("merged.gguf"), "--format", "gguf-f32"]);
    for merged in [Model::load(&gpu, &dir.join("merged")).unwrap(), Model::load(&gpu, &dir.join("merged.gguf")).unwrap()] {
        let got = logits(&gpu, &merged);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "merged logits differ by {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Tokenizers built from `tokenizer.ggml.*`: the pre-tokenizer follows `tokenizer.ggml.pre`
/// (Qwen2 splits digits one by one, Llama 3 in groups of up to three), `add_bos_token` puts BOS
/// first, control tokens are single special ids, and unknown settings are refused by key.
#[test]
fn gguf_tokenizers_follow_pre_add_bos_and_token_types() {
    use plumb::gguf::tokenizer::tokenizer_from_gguf;
    let dir = scratch("tok");
    // Byte-level alphabet (GPT-2's printable map for ASCII digits and letters is the identity).
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    tokens.extend("0123456789abc".chars().map(String::from));
    tokens.extend(["12", "123", "45"].map(String::from));
    let merges = ["1 2", "12 3", "4 5"];
    let build = |pre: &str, add_bos: bool, model: &str| {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("llama".into()));
        w.set("tokenizer.ggml.model", Value::Str(model.into()));
        w.set("tokenizer.ggml.pre", Value::Str(pre.into()));
        w.set("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::Str(t.clone())).collect()));
        let types = (0..tokens.len()).map(|i| Value::I32(if i < 2 { 3 } else { 1 })).collect();
        w.set("tokenizer.ggml.token_type", Value::Array(types));
        w.set("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| Value::Str(m.to_string())).collect()));
        w.set("tokenizer.ggml.bos_token_id", Value::U32(0));
        w.set("tokenizer.ggml.eos_token_id", Value::U32(1));
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
        let p = dir.join(format!("{pre}-{add_bos}-{model}.gguf"));
        w.write(&p).unwrap();
        tokenizer_from_gguf(&GgufFile::open(&p).unwrap())
    };
    let qwen = build("qwen2", false, "gpt2").unwrap();
    assert_eq!(qwen.encode("12345").unwrap().len(), 5, "qwen2: one digit per pre-token");
    let llama3 = build("llama-bpe", true, "gpt2").unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    assert_eq!(llama3.encode("12345").unwrap(), vec![id("123"), id("45")], "llama-bpe: digits in groups of three");
    assert_eq!(llama3.encode_with_special_tokens("12345").unwrap(), vec![0, id("123"), id("45")], "BOS first");
    assert_eq!(llama3.encode("<s>a</s>").unwrap(), vec![0, id("a"), 1], "control tokens are single ids");
    assert_eq!((llama3.bos_id(), llama3.eos_id()), (Some(0), Some(1)));
    let e = build("tekken", false, "gpt2").unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.pre") && e.contains("tekken"), "{e}");
    let e = build("default", false, "llama").unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
