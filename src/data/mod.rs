//! The data pipeline: a versioned, memory-mapped binary dataset format ([`mod@format`], [`dataset`]),
//! JSONL import from TRL's dataset formats ([`jsonl`], with conversations rendered by [`chat`]),
//! `plumb data inspect` ([`mod@inspect`]), and a small built-in rated corpus ([`corpus`]).

pub mod chat;
pub mod corpus;
pub mod dataset;
pub mod format;
pub mod inspect;
pub mod jsonl;
mod rows;

pub use dataset::{Dataset, PreferenceDataset, PreferenceRow, PromptDataset, SftDataset, SftRow, TokenStream, Tokens, UnpairedDataset, UnpairedRow};
pub use format::{write_reference_logps, DatasetKind, DatasetWriter, TokenDType};
pub use inspect::{inspect, InspectReport};
pub use jsonl::{prepare, prepare_with_progress, OutputFormat, Overflow, PrepareOptions, PrepareSummary};
