//! f64 building blocks of the plain-Rust reference forwards (Hugging Face's GPT-2, Llama and
//! Qwen2 as `transformers` computes them) that the fixture and real-shape tests check the
//! engine against. Activations are row-major (rows, width) slices.

/// x (rows, n_in) @ w (n_in, n_out) + bias: GPT-2's Conv1D layout.
pub fn conv1d(x: &[f64], w: &[f64], bias: Option<&[f64]>, n_in: usize, n_out: usize) -> Vec<f64> {
    let rows = x.len() / n_in;
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            let dot: f64 = (0..n_in).map(|i| x[r * n_in + i] * w[i * n_out + o]).sum();
            y[r * n_out + o] = dot + bias.map_or(0.0, |b| b[o]);
        }
    }
    y
}

/// x (rows, n_in) @ wᵀ + bias with w (n_out, n_in): nn.Linear's layout.
pub fn linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, n_in: usize, n_out: usize) -> Vec<f64> {
    let rows = x.len() / n_in;
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            let dot: f64 = (0..n_in).map(|i| x[r * n_in + i] * w[o * n_in + i]).sum();
            y[r * n_out + o] = dot + bias.map_or(0.0, |b| b[o]);
        }
    }
    y
}

/// LayerNorm over the last dim (biased variance), times gain plus bias.
pub fn layer_norm(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let c = g.len();
    x.chunks(c)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            row.iter().enumerate().map(move |(i, v)| (v - mean) * rstd * g[i] + b[i])
        })
        .collect()
}

/// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) * gain.
pub fn rms_norm(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let c = g.len();
    x.chunks(c)
        .flat_map(|row| {
            let rstd = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            row.iter().enumerate().map(move |(i, v)| v * rstd * g[i])
        })
        .collect()
}

/// GPT-2's gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_new(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Rows `ids` of an embedding table (V, C): (B·T, C).
pub fn embed(table: &[f64], ids: &[u32], c: usize) -> Vec<f64> {
    ids.iter().flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].iter().copied()).collect()
}

/// Rotary embedding in Hugging Face's rotate_half convention, in place on x (B, T, H, D):
/// the pair is (x[i], x[i + D/2]) at angle pos · θ^(-2i/D).
pub fn rope(x: &mut [f64], t: usize, h: usize, d: usize, theta: f64) {
    let half = d / 2;
    for (row, head) in x.chunks_mut(d).enumerate() {
        let pos = ((row / h) % t) as f64;
        for i in 0..half {
            let angle = pos * theta.powf(-2.0 * i as f64 / d as f64);
            let (sin, cos) = angle.sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

/// Causal softmax attention with grouped-query heads. q (B, T, Hq·D), k and v (B, T, Hkv·D);
/// query head h reads KV head h / (Hq / Hkv). Returns (B, T, Hq·D).
pub fn causal_attention(q: &[f64], k: &[f64], v: &[f64], t: usize, hq: usize, hkv: usize, d: usize) -> Vec<f64> {
    let b = q.len() / (t * hq * d);
    let group = hq / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; q.len()];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            let qrow = |i: usize| &q[((bi * t + i) * hq + h) * d..][..d];
            let krow = |j: usize| &k[((bi * t + j) * hkv + kh) * d..][..d];
            let vrow = |j: usize| &v[((bi * t + j) * hkv + kh) * d..][..d];
            for i in 0..t {
                // scores over keys 0..=i, softmax, weighted sum of values
                let s: Vec<f64> = (0..=i).map(|j| scale * qrow(i).iter().zip(krow(j)).map(|(a, b)| a * b).sum::<f64>()).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let o = &mut out[((bi * t + i) * hq + h) * d..][..d];
                for (j, p) in e.iter().enumerate() {
                    for (oc, vc) in o.iter_mut().zip(vrow(j)) {
                        *oc += p / z * vc;
                    }
                }
            }
        }
    }
    out
}

pub fn add_into(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
