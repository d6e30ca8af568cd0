//! Fuzzing in the normal test run: thousands of seeded mutations of a valid input per parser
//! (dataset file, JSONL importer, config.json, safetensors, tokenizer.json, GGUF model file with
//! its metadata, tokenizer and block-quantized tensors), each call wrapped in
//! `catch_unwind`. Every input must either load or be rejected with a clean error that names the
//! file; zero panics. The mutator (bit flips, interesting bytes, cuts, insertions, duplicated
//! chunks, and for JSON: values swapped for hostile ones, keys dropped) is seeded, so a failure
//! reproduces with the printed seed. CPU only: no GPU is opened.

use plumb::data::{DatasetKind, DatasetWriter, PrepareOptions};
use plumb::model::ModelConfig;
use plumb::tokenizer::Tokenizer;
use plumb::weights::{save_f32, WeightFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A fresh scratch directory for one target.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plumb-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One byte-level mutation of `b`.
fn mutate_bytes(r: &mut ChaCha8Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(r.random());
        return;
    }
    let i = r.random_range(0..b.len());
    match r.random_range(0..7) {
        0 => b[i] ^= 1 << r.random_range(0..8),
        1 => b[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'9'][r.random_range(0..7)],
        2 => b.truncate(i),
        3 => {
            let n = r.random_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| r.random()).collect();
            b.splice(i..i, bytes);
        }
        4 => {
            let end = (i + r.random_range(1..64)).min(b.len());
            let chunk = b[i..end].to_vec();
            let at = r.random_range(0..b.len());
            b.splice(at..at, chunk);
        }
        5 => {
            let end = (i + r.random_range(1..32)).min(b.len());
            b.drain(i..end);
        }
        _ => {
            // a little-endian u32/u64 field set to an extreme value
            let v: u64 = [0, 1, u32::MAX as u64, u64::MAX, 1 << 40, 255][r.random_range(0..6)];
            let n = if r.random() { 4 } else { 8 };
            for k in 0..n.min(b.len() - i) {
                b[i + k] = (v >> (8 * k)) as u8;
            }
        }
    }
}

/// A hostile JSON value.
fn hostile(r: &mut ChaCha8Rng) -> serde_json::Value {
    use serde_json::json;
    let all = [json!(0), json!(-1), json!(1), json!(1e9), json!(1000000000u64), json!(u64::MAX), json!(1.5), json!(-0.0), json!(1e300),
        json!("x"), json!(""), json!(null), json!(true), json!([]), json!({}), json!([1, 2]), json!("gelu"), json!(4)];
    all[r.random_range(0..all.len())].clone()
}

/// Replace a random leaf of `v` with a hostile value, or drop a random key.
fn mutate_json(r: &mut ChaCha8Rng, v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[r.random_range(0..keys.len())];
            match r.random_range(0..4) {
                0 => {
                    m.remove(k);
                }
                1 => {
                    m.insert(k.clone(), hostile(r));
                }
                _ => mutate_json(r, m.get_mut(k).unwrap()),
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            let i = r.random_range(0..a.len());
            if r.random_range(0..3) == 0 {
                a.remove(i);
            } else {
                mutate_json(r, &mut a[i]);
            }
        }
        leaf => *leaf = hostile(r),
    }
}

/// `n` mutants of `seed_input`: half structured (JSON) when `json` is set, all others bytes;
/// 1 to 4 mutations each.
fn mutants(seed: u64, seed_input: &[u8], json: bool, n: usize) -> Vec<Vec<u8>> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let parsed: Option<serde_json::Value> = if json { serde_json::from_slice(seed_input).ok() } else { None };
    (0..n)
        .map(|k| {
            let rounds = r.random_range(1..5);
            match (&parsed, k % 2) {
                (Some(v), 0) => {
                    let mut v = v.clone();
                    for _ in 0..rounds {
                        mutate_json(&mut r, &mut v);
                    }
                    serde_json::to_vec(&v).unwrap()
                }
                _ => {
                    let mut b = seed_input.to_vec();
                    for _ in 0..rounds {
                        mutate_bytes(&mut r, &mut b);
                    }
                    b
                }
            }
        })
        .collect()
}

/// Run `f` on every mutant; no panic, and every error names `file`. Returns (loaded, rejected).
fn run_target(name: &str, inputs: &[Vec<u8>], file: &Path, mut f: impl FnMut(&Path) -> plumb::Result<()>) -> (usize, usize) {
    let (mut ok, mut rejected) = (0, 0);
    let name_of_file = file.file_name().unwrap().to_string_lossy().into_owned();
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(file, input).unwrap();
        match catch_unwind(AssertUnwindSafe(|| f(file))) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(&name_of_file) && msg.len() > name_of_file.len() + 4, "{name} mutant {i}: error does not name the file: {msg}");
                rejected += 1;
            }
            Err(_) => panic!("{name}: mutant {i} panicked (input: {:?})", String::from_utf8_lossy(input)),
        }
    }
    println!("{name}: {} mutants, {ok} loaded, {rejected} rejected cleanly", inputs.len());
    (ok, rejected)
}

#[test]
fn fuzz_dataset_reader() {
    let dir = scratch("dataset");
    let good = dir.join("good.bin");
    let mut w = DatasetWriter::create(&good, DatasetKind::Preference, 300, Some(2)).unwrap();
    w.reserve_reference_logps().unwrap();
    for i in 0..6u32 {
        w.push_row(&[&[1, 2, i], &[3, 299 - i], &[4, 5, 6, i]]).unwrap();
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let inputs = mutants(1, &bytes, false, 4000);
    let (ok, rejected) = run_target("dataset", &inputs, &dir.join("mutant.bin"), |p| {
        let d = plumb::data::Dataset::open(p)?;
        d.verify_tokens()?;
        // everything a trainer reads, through the safe accessors
        for r in 0..d.n_rows() {
            for s in 0..d.kind().segments() {
                let _ = d.segment(r, s).map(|t| t.to_vec());
            }
            let _ = d.reference_logps(r);
        }
        let _ = d.max_token_id();
        Ok(())
    });
    assert!(rejected > 3000 && ok > 0, "the mutator must reach both outcomes: {ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_jsonl_importer() {
    let dir = scratch("jsonl");
    let good = concat!(
        "{\"prompt\": \"The film\", \"chosen\": \" was good.\", \"rejected\": \" was bad.\"}\n",
        "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": \"hello\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"no\"}]}\n",
        "{\"text\": \"plain text row\"}\n",
        "{\"prompt\": \"p\", \"completion\": \"c\"}\n"
    );
    let tok = Tokenizer::byte_level();
    let out = dir.join("out.bin");
    let opts = PrepareOptions { max_len: Some(24), ..Default::default() };
    // line by line too, so each format is mutated on its own
    let mut inputs = mutants(2, good.as_bytes(), false, 1000);
    for (k, line) in good.lines().enumerate() {
        inputs.extend(mutants(20 + k as u64, line.as_bytes(), true, 400));
    }
    let (ok, rejected) = run_target("jsonl", &inputs, &dir.join("mutant.jsonl"), |p| {
        plumb::data::prepare(p, &out, &tok, &opts)?;
        plumb::data::Dataset::open(&out).map_err(|e| panic!("prepare wrote a file it cannot read: {e}")).map(|_| ())
    });
    assert!(rejected > 500 && ok > 50, "{ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_config_json() {
    let dir = scratch("config");
    let gpt = std::fs::read("models/presets/gpt-nano/config.json").unwrap();
    let llama = std::fs::read("models/presets/llama-nano/config.json").unwrap();
    let mut inputs = mutants(3, &gpt, true, 3000);
    inputs.extend(mutants(4, &llama, true, 3000));
    let (ok, rejected) = run_target("config.json", &inputs, &dir.join("config.json"), |p| {
        let cfg = ModelConfig::load(p)?;
        // a config that loads must describe a model whose parameter list can be built
        let specs = plumb::model::Model::param_specs(&cfg);
        assert!(specs.iter().all(|s| s.shape.iter().all(|&d| d > 0)), "{} accepted with an empty tensor: {cfg:?}", p.display());
        Ok(())
    });
    assert!(rejected > 3000 && ok > 100, "{ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_safetensors_loader() {
    let dir = scratch("safetensors");
    let good = dir.join("good.safetensors");
    let tensors = vec![("a.weight".to_string(), vec![3, 4], (0..12).map(|x| x as f32).collect()), ("b".to_string(), vec![5], vec![1.0; 5])];
    save_f32(&good, &tensors, HashMap::from([("step".to_string(), "3".to_string())])).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let inputs = mutants(5, &bytes, false, 4000);
    let (ok, rejected) = run_target("safetensors", &inputs, &dir.join("mutant.safetensors"), |p| {
        let f = WeightFile::open(p)?;
        for name in f.names() {
            let shape = f.shape(&name).unwrap_or_default();
            f.get_f32(&name, &shape)?;
        }
        f.get_f32("a.weight", &[3, 4])?;
        Ok(())
    });
    assert!(rejected > 1000 && ok > 0, "{ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_tokenizer_loader() {
    let dir = scratch("tokenizer");
    let good = std::fs::read("tests/fixtures/wordlevel-bos/tokenizer.json").unwrap();
    let inputs = mutants(6, &good, true, 3000);
    let (ok, rejected) = run_target("tokenizer.json", &inputs, &dir.join("tokenizer.json"), |p| {
        let t = Tokenizer::from_file(p)?;
        let ids = t.encode_with_special_tokens("the film was great </s>")?;
        t.decode(&ids)?;
        let _ = t.identity();
        Ok(())
    });
    assert!(rejected > 1000 && ok > 0, "{ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}

/// A complete small Llama GGUF (v3): config keys, a byte-level BPE tokenizer with merges and
/// special tokens, a chat template, and tensors in F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (rows of
/// 32 and 64, so every block type has whole blocks).
fn small_llama_gguf() -> Vec<u8> {
    use plumb::gguf::model::{gguf_name, Arch};
    use plumb::gguf::types::GgmlType;
    use plumb::gguf::writer::GgufWriter;
    use plumb::gguf::Value;
    use plumb::ops::quant::{quantize, StoredType};
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    tokens.extend("abcdefgh ".chars().map(|c| if c == ' ' { "\u{120}".to_string() } else { c.to_string() }));
    tokens.extend(["ab", "abc", "\u{120}a"].map(String::from));
    let vocab = 32; // the rest are padding tokens
    while tokens.len() < vocab {
        tokens.push(format!("<pad{}>", tokens.len()));
    }
    let mut w = GgufWriter::new();
    let kv = |w: &mut GgufWriter, k: &str, v: Value| w.set(k, v);
    kv(&mut w, "general.architecture", Value::Str("llama".into()));
    kv(&mut w, "general.type", Value::Str("model".into()));
    for (k, v) in [("context_length", 64u32), ("embedding_length", 32), ("block_count", 1), ("feed_forward_length", 64), ("attention.head_count", 2), ("attention.head_count_kv", 1)] {
        kv(&mut w, &format!("llama.{k}"), Value::U32(v));
    }
    kv(&mut w, "llama.rope.freq_base", Value::F32(10000.0));
    kv(&mut w, "llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    kv(&mut w, "tokenizer.ggml.model", Value::Str("gpt2".into()));
    kv(&mut w, "tokenizer.ggml.pre", Value::Str("smollm".into()));
    kv(&mut w, "tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| Value::Str(t.clone())).collect()));
    kv(&mut w, "tokenizer.ggml.token_type", Value::Array((0..vocab).map(|i| Value::I32(if i < 2 { 3 } else { 1 })).collect()));
    kv(&mut w, "tokenizer.ggml.merges", Value::Array(["a b", "ab c", "\u{120} a"].iter().map(|m| Value::Str(m.to_string())).collect()));
    kv(&mut w, "tokenizer.ggml.bos_token_id", Value::U32(0));
    kv(&mut w, "tokenizer.ggml.eos_token_id", Value::U32(1));
    kv(&mut w, "tokenizer.ggml.add_bos_token", Value::Bool(true));
    kv(&mut w, "tokenizer.chat_template", Value::Str("{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}".into()));
    let cfg = plumb::model::ModelConfig::Llama(plumb::model::LlamaConfig {
        vocab_size: vocab,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: Some(1),
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: true,
        attention_bias: Some(false),
        hidden_act: "silu".into(),
        rope_scaling: None,
    });
    let kinds = [StoredType::Q8_0, StoredType::Q4_0, StoredType::Q4_1, StoredType::F16, StoredType::Bf16];
    for (k, spec) in plumb::model::Model::param_specs(&cfg).iter().enumerate() {
        let name = gguf_name(Arch::Llama, &spec.name).expect("a GGUF name for every Llama tensor");
        let n: usize = spec.shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.5).collect();
        if spec.shape.len() == 1 {
            w.add_f32(&name, GgmlType::F32, &spec.shape, &values).unwrap();
        } else {
            let kind = kinds[k % kinds.len()];
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            let bytes = quantize(kind, &values, rows, cols).unwrap();
            let ty = GgmlType::from_id(kind.ggml_type()).unwrap();
            w.add_raw(&name, ty, &spec.shape, bytes).unwrap();
        }
    }
    w.to_bytes()
}

#[test]
fn fuzz_gguf_reader() {
    use plumb::gguf::model::GgufModelInfo;
    use plumb::gguf::tokenizer::tokenizer_from_gguf;
    use plumb::gguf::GgufFile;
    let dir = scratch("gguf");
    let good = small_llama_gguf();
    // The seed input itself is a model the reader accepts whole.
    let read_all = |p: &Path| -> plumb::Result<()> {
        let g = GgufFile::open(p)?;
        let tok = tokenizer_from_gguf(&g)?;
        let ids = tok.encode_with_special_tokens("abc ab a")?;
        tok.decode(&ids)?;
        let info = GgufModelInfo::read(&g)?;
        for spec in plumb::model::Model::param_specs(&info.config) {
            info.tensor_f32(&g, &spec.name, &spec.shape)?;
            info.stored(&g, &spec.name)?;
        }
        if let Some(src) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            let _ = src.len();
        }
        Ok(())
    };
    let seed_path = dir.join("good.gguf");
    std::fs::write(&seed_path, &good).unwrap();
    read_all(&seed_path).expect("the seed GGUF loads");
    let inputs = mutants(7, &good, false, 3000);
    let (ok, rejected) = run_target("gguf", &inputs, &dir.join("mutant.gguf"), read_all);
    assert!(rejected > 1000 && ok > 0, "{ok} ok, {rejected} rejected");
    std::fs::remove_dir_all(&dir).ok();
}
