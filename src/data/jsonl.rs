//! JSONL import: TRL's dataset formats, one JSON object per line, to a plumb dataset file.
//!
//! Input row shapes (detected per line by their keys; values are strings, or lists of
//! `{"role", "content"}` messages for the conversational variants):
//! - `{"text"}` language modeling; `{"messages"}` conversational language modeling;
//! - `{"prompt", "completion"}` prompt/completion;
//! - `{"prompt", "chosen", "rejected"}` preference with explicit prompt, `{"chosen", "rejected"}`
//!   with implicit prompt (the longest common prefix, TRL's `extract_prompt` rule: a space just
//!   before the split goes with the completions);
//! - `{"prompt", "completion", "label"}` unpaired feedback (KTO; `label` true = desirable);
//! - `{"prompt"}` prompt only.
//!
//! Output kinds ([`OutputFormat`]): `text` (token stream: text, messages, prompt+completion
//! joined), `sft` (prompt/completion; `messages` split before the last assistant turn),
//! `preference`, `prompts` (the prompt of any row that has one). `auto` picks from the first row:
//! text -> text, messages and prompt/completion -> sft, chosen/rejected -> preference, prompt ->
//! prompts. Conversations are rendered with the built-in ChatML template ([`super::chat`]).
//!
//! The file is read line by line (never whole); rows are streamed into `<output>.tmp`, renamed
//! when complete. Errors read `data.jsonl:17: field `chosen`: expected a string ...`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chat;
use super::format::{DatasetKind, DatasetWriter};
use super::rows::{parse_line, resolve_kind, Row};
use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Which dataset kind to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Decide from the first row's shape.
    #[default]
    Auto,
    /// Token stream (pretraining / language modeling).
    Text,
    /// Prompt/completion (SFT).
    Sft,
    /// Prompt, chosen, rejected (DPO).
    Preference,
    /// Prompts only (PPO, GRPO).
    Prompts,
    /// Prompt, completion, label (KTO).
    Unpaired,
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<OutputFormat> {
        match s {
            "auto" => Ok(OutputFormat::Auto),
            "text" => Ok(OutputFormat::Text),
            "sft" => Ok(OutputFormat::Sft),
            "preference" => Ok(OutputFormat::Preference),
            "prompts" => Ok(OutputFormat::Prompts),
            "unpaired" => Ok(OutputFormat::Unpaired),
            _ => Err(Error::config("format", format!("`{s}`; expected auto, text, sft, preference, prompts or unpaired"))),
        }
    }
}

/// What to do with a row longer than `max_len` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Cut completions (chosen and rejected) at the end, documents at the end, prompts-only rows
    /// at the start (generation continues from the end). A row whose prompt alone reaches
    /// `max_len` is dropped.
    #[default]
    Truncate,
    /// Drop the row.
    Drop,
}

/// Options for [`prepare`].
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Output kind (default: auto).
    pub format: OutputFormat,
    /// Longest row in tokens (prompt + longest completion), if any.
    pub max_len: Option<usize>,
    /// Truncate or drop rows over `max_len`.
    pub overflow: Overflow,
    /// Append the tokenizer's EOS to documents, completions, chosen and rejected (not prompts).
    pub append_eos: bool,
    /// Preference output only: reserve the reference log-prob section to fill in place later.
    pub reserve_reference_logps: bool,
    /// Let the tokenizer add its special tokens to the first part of each row (document or
    /// prompt), as Hugging Face and TRL do by default: BOS for Llama-style tokenizers, nothing
    /// for GPT-2 or byte-level. Default true.
    pub add_special_tokens: bool,
}

impl Default for PrepareOptions {
    fn default() -> PrepareOptions {
        PrepareOptions {
            format: OutputFormat::Auto,
            max_len: None,
            overflow: Overflow::Truncate,
            append_eos: false,
            reserve_reference_logps: false,
            add_special_tokens: true,
        }
    }
}

/// What [`prepare`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareSummary {
    /// Kind written.
    pub kind: DatasetKind,
    /// Non-blank lines read.
    pub lines: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Rows in the output file.
    pub rows: u64,
    /// Tokens in the output file.
    pub tokens: u64,
    /// Rows shortened to `max_len`.
    pub truncated: u64,
    /// Rows left out, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Conversational rows rendered with the chat template.
    pub conversational_rows: u64,
    /// The template they were rendered with (the model's own, or the built-in ChatML).
    pub chat_template: &'static str,
    /// Remarks worth showing (e.g. the tokenizer's own chat template was not used).
    pub notes: Vec<String>,
}

impl PrepareSummary {
    /// Total rows dropped.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kind:      {}", self.kind.name())?;
        writeln!(f, "lines:     {} ({} blank skipped)", self.lines, self.blank_lines)?;
        writeln!(f, "rows:      {}", self.rows)?;
        writeln!(f, "tokens:    {}", self.tokens)?;
        writeln!(f, "truncated: {}", self.truncated)?;
        writeln!(f, "dropped:   {}", self.dropped_total())?;
        for (why, n) in &self.dropped {
            writeln!(f, "  {n:>8}  {why}")?;
        }
        if self.conversational_rows > 0 {
            writeln!(f, "chat template: {} ({} conversational rows)", self.chat_template, self.conversational_rows)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Convert a TRL-style JSONL file to a plumb dataset at `output`.
pub fn prepare(input: &Path, output: &Path, tokenizer: &Tokenizer, opts: &PrepareOptions) -> Result<PrepareSummary> {
    prepare_with_progress(input, output, tokenizer, opts, &mut |_, _| {})
}

/// [`prepare`], calling `progress(bytes_read, file_size)` as it goes (for a progress bar).
pub fn prepare_with_progress(
    input: &Path,
    output: &Path,
    tokenizer: &Tokenizer,
    opts: &PrepareOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PrepareSummary> {
    let eos = match (opts.append_eos, tokenizer.eos_id()) {
        (true, None) => {
            return Err(Error::config("--append-eos", format!("tokenizer `{}` has no EOS token", tokenizer.name())))
        }
        (true, Some(e)) => Some(e),
        (false, _) => None,
    };
    if opts.max_len == Some(0) {
        return Err(Error::config("max length", "must be at least 1"));
    }
    crate::train::rundir::check_output_not_input(output, &[input])?;
    let file = File::open(input).map_err(|e| Error::io(input, e))?;
    let size = file.metadata().map_err(|e| Error::io(input, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let vocab =
        u32::try_from(tokenizer.vocab_size()).map_err(|_| Error::config("tokenizer", "vocabulary over 2^32"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);

    let mut sum = PrepareSummary {
        kind: DatasetKind::TokenStream,
        lines: 0,
        blank_lines: 0,
        rows: 0,
        tokens: 0,
        truncated: 0,
        dropped: BTreeMap::new(),
        conversational_rows: 0,
        chat_template: chat::TEMPLATE_NAME,
        notes: Vec::new(),
    };
    let template = ChatTemplate::for_tokenizer(tokenizer)?;
    sum.chat_template = template.name();
    let mut writer: Option<DatasetWriter> = None;
    let mut kind: Option<DatasetKind> = None;
    let (mut first_line, mut bytes_read) = (1u64, 0u64);
    let mut batch = Batch::default();
    loop {
        // Read a batch of lines (bounded in count and bytes), streaming through the file.
        batch.clear();
        let eof = batch.fill(&mut reader).map_err(|e| Error::io(input, e))?;
        if batch.is_empty() {
            break;
        }
        bytes_read += batch.bytes.len() as u64;
        // The first non-blank row fixes the output kind (and creates the output file).
        let k = match kind {
            Some(k) => k,
            None => match batch.first_row(first_line).map_err(|(line, msg)| line_error(input, line, msg))? {
                Some(row) => *kind.insert(resolve_kind(opts.format, &row)),
                None => {
                    sum.blank_lines += batch.len() as u64;
                    first_line += batch.len() as u64;
                    continue;
                }
            },
        };
        if writer.is_none() {
            let mut w = DatasetWriter::create(output, k, vocab, tokenizer.eos_id())?;
            w.set_tokenizer_id(Some(tokenizer.identity()));
            if opts.reserve_reference_logps {
                w.reserve_reference_logps()?;
            }
            writer = Some(w);
        }
        // Parse, render and tokenize on all cores; then write in file order.
        let job = Job { kind: k, tokenizer, template: &template, opts, eos };
        let outcomes = batch.process(&job, threads);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let line = first_line + i as u64;
            match outcome.map_err(|msg| line_error(input, line, msg))? {
                Outcome::Blank => sum.blank_lines += 1,
                Outcome::Dropped { why, conversational } => {
                    sum.lines += 1;
                    sum.conversational_rows += u64::from(conversational);
                    *sum.dropped.entry(why.to_string()).or_default() += 1;
                }
                Outcome::Row { tokens, conversational, truncated } => {
                    sum.lines += 1;
                    sum.conversational_rows += u64::from(conversational);
                    sum.truncated += u64::from(truncated);
                    let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
                    if let Some(w) = writer.as_mut() {
                        w.push_row(&refs).map_err(|e| line_error(input, line, e.to_string()))?;
                    }
                }
            }
        }
        first_line += batch.len() as u64;
        progress(bytes_read, size);
        if eof {
            break;
        }
    }
    progress(bytes_read, size);
    let writer = writer.ok_or_else(|| Error::format(input, "no rows: the file has no JSON lines"))?;
    sum.kind = kind.unwrap_or(DatasetKind::TokenStream);
    sum.rows = writer.rows();
    sum.tokens = writer.tokens();
    if sum.rows == 0 {
        let why: Vec<String> = sum.dropped.iter().map(|(k, v)| format!("{v} {k}")).collect();
        return Err(Error::format(input, format!("no rows written (dropped: {})", why.join(", "))));
    }
    writer.finish()?;
    if sum.conversational_rows > 0 && !template.is_model_template() {
        sum.notes.push(format!("the tokenizer has no chat template; conversations use {}", chat::TEMPLATE_NAME));
    }
    Ok(sum)
}

/// Most worker threads used for tokenizing.
const MAX_THREADS: usize = 16;
/// A batch ends after this many lines or bytes.
const BATCH_LINES: usize = 8192;
const BATCH_BYTES: usize = 8 << 20;

/// Lines read from the file, back to back in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// End of each line in `bytes`.
    ends: Vec<usize>,
}

impl Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
    fn len(&self) -> usize {
        self.ends.len()
    }
    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// Read lines until the batch is full; true at end of file.
    fn fill(&mut self, reader: &mut impl BufRead) -> std::io::Result<bool> {
        while self.ends.len() < BATCH_LINES && self.bytes.len() < BATCH_BYTES {
            if reader.read_until(b'\n', &mut self.bytes)? == 0 {
                return Ok(true);
            }
            self.ends.push(self.bytes.len());
        }
        Ok(false)
    }
    fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
    /// The first non-blank row, or the (line number, message) of the error before it.
    fn first_row(&self, first_line: u64) -> std::result::Result<Option<Row>, (u64, String)> {
        for i in 0..self.len() {
            if let Some(row) = parse_line(self.line(i)).map_err(|m| (first_line + i as u64, m))? {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }
    /// Each line's outcome, in order; contiguous chunks run on `threads` threads. A chunk stops
    /// at its first error (only the earliest error of the batch is reported).
    fn process(&self, job: &Job<'_>, threads: usize) -> Vec<std::result::Result<Outcome, String>> {
        let run = |range: std::ops::Range<usize>| {
            let mut out = Vec::with_capacity(range.len());
            for i in range {
                let o = job.line(self.line(i));
                let failed = o.is_err();
                out.push(o);
                if failed {
                    break;
                }
            }
            out
        };
        let n = self.len();
        if threads <= 1 || n < 64 {
            return run(0..n);
        }
        let chunk = n.div_ceil(threads);
        let results: Vec<Vec<_>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n).step_by(chunk).map(|a| s.spawn(move || run(a..(a + chunk).min(n)))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| vec![Err("internal error: tokenizer thread panicked".into())]))
                .collect()
        });
        let mut all = Vec::with_capacity(n);
        for part in results {
            let failed = part.last().is_some_and(|o| o.is_err());
            all.extend(part);
            if failed {
                break;
            }
        }
        all
    }
}

/// Everything a worker needs to turn a line into a row.
struct Job<'a> {
    kind: DatasetKind,
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    opts: &'a PrepareOptions,
    eos: Option<u32>,
}

/// What one line became.
enum Outcome {
    Blank,
    Dropped { why: &'static str, conversational: bool },
    Row { tokens: Vec<Vec<u32>>, conversational: bool, truncated: bool },
}

impl Job<'_> {
    /// Parse, render, tokenize, add EOS and fit one line.
    fn line(&self, bytes: &[u8]) -> std::result::Result<Outcome, String> {
        let Some(row) = parse_line(bytes)? else { return Ok(Outcome::Blank) };
        let conversational = row.is_conversational();
        let k = self.kind;
        let segments = row.to_segments(k, self.template)?;
        let mut tokens = Vec::with_capacity(segments.len());
        for (i, s) in segments.iter().enumerate() {
            let ids = if i == 0 && self.opts.add_special_tokens {
                self.tokenizer.encode_with_special_tokens(s)
            } else {
                self.tokenizer.encode(s)
            };
            tokens.push(ids.map_err(|e| e.to_string())?);
        }
        if let Some(why) = empty_reason(k, &segments, &tokens) {
            return Ok(Outcome::Dropped { why, conversational });
        }
        if let Some(e) = self.eos {
            // EOS ends every generated part: documents, completions, chosen, rejected.
            let from = usize::from(k != DatasetKind::TokenStream);
            if k != DatasetKind::Prompts {
                tokens.iter_mut().skip(from).for_each(|t| t.push(e));
            }
        }
        let truncated = match fit_length(k, &mut tokens, self.opts) {
            Fit::Keep => false,
            Fit::Truncated => true,
            Fit::Drop(why) => return Ok(Outcome::Dropped { why, conversational }),
        };
        if k == DatasetKind::Unpaired {
            // the label segment: one value, 1 desirable, 0 undesirable
            let label = row.label().ok_or("an unpaired row needs a `label`")?;
            tokens.push(vec![u32::from(label)]);
        }
        Ok(Outcome::Row { tokens, conversational, truncated })
    }
}

/// `input:line: msg`: the Format error's path carries the line number so it prints as one.
fn line_error(input: &Path, line: u64, msg: String) -> Error {
    Error::format(PathBuf::from(format!("{}:{line}", input.display())), msg)
}

/// Whether a row fits `max_len`, was cut to fit, or is dropped (and why).
enum Fit {
    Keep,
    Truncated,
    Drop(&'static str),
}

/// Apply `max_len` to one row's token segments.
fn fit_length(kind: DatasetKind, t: &mut [Vec<u32>], opts: &PrepareOptions) -> Fit {
    let Some(max) = opts.max_len else { return Fit::Keep };
    let prompt = if matches!(kind, DatasetKind::TokenStream | DatasetKind::Prompts) { 0 } else { t[0].len() };
    let longest = match kind {
        DatasetKind::TokenStream | DatasetKind::Prompts => t[0].len(),
        _ => prompt + t[1..].iter().map(Vec::len).max().unwrap_or(0),
    };
    if longest <= max {
        return Fit::Keep;
    }
    if opts.overflow == Overflow::Drop {
        return Fit::Drop("longer than max length");
    }
    match kind {
        DatasetKind::TokenStream => t[0].truncate(max),
        DatasetKind::Prompts => {
            let cut = t[0].len() - max;
            t[0].drain(..cut);
        }
        _ => {
            if prompt >= max {
                return Fit::Drop("prompt alone reaches max length");
            }
            t[1..].iter_mut().for_each(|c| c.truncate(max - prompt));
        }
    }
    Fit::Truncated
}

/// Why a row with an empty part is dropped, if it is. A part is empty when its text is (a BOS
/// the tokenizer added does not make it non-empty) or it tokenized to nothing.
fn empty_reason(kind: DatasetKind, texts: &[String], t: &[Vec<u32>]) -> Option<&'static str> {
    let empty = |i: usize| texts[i].is_empty() || t[i].is_empty();
    match kind {
        DatasetKind::TokenStream if empty(0) => Some("empty text"),
        DatasetKind::Prompts if empty(0) => Some("empty prompt"),
        DatasetKind::PromptCompletion | DatasetKind::Unpaired if empty(1) => Some("empty completion"),
        DatasetKind::Preference if empty(1) || empty(2) => Some("empty chosen or rejected"),
        DatasetKind::Preference if t[1] == t[2] => Some("chosen equals rejected"),
        _ => None,
    }
}
