//! Tokenizers: text to token ids and back. Three sources, one type:
//! - a built-in byte-level tokenizer (vocabulary 256, id = byte value; needs no files), for tiny
//!   models trained from scratch;
//! - GPT-2's byte-level BPE, from OpenAI's `encoder.json` + `vocab.bpe` (a copy ships inside the
//!   binary: [`Tokenizer::gpt2_builtin`]);
//! - any Hugging Face `tokenizer.json` (Llama, Qwen, SmolLM, ...), through the `tokenizers` crate.
//!
//! `encode` never adds special tokens by itself (no BOS, no EOS); `encode_with_special_tokens` runs
//! the tokenizer's own post-processor, as Hugging Face does by default (Llama tokenizers add BOS,
//! GPT-2's adds nothing). Special tokens written literally in the text (`<|endoftext|>`, `<|im_start|>`) are
//! recognised as single tokens when the tokenizer declares them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Run a call into the tokenizers crate, turning a panic inside it (it panics on some
/// inconsistent tokenizer.json files) into an error.
fn guarded<T>(name: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| Error::shape("tokenizer", format!("{name}: the tokenizers crate failed internally (inconsistent special tokens or post-processor?)")))
}

/// OpenAI's GPT-2 vocabulary (token -> id), embedded from `models/gpt2-tokenizer/encoder.json`.
static GPT2_ENCODER_JSON: &[u8] = include_bytes!("../models/gpt2-tokenizer/encoder.json");
/// OpenAI's GPT-2 merges, embedded from `models/gpt2-tokenizer/vocab.bpe`.
static GPT2_VOCAB_BPE: &[u8] = include_bytes!("../models/gpt2-tokenizer/vocab.bpe");

/// GPT-2's end-of-text token, also its BOS.
const GPT2_EOS: &str = "<|endoftext|>";

/// Token strings tried, in order, when no `tokenizer_config.json` names the special tokens.
const EOS_CANDIDATES: &[&str] = &["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"];
const BOS_CANDIDATES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];
const PAD_CANDIDATES: &[&str] = &["<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"];

/// Where the token ids come from.
#[derive(Clone)]
enum Model {
    /// id = byte value, vocabulary 256.
    Bytes,
    /// A Hugging Face tokenizer (GPT-2 BPE is built as one too); shared, so clones are cheap.
    Hf(Arc<tokenizers::Tokenizer>),
}

/// A tokenizer with its special tokens and (optional) chat template.
#[derive(Clone)]
pub struct Tokenizer {
    model: Model,
    /// A short description for reports: `byte-level`, `gpt2`, or the file it came from.
    name: String,
    /// Number of ids (largest id + 1), computed once.
    vocab: usize,
    eos: Option<u32>,
    bos: Option<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("bos", &self.bos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl Tokenizer {
    /// The built-in byte-level tokenizer: vocabulary 256, token id = byte value, no special tokens.
    pub fn byte_level() -> Tokenizer {
        Tokenizer {
            model: Model::Bytes,
            name: "byte-level".into(),
            vocab: 256,
            eos: None,
            bos: None,
            pad: None,
            chat_template: None,
        }
    }

    /// A Hugging Face tokenizer from a `tokenizer.json` file (or a directory holding one). Special
    /// tokens and the chat template come from a `tokenizer_config.json` beside it when present
    /// (the template may also sit in `chat_template.jinja`); otherwise common names are looked up.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(&file, format!("not a valid tokenizer.json: {e}")))?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let config = read_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let mut tok = Tokenizer::from_hf(inner, file.display().to_string(), config.as_ref());
        // An inconsistent file (a template naming special tokens it does not define) makes the
        // tokenizers crate panic on encode: find out now, and say which file.
        if let Err(e) = tok.encode_with_special_tokens("a") {
            if matches!(e, Error::Shape { .. }) {
                return Err(Error::format(&file, format!("not a usable tokenizer.json: {e}")));
            }
        }
        if tok.chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                tok.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
            }
        }
        Ok(tok)
    }

    /// Train a byte-level BPE tokenizer (GPT-2's pre-tokenizer and decoder, every byte
    /// representable) with `vocab_size` ids on `texts`, e.g. a small corpus of one's own. Save it
    /// with [`Tokenizer::save`] to get a `tokenizer.json` that Hugging Face loads.
    pub fn train_bpe<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize, name: &str) -> Result<Tokenizer> {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let fail = |e: tokenizers::Error| Error::config("BPE training", e.to_string());
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build();
        let mut tok: tokenizers::TokenizerImpl<BPE, tokenizers::NormalizerWrapper, ByteLevel, tokenizers::PostProcessorWrapper, ByteLevel> =
            tokenizers::TokenizerBuilder::new()
                .with_model(BPE::default())
                .with_normalizer(None)
                .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
                .with_post_processor(None)
                .with_decoder(Some(ByteLevel::default()))
                .build()
                .map_err(fail)?;
        tok.train(&mut trainer, texts).map_err(fail)?;
        let json = tok.to_string(false).map_err(fail)?;
        let inner: tokenizers::Tokenizer = json.parse().map_err(fail)?;
        Ok(Tokenizer::from_hf(inner, name.to_string(), None))
    }

    /// GPT-2's byte-level BPE from OpenAI's `encoder.json` (token -> id) and `vocab.bpe` (merges).
    pub fn gpt2(encoder_json: impl AsRef<Path>, vocab_bpe: impl AsRef<Path>) -> Result<Tokenizer> {
        let (e, v) = (encoder_json.as_ref(), vocab_bpe.as_ref());
        let enc = std::fs::read(e).map_err(|err| Error::io(e, err))?;
        let bpe = std::fs::read(v).map_err(|err| Error::io(v, err))?;
        Tokenizer::gpt2_from_bytes(&enc, &bpe, e, v)
    }

    /// GPT-2's tokenizer from the copy embedded in the binary (`models/gpt2-tokenizer/`). Built
    /// once per process (about a second), then shared.
    pub fn gpt2_builtin() -> Result<Tokenizer> {
        static BUILT: OnceLock<Tokenizer> = OnceLock::new();
        if let Some(t) = BUILT.get() {
            return Ok(t.clone());
        }
        let t = Tokenizer::gpt2_from_bytes(
            GPT2_ENCODER_JSON,
            GPT2_VOCAB_BPE,
            Path::new("<built-in gpt2 encoder.json>"),
            Path::new("<built-in gpt2 vocab.bpe>"),
        )?;
        Ok(BUILT.get_or_init(|| t).clone())
    }

    /// Build the GPT-2 tokenizer as a Hugging Face tokenizer.json document: BPE model, ByteLevel
    /// pre-tokenizer (GPT-2's regex, no prefix space) and ByteLevel decoder, `<|endoftext|>` special.
    fn gpt2_from_bytes(encoder_json: &[u8], vocab_bpe: &[u8], enc_path: &Path, bpe_path: &Path) -> Result<Tokenizer> {
        let vocab: Map<String, Value> = serde_json::from_slice(encoder_json)
            .map_err(|e| Error::format(enc_path, format!("expected a JSON object token -> id: {e}")))?;
        let eos_id = vocab
            .get(GPT2_EOS)
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::format(enc_path, format!("no `{GPT2_EOS}` token")))?;
        let text = String::from_utf8_lossy(vocab_bpe);
        let mut merges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push(json!([a, b])),
                _ => return Err(Error::format(bpe_path, format!("line {}: expected two tokens `a b`", i + 1))),
            }
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{
                "id": eos_id, "content": GPT2_EOS, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": true, "special": true
            }],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| Error::format(enc_path, e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(bpe_path, format!("could not build the GPT-2 BPE: {e}")))?;
        let config = json!({"eos_token": GPT2_EOS, "bos_token": GPT2_EOS});
        Ok(Tokenizer::from_hf(inner, "gpt2".into(), Some(&config)))
    }

    /// A tokenizer from a tokenizer.json document built in memory (GGUF's `tokenizer.ggml.*`),
    /// with special tokens and chat template named by `config` (tokenizer_config.json keys).
    pub(crate) fn from_json_doc(doc: &Value, name: String, config: &Value, origin: &Path) -> Result<Tokenizer> {
        let bytes = serde_json::to_vec(doc).map_err(|e| Error::format(origin, e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(origin, format!("could not build the tokenizer: {e}")))?;
        Ok(Tokenizer::from_hf(inner, name, Some(config)))
    }

    /// Wrap a Hugging Face tokenizer, naming its special tokens from `config` (a parsed
    /// tokenizer_config.json) or, failing that, from common token names.
    fn from_hf(inner: tokenizers::Tokenizer, name: String, config: Option<&Value>) -> Tokenizer {
        let named = |key: &str| -> Option<u32> {
            let v = config?.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(s)
        };
        let first = |cands: &[&str]| cands.iter().find_map(|c| inner.token_to_id(c));
        let eos = named("eos_token").or_else(|| first(EOS_CANDIDATES));
        let bos = named("bos_token").or_else(|| first(BOS_CANDIDATES));
        let pad = named("pad_token").or_else(|| first(PAD_CANDIDATES));
        let chat_template = config.and_then(|c| c.get("chat_template")).and_then(template_from_value);
        // Added tokens may sit above the model's vocabulary: size by the largest id.
        let max_added = inner.get_added_tokens_decoder().keys().map(|&id| id as usize + 1).max().unwrap_or(0);
        let vocab = inner.get_vocab_size(true).max(max_added);
        Tokenizer { model: Model::Hf(Arc::new(inner)), name, vocab, eos, bos, pad, chat_template }
    }

    /// A short description: `byte-level`, `gpt2`, or the tokenizer.json path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Text to token ids. Adds no special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_inner(text, false)
    }

    /// Text to token ids plus the special tokens the tokenizer's post-processor adds (Hugging
    /// Face's `add_special_tokens=True`: BOS for Llama-style tokenizers, nothing for GPT-2 or the
    /// byte-level tokenizer).
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_inner(text, true)
    }

    fn encode_inner(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match &self.model {
            Model::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Model::Hf(t) => guarded(&self.name, || t.encode_fast(text, special))?
                .map(|enc| enc.get_ids().to_vec())
                .map_err(|e| Error::config("text to tokenize", format!("{}: {e}", self.name))),
        }
    }

    /// Token ids to text (special tokens included). An id outside the vocabulary is an error; bytes
    /// that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let vocab = self.vocab_size() as u32;
        if let Some(&bad) = ids.iter().find(|&&id| id >= vocab) {
            return Err(Error::config("token id", format!("{bad} is outside {}'s vocabulary of {vocab}", self.name)));
        }
        match &self.model {
            Model::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Model::Hf(t) => {
                guarded(&self.name, || t.decode(ids, false))?
                    .map_err(|e| Error::config("token ids to decode", format!("{}: {e}", self.name)))
            }
        }
    }

    /// Number of token ids (the largest id + 1), special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// End-of-sequence token, if the tokenizer has one (GPT-2: 50256 `<|endoftext|>`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Beginning-of-sequence token, if any (GPT-2: the same `<|endoftext|>`).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Padding token, if the tokenizer names one (GPT-2 has none; callers then pad with EOS).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The token string for an id (e.g. `Ġworld`, byte-level: the byte as `<0x41>`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.model {
            Model::Bytes => (id < 256).then(|| format!("<0x{id:02X}>")),
            Model::Hf(t) => t.id_to_token(id),
        }
    }

    /// A fingerprint of what the ids mean: FNV-1a over every (id, the text it decodes to) and the
    /// special token ids. Two tokenizers whose ids mean the same text have the same identity
    /// whatever file they came from (GPT-2 built in or a `tokenizer.json` of it; the byte-level
    /// tokenizer or its saved `tokenizer.json`). Datasets record it.
    pub fn identity(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.vocab * 8);
        for id in 0..self.vocab as u32 {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(self.decode(&[id]).unwrap_or_default().as_bytes());
            bytes.push(0);
        }
        for special in [self.eos, self.bos, self.pad] {
            bytes.extend_from_slice(&special.unwrap_or(u32::MAX).to_le_bytes());
        }
        crate::data::format::checksum(&bytes)
    }

    /// The id of a token string, if it is one token of the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::Bytes => None,
            Model::Hf(t) => t.token_to_id(token),
        }
    }

    /// The Jinja chat template from tokenizer_config.json (or chat_template.jinja), if one was found.
    pub fn chat_template(&self) -> Option<String> {
        self.chat_template.clone()
    }

    /// Save as a Hugging Face `tokenizer.json` at `path`, so a checkpoint directory carries its
    /// tokenizer. When the tokenizer has named special tokens or a chat template, a
    /// `tokenizer_config.json` is written beside it. The byte-level tokenizer is saved as an
    /// equivalent BPE with no merges (id = byte value), which [`Tokenizer::from_file`] reads back.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = match &self.model {
            Model::Hf(t) => {
                t.to_string(true).map_err(|e| Error::format(path, format!("cannot serialise tokenizer: {e}")))?
            }
            Model::Bytes => serde_json::to_string_pretty(&byte_level_tokenizer_json())
                .map_err(|e| Error::format(path, e.to_string()))?,
        };
        crate::weights::write_atomic(path, json.as_bytes())?;
        let token = |id: Option<u32>| id.and_then(|i| self.id_to_token(i));
        let mut config = Map::new();
        for (key, id) in [("eos_token", self.eos), ("bos_token", self.bos), ("pad_token", self.pad)] {
            if let Some(s) = token(id) {
                config.insert(key.into(), Value::String(s));
            }
        }
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), Value::String(t.clone()));
        }
        if !config.is_empty() {
            let cfg_path = path.parent().unwrap_or(Path::new(".")).join("tokenizer_config.json");
            let text = serde_json::to_string_pretty(&Value::Object(config))
                .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
            crate::weights::write_atomic(&cfg_path, text.as_bytes())?;
        }
        Ok(())
    }
}

/// A `chat_template` value: a string, or a list of `{name, template}` (the `default` one is taken).
fn template_from_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let by_name = |n: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(n));
            by_name("default").or(list.first())?.get("template")?.as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// Parse a tokenizer_config.json if it exists (a missing file is not an error, a broken one is).
fn read_tokenizer_config(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    Ok(Some(v))
}

/// The byte-level tokenizer as a tokenizer.json: each byte's ByteLevel character is a token whose
/// id is the byte value; no merges, no regex split, so encoding gives exactly the bytes.
fn byte_level_tokenizer_json() -> Value {
    let vocab: Map<String, Value> = (0u32..256).map(|b| (byte_level_char(b as u8).to_string(), json!(b))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

/// GPT-2's reversible byte -> printable character map (`bytes_to_unicode` in OpenAI's encoder.py).
fn byte_level_char(b: u8) -> char {
    let printable = |c: u8| (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0xFF).contains(&c);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

