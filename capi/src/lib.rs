//! plumb's C ABI: the thin layer that lets C, C++, Swift and Kotlin (JNI) apps load a model,
//! generate, attach a LoRA adapter, train it (SFT, DPO) from data in memory and serve it again,
//! in one process. Built as `libplumb.so` and `libplumb.a`; `include/plumb.h` is generated from
//! these files by cbindgen (`capi/cbindgen.toml`) and checked in (`tests/header.rs` fails when it
//! is stale). The threading and lifetime rules are written at the top of that header.
//!
//! Every function returns a [`PlumbStatus`]; on failure the calling thread's last-error message
//! ([`plumb_last_error`]) says what went wrong and where. No Rust type crosses the boundary:
//! handles are opaque pointers, strings are UTF-8 and NUL-terminated, and a Rust panic is caught
//! and returned as [`PlumbStatus::Panic`], never unwound into the caller.

mod data;
mod ffi;
mod gpu;
mod model;
mod train;

pub use data::*;
pub use ffi::{plumb_last_error, plumb_string_free, plumb_version, PlumbStatus};
pub use gpu::*;
pub use model::*;
pub use train::*;
