//! Op families. Each `src/ops/<family>.rs` holds the tensor-level forward and backward functions
//! (they record GPU dispatches), the Var-level function that puts them on the tape, and an f64
//! CPU reference; its kernels live in `shaders/<family>/`.

pub mod activation;
pub mod attention;
pub mod dpo;
pub mod elementwise;
pub mod embedding;
pub mod grpo;
pub mod kto;
pub mod loss;
pub mod lora;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod ppo;
pub mod quant;
pub mod reduce;
pub mod reward;
pub mod rloo;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod vocab_head;

use crate::gpu::ShaderSource;

/// Every family's shader list (the families register their shaders here; the core lists its own
/// in `gpu::CORE_SHADERS`).
pub static SHADER_FAMILIES: &[&[&ShaderSource]] = &[
    activation::SHADERS,
    attention::SHADERS,
    dpo::SHADERS,
    elementwise::SHADERS,
    embedding::SHADERS,
    grpo::SHADERS,
    kto::SHADERS,
    loss::SHADERS,
    matmul::SHADERS,
    norm::SHADERS,
    optim::SHADERS,
    ppo::SHADERS,
    quant::SHADERS,
    reduce::SHADERS,
    reward::SHADERS,
    rloo::SHADERS,
    rope::SHADERS,
    sample::SHADERS,
    softmax::SHADERS,
    vocab_head::SHADERS,
];

/// Every shader plumb ships: the engine core's and every op family's.
pub fn all_shaders() -> Vec<&'static ShaderSource> {
    let families = SHADER_FAMILIES.iter().flat_map(|f| f.iter().copied());
    crate::gpu::CORE_SHADERS.iter().copied().chain(families).collect()
}
