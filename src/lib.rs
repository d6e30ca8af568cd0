//! plumb: train and align small transformers on any GPU, with hand-written WGSL kernels run
//! through wgpu (Vulkan, Metal, DX12, GL). See README.md for the tour.

pub mod align;
pub mod bench;
pub mod chat_template;
pub mod data;
pub mod demo;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod gpu;
pub mod model;
pub mod nn;
pub mod ops;
pub mod params;
pub mod tape;
pub mod tensor;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use gpu::{format_profile, FrozenTextures, Gpu, GpuOptions, KernelVariant, ProfileRow};
pub use params::{ParamSpec, ParamStore, RowChunks};
pub use tape::{Grads, Tape, Var};
pub use tensor::{DType, Tensor};
