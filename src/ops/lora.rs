//! An adapted projection as one op: `y = base(x) + s·(x·Aᵀ)·Bᵀ`, A (r, in), B (out, r), the
//! base a frozen stored-form weight, a `linear` (out, in) or GPT-2's Conv1D (in, out) weight.
//!
//! Recorded as a base projection plus `lora::lora_delta`, both the output and the input's
//! gradient are sums of two full-size terms, each a separate add of (rows, out) or (rows, in)
//! floats: on W5 (SmolLM2's shape, seven adapted projections a layer) 420 adds a step, about
//! 2% of it on lavapipe. Here the sums ride on the products: `y = h·Bᵀ + base(x)` and
//! `dx = dh·A + dy·W` are each one `matmul_plus`, which adds the second term as it stores:
//! the same two terms summed once, by the same product kernels.

use crate::error::{Error, Result};
use crate::ops::elementwise::scale_forward;
use crate::ops::matmul::{bias_grad, matmul_forward, matmul_plus, prefetch_products};
use crate::ops::quant::{quant_linear_backward, quant_linear_forward, QuantTensor};
use crate::tape::Var;
use crate::tensor::Tensor;

/// The base weight of an adapted projection.
#[derive(Clone, Copy)]
pub enum Base<'a> {
    /// A frozen weight in its stored form (out, in): never gets a gradient.
    Stored(&'a QuantTensor),
    /// `linear`'s weight (out, in).
    Linear(&'a Var),
    /// GPT-2's Conv1D weight (in, out).
    Conv1d(&'a Var),
}

impl Base<'_> {
    /// (in, out) of the projection.
    fn dims(&self) -> Result<(usize, usize)> {
        let s = match self {
            Base::Stored(q) => return Ok((q.shape[1], q.shape[0])),
            Base::Linear(w) | Base::Conv1d(w) => w.shape(),
        };
        if s.len() != 2 {
            return Err(Error::shape("adapted projection", format!("base weight {s:?} is not a matrix")));
        }
        Ok(match self {
            Base::Conv1d(_) => (s[0], s[1]),
            _ => (s[1], s[0]),
        })
    }
}

/// The base as the backward needs it.
enum Kept {
    Stored(QuantTensor),
    /// W, and true for a Conv1D weight (in, out).
    F32(Tensor, bool),
}

/// `base(x) (+ bias) + s·(x·Aᵀ)·Bᵀ`: x (..., in) f32, a (r, in), b (out, r), bias (out) ->
/// (..., out). Gradients reach x, A, B, and the base weight and bias where they require one.
pub fn adapted_linear(x: &Var, base: Base, bias: Option<&Var>, a: &Var, b: &Var, s: f32) -> Result<Var> {
    let (inp, outp) = base.dims()?;
    let r = a.shape().first().copied().unwrap_or(0);
    let xs = x.shape().to_vec();
    if xs.last() != Some(&inp) || a.shape() != [r, inp] || b.shape() != [outp, r] {
        let msg = format!("x {xs:?}, A {:?}, B {:?} for a projection {inp} -> {outp} (need A (r, in), B (out, r))", a.shape(), b.shape());
        return Err(Error::shape("adapted projection", msg));
    }
    let rows = x.tensor().len() / inp.max(1);
    let x2 = x.tensor().reshape(&[rows, inp])?;
    let bias_t = bias.map(|b| b.tensor());
    let y0 = match base {
        Base::Stored(q) => quant_linear_forward(&x2, q, bias_t)?,
        Base::Linear(w) => matmul_forward(&x2, w.tensor(), bias_t, false, true)?,
        Base::Conv1d(w) => matmul_forward(&x2, w.tensor(), bias_t, false, false)?,
    }; // (rows, out)
    let h = scale_forward(&matmul_forward(&x2, a.tensor(), None, false, true)?, s)?; // (rows, r)
    let y = matmul_plus(&h, b.tensor(), &y0, false, true)?; // (rows, out)
    let mut ys = xs.clone();
    *ys.last_mut().expect("x has a last dim") = outp;
    let y = y.reshape(&ys)?;

    let need_x = x.requires_grad();
    let (w, need_w) = match base {
        Base::Linear(w) | Base::Conv1d(w) => (Some(w), w.requires_grad()),
        Base::Stored(_) => (None, false),
    };
    let need_bias = bias.is_some_and(|b| b.requires_grad());
    let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
    if need_x || need_a || need_b {
        // dh = g·B, dx = dh·A (+ the base's), dA = dhᵀ·x, dB = gᵀ·h.
        prefetch_products(y.gpu(), &[(rows, outp, r, false, false), (rows, r, inp, false, false), (r, rows, inp, true, false), (outp, rows, r, true, false)]);
    }
    let mut inputs: Vec<&Var> = vec![x, a, b];
    inputs.extend(w);
    inputs.extend(bias);
    // What the backward keeps of the base: the stored matrix, or W and whether it is (in, out).
    let kept = match base {
        Base::Stored(q) => Kept::Stored(q.clone()),
        Base::Linear(w) => Kept::F32(w.tensor().clone(), false),
        Base::Conv1d(w) => Kept::F32(w.tensor().clone(), true),
    };
    let (at, bt) = (a.tensor().clone(), b.tensor().clone());
    let has_bias = bias.is_some();
    Ok(Var::from_op(y, &inputs, move |g| {
        let g2 = g.reshape(&[rows, outp])?;
        // dh = s·g·B (rows, r), for dx and dA.
        let dh = if need_x || need_a { Some(scale_forward(&matmul_forward(&g2, &bt, None, false, false)?, s)?) } else { None };
        let dh = dh.as_ref();
        let dx = if let (true, Some(dh)) = (need_x, dh) {
            let base_dx = match &kept {
                Kept::Stored(q) => quant_linear_backward(&g2, q)?,
                Kept::F32(w, conv) => matmul_forward(&g2, w, None, false, *conv)?,
            }; // (rows, in)
            Some(matmul_plus(dh, &at, &base_dx, false, false)?.reshape(&xs)?)
        } else {
            None
        };
        let da = match dh {
            Some(dh) if need_a => Some(matmul_forward(dh, &x2, None, true, false)?), // (r, in)
            _ => None,
        };
        let db = if need_b { Some(matmul_forward(&g2, &h, None, true, false)?) } else { None }; // (out, r)
        let mut grads = vec![dx, da, db];
        if let Kept::F32(_, conv) = kept {
            grads.push(match (need_w, conv) {
                (false, _) => None,
                (true, false) => Some(matmul_forward(&g2, &x2, None, true, false)?), // (out, in)
                (true, true) => Some(matmul_forward(&x2, &g2, None, true, false)?),  // (in, out)
            });
        }
        if has_bias {
            grads.push(if need_bias { Some(bias_grad(&g2)?) } else { None });
        }
        Ok(grads)
    }))
}

/// CPU reference (f64): `x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ` with W (out, in).
pub mod reference {
    use crate::ops::matmul::reference::linear;

    #[allow(clippy::too_many_arguments)]
    pub fn adapted_linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, a: &[f64], b: &[f64], s: f64, rows: usize, (inp, outp, r): (usize, usize, usize)) -> Vec<f64> {
        let base = linear(x, w, bias, rows, inp, outp);
        let h: Vec<f64> = linear(x, a, None, rows, inp, r).iter().map(|v| s * v).collect();
        let delta = linear(&h, b, None, rows, r, outp);
        base.iter().zip(delta).map(|(y, d)| y + d).collect()
    }
}
