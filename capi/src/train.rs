//! Training from C: one call, `plumb_train`, with the method named in its JSON config
//! (`"sft"`, `"dpo"` or `"kto"`), data from a `PlumbData` in memory or from a prepared file, a
//! progress callback after
//! every step, cancellation, and resume from the checkpoint a cancelled run leaves in `out_dir`.
//! The settings' defaults are the Rust library's (`SftConfig`, `TrainConfig`, `DpoConfig`,
//! `KtoConfig`).

use crate::data::{Item, PlumbData};
use crate::ffi::{guard, put, put_string, ref_arg, str_arg, CError, CResult, PlumbStatus};
use crate::model::{Loaded, PlumbModel};
use plumb_rs::align::{Completion, Completions, Dpo, DpoTrainConfig, Kto, KtoTrainConfig, Pair, Pairs, Reference, TrainConfig};
use plumb_rs::data::{Dataset, DatasetKind, PreferenceDataset, SftDataset, TokenStream, UnpairedDataset};
use plumb_rs::ops::dpo::DpoConfig;
use plumb_rs::ops::kto::{KtoConfig, KtoLoss};
use plumb_rs::train::batch::{BatchSource, SftSource, StreamSource};
use plumb_rs::train::control::{RunControl, StepInfo};
use plumb_rs::train::sft::{self, SftConfig};
use serde::Deserialize;
use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;

/// Parse JSON into `T`, with the line and column of a mistake in the message.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(js: &str, what: &str) -> CResult<T> {
    serde_json::from_str(js).map_err(|e| CError::new(PlumbStatus::Config, format!("{what}: {e}")))
}

/// The training methods `plumb_train` knows, by the name its config gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Sft,
    Dpo,
    Kto,
}

impl Method {
    fn parse(name: &str) -> CResult<Method> {
        match name.to_ascii_lowercase().as_str() {
            "sft" => Ok(Method::Sft),
            "dpo" => Ok(Method::Dpo),
            "kto" => Ok(Method::Kto),
            _ => Err(CError::new(PlumbStatus::Config, format!("training config: method `{name}` is not one of sft, dpo, kto"))),
        }
    }
}

/// The JSON config of `plumb_train`. Only `method` is required; unknown fields are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainJson {
    /// "sft", "dpo" or "kto".
    method: String,
    /// Optimizer steps in all (a resumed run counts from its first step).
    steps: Option<usize>,
    /// Sequences (SFT) or pairs (DPO) or answers (KTO) per micro-batch.
    batch_size: Option<usize>,
    /// Micro-batches whose gradients add up to one optimizer step: the update of
    /// `grad_accum × batch_size` items with the memory of `batch_size` (default 1).
    grad_accum: Option<usize>,
    /// Peak learning rate, warmup steps and floor of the cosine decay.
    lr: Option<f32>,
    warmup: Option<usize>,
    min_lr: Option<f32>,
    /// SFT: tokens per sequence (default: the library's, capped at the model's length).
    seq_len: Option<usize>,
    /// DPO: longest row and longest prompt in tokens.
    max_len: Option<usize>,
    max_prompt_len: Option<usize>,
    /// DPO and KTO: β of the implicit reward.
    beta: Option<f32>,
    /// KTO: "kto" (default) or "apo_zero_unpaired".
    loss_type: Option<String>,
    /// KTO: weights of the desirable and the undesirable answers' losses.
    desirable_weight: Option<f32>,
    undesirable_weight: Option<f32>,
    /// Seed of the data order.
    #[serde(default)]
    seed: u64,
    /// Where checkpoints and metrics.jsonl go; needed to resume.
    out_dir: Option<PathBuf>,
    /// Continue from `out_dir`'s latest checkpoint.
    #[serde(default)]
    resume: bool,
    /// A prepared data file (`plumb data prepare`) instead of a `PlumbData`.
    data: Option<PathBuf>,
}

/// One finished step, handed to the progress callback (valid only during the callback).
#[repr(C)]
#[derive(Debug)]
pub struct PlumbProgress {
    /// Steps completed (counting from the start of a resumed run).
    pub step: u64,
    /// Steps the run has in all.
    pub total_steps: u64,
    /// The step's training loss.
    pub loss: f32,
    /// The step's learning rate.
    pub lr: f32,
    /// Gradient norm before clipping (NaN when not measured).
    pub grad_norm: f32,
    /// Every metric of the step as a JSON object (DPO: rewards/chosen, rewards/margins, ...).
    pub metrics_json: *const c_char,
}

/// Called after every training step on the thread that called `plumb_train`. Return false to
/// stop the run (as `plumb_model_cancel` does).
pub type PlumbProgressCallback = Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const PlumbProgress) -> bool>;

/// The caller's callback and pointer, carried into the trainer's step hook. The hook runs on the
/// thread that called `plumb_train`, never elsewhere, which is what makes these impls sound.
#[derive(Clone, Copy)]
struct Callback(PlumbProgressCallback, *mut c_void);
// SAFETY: only ever called on the thread that called plumb_train (see above).
unsafe impl Send for Callback {}
// SAFETY: as above.
unsafe impl Sync for Callback {}

impl Callback {
    fn control(self, base: &RunControl) -> RunControl {
        base.clone().with_on_step(move |s: &StepInfo| self.call(s))
    }

    fn call(&self, s: &StepInfo) -> bool {
        let Callback(Some(f), user) = *self else { return true };
        let js = CString::new(s.metrics.to_string()).unwrap_or_default();
        let grad_norm = s.metrics["grad_norm"].as_f64().unwrap_or(f64::NAN) as f32;
        let p = PlumbProgress { step: s.step as u64, total_steps: s.total as u64, loss: s.loss, lr: s.lr, grad_norm, metrics_json: js.as_ptr() };
        // SAFETY: the caller's callback and pointer (header contract); `p` outlives the call.
        unsafe { f(user, &p) }
    }
}

/// Train the model (its adapter only, when one is attached) with the method and settings of
/// `config_json`, for example `{"method": "dpo", "steps": 20, "lr": 1e-4, "beta": 0.1,
/// "out_dir": "/data/run1"}`. Data comes from `data` (texts for SFT, pairs for DPO) or, when
/// `data` is NULL, from the prepared file named by the config's `"data"`. DPO's reference is the
/// model with its adapter switched off, or without an adapter a second copy of the weights
/// of the model (`Model::try_clone`). `on_progress` (may be NULL) runs after every step.
///
/// Stopped by the callback or `plumb_model_cancel`, it returns `PLUMB_STATUS_CANCELLED`, keeps
/// the steps done and, with `out_dir`, leaves a checkpoint there: the same call with
/// `"resume": true` continues from it exactly. `*result_json` (may be NULL; free with
/// `plumb_string_free`) receives `{"method", "steps_done", "total_steps", "cancelled", "last"}`,
/// `last` being the final step's metrics. The trained model serves at once through
/// `plumb_generate`.
///
/// # Safety
/// Handles come from this library; `config_json` is NUL-terminated; `result_json` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_train(
    model: *const PlumbModel,
    config_json: *const c_char,
    data: *const PlumbData,
    on_progress: PlumbProgressCallback,
    user_data: *mut c_void,
    result_json: *mut *mut c_char,
) -> PlumbStatus {
    guard("plumb_train", || {
        put(result_json, std::ptr::null_mut());
        let handle = ref_arg(model, "model")?;
        let js: TrainJson = parse_json(str_arg(config_json, "config_json")?, "training config")?;
        let method = Method::parse(&js.method)?;
        if js.grad_accum == Some(0) {
            return Err(CError::new(PlumbStatus::Config, "training config: grad_accum must be at least 1 (micro-batches a step)"));
        }
        // SAFETY: `data` is NULL or comes from plumb_data_new (contract above).
        let data = unsafe { data.as_ref() };
        if data.is_some() == js.data.is_some() {
            return Err(CError::arg("give the training data either as `data` (a PlumbData) or as the config's \"data\" file, exactly one of them"));
        }
        let m = handle.lock()?;
        handle.control.reset();
        let control = Callback(on_progress, user_data).control(&handle.control);
        let (records, total) = match method {
            Method::Sft => train_sft(&m, &js, data, control)?,
            Method::Dpo => train_dpo(&m, &js, data, control)?,
            Method::Kto => train_kto(&m, &js, data, control)?,
        };
        let done = records.last().and_then(|r| r["step"].as_u64()).unwrap_or(0);
        let cancelled = handle.control.is_cancelled() && (done as usize) < total;
        let result = serde_json::json!({
            "method": js.method.to_ascii_lowercase(),
            "steps_done": done,
            "total_steps": total,
            "cancelled": cancelled,
            "last": records.last().cloned().unwrap_or(serde_json::Value::Null),
        });
        put_string(result_json, &result.to_string());
        if cancelled {
            let saved = match &js.out_dir {
                Some(d) => format!("a checkpoint is in {} (run again with \"resume\": true to continue)", d.join(format!("checkpoint-{done}")).display()),
                None => "no checkpoint was saved (no out_dir)".into(),
            };
            return Err(CError::new(PlumbStatus::Cancelled, format!("training stopped after step {done} of {total}; {saved}")));
        }
        Ok(())
    })
}

/// Tokens of one item: text through the tokenizer (without special tokens), ids as given.
fn tokens(m: &Loaded, item: &Item, what: &str) -> CResult<Vec<u32>> {
    match item {
        Item::Text(t) => m.encode(t, false),
        Item::Ids(ids) => {
            m.check_ids(ids, what)?;
            Ok(ids.clone())
        }
    }
}

fn schedule(js: &TrainJson, mut s: plumb_rs::train::schedule::Schedule, steps: usize) -> plumb_rs::train::schedule::Schedule {
    s.lr = js.lr.unwrap_or(s.lr);
    s.warmup = js.warmup.unwrap_or(s.warmup).min(steps / 2);
    s.min_lr = js.min_lr.unwrap_or(s.lr.min(s.min_lr));
    s.total = steps;
    s
}

/// SFT (next-token cross-entropy) on the texts of `data` or a prepared file. Returns each step's
/// metrics and the run's total steps.
fn train_sft(m: &Loaded, js: &TrainJson, data: Option<&PlumbData>, control: RunControl) -> CResult<(Vec<serde_json::Value>, usize)> {
    let d = SftConfig::default();
    let steps = js.steps.unwrap_or(d.steps);
    let cfg = SftConfig {
        batch_size: js.batch_size.unwrap_or(d.batch_size),
        grad_accum: js.grad_accum.unwrap_or(d.grad_accum),
        seq_len: js.seq_len.unwrap_or(d.seq_len.min(m.model.max_len())),
        steps,
        schedule: schedule(js, d.schedule.clone(), steps),
        eval_every: 0,
        out_dir: js.out_dir.clone(),
        resume: js.resume,
        seed: js.seed,
        control,
        ..d
    };
    let pad = m.tokenizer.as_ref().and_then(|t| t.pad_id().or(t.eos_id())).unwrap_or(0);
    let source: Box<dyn BatchSource> = match (data, &js.data) {
        (Some(d), _) => {
            if d.texts.is_empty() {
                return Err(CError::arg("SFT needs texts: the PlumbData has none (plumb_data_add_text)"));
            }
            let eos = m.tokenizer.as_ref().and_then(|t| t.eos_id());
            let mut stream = Vec::new();
            for (i, item) in d.texts.iter().enumerate() {
                stream.extend(tokens(m, item, &format!("text {i}"))?);
                if matches!(item, Item::Text(_)) {
                    stream.extend(eos);
                }
            }
            Box::new(StreamSource::from_tokens(stream, js.seed, "texts from the app"))
        }
        (None, Some(path)) => match Dataset::open(path)?.kind() {
            DatasetKind::TokenStream => Box::new(StreamSource::from_file(TokenStream::open(path)?, js.seed)),
            DatasetKind::PromptCompletion => Box::new(SftSource::new(SftDataset::open(path)?, js.seed, pad)?),
            k => return Err(CError::new(PlumbStatus::Format, format!("{}: a {k:?} file, not SFT data (a token stream or prompt/completion rows)", path.display()))),
        },
        (None, None) => unreachable!("checked by plumb_train"),
    };
    let report = sft::train(&m.model, source.as_ref(), None, &cfg)?;
    let records = report
        .losses
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!({"step": report.start_step + i + 1, "loss": l}))
        .collect();
    Ok((records, steps))
}

/// The alignment trainers' shared settings from the JSON config (DPO, KTO).
fn align_config(m: &Loaded, js: &TrainJson, control: RunControl) -> TrainConfig {
    let d = TrainConfig::default();
    let steps = js.steps.unwrap_or(d.steps);
    let max_len = js.max_len.unwrap_or(d.max_len.min(m.model.max_len()));
    TrainConfig {
        steps,
        batch_size: js.batch_size.unwrap_or(d.batch_size),
        grad_accum: js.grad_accum.unwrap_or(d.grad_accum),
        max_len,
        max_prompt_len: js.max_prompt_len.unwrap_or(d.max_prompt_len.min(max_len / 2)),
        schedule: schedule(js, d.schedule.clone(), steps),
        seed: js.seed,
        out_dir: js.out_dir.clone(),
        resume: js.resume,
        control,
        ..d
    }
}

/// DPO on the pairs of `data` or a prepared preference file.
fn train_dpo(m: &Loaded, js: &TrainJson, data: Option<&PlumbData>, control: RunControl) -> CResult<(Vec<serde_json::Value>, usize)> {
    let train = align_config(m, js, control);
    let steps = train.steps;
    let loss = DpoConfig { beta: js.beta.unwrap_or(DpoConfig::default().beta), ..DpoConfig::default() };
    let pad_id = m.tokenizer.as_ref().and_then(|t| t.pad_id().or(t.eos_id())).unwrap_or(0);
    let dpo = Dpo::new(DpoTrainConfig { train, loss, pad_id });
    let file;
    let memory: Vec<Pair>;
    let pairs: &dyn Pairs = match (data, &js.data) {
        (Some(d), _) => {
            if d.pairs.is_empty() {
                return Err(CError::arg("DPO needs preference pairs: the PlumbData has none (plumb_data_add_pair)"));
            }
            memory = d
                .pairs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let f = |it, w: &str| tokens(m, it, &format!("pair {i} {w}"));
                    Ok(Pair { prompt: f(&p.prompt, "prompt")?, chosen: f(&p.chosen, "chosen")?, rejected: f(&p.rejected, "rejected")?, reference: None })
                })
                .collect::<CResult<_>>()?;
            &memory
        }
        (None, Some(path)) => {
            file = PreferenceDataset::open(path)?;
            &file
        }
        (None, None) => unreachable!("checked by plumb_train"),
    };
    let records = if m.model.lora().is_some() {
        dpo.train(&m.model, pairs, Reference::Adapters)?
    } else {
        let reference = m.model.try_clone()?;
        dpo.train(&m.model, pairs, Reference::Model(&reference))?
    };
    let records = records.iter().map(|r| serde_json::to_value(r).unwrap_or(serde_json::Value::Null)).collect();
    Ok((records, steps))
}


/// KTO on the thumbs up/down answers of `data` or a prepared unpaired file (`plumb data
/// prepare` of `{"prompt", "completion", "label"}` rows).
fn train_kto(m: &Loaded, js: &TrainJson, data: Option<&PlumbData>, control: RunControl) -> CResult<(Vec<serde_json::Value>, usize)> {
    let train = align_config(m, js, control);
    let steps = train.steps;
    let d = KtoConfig::default();
    let loss_type = match &js.loss_type {
        Some(t) => t.parse::<KtoLoss>()?,
        None => d.loss_type,
    };
    let loss = KtoConfig {
        beta: js.beta.unwrap_or(d.beta),
        loss_type,
        desirable_weight: js.desirable_weight.unwrap_or(d.desirable_weight),
        undesirable_weight: js.undesirable_weight.unwrap_or(d.undesirable_weight),
    };
    loss.check()?;
    let pad_id = m.tokenizer.as_ref().and_then(|t| t.pad_id().or(t.eos_id())).unwrap_or(0);
    let kto = Kto::new(KtoTrainConfig { train, loss, pad_id });
    let file;
    let memory: Vec<Completion>;
    let rows: &dyn Completions = match (data, &js.data) {
        (Some(d), _) => {
            if d.feedback.is_empty() {
                return Err(CError::arg("KTO needs answers with feedback: the PlumbData has none (plumb_data_add_feedback)"));
            }
            memory = d
                .feedback
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let t = |it, w: &str| tokens(m, it, &format!("feedback {i} {w}"));
                    Ok(Completion { prompt: t(&f.prompt, "prompt")?, completion: t(&f.completion, "completion")?, label: f.desirable })
                })
                .collect::<CResult<_>>()?;
            &memory
        }
        (None, Some(path)) => {
            file = UnpairedDataset::open(path)?;
            &file
        }
        (None, None) => unreachable!("checked by plumb_train"),
    };
    let metrics = if m.model.lora().is_some() {
        kto.train(&m.model, rows, Reference::Adapters)?
    } else {
        let reference = m.model.try_clone()?;
        kto.train(&m.model, rows, Reference::Model(&reference))?
    };
    let records = metrics.iter().map(|r| serde_json::to_value(r).unwrap_or(serde_json::Value::Null)).collect();
    Ok((records, steps))
}
