//! The gradient-check harness (after ggml's test-backend-ops and llm.c's test_gpt2).
//!
//! A case is one row: its inputs, a GPU function of Vars, an f64 CPU reference and tolerances.
//! For each case the harness checks
//!   1. forward: the GPU output against the CPU reference;
//!   2. backward: through the surrogate loss L = mean((out + 1)^2), so no gradient is trivially
//!      zero, each differentiable input's GPU gradient against central finite differences of L
//!      computed in f64 on the CPU reference. Elements where the one-sided differences disagree
//!      (a kink, e.g. a hinge) are skipped, as ggml does.
//! and prints OK / NOT OK with the worst error, like llm.c's test_gpt2.

use plumb::{Gpu, Result, Tape, Tensor, Var};

/// How an input is made.
#[derive(Clone)]
pub enum Input {
    /// f32 values uniform in [lo, hi); `grad` says whether its gradient is checked.
    Float { shape: Vec<usize>, lo: f32, hi: f32, grad: bool },
    /// Given f32 values (e.g. a mask), no gradient.
    Fixed { shape: Vec<usize>, data: Vec<f32> },
    /// u32 values in [0, max) (token ids, labels), no gradient.
    Index { shape: Vec<usize>, max: u32 },
    /// Given u32 values, no gradient.
    FixedIndex { shape: Vec<usize>, data: Vec<u32> },
}

impl Input {
    /// A differentiable input uniform in [-1, 1).
    pub fn f(shape: &[usize]) -> Input {
        Input::Float { shape: shape.to_vec(), lo: -1.0, hi: 1.0, grad: true }
    }
    /// A float input whose gradient is not checked.
    pub fn nograd(shape: &[usize]) -> Input {
        Input::Float { shape: shape.to_vec(), lo: -1.0, hi: 1.0, grad: false }
    }
    /// A differentiable input uniform in [lo, hi).
    pub fn range(shape: &[usize], lo: f32, hi: f32) -> Input {
        Input::Float { shape: shape.to_vec(), lo, hi, grad: true }
    }
    /// Index input in [0, max).
    pub fn index(shape: &[usize], max: u32) -> Input {
        Input::Index { shape: shape.to_vec(), max }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Input::Float { shape, .. }
            | Input::Fixed { shape, .. }
            | Input::Index { shape, .. }
            | Input::FixedIndex { shape, .. } => shape,
        }
    }
    fn grad(&self) -> bool {
        matches!(self, Input::Float { grad: true, .. })
    }
}

pub type GpuFn = Box<dyn Fn(&[Var]) -> Result<Var>>;
/// CPU reference: inputs (indices as f64) to the output, all in f64.
pub type CpuFn = Box<dyn Fn(&[Vec<f64>]) -> Vec<f64>>;

/// One row of the table.
pub struct Case {
    pub name: String,
    pub inputs: Vec<Input>,
    pub gpu: GpuFn,
    pub cpu: CpuFn,
    /// Forward tolerance: |gpu - ref| <= atol + rtol*|ref|.
    pub fwd: (f64, f64),
    /// Gradient tolerance, same form.
    pub grad: (f64, f64),
    /// At most this many elements of each input are checked by finite differences.
    pub max_fd: usize,
}

impl Case {
    pub fn new(
        name: impl Into<String>,
        inputs: Vec<Input>,
        gpu: impl Fn(&[Var]) -> Result<Var> + 'static,
        cpu: impl Fn(&[Vec<f64>]) -> Vec<f64> + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            inputs,
            gpu: Box::new(gpu),
            cpu: Box::new(cpu),
            fwd: (1e-4, 1e-3),
            grad: (1e-3, 1e-2),
            max_fd: 48,
        }
    }
    pub fn tol(mut self, fwd: (f64, f64), grad: (f64, f64)) -> Case {
        self.fwd = fwd;
        self.grad = grad;
        self
    }
}

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn surrogate(out: &[f64]) -> f64 {
    out.iter().map(|o| (o + 1.0) * (o + 1.0)).sum::<f64>() / out.len() as f64
}

/// Run one case; returns a description of the failure, or Ok.
pub fn check(gpu: &Gpu, case: &Case, seed: u64) -> std::result::Result<String, String> {
    use rand::Rng;
    let mut r = rng(seed);
    // Host data.
    let data: Vec<Vec<f64>> = case
        .inputs
        .iter()
        .map(|inp| {
            let n: usize = inp.shape().iter().product();
            match inp {
                Input::Float { lo, hi, .. } => (0..n).map(|_| r.random_range(*lo..*hi) as f64).collect(),
                Input::Fixed { data, .. } => data.iter().map(|&v| v as f64).collect(),
                Input::Index { max, .. } => (0..n).map(|_| r.random_range(0..*max) as f64).collect(),
                Input::FixedIndex { data, .. } => data.iter().map(|&v| v as f64).collect(),
            }
        })
        .collect();
    // GPU forward on a tape.
    let tape = Tape::new();
    let mut vars = Vec::new();
    for (inp, d) in case.inputs.iter().zip(&data) {
        let shape = inp.shape();
        let v = match inp {
            Input::Float { .. } | Input::Fixed { .. } => {
                let f: Vec<f32> = d.iter().map(|&x| x as f32).collect();
                let t = Tensor::from_f32(gpu, &f, shape).map_err(|e| e.to_string())?;
                if inp.grad() { tape.var(t) } else { Var::constant(t) }
            }
            Input::Index { .. } | Input::FixedIndex { .. } => {
                let u: Vec<u32> = d.iter().map(|&x| x as u32).collect();
                Var::constant(Tensor::from_u32(gpu, &u, shape).map_err(|e| e.to_string())?)
            }
        };
        vars.push(v);
    }
    // The CPU reference runs on the f32-rounded inputs, like the GPU.
    let data: Vec<Vec<f64>> = data.iter().map(|d| d.iter().map(|&x| x as f32 as f64).collect()).collect();
    let out = (case.gpu)(&vars).map_err(|e| format!("gpu forward: {e}"))?;
    let got = out.to_f32_vec().map_err(|e| e.to_string())?;
    let want = (case.cpu)(&data);
    if got.len() != want.len() {
        return Err(format!("output length {} vs reference {}", got.len(), want.len()));
    }
    let mut worst_fwd = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let e = (g as f64 - w).abs();
        if !(e <= case.fwd.0 + case.fwd.1 * w.abs()) {
            return Err(format!("forward element {i}: gpu {g} vs reference {w}"));
        }
        worst_fwd = worst_fwd.max(e);
    }
    let mut report = format!("fwd max err {worst_fwd:.2e}");
    if !case.inputs.iter().any(|i| i.grad()) {
        return Ok(report);
    }
    // Backward through the surrogate.
    let n = got.len() as f64;
    let dout: Vec<f32> = got.iter().map(|&o| (2.0 * (o as f64 + 1.0) / n) as f32).collect();
    let dout = Tensor::from_f32(gpu, &dout, out.shape()).map_err(|e| e.to_string())?;
    let grads = tape.backward_with(&out, dout).map_err(|e| format!("backward: {e}"))?;
    let mut worst_grad = 0.0f64;
    for (k, inp) in case.inputs.iter().enumerate() {
        if !inp.grad() {
            continue;
        }
        let g = match grads.get(&vars[k]) {
            Some(t) => t.to_f32_vec().map_err(|e| e.to_string())?,
            None => vec![0.0; data[k].len()],
        };
        let len = data[k].len();
        let picks: Vec<usize> = if len <= case.max_fd {
            (0..len).collect()
        } else {
            (0..case.max_fd).map(|_| r.random_range(0..len)).collect()
        };
        for j in picks {
            let h = 1e-4 * data[k][j].abs().max(1.0);
            let mut probe = data.clone();
            let mut at = |v: f64| {
                probe[k][j] = v;
                surrogate(&(case.cpu)(&probe))
            };
            let (lp, l0, lm) = (at(data[k][j] + h), at(data[k][j]), at(data[k][j] - h));
            let (fwd_d, bwd_d) = ((lp - l0) / h, (l0 - lm) / h);
            let num = (lp - lm) / (2.0 * h);
            // A kink between the probes: one-sided slopes disagree; skip like ggml.
            if (fwd_d - bwd_d).abs() > 1e-2 * (1.0 + num.abs()) + 1e3 * h {
                continue;
            }
            let e = (g[j] as f64 - num).abs();
            if !(e <= case.grad.0 + case.grad.1 * num.abs()) {
                return Err(format!("gradient of input {k} element {j}: gpu {} vs finite difference {num}", g[j]));
            }
            worst_grad = worst_grad.max(e);
        }
    }
    report.push_str(&format!(", grad max err {worst_grad:.2e}"));
    Ok(report)
}

/// Run every case (with two seeds each), print OK / NOT OK per row, and panic if any failed.
pub fn run_table(gpu: &Gpu, label: &str, cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        for seed in [1u64, 2] {
            match check(gpu, case, seed) {
                Ok(r) => println!("OK      [{label}] {} (seed {seed}): {r}", case.name),
                Err(e) => {
                    println!("NOT OK  [{label}] {} (seed {seed}): {e}", case.name);
                    failed.push(format!("{} (seed {seed}): {e}", case.name));
                }
            }
        }
    }
    assert!(failed.is_empty(), "[{label}] {} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}
