//! Op families. Each `src/ops/<family>.rs` holds the tensor-level forward and backward functions
//! (they record GPU dispatches), the Var-level function that puts them on the tape, and an f64
//! CPU reference; its kernels live in `shaders/<family>/`.

pub mod attention;
pub mod elementwise;

use crate::gpu::ShaderSource;

/// Every family's shader list; `gpu::all_shaders` flattens it.
pub static SHADER_FAMILIES: &[&[&ShaderSource]] = &[elementwise::SHADERS, attention::SHADERS];
