//! Bring-your-own-model through the `plumb` binary on a small quantized GGUF the test writes (a
//! Llama with Q4_1 block matrices, a Q8_0 tied embedding, a byte-level BPE vocabulary with ChatML
//! specials and a Jinja chat template, as SmolLM2's file is laid out): `sft`, `dpo` and `kto
//! --model FILE.gguf --lora R` train an adapter on the stored-form base (loss moves, the adapter
//! is written and no longer zero, the base file is unchanged; `grpo` runs with the adapters-off
//! reference and writes its adapter), `generate --adapter` samples
//! what the library computes with that adapter, `info --model FILE.gguf --lora R` plans the stored
//! bytes, and `export --format gguf` writes the merged model back in the base's own types (Q8_0,
//! Q4_0, Q4_1, Q4_K, Q6_K), read back by plumb and by the test's own GGUF reader within each
//! type's rounding, with untouched tensors copied byte for byte.

mod common;
mod gguf_ref;

use gguf_ref::{dequant, RefGguf};
use plumb::gguf::model::{load_model, load_model_stored, save_model_gguf_typed};
use plumb::gguf::writer::GgufWriter;
use plumb::gguf::{GgmlType, GgufFile, Value};
use plumb::lora::LoraConfig;
use plumb::model::{LlamaConfig, Model, ModelConfig};
use plumb::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plumb-cli-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `plumb ARGS`, which must succeed; returns stdout + stderr.
fn plumb(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().expect("run plumb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "plumb {} failed:\n{text}", args.join(" "));
    text
}

fn llama(vocab: usize, hidden: usize, inter: usize, layers: usize) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: true,
        attention_bias: Some(false),
        hidden_act: "silu".into(),
        rope_scaling: None,
    })
}

/// GPT-2's byte -> printable character map (the BPE alphabet of byte-level vocabularies).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap();
    }
    out
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A GGUF holding only a tokenizer as SmolLM2's is stored: specials first, the 256 byte tokens,
/// a few merges, ChatML's template; returns its path and vocabulary size.
fn tokenizer_gguf(dir: &Path) -> (PathBuf, usize) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_chars().into_iter().map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"];
    tokens.extend(["Ġt", "he", "Ġthe", "in", "Ġa"].map(String::from));
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("tokenizer.ggml.model", Value::Str("gpt2".into()));
    w.set("tokenizer.ggml.pre", Value::Str("smollm".into()));
    w.set("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::Str(t.clone())).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array((0..tokens.len()).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect()));
    w.set("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| Value::Str(m.to_string())).collect()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    w.set("tokenizer.ggml.padding_token_id", Value::U32(2));
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    w.set("tokenizer.chat_template", Value::Str(CHATML.into()));
    let p = dir.join("tokenizer.gguf");
    w.write(&p).unwrap();
    (p, tokens.len())
}

/// Matrices in `matrix`, the embedding in `embed`, vectors F32.
fn types(matrix: GgmlType, embed: GgmlType) -> impl Fn(&str, &[usize]) -> GgmlType {
    move |name, shape| match (name, shape.len()) {
        ("token_embd.weight", _) => embed,
        (_, 2) => matrix,
        _ => GgmlType::F32,
    }
}

/// Random weights of a moderate scale (so a Q4 rounding does not dominate the logits).
fn randomize(m: &Model, seed: u64) {
    for (k, (name, shape, _)) in m.params().read_all().unwrap().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let v = if shape.len() == 1 { common::rand_vec(n, seed + k as u64, 0.8, 1.2) } else { common::rand_vec(n, seed + k as u64, -0.15, 0.15) };
        m.params().set(&name, &v).unwrap();
    }
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn chat(role: &str, text: &str) -> serde_json::Value {
    serde_json::json!([{"role": role, "content": text}])
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The adapter in `dir` exists in PEFT's layout and has left its zero-initialised B.
fn assert_trained_adapter(dir: &Path) {
    assert!(dir.join("adapter_config.json").is_file(), "{}: no adapter_config.json", dir.display());
    let f = plumb::weights::WeightFile::open(dir.join("adapter_model.safetensors")).unwrap();
    let b_norm: f32 = f.names().iter().filter(|n| n.contains("lora_B")).map(|n| f.get_f32(n, &f.shape(n).unwrap()).unwrap().iter().map(|v| v * v).sum::<f32>()).sum();
    assert!(b_norm > 0.0, "{}: lora_B is still zero: the adapter did not train", dir.display());
}

#[test]
fn train_generate_and_plan_on_a_quantized_gguf_base() {
    let Some(gpu) = common::gpu() else { return };
    let dir = scratch("train");
    let (tok_path, vocab) = tokenizer_gguf(&dir);
    let m = Model::new(&gpu, &llama(vocab, 64, 128, 2), 11).unwrap();
    randomize(&m, 40);
    let base = dir.join("base.gguf");
    save_model_gguf_typed(&m, Some(&GgufFile::open(&tok_path).unwrap()), types(GgmlType::Q4_1, GgmlType::Q8_0), &base).unwrap();
    let base_bytes = std::fs::read(&base).unwrap();
    let b = base.display().to_string();
    let p = |s: &str| dir.join(s).display().to_string();

    // chat-form data prepared with the model's own tokenizer and template
    let q = "Write one sentence.";
    let (good, bad) = (["the best film", "a fine tale", "the acting is great"], ["the worst film", "a dull mess", "the plot is bad"]);
    let prefs: Vec<_> = (0..6).map(|i| serde_json::json!({"prompt": chat("user", q), "chosen": chat("assistant", good[i % 3]), "rejected": chat("assistant", bad[i % 3])})).collect();
    write_jsonl(&dir.join("prefs.jsonl"), &prefs);
    let sft: Vec<_> = (0..6).map(|i| serde_json::json!({"prompt": chat("user", q), "completion": chat("assistant", good[i % 3])})).collect();
    write_jsonl(&dir.join("sft.jsonl"), &sft);
    let kto: Vec<_> = (0..6).map(|i| serde_json::json!({"prompt": chat("user", q), "completion": chat("assistant", if i % 2 == 0 { good[i % 3] } else { bad[i % 3] }), "label": i % 2 == 0})).collect();
    write_jsonl(&dir.join("kto.jsonl"), &kto);
    write_jsonl(&dir.join("prompts.jsonl"), &[serde_json::json!({"prompt": chat("user", q)}), serde_json::json!({"prompt": chat("user", "Say hi.")})]);
    for name in ["prefs", "sft", "kto", "prompts"] {
        plumb(&["data", "prepare", &p(&format!("{name}.jsonl")), &p(&format!("{name}.bin")), "--tokenizer", &b]);
    }

    let lora = ["--lora", "4", "--lora-alpha", "8"];
    let out = plumb(&[&["sft", "--model", &b, "--data", &p("sft.bin"), "--steps", "6", "--batch-size", "2", "--seq-len", "96", "--lr", "3e-2", "--warmup", "0", "--eval-every", "0", "--samples", "0", "--out", &p("sft")][..], &lora].concat());
    assert!(out.contains("in stored form"), "sft did not load the stored-form base:\n{out}");
    let losses: Vec<f64> = metrics(&dir.join("sft")).iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert!(losses.len() == 6 && losses[5] < losses[0], "sft loss did not fall: {losses:?}\n{out}");
    assert_trained_adapter(&dir.join("sft/adapter"));

    let tiny = ["--max-len", "96", "--seed", "1"];
    for (cmd, extra, key) in [
        ("dpo", vec!["--data", "prefs.bin", "--steps", "4", "--batch-size", "2", "--lr", "5e-2"], "rewards/margins"),
        ("kto", vec!["--data", "kto.bin", "--steps", "4", "--batch-size", "2", "--lr", "5e-2"], "loss"),
        ("grpo", vec!["--data", "prompts.bin", "--steps", "2", "--batch-size", "1", "--num-generations", "2", "--max-new-tokens", "4", "--samples", "1", "--lr", "5e-2"], "loss"),
    ] {
        let extra: Vec<String> = extra.iter().map(|a| if a.ends_with(".bin") { p(a) } else { a.to_string() }).collect();
        let mut args: Vec<&str> = vec![cmd, "--model", &b, "--out"];
        let o = p(cmd);
        args.push(&o);
        args.extend(extra.iter().map(String::as_str));
        args.extend(lora);
        args.extend(tiny);
        let text = plumb(&args);
        assert!(text.contains("in stored form") && text.contains("policy without adapters"), "{cmd}: not a stored base with the adapters-off reference:\n{text}");
        let recs = metrics(&dir.join(cmd));
        let v: Vec<f64> = recs.iter().filter_map(|r| r[key].as_f64()).collect();
        assert!(v.len() >= 2 && v.iter().all(|x| x.is_finite()), "{cmd}: `{key}` not logged: {recs:?}");
        if cmd == "grpo" {
            // a random model's completions hold no lexicon words: every VADER reward is 0, so
            // every advantage is 0 and the adapter has nothing to learn; the run and its
            // adapter file are what is checked here
            assert!(dir.join("grpo/adapter/adapter_model.safetensors").is_file(), "grpo: no adapter written");
        } else {
            assert!(v.first() != v.last(), "{cmd}: `{key}` did not move: {v:?}");
            assert_trained_adapter(&dir.join(cmd).join("adapter"));
        }
    }
    assert_eq!(std::fs::read(&base).unwrap(), base_bytes, "training changed the base file");

    // generate: the adapter the CLI applies is the one the library applies (greedy tokens)
    let mut lib = load_model_stored(&gpu, &base).unwrap();
    lib.load_lora(&dir.join("dpo/adapter")).unwrap();
    let tok = plumb::gguf::tokenizer::tokenizer_from_gguf(&GgufFile::open(&base).unwrap()).unwrap();
    let tmpl = plumb::chat_template::ChatTemplate::for_tokenizer(&tok).unwrap();
    assert!(tmpl.is_model_template());
    let prompt = tmpl.render(&[plumb::data::chat::Message::new("user", q)], true).unwrap();
    let cfg = plumb::generate::GenerateConfig {
        max_new_tokens: 6,
        sampling: plumb::ops::sample::SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0 },
        stop_ids: vec![2],
        seed: 0,
        pad_id: 2,
    };
    let ids = plumb::generate::generate(&lib, &[tok.encode(&prompt).unwrap()], &cfg).unwrap().remove(0);
    let body: Vec<u32> = ids.into_iter().filter(|&t| t != 2).collect();
    let want = format!("{prompt}{}", tok.decode(&body).unwrap());
    let gen = |adapter: Option<&str>| {
        let mut args = vec!["generate", b.as_str(), "--chat", q, "--temperature", "0", "--max-new-tokens", "6"];
        args.extend(adapter.map(|a| ["--adapter", a]).into_iter().flatten());
        let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(&args).output().unwrap();
        assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let adapter = p("dpo/adapter");
    assert_eq!(gen(Some(&adapter)).trim_end(), want.trim_end(), "generate --adapter differs from the library with that adapter");

    // info: the plan counts the stored bytes, not an f32 copy
    let info = plumb(&["info", "--model", &b, "--lora", "4", "--batch-size", "2", "--seq-len", "32"]);
    assert!(info.contains("frozen matrices (") && info.contains("Q4_1") && info.contains("Q8_0") && info.contains("LoRA adapter r=4"), "{info}");
    std::fs::remove_dir_all(&dir).ok();
}

fn logits(gpu: &plumb::Gpu, m: &Model) -> Vec<f32> {
    let ids = Tensor::from_u32(gpu, &[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], &[2, 6]).unwrap();
    m.forward(None, &ids, None).unwrap().to_f32_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `plumb export --format gguf` of a quantized base + adapter: every tensor in the base's type,
/// untouched ones byte for byte, merged ones within one quantization step of the merged f32
/// weights (by the test's reader), and plumb's logits of the file near the merged model's.
#[test]
fn export_writes_the_merged_model_in_the_bases_quantization() {
    let Some(gpu) = common::gpu() else { return };
    let dir = scratch("export");
    let cfg = llama(97, 256, 256, 1);
    for (ty, step) in [(GgmlType::Q8_0, 1.0 / 127.0), (GgmlType::Q4_0, 1.0 / 7.0), (GgmlType::Q4_1, 1.0 / 15.0), (GgmlType::Q4_K, 2.0 / 15.0), (GgmlType::Q6_K, 1.0 / 31.0)] {
        let name = ty.name();
        let m = Model::new(&gpu, &cfg, 5).unwrap();
        randomize(&m, 70);
        let base = dir.join(format!("base-{name}.gguf"));
        save_model_gguf_typed(&m, None, types(ty, GgmlType::Q8_0), &base).unwrap();
        // an adapter on q and v trained to something: random A and B
        let mut with = load_model(&gpu, &base).unwrap();
        with.add_lora(&LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()] }, 1).unwrap();
        let lora = with.lora().unwrap();
        for (k, (n, shape, _)) in lora.params.read_all().unwrap().into_iter().enumerate() {
            lora.params.set(&n, &common::rand_vec(shape.iter().product(), 900 + k as u64, -0.1, 0.1)).unwrap();
        }
        let adapter = dir.join(format!("adapter-{name}"));
        with.save_lora(&adapter).unwrap();
        let want_logits = logits(&gpu, &with);
        with.merge_lora().unwrap();
        let merged_f32: Vec<(String, Vec<usize>, Vec<f32>)> = with.params().read_all().unwrap();
        let out = dir.join(format!("merged-{name}.gguf"));
        plumb(&["export", &base.display().to_string(), "--adapter", &adapter.display().to_string(), "--out", &out.display().to_string(), "--format", "gguf"]);

        let (b, o) = (RefGguf::open(&base), RefGguf::open(&out));
        assert_eq!(b.order.len(), o.order.len(), "{name}: tensor count");
        for t in &b.order {
            let (bt, ot) = (b.t(t), o.t(t));
            assert_eq!((bt.ty, &bt.ne), (ot.ty, &ot.ne), "{name}: {t} type / shape");
            let adapted = t.contains("attn_q") || t.contains("attn_v");
            if !adapted {
                assert!(bt.data == ot.data, "{name}: {t} untouched by the adapter but not copied byte for byte");
                continue;
            }
            // merged weights in HF layout vs the file's values: attn_v is not permuted, so
            // compare it element by element; attn_q through plumb's reader below
            // (the test's reader decodes the 32-element block types; K-quants are checked by
            // type, size and logits)
            if t.contains("attn_v") && bt.ty != 12 && bt.ty != 14 {
                let hf = t.replace("blk.", "model.layers.").replace(".attn_v.weight", ".self_attn.v_proj.weight");
                let w = &merged_f32.iter().find(|x| x.0 == hf).unwrap().2;
                let amax = w.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let got = dequant(ot);
                let err = got.iter().zip(w).map(|(g, x)| (g - *x as f64).abs()).fold(0.0, f64::max);
                assert!(err <= step * amax + 1e-3, "{name}: {t} off by {err} (amax {amax})");
            }
            assert!(bt.data != ot.data, "{name}: {t} did not take the adapter");
        }
        // plumb reads its export back (f32 and stored form) near the merged model's logits
        let back = logits(&gpu, &load_model(&gpu, &out).unwrap());
        let stored = logits(&gpu, &load_model_stored(&gpu, &out).unwrap());
        assert!(max_diff(&back, &stored) < 1e-3, "{name}: stored-form and f32 reads of the export differ");
        let scale = want_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = max_diff(&back, &want_logits);
        assert!(err < 0.25 * scale.max(1.0), "{name}: export logits off by {err} (scale {scale})");
        eprintln!("{name}: export logits within {err:.4} of base + adapter (largest logit {scale:.3})");
    }
    std::fs::remove_dir_all(&dir).ok();
}
