//! The on-disk dataset format: one versioned, little-endian binary file per dataset, read through
//! a memory map so training touches only the rows it samples.
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"PLUMBDS\0"
//!      8     4  format version (1)
//!     12     4  kind: 1 token stream, 2 prompt/completion, 3 preference, 4 prompts
//!     16     4  bytes per token id: 2 (u16, vocabulary <= 65536) or 4 (u32)
//!     20     4  vocabulary size (every token id is below it)
//!     24     4  EOS id of the tokenizer (u32::MAX: none)
//!     28     4  flags (bit 0: reference log-probs filled in)
//!     32     8  number of rows            40  8  number of tokens
//!     48     8  offsets section start     56  8  offsets section length (bytes)
//!     64     8  tokens section start      72  8  tokens section length (bytes)
//!     80     8  reference section start   88  8  reference section length (0: none)
//!     96     8  FNV-1a checksum of the offsets table
//!    104     8  FNV-1a checksum of the tokens section (flag bit 1; files before it: 0)
//!    112     8  identity of the tokenizer that wrote the ids (flag bit 2; see Tokenizer::identity)
//!    120     8  FNV-1a checksum of bytes 0..120
//!    128        tokens (u16 or u32 each), padded to 8 bytes
//!               offsets: rows * segments + 1 u64 token indices; segment s of row r is
//!               tokens[off[r*S + s] .. off[r*S + s + 1]]
//!               reference log-probs (preference only): rows * 2 f32 (chosen, rejected)
//! ```
//!
//! Segments per row: token stream 1 (a document), prompt/completion 2, preference 3 (prompt,
//! chosen, rejected), prompts 1. Tokens come before the offsets so a writer can stream tokens
//! straight to disk and append the table (kept in memory, 8 bytes per boundary) at the end.
//! [`validate`] checks the header, every section against the file length and every offset before
//! anything is read, so a bad file is an error, never a panic or an out-of-bounds read. A file
//! truncated by another process *while* mapped cannot be guarded against (the OS raises SIGBUS).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// First 8 bytes of every plumb dataset.
pub const MAGIC: [u8; 8] = *b"PLUMBDS\0";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: u64 = 128;
/// Header flag: the reference log-prob section has been filled in.
pub const FLAG_REFERENCE_FILLED: u32 = 1;
/// Header flag: bytes 104..112 hold the checksum of the tokens section.
pub const FLAG_TOKENS_CHECKSUM: u32 = 2;
/// Header flag: bytes 112..120 hold the tokenizer's identity.
pub const FLAG_TOKENIZER_ID: u32 = 4;
/// Stored in the EOS field when the tokenizer has no EOS token.
const NO_EOS: u32 = u32::MAX;

/// What a dataset's rows hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// Pretraining: documents concatenated into one stream (one segment per document).
    TokenStream,
    /// SFT: prompt tokens then completion tokens; the loss covers the completion only.
    PromptCompletion,
    /// DPO-style preference: prompt, chosen completion, rejected completion.
    Preference,
    /// RL (PPO, GRPO): prompts to generate from.
    Prompts,
    /// KTO-style unpaired feedback: prompt, completion, and a one-token label segment holding
    /// 1 (desirable, thumbs up) or 0 (undesirable).
    Unpaired,
}

impl DatasetKind {
    /// The number stored in the header.
    pub fn code(self) -> u32 {
        match self {
            DatasetKind::TokenStream => 1,
            DatasetKind::PromptCompletion => 2,
            DatasetKind::Preference => 3,
            DatasetKind::Prompts => 4,
            DatasetKind::Unpaired => 5,
        }
    }
    /// The kind for a header number.
    pub fn from_code(code: u32) -> Option<DatasetKind> {
        [DatasetKind::TokenStream, DatasetKind::PromptCompletion, DatasetKind::Preference, DatasetKind::Prompts, DatasetKind::Unpaired]
            .into_iter()
            .find(|k| k.code() == code)
    }
    /// Names of the token segments of one row, in storage order.
    pub fn segment_names(self) -> &'static [&'static str] {
        match self {
            DatasetKind::TokenStream => &["text"],
            DatasetKind::PromptCompletion => &["prompt", "completion"],
            DatasetKind::Preference => &["prompt", "chosen", "rejected"],
            DatasetKind::Prompts => &["prompt"],
            DatasetKind::Unpaired => &["prompt", "completion", "label"],
        }
    }
    /// Segments per row.
    pub fn segments(self) -> usize {
        self.segment_names().len()
    }
    /// A short name for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::TokenStream => "token stream",
            DatasetKind::PromptCompletion => "prompt/completion",
            DatasetKind::Preference => "preference",
            DatasetKind::Prompts => "prompts",
            DatasetKind::Unpaired => "unpaired",
        }
    }
}

/// Storage type of token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDType {
    /// 2 bytes per id, for vocabularies of at most 65,536 ids.
    U16,
    /// 4 bytes per id.
    U32,
}

impl TokenDType {
    /// The narrowest type that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: u32) -> TokenDType {
        if vocab_size <= 1 << 16 {
            TokenDType::U16
        } else {
            TokenDType::U32
        }
    }
    /// Bytes per token id.
    pub fn bytes(self) -> u64 {
        match self {
            TokenDType::U16 => 2,
            TokenDType::U32 => 4,
        }
    }
}

/// The decoded fixed header of a dataset file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the rows hold.
    pub kind: DatasetKind,
    /// Storage type of token ids.
    pub dtype: TokenDType,
    /// Every token id is below this.
    pub vocab_size: u32,
    /// The tokenizer's EOS id, if it had one.
    pub eos_id: Option<u32>,
    /// Bit set; see [`FLAG_REFERENCE_FILLED`].
    pub flags: u32,
    /// Number of rows (documents for a token stream).
    pub n_rows: u64,
    /// Number of token ids in the tokens section.
    pub n_tokens: u64,
    /// Byte range of the offsets table.
    pub offsets: (u64, u64),
    /// Byte range of the tokens.
    pub tokens: (u64, u64),
    /// Byte range of the reference log-probs (length 0: none).
    pub reference: (u64, u64),
    /// FNV-1a checksum of the offsets table.
    pub offsets_checksum: u64,
    /// FNV-1a checksum of the tokens section (None: a file written before plumb recorded it).
    pub tokens_checksum: Option<u64>,
    /// Identity of the tokenizer that wrote the ids (None: unknown, e.g. an older file).
    pub tokenizer_id: Option<u64>,
}

impl Header {
    /// Serialise to the fixed 128-byte layout (checksum included).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        let u32s = [
            VERSION,
            self.kind.code(),
            self.dtype.bytes() as u32,
            self.vocab_size,
            self.eos_id.unwrap_or(NO_EOS),
            (self.flags & !(FLAG_TOKENS_CHECKSUM | FLAG_TOKENIZER_ID))
                | if self.tokens_checksum.is_some() { FLAG_TOKENS_CHECKSUM } else { 0 }
                | if self.tokenizer_id.is_some() { FLAG_TOKENIZER_ID } else { 0 },
        ];
        for (i, v) in u32s.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let u64s = [
            self.n_rows,
            self.n_tokens,
            self.offsets.0,
            self.offsets.1,
            self.tokens.0,
            self.tokens.1,
            self.reference.0,
            self.reference.1,
            self.offsets_checksum,
            self.tokens_checksum.unwrap_or(0),
            self.tokenizer_id.unwrap_or(0),
        ];
        for (i, v) in u64s.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a(FNV_OFFSET, &b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parse and check the fixed header (magic, version, checksum, field values). Section bounds
    /// against the file are checked by [`validate`].
    pub fn parse(path: &Path, b: &[u8]) -> Result<Header> {
        let bad = |msg: String| Error::format(path, msg);
        if b.len() < HEADER_LEN as usize {
            return Err(bad(format!("truncated: {} bytes, smaller than the {HEADER_LEN}-byte header", b.len())));
        }
        if b[0..8] != MAGIC {
            return Err(bad(format!("not a plumb dataset (magic bytes {:?}, expected {:?})", &b[0..8], &MAGIC)));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "dataset format version {version}; this plumb reads version {VERSION}. Re-run `plumb data prepare`"
            )));
        }
        if fnv1a(FNV_OFFSET, &b[..120]) != u64_at(120) {
            return Err(bad("corrupted header (checksum mismatch)".into()));
        }
        let kind =
            DatasetKind::from_code(u32_at(12)).ok_or_else(|| bad(format!("unknown dataset kind {}", u32_at(12))))?;
        let dtype = match u32_at(16) {
            2 => TokenDType::U16,
            4 => TokenDType::U32,
            n => return Err(bad(format!("unsupported token size of {n} bytes (expected 2 or 4)"))),
        };
        let vocab_size = u32_at(20);
        if vocab_size == 0 || (dtype == TokenDType::U16 && vocab_size > 1 << 16) {
            return Err(bad(format!("vocabulary size {vocab_size} does not fit {}-byte token ids", dtype.bytes())));
        }
        let eos = u32_at(24);
        let flags = u32_at(28);
        Ok(Header {
            kind,
            dtype,
            vocab_size,
            eos_id: (eos != NO_EOS).then_some(eos),
            flags,
            n_rows: u64_at(32),
            n_tokens: u64_at(40),
            offsets: (u64_at(48), u64_at(56)),
            tokens: (u64_at(64), u64_at(72)),
            reference: (u64_at(80), u64_at(88)),
            offsets_checksum: u64_at(96),
            tokens_checksum: (flags & FLAG_TOKENS_CHECKSUM != 0).then(|| u64_at(104)),
            tokenizer_id: (flags & FLAG_TOKENIZER_ID != 0).then(|| u64_at(112)),
        })
    }

    /// Number of entries in the offsets table: rows * segments + 1.
    pub fn n_offsets(&self) -> Option<u64> {
        self.n_rows.checked_mul(self.kind.segments() as u64)?.checked_add(1)
    }
}

/// Check a whole mapped file: header, section sizes, alignment and bounds, exact file length,
/// then every offset (starts at 0, never decreases, ends at the token count) and its checksum.
pub fn validate(path: &Path, file: &[u8]) -> Result<Header> {
    let h = Header::parse(path, file)?;
    let bad = |msg: String| Error::format(path, msg);
    let len = file.len() as u64;
    let overflow = || bad("section sizes overflow (corrupted header)".into());
    let n_offsets = h.n_offsets().ok_or_else(overflow)?;
    let want_offsets = n_offsets.checked_mul(8).ok_or_else(overflow)?;
    let want_tokens = h.n_tokens.checked_mul(h.dtype.bytes()).ok_or_else(overflow)?;
    if h.offsets.1 != want_offsets {
        return Err(bad(format!("offsets section is {} bytes; {} rows need {want_offsets}", h.offsets.1, h.n_rows)));
    }
    if h.tokens.1 != want_tokens {
        return Err(bad(format!("tokens section is {} bytes; {} tokens need {want_tokens}", h.tokens.1, h.n_tokens)));
    }
    if h.reference.1 != 0 {
        let want_ref = h.n_rows.checked_mul(8).ok_or_else(overflow)?;
        if h.kind != DatasetKind::Preference || h.reference.1 != want_ref {
            return Err(bad(format!(
                "reference section is {} bytes; a {} file with {} rows may only hold 0 or {want_ref}",
                h.reference.1,
                h.kind.name(),
                h.n_rows
            )));
        }
    }
    // Each section must be aligned, start after the header, lie inside the file, and not overlap.
    let mut sections = vec![("tokens", h.tokens, 8), ("offsets", h.offsets, 8)];
    if h.reference.1 != 0 {
        sections.push(("reference log-probs", h.reference, 8));
    }
    sections.sort_by_key(|s| s.1);
    let mut end_of_previous = HEADER_LEN;
    for (name, (start, size), align) in &sections {
        let end = start.checked_add(*size).ok_or_else(overflow)?;
        if *start < end_of_previous || start % align != 0 {
            return Err(bad(format!("{name} section starts at byte {start}: misplaced (corrupted header)")));
        }
        if end > len {
            return Err(bad(format!("truncated: {name} section ends at byte {end} but the file has {len} bytes")));
        }
        end_of_previous = end;
    }
    if end_of_previous != len {
        return Err(bad(format!(
            "file has {len} bytes but its sections end at byte {end_of_previous} (truncated or trailing data)"
        )));
    }
    if cfg!(target_endian = "big") {
        return Err(bad("plumb datasets are little-endian; this big-endian host cannot map them".into()));
    }
    // Every offset, before any row is read.
    let table = &file[h.offsets.0 as usize..(h.offsets.0 + h.offsets.1) as usize];
    if fnv1a(FNV_OFFSET, table) != h.offsets_checksum {
        return Err(bad("corrupted offsets table (checksum mismatch)".into()));
    }
    let mut previous = 0u64;
    for (i, chunk) in table.chunks_exact(8).enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let off = u64::from_le_bytes(a);
        if (i == 0 && off != 0) || off < previous || off > h.n_tokens {
            return Err(bad(format!(
                "corrupted offsets table: entry {i} is {off} (previous {previous}, {} tokens)",
                h.n_tokens
            )));
        }
        previous = off;
    }
    if previous != h.n_tokens {
        return Err(bad(format!("corrupted offsets table: last entry is {previous}, expected {}", h.n_tokens)));
    }
    Ok(h)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The checksum used in headers: 64-bit FNV-1a of `bytes` (public so tools and tests can craft
/// files whose checksums hold but whose structure is wrong).
pub fn checksum(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

/// Check the tokens section of a validated file against the checksum in its header. Ok(false):
/// the file predates token checksums (nothing to check).
pub fn verify_tokens(path: &Path, file: &[u8], h: &Header) -> Result<bool> {
    let Some(want) = h.tokens_checksum else { return Ok(false) };
    let tokens = file
        .get(h.tokens.0 as usize..(h.tokens.0 + h.tokens.1) as usize)
        .ok_or_else(|| Error::format(path, "tokens section outside the file"))?;
    if fnv1a(FNV_OFFSET, tokens) != want {
        return Err(Error::format(
            path,
            "corrupted token ids (checksum of the tokens section does not match the header); re-run `plumb data prepare`",
        ));
    }
    Ok(true)
}

/// 64-bit FNV-1a, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Streams rows into `<path>.tmp`; [`DatasetWriter::finish`] writes the offsets table and header
/// and renames the file to `path`. Dropped without `finish` (an error upstream), it deletes the
/// temporary file, so `path` only ever appears complete.
pub struct DatasetWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    kind: DatasetKind,
    dtype: TokenDType,
    vocab_size: u32,
    eos_id: Option<u32>,
    offsets: Vec<u64>,
    n_tokens: u64,
    reserve_reference: bool,
    scratch: Vec<u8>,
    tokens_checksum: u64,
    tokenizer_id: Option<u64>,
}

impl DatasetWriter {
    /// Start writing a dataset of `kind` whose token ids are all below `vocab_size`.
    pub fn create(
        path: impl AsRef<Path>,
        kind: DatasetKind,
        vocab_size: u32,
        eos_id: Option<u32>,
    ) -> Result<DatasetWriter> {
        let path = path.as_ref().to_path_buf();
        if vocab_size == 0 {
            return Err(Error::config("vocabulary size", "must be at least 1"));
        }
        let tmp = crate::weights::tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN as usize]).map_err(|e| Error::io(&tmp, e))?;
        Ok(DatasetWriter {
            path,
            tmp,
            out: Some(out),
            kind,
            dtype: TokenDType::for_vocab(vocab_size),
            vocab_size,
            eos_id,
            offsets: vec![0],
            n_tokens: 0,
            reserve_reference: false,
            scratch: Vec::new(),
            tokens_checksum: FNV_OFFSET,
            tokenizer_id: None,
        })
    }

    /// Record the identity of the tokenizer that produced the ids ([`crate::tokenizer::Tokenizer::identity`]),
    /// so trainers can check the file against a model's tokenizer.
    pub fn set_tokenizer_id(&mut self, id: Option<u64>) {
        self.tokenizer_id = id;
    }

    /// Reserve the reference log-prob section (preference datasets only), to be filled in place
    /// later by [`write_reference_logps`]. Values read as absent until then.
    pub fn reserve_reference_logps(&mut self) -> Result<()> {
        if self.kind != DatasetKind::Preference {
            return Err(Error::config(
                "reference log-probs",
                format!("only preference datasets hold them, not {}", self.kind.name()),
            ));
        }
        self.reserve_reference = true;
        Ok(())
    }

    /// Append one row: exactly `kind.segments()` token slices (e.g. `[prompt, completion]`).
    pub fn push_row(&mut self, segments: &[&[u32]]) -> Result<()> {
        if segments.len() != self.kind.segments() {
            return Err(Error::config(
                "dataset row",
                format!("a {} row has {} segments, got {}", self.kind.name(), self.kind.segments(), segments.len()),
            ));
        }
        let vocab = self.vocab_size;
        if let Some(bad) = segments.iter().flat_map(|s| s.iter()).find(|&&id| id >= vocab) {
            return Err(Error::config("token id", format!("{bad} is outside the vocabulary of {vocab}")));
        }
        self.scratch.clear();
        for seg in segments {
            for &id in seg.iter() {
                match self.dtype {
                    TokenDType::U16 => self.scratch.extend_from_slice(&(id as u16).to_le_bytes()),
                    TokenDType::U32 => self.scratch.extend_from_slice(&id.to_le_bytes()),
                }
            }
            self.n_tokens += seg.len() as u64;
            self.offsets.push(self.n_tokens);
        }
        self.tokens_checksum = fnv1a(self.tokens_checksum, &self.scratch);
        let out = self.out.as_mut().ok_or_else(|| Error::config("dataset writer", "already finished"))?;
        out.write_all(&self.scratch).map_err(|e| Error::io(&self.tmp, e))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        (self.offsets.len() as u64 - 1) / self.kind.segments() as u64
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.n_tokens
    }

    /// Write the padding, offsets table, reference section and header; sync; rename into place.
    /// On any failure (a full disk included) the temporary file is deleted.
    pub fn finish(mut self) -> Result<()> {
        let result = self.finish_inner();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    fn finish_inner(&mut self) -> Result<()> {
        let tmp = self.tmp.clone();
        let io = |e| Error::io(&tmp, e);
        let mut out = self.out.take().ok_or_else(|| Error::config("dataset writer", "already finished"))?;
        let tokens = (HEADER_LEN, self.n_tokens * self.dtype.bytes());
        let pad = (8 - tokens.1 % 8) % 8;
        out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        let table: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let offsets = (tokens.0 + tokens.1 + pad, table.len() as u64);
        out.write_all(&table).map_err(io)?;
        let n_rows = self.rows();
        let reference = if self.reserve_reference {
            let nan: Vec<u8> = (0..n_rows * 2).flat_map(|_| f32::NAN.to_le_bytes()).collect();
            out.write_all(&nan).map_err(io)?;
            (offsets.0 + offsets.1, n_rows * 8)
        } else {
            (0, 0)
        };
        let header = Header {
            kind: self.kind,
            dtype: self.dtype,
            vocab_size: self.vocab_size,
            eos_id: self.eos_id,
            flags: 0,
            n_rows,
            n_tokens: self.n_tokens,
            offsets,
            tokens,
            reference,
            offsets_checksum: fnv1a(FNV_OFFSET, &table),
            tokens_checksum: Some(self.tokens_checksum),
            tokenizer_id: self.tokenizer_id,
        };
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&header.to_bytes()).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // Not finished: an error interrupted the import; leave nothing behind.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Store reference log-probs (chosen, rejected) for every row of a preference dataset. If the
/// file reserved the section, the values are written in place (the "filled" flag is set last, so
/// an interrupted write leaves them absent); otherwise the file is rewritten with the section,
/// atomically through `<path>.tmp`.
pub fn write_reference_logps(path: impl AsRef<Path>, values: &[[f32; 2]]) -> Result<()> {
    let path = path.as_ref();
    let ds = super::Dataset::open(path)?;
    let h = ds.header().clone();
    if h.kind != DatasetKind::Preference {
        return Err(Error::format(
            path,
            format!("reference log-probs belong to preference datasets; this is a {}", h.kind.name()),
        ));
    }
    if values.len() as u64 != h.n_rows {
        return Err(Error::config(
            "reference log-probs",
            format!("{} values for {} rows of {}", values.len(), h.n_rows, path.display()),
        ));
    }
    if h.reference.1 == 0 {
        let mut w = DatasetWriter::create(path, h.kind, h.vocab_size, h.eos_id)?;
        w.set_tokenizer_id(h.tokenizer_id);
        w.reserve_reference_logps()?;
        for r in 0..ds.n_rows() {
            let segs: Vec<Vec<u32>> =
                (0..3).map(|s| ds.segment(r, s).map(|t| t.to_vec()).unwrap_or_default()).collect();
            let refs: Vec<&[u32]> = segs.iter().map(Vec::as_slice).collect();
            w.push_row(&refs)?;
        }
        drop(ds);
        w.finish()?;
        return write_reference_logps(path, values);
    }
    drop(ds);
    let io = |e| Error::io(path, e);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes())).collect();
    file.seek(SeekFrom::Start(h.reference.0)).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    let filled = Header { flags: h.flags | FLAG_REFERENCE_FILLED, ..h };
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&filled.to_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}
