//! plumb: train and align small transformers on any GPU, with hand-written WGSL kernels run
//! through wgpu (Vulkan, Metal, DX12, GL). See README.md for the tour.

pub mod data;
pub mod error;
pub mod gpu;
pub mod ops;
pub mod tape;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions, KernelVariant};
pub use tape::{Grads, Tape, Var};
pub use tensor::{DType, Tensor};
