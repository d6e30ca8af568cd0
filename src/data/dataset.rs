//! Reading datasets: [`Dataset`] maps a file written by [`super::DatasetWriter`], validates it
//! whole (see [`super::format::validate`]) and hands out token slices per row without copying.
//! Typed views ([`TokenStream`], [`SftDataset`], [`PreferenceDataset`], [`PromptDataset`]) check
//! the kind once at open and name the segments.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::{self, DatasetKind, Header, TokenDType, FLAG_REFERENCE_FILLED, HEADER_LEN};
use crate::error::{Error, Result};

/// A borrowed run of token ids as stored (u16 or u32).
#[derive(Clone, Copy, Debug)]
pub enum Tokens<'a> {
    /// Two-byte ids.
    U16(&'a [u16]),
    /// Four-byte ids.
    U32(&'a [u32]),
}

impl<'a> Tokens<'a> {
    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Tokens::U16(s) => s.len(),
            Tokens::U32(s) => s.len(),
        }
    }
    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The id at `i`, if in range.
    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            Tokens::U16(s) => s.get(i).map(|&t| u32::from(t)),
            Tokens::U32(s) => s.get(i).copied(),
        }
    }
    /// The ids in `start..end`, if in range.
    pub fn slice(&self, start: usize, end: usize) -> Option<Tokens<'a>> {
        match self {
            Tokens::U16(s) => s.get(start..end).map(Tokens::U16),
            Tokens::U32(s) => s.get(start..end).map(Tokens::U32),
        }
    }
    /// Iterate the ids as u32.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (a, b) = match *self {
            Tokens::U16(s) => (Some(s.iter().map(|&t| u32::from(t))), None),
            Tokens::U32(s) => (None, Some(s.iter().copied())),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }
    /// Copy out as u32 (what GPU upload wants).
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

/// A validated, memory-mapped dataset file of any kind.
pub struct Dataset {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset").field("path", &self.path).field("header", &self.header).finish()
    }
}

impl Dataset {
    /// Map and validate a dataset file: header, every section against the file length, every
    /// offset. A bad file is an [`Error::Format`] naming the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < HEADER_LEN {
            // Too short to map usefully: parse what is there for the most precise message.
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            Header::parse(&path, &bytes)?;
            return Err(Error::format(&path, "truncated header"));
        }
        // SAFETY: the map is read-only; plumb never writes a file while it is mapped except the
        // reference section, through write_reference_logps, which readers treat as plain bytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = format::validate(&path, &map)?;
        Ok(Dataset { path, map, header })
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// What the rows hold.
    pub fn kind(&self) -> DatasetKind {
        self.header.kind
    }
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.header.n_rows as usize
    }
    /// Number of token ids in the file.
    pub fn n_tokens(&self) -> usize {
        self.header.n_tokens as usize
    }
    /// Storage type of ids.
    pub fn dtype(&self) -> TokenDType {
        self.header.dtype
    }
    /// Every id is below this (the tokenizer's vocabulary size at prepare time).
    pub fn vocab_size(&self) -> u32 {
        self.header.vocab_size
    }
    /// The tokenizer's EOS id at prepare time.
    pub fn eos_id(&self) -> Option<u32> {
        self.header.eos_id
    }

    /// All token ids, in file order.
    pub fn tokens(&self) -> Tokens<'_> {
        let (start, len) = self.header.tokens;
        let bytes = &self.map[start as usize..(start + len) as usize];
        // Alignment: the map is page-aligned and validate() checked the section start is 8-aligned.
        match self.header.dtype {
            TokenDType::U16 => Tokens::U16(bytemuck::cast_slice(bytes)),
            TokenDType::U32 => Tokens::U32(bytemuck::cast_slice(bytes)),
        }
    }

    /// Entry `i` of the offsets table (validated at open).
    fn offset(&self, i: usize) -> Option<usize> {
        if 8 * (i as u64 + 1) > self.header.offsets.1 {
            return None;
        }
        let at = self.header.offsets.0 as usize + 8 * i;
        let mut a = [0u8; 8];
        a.copy_from_slice(self.map.get(at..at + 8)?);
        Some(u64::from_le_bytes(a) as usize)
    }

    /// Segment `seg` of row `row` (see [`DatasetKind::segment_names`]); None if out of range.
    pub fn segment(&self, row: usize, seg: usize) -> Option<Tokens<'_>> {
        let s = self.header.kind.segments();
        if row >= self.n_rows() || seg >= s {
            return None;
        }
        let i = row * s + seg;
        self.tokens().slice(self.offset(i)?, self.offset(i + 1)?)
    }

    /// All of row `row` (its segments back to back); None if out of range.
    pub fn row(&self, row: usize) -> Option<Tokens<'_>> {
        let s = self.header.kind.segments();
        if row >= self.n_rows() {
            return None;
        }
        self.tokens().slice(self.offset(row * s)?, self.offset(row * s + s)?)
    }

    /// True when the file reserved a reference log-prob section.
    pub fn has_reference_section(&self) -> bool {
        self.header.reference.1 != 0
    }

    /// Reference log-probs (chosen, rejected) of `row`, once they have been filled in.
    pub fn reference_logps(&self, row: usize) -> Option<[f32; 2]> {
        if self.header.flags & FLAG_REFERENCE_FILLED == 0 || row >= self.n_rows() || !self.has_reference_section() {
            return None;
        }
        let at = self.header.reference.0 as usize + 8 * row;
        let b = self.map.get(at..at + 8)?;
        let f = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Some([f(0), f(4)])
    }

    /// Check the token ids against the checksum in the header (a full read). Ok(false): the file
    /// was written before plumb recorded token checksums, so nothing could be checked.
    pub fn verify_tokens(&self) -> Result<bool> {
        format::verify_tokens(&self.path, &self.map, &self.header)
    }

    /// Identity of the tokenizer that wrote the ids, when the file records it.
    pub fn tokenizer_id(&self) -> Option<u64> {
        self.header.tokenizer_id
    }

    /// The largest token id stored (a full scan), to check a dataset against a tokenizer or model.
    pub fn max_token_id(&self) -> Option<u32> {
        self.tokens().iter().max()
    }

    /// Error unless the file holds `kind`.
    fn expect_kind(self, kind: DatasetKind) -> Result<Dataset> {
        if self.kind() != kind {
            return Err(Error::format(
                &self.path,
                format!("expected a {} dataset, found a {} dataset", kind.name(), self.kind().name()),
            ));
        }
        Ok(self)
    }
}

/// Pretraining data: documents concatenated into one stream.
#[derive(Debug)]
pub struct TokenStream(Dataset);

impl TokenStream {
    /// Open a token-stream file.
    pub fn open(path: impl AsRef<Path>) -> Result<TokenStream> {
        Dataset::open(path)?.expect_kind(DatasetKind::TokenStream).map(TokenStream)
    }
    /// The underlying file.
    pub fn dataset(&self) -> &Dataset {
        &self.0
    }
    /// The whole stream (sample training windows from it).
    pub fn tokens(&self) -> Tokens<'_> {
        self.0.tokens()
    }
    /// Number of documents.
    pub fn n_documents(&self) -> usize {
        self.0.n_rows()
    }
    /// Document `i`.
    pub fn document(&self, i: usize) -> Option<Tokens<'_>> {
        self.0.segment(i, 0)
    }
}

/// One SFT example.
#[derive(Clone, Copy, Debug)]
pub struct SftRow<'a> {
    /// Conditioning tokens (no loss).
    pub prompt: Tokens<'a>,
    /// Target tokens (the loss covers these).
    pub completion: Tokens<'a>,
}

/// SFT data: prompt/completion rows.
#[derive(Debug)]
pub struct SftDataset(Dataset);

impl SftDataset {
    /// Open a prompt/completion file.
    pub fn open(path: impl AsRef<Path>) -> Result<SftDataset> {
        Dataset::open(path)?.expect_kind(DatasetKind::PromptCompletion).map(SftDataset)
    }
    /// The underlying file.
    pub fn dataset(&self) -> &Dataset {
        &self.0
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.n_rows()
    }
    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `i`.
    pub fn get(&self, i: usize) -> Option<SftRow<'_>> {
        Some(SftRow { prompt: self.0.segment(i, 0)?, completion: self.0.segment(i, 1)? })
    }
}

/// One preference triple.
#[derive(Clone, Copy, Debug)]
pub struct PreferenceRow<'a> {
    /// Shared prompt.
    pub prompt: Tokens<'a>,
    /// Preferred completion.
    pub chosen: Tokens<'a>,
    /// Dispreferred completion.
    pub rejected: Tokens<'a>,
    /// Reference model log-probs of (chosen, rejected), once computed and stored.
    pub reference_logps: Option<[f32; 2]>,
}

/// Preference data: (prompt, chosen, rejected) rows, with optional reference log-probs.
#[derive(Debug)]
pub struct PreferenceDataset(Dataset);

impl PreferenceDataset {
    /// Open a preference file.
    pub fn open(path: impl AsRef<Path>) -> Result<PreferenceDataset> {
        Dataset::open(path)?.expect_kind(DatasetKind::Preference).map(PreferenceDataset)
    }
    /// The underlying file.
    pub fn dataset(&self) -> &Dataset {
        &self.0
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.n_rows()
    }
    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `i`.
    pub fn get(&self, i: usize) -> Option<PreferenceRow<'_>> {
        Some(PreferenceRow {
            prompt: self.0.segment(i, 0)?,
            chosen: self.0.segment(i, 1)?,
            rejected: self.0.segment(i, 2)?,
            reference_logps: self.0.reference_logps(i),
        })
    }
}

/// One unpaired feedback row (KTO).
#[derive(Clone, Copy, Debug)]
pub struct UnpairedRow<'a> {
    /// Prompt.
    pub prompt: Tokens<'a>,
    /// Completion.
    pub completion: Tokens<'a>,
    /// True when the completion is desirable (thumbs up).
    pub label: bool,
}

/// Unpaired feedback: (prompt, completion, label) rows, TRL's unpaired preference format.
#[derive(Debug)]
pub struct UnpairedDataset(Dataset);

impl UnpairedDataset {
    /// Open an unpaired file; every label must be 0 or 1.
    pub fn open(path: impl AsRef<Path>) -> Result<UnpairedDataset> {
        let d = Dataset::open(path)?.expect_kind(DatasetKind::Unpaired)?;
        for i in 0..d.n_rows() {
            let ok = d.segment(i, 2).is_some_and(|l| l.len() == 1 && l.get(0).is_some_and(|v| v <= 1));
            if !ok {
                return Err(Error::format(d.path(), format!("row {i}: the label segment must be one value, 0 or 1")));
            }
        }
        Ok(UnpairedDataset(d))
    }
    /// The underlying file.
    pub fn dataset(&self) -> &Dataset {
        &self.0
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.n_rows()
    }
    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `i`.
    pub fn get(&self, i: usize) -> Option<UnpairedRow<'_>> {
        Some(UnpairedRow { prompt: self.0.segment(i, 0)?, completion: self.0.segment(i, 1)?, label: self.0.segment(i, 2)?.get(0)? == 1 })
    }
}

/// RL data: prompts only.
#[derive(Debug)]
pub struct PromptDataset(Dataset);

impl PromptDataset {
    /// Open a prompts file.
    pub fn open(path: impl AsRef<Path>) -> Result<PromptDataset> {
        Dataset::open(path)?.expect_kind(DatasetKind::Prompts).map(PromptDataset)
    }
    /// The underlying file.
    pub fn dataset(&self) -> &Dataset {
        &self.0
    }
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.0.n_rows()
    }
    /// True when there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Prompt `i`.
    pub fn get(&self, i: usize) -> Option<Tokens<'_>> {
        self.0.segment(i, 0)
    }
}
