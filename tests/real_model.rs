//! The real SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by tools/fetch_smollm2.sh; skipped locally
//! when absent, required under CI=true): plumb's GGUF reader, config, tokenizer and chat template on
//! the real file, and an independent f64 plain-Rust forward of it (tests/gguf_ref) that generates
//! readable English greedily from the chat prompt; the engine on the real embedding and first
//! block, and on the whole model (past one storage binding), against that reference.

mod common;
mod gguf_ref;

use gguf_ref::{argmax, smollm2_path, RefGguf, RefLlama};
use plumb::gguf::model::GgufModelInfo;
use plumb::gguf::tokenizer::tokenizer_from_gguf;
use plumb::gguf::GgufFile;
use plumb::model::ModelConfig;

#[test]
fn smollm2_config_and_tensors() {
    let Some(path) = smollm2_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    let info = GgufModelInfo::read(&g).unwrap();
    let ModelConfig::Llama(c) = &info.config else { panic!("not a Llama config") };
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers), (49152, 576, 1536, 30));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (9, Some(3)));
    assert!(c.tie_word_embeddings && c.attention_bias == Some(false));
    assert_eq!(c.rope_theta, 100000.0);
    // Stored forms: Q8_0 embedding, Q4_1 matrices, F32 norms; q rows un-permuted from whole rows.
    use plumb::gguf::GgmlType;
    let emb = info.stored(&g, "model.embed_tokens.weight").unwrap();
    assert_eq!((emb.ty, emb.shape.clone(), emb.data.len()), (GgmlType::Q8_0, vec![49152, 576], 49152 * 576 / 32 * 34));
    let q = info.stored(&g, "model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!((q.ty, q.shape.clone()), (GgmlType::Q4_1, vec![576, 576]));
    // Independent check of dequantize + un-permutation: HF row h·D + i·D/2 + j is stored row
    // h·D + 2j + i, dequantized by the test's own f64 code.
    let rg = RefGguf::open(&path);
    let mine = info.tensor_f32(&g, "model.layers.0.self_attn.q_proj.weight", &[576, 576]).unwrap();
    let theirs = gguf_ref::dequant(rg.t("blk.0.attn_q.weight"));
    let d = 64;
    for (hf_row, stored_row) in [(0, 0), (1, 2), (31, 62), (32, 1), (33, 3), (64 + 40, 64 + 17)] {
        for col in [0, 1, 100, 575] {
            let a = mine[hf_row * 576 + col] as f64;
            let b = theirs[stored_row * 576 + col];
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "row {hf_row} col {col}: {a} vs {b}");
        }
    }
    let _ = d;
    let norm = info.tensor_f32(&g, "model.norm.weight", &[576]).unwrap();
    assert_eq!(norm.iter().map(|&v| v as f64).collect::<Vec<_>>(), gguf_ref::dequant(rg.t("output_norm.weight")));
}

#[test]
fn smollm2_tokenizer() {
    let Some(path) = smollm2_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), Some(2), Some(2)));
    // ChatML markers are single special ids.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>user\nHi<|im_end|>");
    // add_bos is false for SmolLM2: nothing is added.
    assert_eq!(tok.encode_with_special_tokens("Hello").unwrap(), tok.encode("Hello").unwrap());
    // Ordinary text round-trips, digits are split one by one (the `smollm` pre-tokenizer), and
    // common words are single tokens.
    for text in ["Hello world! It's 2026, isn't it?", "  indented\n\tcode() {}", "naïve café — ünïcödé 日本語", "x = 12345"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    let digits = tok.encode("12345").unwrap();
    assert_eq!(digits.len(), 5, "{digits:?}");
    assert_eq!(tok.encode(" the").unwrap().len(), 1);
    assert_eq!(tok.encode("Hello world").unwrap().len(), 2);
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    // Saved as a Hugging Face tokenizer.json (+ tokenizer_config.json), it reads back the same.
    let dir = std::env::temp_dir().join(format!("plumb-smollm2-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tok.save(dir.join("tokenizer.json")).unwrap();
    let back = plumb::tokenizer::Tokenizer::from_file(&dir).unwrap();
    let text = "<|im_start|>user\nHello world! 42<|im_end|>";
    assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
    assert_eq!((back.eos_id(), back.chat_template()), (tok.eos_id(), tok.chat_template()));
    std::fs::remove_dir_all(&dir).ok();
}

/// The ChatML prompt of "Write one sentence about a good movie." through the model's own template.
fn chat_prompt(g: &GgufFile) -> Vec<u32> {
    let tok = tokenizer_from_gguf(g).unwrap();
    let text = plumb::chat_template::ChatTemplate::for_tokenizer(&tok)
        .unwrap()
        .render(&[plumb::data::chat::Message::new("user", "Write one sentence about a good movie.")], true)
        .unwrap();
    tok.encode(&text).unwrap()
}

/// Max |error| / max |logit| of the engine's logits of `ids` (1, T) against the reference's at
/// the given positions.
fn worst_relative_error(model: &plumb::model::Model, ids: &plumb::Tensor, want: &[(usize, Vec<f64>)]) -> f64 {
    let got = model.forward(None, ids, None).unwrap().to_f32_vec().unwrap();
    let v = model.vocab_size();
    let mut worst = 0.0f64;
    for (pos, want) in want {
        let row = &got[pos * v..(pos + 1) * v];
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = want.iter().zip(row).fold(0.0f64, |m, (a, &b)| m.max((a - b as f64).abs()));
        worst = worst.max(err / scale);
    }
    worst
}

/// The engine's greedy continuation of `prompt`, without the stop token.
fn greedy(model: &plumb::model::Model, prompt: &[u32], cfg: &plumb::generate::GenerateConfig, eos: Option<u32>) -> Vec<u32> {
    let mut out = plumb::generate::generate(model, &[prompt.to_vec()], cfg).unwrap().remove(0);
    if out.last() == eos.as_ref() {
        out.pop();
    }
    out
}

/// The independent f64 reference generates readable English greedily from the chat prompt; the
/// engine, with the whole real model loaded from the GGUF (30 layers, 540 MB of f32 parameters
/// split over several storage bindings), gives the same logits (≤ 1e-3 relative) on the last
/// prompt positions and the same greedy tokens.
#[test]
fn smollm2_whole_model_on_the_engine_matches_the_f64_reference() {
    let Some(path) = smollm2_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let prompt = chat_prompt(&g);
    let rg = RefGguf::open(&path);
    let mut m = RefLlama::new(&rg);
    let t0 = std::time::Instant::now();
    let mut logits = Vec::new();
    let mut last_prompt_logits = Vec::new();
    for (pos, &t) in prompt.iter().enumerate() {
        logits = m.step(t);
        if pos + 3 >= prompt.len() {
            last_prompt_logits.push((pos, logits.clone()));
        }
    }
    let mut out = Vec::new();
    for _ in 0..20 {
        let next = argmax(&logits);
        if Some(next) == tok.eos_id() {
            break;
        }
        out.push(next);
        logits = m.step(next);
    }
    let text = tok.decode(&out).unwrap();
    eprintln!("reference: {} prompt + {} generated tokens in {:.1?}: {text:?}", prompt.len(), out.len(), t0.elapsed());
    assert!(logits.iter().all(|v| v.is_finite()));
    // Readable English: mostly letters and spaces, several words, a few of them common ones.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 8, "{text:?}");
    let letters = text.chars().filter(|c| c.is_ascii_alphabetic() || *c == ' ').count();
    assert!(letters as f64 >= 0.85 * text.chars().count() as f64, "{text:?}");
    let common = ["the", "a", "is", "of", "and", "movie", "film", "that", "with", "about"];
    assert!(words.iter().filter(|w| common.contains(&w.to_lowercase().trim_matches(|c: char| !c.is_alphabetic()))).count() >= 2, "{text:?}");
    assert!(text.to_lowercase().contains("movie") || text.to_lowercase().contains("film"), "{text:?}");

    // The engine: the whole model, dequantized to f32, in as many bindings as the adapter needs.
    let Some(gpu) = common::gpu() else { return };
    let t1 = std::time::Instant::now();
    let model = plumb::model::Model::load(&gpu, &path).unwrap();
    let t = prompt.len();
    let ids = plumb::Tensor::from_u32(&gpu, &prompt, &[1, t]).unwrap();
    let worst = worst_relative_error(&model, &ids, &last_prompt_logits);
    eprintln!("engine vs f64 reference, whole model, last 3 prompt positions: max |error| / max |logit| = {worst:.2e}");
    assert!(worst <= 1e-3, "relative error {worst}");
    let cfg = plumb::generate::GenerateConfig {
        max_new_tokens: 20,
        sampling: plumb::ops::sample::SamplingConfig { temperature: 0.0, ..Default::default() },
        stop_ids: tok.eos_id().into_iter().collect(),
        ..Default::default()
    };
    let engine = greedy(&model, &prompt, &cfg, tok.eos_id());
    eprintln!("engine: load + forward + 20 greedy tokens in {:.1?}: {:?}", t1.elapsed(), tok.decode(&engine).unwrap());
    assert_eq!(engine, out, "the engine's greedy tokens are the reference's");
    drop(model);

    // The same with the matrices kept as the file stores them (Q4_1 blocks, a Q8_0 embedding),
    // dequantized inside the kernels: no f32 copy of the model on the GPU.
    let t2 = std::time::Instant::now();
    let stored = plumb::gguf::model::load_model_stored(&gpu, &path).unwrap();
    let frozen = stored.frozen().expect("the matrices are in stored form");
    eprintln!(
        "stored form: {} matrices in {:.1} MiB on the GPU, f32 rest {} parameters",
        frozen.len(),
        frozen.bytes() as f64 / 1048576.0,
        stored.params().numel()
    );
    assert!(frozen.bytes() < 120 << 20 && stored.params().numel() < 100_000, "no f32 copy of the matrices");
    let worst = worst_relative_error(&stored, &ids, &last_prompt_logits);
    eprintln!("stored-form engine vs f64 reference, last 3 prompt positions: max |error| / max |logit| = {worst:.2e}");
    assert!(worst <= 1e-3, "relative error {worst}");
    let engine = greedy(&stored, &prompt, &cfg, tok.eos_id());
    eprintln!("stored-form engine: load + forward + 20 greedy tokens in {:.1?}", t2.elapsed());
    assert_eq!(engine, out, "the stored-form engine's greedy tokens are the reference's");
}

#[test]
fn smollm2_template_renders_messages_datasets() {
    use plumb::data::{prepare, PrepareOptions, SftDataset};
    let Some(path) = smollm2_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let dir = std::env::temp_dir().join(format!("plumb-smollm2-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("chat.jsonl");
    let row = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
    std::fs::write(&input, format!("{row}\n")).unwrap();
    let out = dir.join("chat.bin");
    let sum = prepare(&input, &out, &tok, &PrepareOptions { format: plumb::data::OutputFormat::Sft, ..Default::default() }).unwrap();
    assert!(sum.chat_template.contains("own chat_template"), "{sum}");
    let d = SftDataset::open(&out).unwrap();
    let r = d.get(0).unwrap();
    assert_eq!(
        tok.decode(&r.prompt.to_vec()).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(tok.decode(&r.completion.to_vec()).unwrap(), "Hello!<|im_end|>\n");
    assert_eq!(r.prompt.to_vec()[0], 1, "<|im_start|> is one special id");
    std::fs::remove_dir_all(&dir).ok();
}

/// The engine on the real file's tensors, as far as lavapipe's 128 MiB binding allows before the
/// storage work of issue 11: SmolLM2's real embedding (Q8_0), its first block (Q4_1) and final
/// norm, tied head — one block keeps the f32 parameters at 127 MB. Logits of the chat prompt
/// against the test's independent f64 forward over the same file, truncated the same way.
#[test]
fn smollm2_first_block_on_the_engine_matches_the_f64_reference() {
    use plumb::model::Model;
    use plumb::params::ParamStore;
    let Some(path) = smollm2_path() else { return };
    let Some(gpu) = common::gpu() else { return };
    let g = GgufFile::open(&path).unwrap();
    let mut info = GgufModelInfo::read(&g).unwrap();
    let ModelConfig::Llama(c) = &mut info.config else { panic!() };
    c.num_hidden_layers = 1;
    let specs = Model::param_specs(&info.config);
    let store = ParamStore::new(&gpu, &specs).unwrap();
    for s in &specs {
        store.set(&s.name, &info.tensor_f32(&g, &s.name, &s.shape).unwrap()).unwrap();
    }
    let model = Model::from_config_and_params(info.config.clone(), store).unwrap();
    let prompt = chat_prompt(&g);
    let t = prompt.len();
    let ids = plumb::Tensor::from_u32(&gpu, &prompt, &[1, t]).unwrap();
    let got = model.forward(None, &ids, None).unwrap().to_f32_vec().unwrap();
    let rg = RefGguf::open(&path);
    let mut r = RefLlama::new(&rg);
    r.layers = 1;
    let v = 49152;
    let mut worst = 0.0f64;
    for (pos, &tok) in prompt.iter().enumerate() {
        let want = r.step(tok);
        if pos + 3 < t {
            continue;
        }
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = want.iter().zip(&got[pos * v..(pos + 1) * v]).fold(0.0f64, |m, (a, &b)| m.max((a - b as f64).abs()));
        worst = worst.max(err / scale);
        assert_eq!(argmax(&want), argmax(&got[pos * v..(pos + 1) * v].iter().map(|&x| x as f64).collect::<Vec<_>>()), "position {pos}");
    }
    eprintln!("engine vs f64 reference, 1 real block, last 3 positions: max |error| / max |logit| = {worst:.2e}");
    assert!(worst <= 1e-3, "relative error {worst}");
}
