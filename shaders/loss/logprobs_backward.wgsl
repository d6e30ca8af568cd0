// Backward of per-token log-probabilities: dlogits[i, j] = g_i * (onehot(label_i)_j - softmax_ij),
// the softmax recomputed from the logits and the saved logsumexp. One thread per element.
// Rows whose label is >= V were ignored in the forward pass: their gradient is 0.

struct Params {
    total: u32,   // N * V
    v: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn logprobs_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.total) { return; }
    let row = i / p.v;
    let j = i - row * p.v;
    let t = labels[row];
    let prob = exp(logits[i] - lse[row]);
    let d = g[row] * (select(0.0, 1.0, j == t) - prob);
    dlogits[i] = select(0.0, d, t < p.v);
}
