//! Layers shared by the model files: GPT-2's Conv1D (a linear layer whose weight is stored
//! (in, out)), and deterministic parameter initialisation.

use crate::error::Result;
use crate::ops::matmul::{bias_grad, matmul_forward, prefetch_products};
use crate::tape::Var;

/// `y = x·W + b` with `W` stored (in, out), Hugging Face GPT-2's `Conv1D` layout.
/// x (..., in), w (in, out), b (out) -> y (..., out). Backward computes only the gradients that
/// are needed (with a LoRA adapter the weight and bias are constants).
pub fn conv1d(x: &Var, w: &Var, b: &Var) -> Result<Var> {
    let (cin, cout) = (w.shape()[0], w.shape()[1]);
    let rows = x.tensor().len() / cin.max(1);
    let x2 = x.tensor().reshape(&[rows, cin])?;
    let y = matmul_forward(&x2, w.tensor(), Some(b.tensor()), false, false)?;
    if x.requires_grad() || w.requires_grad() {
        // dx = dy·wᵀ and dw = xᵀ·dy
        prefetch_products(y.gpu(), &[(rows, cout, cin, false, true), (cin, rows, cout, true, false)]);
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = cout;
    let y = y.reshape(&shape)?;
    let (in_shape, wt) = (x.shape().to_vec(), w.tensor().clone());
    let (need_x, need_w, need_b) = (x.requires_grad(), w.requires_grad(), b.requires_grad());
    Ok(Var::from_op(y, &[x, w, b], move |g| {
        let g2 = g.reshape(&[rows, cout])?;
        let dx = if need_x { Some(matmul_forward(&g2, &wt, None, false, true)?.reshape(&in_shape)?) } else { None }; // (..., in)
        let dw = if need_w { Some(matmul_forward(&x2, &g2, None, true, false)?) } else { None }; // (in, out)
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
