//! GGUF's tokenizer (`tokenizer.ggml.*`) as a Hugging Face `tokenizers` tokenizer. plumb reads
//! the GPT-2-style byte-level BPE (`tokenizer.ggml.model` = `gpt2`) that SmolLM, Qwen2, Llama 3 and
//! GPT-2 files carry: the token strings (id = index), the merges (`"Ġ t"`), the token types
//! (3 = control, i.e. special; 4 = user-defined), BOS/EOS/PAD/UNK ids, `add_bos_token`, and the
//! pre-tokenizer named by `tokenizer.ggml.pre` (the regex llama.cpp runs before BPE). The chat
//! template (`tokenizer.chat_template`) rides along.

use super::{GgufFile, Value};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value as Json};

/// GPT-2's pre-tokenizer regex is the ByteLevel default; these are the others plumb knows, by
/// llama.cpp's `tokenizer.ggml.pre` name (the same regexes as the models' tokenizer.json).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer for llama.cpp's `pre` name, or None when plumb does not know it.
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false)
        ]})
    };
    Some(match pre {
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        // SmolLM: every digit on its own, then GPT-2's regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)
        ]}),
        "llama-bpe" | "llama3" => split(LLAMA3_REGEX),
        "qwen2" => split(QWEN2_REGEX),
        _ => return None,
    })
}

/// Build the tokenizer of GGUF file `g`.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let path = g.path();
    let bad = |msg: String| Error::format(path, msg);
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(bad(format!("key `tokenizer.ggml.model` is `{model}`: plumb reads GPT-2-style BPE (`gpt2`) tokenizers")));
    }
    let pre_name = match g.get("tokenizer.ggml.pre") {
        Some(v) => v.as_str().ok_or_else(|| bad("key `tokenizer.ggml.pre` is not a string".into()))?,
        None => "default",
    };
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        bad(format!("key `tokenizer.ggml.pre` is `{pre_name}`: plumb knows gpt2, default, smollm, llama-bpe and qwen2"))
    })?;
    let strings = |key: &str| -> Result<Vec<String>> {
        let arr = g.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("key `{key}` is missing or not an array")))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(String::from).ok_or_else(|| bad(format!("key `{key}`[{i}] is not a string"))))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) if a.len() == tokens.len() => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        Some(a) => return Err(bad(format!("key `tokenizer.ggml.token_type` has {} entries for {} tokens", a.len(), tokens.len()))),
        None => vec![1; tokens.len()],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.clone(), json!(id)).is_some() {
            return Err(bad(format!("key `tokenizer.ggml.tokens`: token {tok:?} appears twice (second at id {id})")));
        }
        // 3 = control (special, never split), 4 = user-defined (matched whole in text).
        if ty == 3 || ty == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": ty == 3}));
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(bad(format!("key `tokenizer.ggml.merges`[{i}] = {m:?}: expected two tokens `a b`"))),
        })
        .collect::<Result<_>>()?;
    let id_key = |k: &str| -> Result<Option<u32>> {
        match g.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                _ => Err(bad(format!("key `{k}` = {v:?} is not a token id below {}", tokens.len()))),
            },
        }
    };
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    let eos = id_key("tokenizer.ggml.eos_token_id")?;
    let pad = id_key("tokenizer.ggml.padding_token_id")?;
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let add_eos = g.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool).unwrap_or(false);
    let name_of = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    let post = if add_bos || add_eos {
        let mut single = Vec::new();
        let mut specials = Map::new();
        let mut piece = |id: Option<u32>, what: &str, single: &mut Vec<Json>| -> Result<()> {
            let id = id.ok_or_else(|| bad(format!("`tokenizer.ggml.add_{what}_token` is true but there is no {what} token id")))?;
            let t = &tokens[id as usize];
            single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            Ok(())
        };
        if add_bos {
            piece(bos, "bos", &mut single)?;
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if add_eos {
            piece(eos, "eos", &mut single)?;
        }
        let mut pair = single.clone();
        pair.extend(single.iter().map(|p| match p.get("Sequence") {
            Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
            None => p.clone(),
        }));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    } else {
        byte_level(true)
    };
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre, "post_processor": post,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre_name == "llama-bpe" || pre_name == "llama3",
            "vocab": vocab, "merges": merges
        }
    });
    let mut config = Map::new();
    for (k, id) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
        if let Some(t) = name_of(id) {
            config.insert(k.into(), Json::String(t));
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template") {
        let t = t.as_str().ok_or_else(|| bad("key `tokenizer.chat_template` is not a string".into()))?;
        config.insert("chat_template".into(), Json::String(t.into()));
    }
    Tokenizer::from_json_doc(&doc, format!("{} (GGUF)", path.display()), &Json::Object(config), path)
}

/// Copy every `tokenizer.*` key of `src` into `w` (exporting a model that came from GGUF).
pub fn copy_tokenizer_keys(src: &GgufFile, w: &mut super::writer::GgufWriter) {
    for (k, v) in &src.metadata {
        if k.starts_with("tokenizer.") {
            w.set(k, v.clone());
        }
    }
}
