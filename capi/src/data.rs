//! Training data in memory: what an app collected (texts for SFT, preference pairs for DPO,
//! thumbs up/down on single answers for KTO),
//! as strings or token ids, with no file in between. Strings are tokenized when training starts,
//! with the model's tokenizer.

use crate::ffi::{guard, out_arg, put, ref_arg, str_arg, CError, CResult, PlumbStatus};
use std::ffi::c_char;

/// A piece of text or its token ids.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    Text(String),
    Ids(Vec<u32>),
}

/// One preference: a prompt, the preferred and the rejected completion.
#[derive(Clone, Debug)]
pub(crate) struct PairItem {
    pub prompt: Item,
    pub chosen: Item,
    pub rejected: Item,
}

/// One answer with its feedback: a prompt, a completion, and whether it was desirable (KTO).
#[derive(Clone, Debug)]
pub(crate) struct FeedbackItem {
    pub prompt: Item,
    pub completion: Item,
    pub desirable: bool,
}

/// Examples for training, filled by the `plumb_data_add_*` functions. Not thread-safe: fill
/// it from one thread at a time (it may move between threads). Training copies what it needs,
/// so it may be freed or refilled once `plumb_train` returns.
#[derive(Default)]
pub struct PlumbData {
    pub(crate) texts: Vec<Item>,
    pub(crate) pairs: Vec<PairItem>,
    pub(crate) feedback: Vec<FeedbackItem>,
}

/// `n` values at `p` as a slice (NULL allowed when `n` is 0).
pub(crate) fn slice_arg<'a, T>(p: *const T, n: usize, name: &str) -> CResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CError::arg(format!("`{name}` is NULL but its length is {n}")));
    }
    // SAFETY: `p` points to `n` values that outlive the call (header contract).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

fn data_mut<'a>(d: *mut PlumbData) -> CResult<&'a mut PlumbData> {
    // SAFETY: non-NULL handles come from plumb_data_new (header contract).
    unsafe { d.as_mut() }.ok_or_else(|| CError::arg("`data` is NULL"))
}

/// A new, empty data set. Free with `plumb_data_free`.
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_new(out: *mut *mut PlumbData) -> PlumbStatus {
    guard("plumb_data_new", || {
        let out = out_arg(out, "out")?;
        put(out, Box::into_raw(Box::<PlumbData>::default()));
        Ok(())
    })
}

/// Free a data set (NULL is ignored).
///
/// # Safety
/// `data` comes from `plumb_data_new`, is not used afterwards and is not freed twice.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_free(data: *mut PlumbData) {
    if !data.is_null() {
        // SAFETY: made by Box::into_raw in plumb_data_new (contract above).
        drop(unsafe { Box::from_raw(data) });
    }
}

/// Add a text for SFT (the model learns to continue it; an end-of-sequence token follows it).
///
/// # Safety
/// `data` comes from `plumb_data_new`; `text` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_text(data: *mut PlumbData, text: *const c_char) -> PlumbStatus {
    guard("plumb_data_add_text", || {
        let t = str_arg(text, "text")?.to_string();
        data_mut(data)?.texts.push(Item::Text(t));
        Ok(())
    })
}

/// Add a token sequence for SFT (used as given: add an end-of-sequence id yourself if wanted).
///
/// # Safety
/// `data` comes from `plumb_data_new`; `ids` holds `n_ids` values.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_tokens(data: *mut PlumbData, ids: *const u32, n_ids: usize) -> PlumbStatus {
    guard("plumb_data_add_tokens", || {
        let ids = slice_arg(ids, n_ids, "ids")?.to_vec();
        if ids.is_empty() {
            return Err(CError::arg("the token sequence is empty"));
        }
        data_mut(data)?.texts.push(Item::Ids(ids));
        Ok(())
    })
}

/// Add a preference pair for DPO: a prompt, the preferred (`chosen`) and the rejected completion.
///
/// # Safety
/// `data` comes from `plumb_data_new`; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_pair(data: *mut PlumbData, prompt: *const c_char, chosen: *const c_char, rejected: *const c_char) -> PlumbStatus {
    guard("plumb_data_add_pair", || {
        let item = |p, name| Ok::<_, CError>(Item::Text(str_arg(p, name)?.to_string()));
        let pair = PairItem { prompt: item(prompt, "prompt")?, chosen: item(chosen, "chosen")?, rejected: item(rejected, "rejected")? };
        data_mut(data)?.pairs.push(pair);
        Ok(())
    })
}

/// Add a preference pair as token ids (the prompt may be empty, the completions may not).
///
/// # Safety
/// `data` comes from `plumb_data_new`; each array holds the number of values given with it.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_pair_tokens(
    data: *mut PlumbData,
    prompt: *const u32,
    n_prompt: usize,
    chosen: *const u32,
    n_chosen: usize,
    rejected: *const u32,
    n_rejected: usize,
) -> PlumbStatus {
    guard("plumb_data_add_pair_tokens", || {
        let (c, r) = (slice_arg(chosen, n_chosen, "chosen")?, slice_arg(rejected, n_rejected, "rejected")?);
        if c.is_empty() || r.is_empty() {
            return Err(CError::arg("the chosen and rejected completions need at least one token each"));
        }
        let pair = PairItem { prompt: Item::Ids(slice_arg(prompt, n_prompt, "prompt")?.to_vec()), chosen: Item::Ids(c.to_vec()), rejected: Item::Ids(r.to_vec()) };
        data_mut(data)?.pairs.push(pair);
        Ok(())
    })
}

/// Add one answer with its thumbs up (`desirable` true) or down, for KTO: the prompt and the
/// model's completion as the user saw them.
///
/// # Safety
/// `data` comes from `plumb_data_new`; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_feedback(data: *mut PlumbData, prompt: *const c_char, completion: *const c_char, desirable: bool) -> PlumbStatus {
    guard("plumb_data_add_feedback", || {
        let item = |p, name| Ok::<_, CError>(Item::Text(str_arg(p, name)?.to_string()));
        let f = FeedbackItem { prompt: item(prompt, "prompt")?, completion: item(completion, "completion")?, desirable };
        data_mut(data)?.feedback.push(f);
        Ok(())
    })
}

/// Add one answer with its feedback as token ids (the prompt may be empty, the completion may not).
///
/// # Safety
/// `data` comes from `plumb_data_new`; each array holds the number of values given with it.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_add_feedback_tokens(
    data: *mut PlumbData,
    prompt: *const u32,
    n_prompt: usize,
    completion: *const u32,
    n_completion: usize,
    desirable: bool,
) -> PlumbStatus {
    guard("plumb_data_add_feedback_tokens", || {
        let c = slice_arg(completion, n_completion, "completion")?;
        if c.is_empty() {
            return Err(CError::arg("the completion needs at least one token"));
        }
        let f = FeedbackItem { prompt: Item::Ids(slice_arg(prompt, n_prompt, "prompt")?.to_vec()), completion: Item::Ids(c.to_vec()), desirable };
        data_mut(data)?.feedback.push(f);
        Ok(())
    })
}

/// The number of answers with feedback (KTO) added so far.
///
/// # Safety
/// `data` comes from `plumb_data_new`; the output is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_feedback_count(data: *const PlumbData, n_feedback: *mut usize) -> PlumbStatus {
    guard("plumb_data_feedback_count", || {
        put(n_feedback, ref_arg(data, "data")?.feedback.len());
        Ok(())
    })
}

/// The number of SFT texts and of preference pairs added so far.
///
/// # Safety
/// `data` comes from `plumb_data_new`; the outputs are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn plumb_data_count(data: *const PlumbData, n_texts: *mut usize, n_pairs: *mut usize) -> PlumbStatus {
    guard("plumb_data_count", || {
        let d = ref_arg(data, "data")?;
        put(n_texts, d.texts.len());
        put(n_pairs, d.pairs.len());
        Ok(())
    })
}
