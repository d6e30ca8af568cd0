//! Layers shared by the model files: GPT-2's Conv1D (a linear layer whose weight is stored
//! (in, out)), alone or after a GELU it recomputes in the backward, and deterministic
//! parameter initialisation.

use crate::error::Result;
use crate::ops::activation::{gelu_backward, gelu_forward, GeluKind};
use crate::ops::matmul::{bias_grad, matmul_forward, prefetch_products};
use crate::tape::Var;
use crate::tensor::Tensor;

/// `y = x·W + b` with `W` stored (in, out), Hugging Face GPT-2's `Conv1D` layout.
/// x (..., in), w (in, out), b (out) -> y (..., out). Backward computes only the gradients that
/// are needed (with a LoRA adapter the weight and bias are constants).
pub fn conv1d(x: &Var, w: &Var, b: &Var) -> Result<Var> {
    conv1d_of(x, None, w, b)
}

/// `conv1d(gelu(h), w, b)`, GPT-2's MLP output projection, holding `h` but not `gelu(h)` for
/// the backward: it recomputes `gelu(h)` (one elementwise pass, bit-identical) instead of
/// keeping a (..., 4C) activation per layer alive until then (6 of a W2 step's ~54 MiB peak).
/// h (..., in), w (in, out), b (out) -> (..., out).
pub fn gelu_conv1d(h: &Var, kind: GeluKind, w: &Var, b: &Var) -> Result<Var> {
    conv1d_of(h, Some(kind), w, b)
}

/// Conv1D of `x`, or of `gelu(x)` recomputed for the backward when `gelu` is given.
fn conv1d_of(x: &Var, gelu: Option<GeluKind>, w: &Var, b: &Var) -> Result<Var> {
    let (cin, cout) = (w.shape()[0], w.shape()[1]);
    let rows = x.tensor().len() / cin.max(1);
    let x2 = x.tensor().reshape(&[rows, cin])?;
    // The product's input: x, or gelu(x), which lives until the product is recorded (the pool
    // then hands its buffer on).
    let input = move |x2: &Tensor| match gelu {
        Some(kind) => gelu_forward(x2, kind),
        None => Ok(x2.clone()),
    };
    let y = matmul_forward(&input(&x2)?, w.tensor(), Some(b.tensor()), false, false)?;
    if x.requires_grad() || w.requires_grad() {
        // dx = dy·wᵀ and dw = inputᵀ·dy
        prefetch_products(y.gpu(), &[(rows, cout, cin, false, true), (cin, rows, cout, true, false)]);
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = cout;
    let y = y.reshape(&shape)?;
    let (in_shape, wt) = (x.shape().to_vec(), w.tensor().clone());
    let (need_x, need_w, need_b) = (x.requires_grad(), w.requires_grad(), b.requires_grad());
    Ok(Var::from_op(y, &[x, w, b], move |g| {
        let g2 = g.reshape(&[rows, cout])?;
        let dw = if need_w { Some(matmul_forward(&input(&x2)?, &g2, None, true, false)?) } else { None }; // (in, out)
        let dx = if need_x {
            let d_input = matmul_forward(&g2, &wt, None, false, true)?; // (rows, in)
            let dx = match gelu {
                Some(kind) => gelu_backward(&d_input, &x2, kind)?,
                None => d_input,
            };
            Some(dx.reshape(&in_shape)?) // (..., in)
        } else {
            None
        };
        let db = if need_b { Some(bias_grad(&g2)?) } else { None }; // (out)
        Ok(vec![dx, dw, db])
    }))
}

/// Deterministic N(0, std²) values from a seed (Box-Muller on ChaCha8).
pub fn normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = r.random_range(f64::EPSILON..1.0);
        let u2: f64 = r.random();
        let m = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((m * a.cos()) as f32 * std);
        out.push((m * a.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}
