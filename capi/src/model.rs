//! The model handle: a model with its tokenizer and (optionally) a LoRA adapter, behind its own
//! lock so that one model runs one call at a time while other models run theirs. Text in and
//! out, the chat template, streaming generation with cancellation, and the adapter's life:
//! attach, enable, disable, save, load, merge.

use crate::ffi::{guard, opt_str_arg, out_arg, put, put_string, ref_arg, str_arg, CError, CResult, PlumbStatus};
use crate::gpu::PlumbGpu;
use plumb_rs::chat_template::ChatTemplate;
use plumb_rs::data::chat::{render_chatml, Message};
use plumb_rs::gguf::tokenizer::tokenizer_from_gguf;
use plumb_rs::gguf::GgufFile;
use plumb_rs::generate::{generate_stream, GenerateConfig};
use plumb_rs::lora::LoraConfig;
use plumb_rs::model::Model;
use plumb_rs::ops::sample::SamplingConfig;
use plumb_rs::tokenizer::Tokenizer;
use plumb_rs::train::control::RunControl;
use plumb_rs::Gpu;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// What one model handle holds; reached only through [`PlumbModel::lock`].
pub(crate) struct Loaded {
    /// The device the model lives on (kept with it, so the model outlives a freed `PlumbGpu`).
    pub _gpu: Gpu,
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// Where the weights came from (named in errors).
    pub path: PathBuf,
}

/// A loaded model. May move between threads and be used from any thread, one call at a time:
/// a call made while another runs on the same model returns `PLUMB_STATUS_BUSY` at once.
pub struct PlumbModel {
    state: Mutex<Loaded>,
    /// Raised by `plumb_model_cancel` from any thread; lowered when a long call starts.
    pub(crate) control: RunControl,
}

impl PlumbModel {
    /// The model for one call, or `Busy` if another call holds it.
    pub(crate) fn lock(&self) -> CResult<MutexGuard<'_, Loaded>> {
        match self.state.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(CError::new(PlumbStatus::Busy, "the model is running another call (one call at a time per model)")),
            Err(TryLockError::Poisoned(_)) => {
                Err(CError::new(PlumbStatus::Panic, "an earlier call on this model panicked; free it and load it again"))
            }
        }
    }
}

impl Loaded {
    pub(crate) fn tokenizer(&self) -> CResult<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            CError::arg(format!("the model loaded from {} has no tokenizer (no tokenizer.json there and none given to plumb_model_load)", self.path.display()))
        })
    }

    /// Text to ids, checked against the model's vocabulary.
    pub(crate) fn encode(&self, text: &str, add_special: bool) -> CResult<Vec<u32>> {
        let t = self.tokenizer()?;
        let ids = if add_special { t.encode_with_special_tokens(text)? } else { t.encode(text)? };
        self.check_ids(&ids, "text")?;
        Ok(ids)
    }

    pub(crate) fn check_ids(&self, ids: &[u32], what: &str) -> CResult<()> {
        let v = self.model.vocab_size();
        match ids.iter().find(|&&id| id as usize >= v) {
            Some(bad) => Err(CError::arg(format!("{what}: token id {bad} is outside the model's vocabulary of {v}"))),
            None => Ok(()),
        }
    }
}

/// Load a model and its tokenizer onto `gpu`. `path` is a Hugging Face directory
/// (`config.json` + `model.safetensors`) or a `.gguf` file (llama, qwen2 or gpt2 architecture).
/// `tokenizer_path` is a `tokenizer.json`; NULL means the GGUF file's own tokenizer, or
/// `path/tokenizer.json` when it exists (without one, the text functions fail and token ids
/// still work).
/// Free with `plumb_model_free`.
///
/// # Safety
/// `gpu` comes from `plumb_gpu_open`; strings are NULL or NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_model_load(gpu: *const PlumbGpu, path: *const c_char, tokenizer_path: *const c_char, out: *mut *mut PlumbModel) -> PlumbStatus {
    guard("plumb_model_load", || {
        let out = out_arg(out, "out")?;
        put(out, std::ptr::null_mut());
        let gpu = ref_arg(gpu, "gpu")?.gpu.clone();
        let path = PathBuf::from(str_arg(path, "path")?);
        let gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if gguf && !path.is_file() {
            return Err(CError::new(PlumbStatus::Io, format!("{}: no such GGUF file", path.display())));
        }
        if !gguf && !path.is_dir() {
            return Err(CError::new(PlumbStatus::Io, format!("{}: not a directory (expected a Hugging Face model directory with config.json and model.safetensors, or a .gguf file)", path.display())));
        }
        let tokenizer = match opt_str_arg(tokenizer_path, "tokenizer_path")? {
            Some(p) => Some(Tokenizer::from_file(PathBuf::from(p))?),
            None if gguf => Some(tokenizer_from_gguf(&GgufFile::open(&path)?)?),
            None => Some(path.join("tokenizer.json")).filter(|p| p.exists()).map(Tokenizer::from_file).transpose()?,
        };
        let model = Model::load(&gpu, &path)?;
        if let Some(t) = &tokenizer {
            if t.vocab_size() > model.vocab_size() {
                return Err(CError::new(
                    PlumbStatus::Config,
                    format!("tokenizer {} has {} ids but the model at {} only {}", t.name(), t.vocab_size(), path.display(), model.vocab_size()),
                ));
            }
        }
        let m = PlumbModel { state: Mutex::new(Loaded { _gpu: gpu, model, tokenizer, path }), control: RunControl::new() };
        put(out, Box::into_raw(Box::new(m)));
        Ok(())
    })
}

/// Free a model (NULL is ignored). It must not be running a call.
///
/// # Safety
/// `model` comes from `plumb_model_load`, is not used afterwards and is not freed twice.
#[no_mangle]
pub unsafe extern "C" fn plumb_model_free(model: *mut PlumbModel) {
    if !model.is_null() {
        // SAFETY: made by Box::into_raw in plumb_model_load (contract above).
        drop(unsafe { Box::from_raw(model) });
    }
}

/// Ask the call now running on `model` (generation or training) to stop at its next token or
/// step; it then returns `PLUMB_STATUS_CANCELLED`. The one function that may be called while
/// another call runs on the same model, from any thread. A cancel with no call running is
/// forgotten when the next long call starts.
///
/// # Safety
/// `model` comes from `plumb_model_load` and is not freed during the call.
#[no_mangle]
pub unsafe extern "C" fn plumb_model_cancel(model: *const PlumbModel) -> PlumbStatus {
    guard("plumb_model_cancel", || {
        ref_arg(model, "model")?.control.cancel();
        Ok(())
    })
}

/// Save the model's base weights as a Hugging Face directory (config.json, model.safetensors,
/// written atomically). An attached adapter is not folded in: save it with `plumb_lora_save`,
/// or merge it first with `plumb_lora_merge`.
///
/// # Safety
/// `model` comes from `plumb_model_load`; `dir` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_model_save(model: *const PlumbModel, dir: *const c_char) -> PlumbStatus {
    guard("plumb_model_save", || {
        let m = ref_arg(model, "model")?.lock()?;
        let dir = Path::new(str_arg(dir, "dir")?);
        m.model.save(dir)?;
        if let Some(t) = &m.tokenizer {
            t.save(dir.join("tokenizer.json"))?;
        }
        Ok(())
    })
}

/// Text to token ids. With `add_special`, the tokenizer's post-processor adds its special
/// tokens (BOS for Llama-style tokenizers). Writes up to `capacity` ids to `ids` and the number
/// of ids to `*n_ids`; returns `PLUMB_STATUS_BUFFER_TOO_SMALL` when `capacity` is less (call
/// again with a larger buffer; `ids` may be NULL when `capacity` is 0).
///
/// # Safety
/// `ids` has room for `capacity` values; `n_ids` is writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_tokenize(model: *const PlumbModel, text: *const c_char, add_special: bool, ids: *mut u32, capacity: usize, n_ids: *mut usize) -> PlumbStatus {
    guard("plumb_tokenize", || {
        let n_ids = out_arg(n_ids, "n_ids")?;
        let m = ref_arg(model, "model")?.lock()?;
        let toks = m.encode(str_arg(text, "text")?, add_special)?;
        put(n_ids, toks.len());
        if toks.len() > capacity {
            return Err(CError::new(PlumbStatus::BufferTooSmall, format!("{} ids do not fit in a buffer of {capacity}", toks.len())));
        }
        if !toks.is_empty() {
            let ids = out_arg(ids, "ids")?;
            // SAFETY: `ids` has room for `capacity` >= toks.len() values (contract above).
            unsafe { std::ptr::copy_nonoverlapping(toks.as_ptr(), ids, toks.len()) };
        }
        Ok(())
    })
}

/// Token ids to text (a new string for `plumb_string_free`).
///
/// # Safety
/// `ids` holds `n_ids` values (may be NULL when `n_ids` is 0); `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_detokenize(model: *const PlumbModel, ids: *const u32, n_ids: usize, out: *mut *mut c_char) -> PlumbStatus {
    guard("plumb_detokenize", || {
        let out = out_arg(out, "out")?;
        let m = ref_arg(model, "model")?.lock()?;
        let ids = crate::data::slice_arg(ids, n_ids, "ids")?;
        put_string(out, &m.tokenizer()?.decode(ids)?);
        Ok(())
    })
}

/// One chat message: a role ("system", "user", "assistant") and its text, both UTF-8.
#[repr(C)]
pub struct PlumbMessage {
    pub role: *const c_char,
    pub content: *const c_char,
}

/// Render a conversation as the model expects it, as a new string for `plumb_string_free`: the
/// model's own Jinja chat template (from its GGUF file or `tokenizer_config.json`), or ChatML
/// (`<|im_start|>role\ncontent<|im_end|>\n`) when it has none. With `add_generation_prompt` it
/// ends with the opening of an assistant turn. Tokenize the result with `add_special` false.
///
/// # Safety
/// `messages` holds `n_messages` messages whose strings are NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_chat_apply(model: *const PlumbModel, messages: *const PlumbMessage, n_messages: usize, add_generation_prompt: bool, out: *mut *mut c_char) -> PlumbStatus {
    guard("plumb_chat_apply", || {
        let out = out_arg(out, "out")?;
        let m = ref_arg(model, "model")?.lock()?;
        let msgs = crate::data::slice_arg(messages, n_messages, "messages")?;
        let msgs: Vec<Message> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| Ok(Message::new(str_arg(m.role, &format!("messages[{i}].role"))?, str_arg(m.content, &format!("messages[{i}].content"))?)))
            .collect::<CResult<_>>()?;
        let text = match &m.tokenizer {
            Some(t) => ChatTemplate::for_tokenizer(t)?.render(&msgs, add_generation_prompt)?,
            None => render_chatml(&msgs, add_generation_prompt),
        };
        put_string(out, &text);
        Ok(())
    })
}

/// Generation settings; start from `plumb_generate_params_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PlumbGenerateParams {
    /// New tokens at most. Default 64.
    pub max_new_tokens: u32,
    /// Softmax temperature; 0 = greedy (then top_k and top_p are ignored). Default 0.8.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off. Default 0.
    pub top_k: u32,
    /// Nucleus sampling mass; 1 = off. Default 0.95.
    pub top_p: f32,
    /// Sampler seed: the same seed, model and prompt give the same tokens. Default 0.
    pub seed: u64,
    /// Stop at the tokenizer's end-of-sequence token (kept in the output). Default true.
    pub stop_at_eos: bool,
    /// Add the tokenizer's special tokens (BOS) to the prompt. Default false.
    pub add_special: bool,
}

/// The default generation settings.
#[no_mangle]
pub extern "C" fn plumb_generate_params_default() -> PlumbGenerateParams {
    PlumbGenerateParams { max_new_tokens: 64, temperature: 0.8, top_k: 0, top_p: 0.95, seed: 0, stop_at_eos: true, add_special: false }
}

/// Called with each new token as soon as it is sampled, on the thread that called
/// `plumb_generate`: its id and the text it adds (UTF-8, possibly empty while a character is
/// incomplete; valid only during the call). Return false to stop generating.
pub type PlumbTokenCallback = Option<unsafe extern "C" fn(user_data: *mut c_void, token: u32, piece: *const c_char) -> bool>;

/// Generate a continuation of `prompt` (text) with the model, its adapter included when one is
/// attached and enabled. `on_token` (may be NULL) streams the tokens; the whole continuation is
/// written to `*out_text` (may be NULL) for `plumb_string_free`. Stopped early by the callback
/// or by `plumb_model_cancel`, it returns `PLUMB_STATUS_CANCELLED` and still writes the text so
/// far. `params` NULL means the defaults.
///
/// # Safety
/// Handles come from this library; `prompt` is NUL-terminated; `out_text` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_generate(
    model: *const PlumbModel,
    prompt: *const c_char,
    params: *const PlumbGenerateParams,
    on_token: PlumbTokenCallback,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
) -> PlumbStatus {
    guard("plumb_generate", || {
        put(out_text, std::ptr::null_mut());
        let handle = ref_arg(model, "model")?;
        let m = handle.lock()?;
        handle.control.reset();
        // SAFETY: `params` is NULL or points to a PlumbGenerateParams (contract above).
        let p = unsafe { params.as_ref() }.copied().unwrap_or_else(|| plumb_generate_params_default());
        let tok = m.tokenizer()?;
        let ids = m.encode(str_arg(prompt, "prompt")?, p.add_special)?;
        let cfg = GenerateConfig {
            max_new_tokens: p.max_new_tokens as usize,
            sampling: SamplingConfig { temperature: p.temperature, top_k: p.top_k as usize, top_p: p.top_p },
            stop_ids: if p.stop_at_eos { tok.eos_id().into_iter().collect() } else { vec![] },
            seed: p.seed,
            pad_id: tok.pad_id().or(tok.eos_id()).unwrap_or(0),
        };
        let mut text = Streamer::new(tok);
        let mut stopped = false;
        let mut on_tok = |id: u32| {
            let piece = text.push(id);
            let go = match on_token {
                // SAFETY: the caller's callback and pointer (header contract); `piece` outlives the call.
                Some(f) => unsafe { f(user_data, id, piece.as_ptr()) },
                None => true,
            };
            stopped = !go || handle.control.is_cancelled();
            !stopped
        };
        generate_stream(&m.model, &ids, &cfg, &mut on_tok)?;
        put_string(out_text, &text.text);
        if stopped {
            return Err(CError::new(PlumbStatus::Cancelled, format!("generation stopped after {} tokens", text.ids.len())));
        }
        Ok(())
    })
}

/// Turns a stream of token ids into text pieces: the text of all ids so far, minus what was
/// already handed out, holding back an incomplete UTF-8 character (U+FFFD at the end).
struct Streamer<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    text: String,
}

impl<'a> Streamer<'a> {
    fn new(tok: &'a Tokenizer) -> Self {
        Streamer { tok, ids: vec![], text: String::new() }
    }

    fn push(&mut self, id: u32) -> CString {
        self.ids.push(id);
        // An id past the tokenizer's vocabulary (models may have padded vocabularies) adds no text.
        let full = self.tok.decode(&self.ids).unwrap_or_else(|_| self.text.clone());
        if full.ends_with('\u{FFFD}') || !full.starts_with(&self.text) {
            return CString::default();
        }
        let piece = full[self.text.len()..].to_string();
        self.text = full;
        CString::new(piece.replace('\0', " ")).expect("NUL bytes replaced")
    }
}

/// Attach a fresh LoRA adapter (outputs are unchanged until it trains); from then on training
/// updates only the adapter. `config_json` may be NULL (rank 8, alpha 16, every projection) or
/// PEFT-style JSON such as `{"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}`.
///
/// # Safety
/// `model` comes from `plumb_model_load`; `config_json` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_attach(model: *const PlumbModel, config_json: *const c_char, seed: u64) -> PlumbStatus {
    guard("plumb_lora_attach", || {
        let mut m = ref_arg(model, "model")?.lock()?;
        let cfg: LoraConfig = match opt_str_arg(config_json, "config_json")? {
            Some(js) => crate::train::parse_json(js, "LoRA config")?,
            None => LoraConfig::default(),
        };
        m.model.add_lora(&cfg, seed)?;
        Ok(())
    })
}

/// Switch the attached adapter on or off (off: the model answers as the base model).
///
/// # Safety
/// `model` comes from `plumb_model_load`.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_set_enabled(model: *const PlumbModel, enabled: bool) -> PlumbStatus {
    guard("plumb_lora_set_enabled", || {
        let m = ref_arg(model, "model")?.lock()?;
        if m.model.lora().is_none() {
            return Err(CError::arg("no adapter is attached (plumb_lora_attach or plumb_lora_load first)"));
        }
        m.model.set_adapters_enabled(enabled);
        Ok(())
    })
}

/// Save the attached adapter in PEFT's layout (`dir/adapter_model.safetensors` +
/// `dir/adapter_config.json`), creating `dir`.
///
/// # Safety
/// `model` comes from `plumb_model_load`; `dir` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_save(model: *const PlumbModel, dir: *const c_char) -> PlumbStatus {
    guard("plumb_lora_save", || {
        let m = ref_arg(model, "model")?.lock()?;
        m.model.save_lora(Path::new(str_arg(dir, "dir")?))?;
        Ok(())
    })
}

/// Attach the adapter saved in `dir` (by `plumb_lora_save` or PEFT's `save_pretrained`); fails
/// when an adapter is already attached (detach it first).
///
/// # Safety
/// `model` comes from `plumb_model_load`; `dir` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_load(model: *const PlumbModel, dir: *const c_char) -> PlumbStatus {
    guard("plumb_lora_load", || {
        let mut m = ref_arg(model, "model")?.lock()?;
        m.model.load_lora(Path::new(str_arg(dir, "dir")?))?;
        Ok(())
    })
}

/// Detach the adapter (the model is the base model again); fails when none is attached.
///
/// # Safety
/// `model` comes from `plumb_model_load`.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_detach(model: *const PlumbModel) -> PlumbStatus {
    guard("plumb_lora_detach", || {
        let mut m = ref_arg(model, "model")?.lock()?;
        m.model.remove_lora().map(|_| ()).ok_or_else(|| CError::arg("no adapter is attached"))
    })
}

/// Fold the adapter into the base weights and detach it.
///
/// # Safety
/// `model` comes from `plumb_model_load`.
#[no_mangle]
pub unsafe extern "C" fn plumb_lora_merge(model: *const PlumbModel) -> PlumbStatus {
    guard("plumb_lora_merge", || {
        let mut m = ref_arg(model, "model")?.lock()?;
        m.model.merge_lora()?;
        Ok(())
    })
}
