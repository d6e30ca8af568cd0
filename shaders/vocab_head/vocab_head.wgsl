// The chunked vocabulary head's row kernels (see src/ops/vocab_head.rs). The logits of one
// vocabulary slice, (R, S), come from the matmul family; these kernels fold them into per-row
// running statistics with an online log-sum-exp, finish the rows, and in the backward turn a
// recomputed slice of logits into its gradient in place. One thread per row (or per element in
// the backward): deterministic, no atomics, no workgroup memory.
//
// Per-row state (R, 4): m the running max, s = Σ exp(z - m), t = Σ exp(z - m)·z, and the label's
// logit. Merging a slice: M = max(m, m'), s = s·e^(m-M) + Σ e^(z-M), likewise t.
// Finished rows: lse = m + ln s, log p(label) = z_label - lse, entropy H = lse - t / s.

struct Params {
    // Rows (tokens).
    rows: u32,
    // Width of this slice of the vocabulary.
    cols: u32,
    // Vocabulary id of the slice's first column.
    v0: u32,
    // Whole vocabulary size (labels >= vocab are ignored).
    vocab: u32,
    // 1 on the first slice: start the state afresh.
    first: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The slice's logits (R, S); the backward overwrites them with their gradient.
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
// Per-row state (R, 4).
@group(0) @binding(3) var<storage, read_write> state: array<vec4<f32>>;
// Output (R, 2): log p(label), entropy.
@group(0) @binding(4) var<storage, read_write> out: array<vec2<f32>>;
// Saved for the backward (R, 2): lse, entropy.
@group(0) @binding(5) var<storage, read_write> rowstats: array<vec2<f32>>;
// The output's gradient (R, 2).
@group(0) @binding(6) var<storage, read> g: array<vec2<f32>>;

const NEG_BIG: f32 = -3.0e38;

// Fold one slice of logits into each row's state.
@compute @workgroup_size(64, 1, 1)
fn slice_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    var st = vec4<f32>(NEG_BIG, 0.0, 0.0, 0.0);
    if (p.first == 0u) {
        st = state[r];
    }
    let base = r * p.cols;
    // This slice's max, then its sums against the merged max.
    var mx = NEG_BIG;
    for (var j = 0u; j < p.cols; j++) {
        mx = max(mx, logits[base + j]);
    }
    let m = max(st.x, mx);
    let scale = exp(st.x - m);
    var s = st.y * scale;
    var t = st.z * scale;
    for (var j = 0u; j < p.cols; j++) {
        let z = logits[base + j];
        let e = exp(z - m);
        s += e;
        t += e * z;
    }
    var zl = st.w;
    let label = labels[r];
    if (label >= p.v0 && label < p.v0 + p.cols) {
        zl = logits[base + label - p.v0];
    }
    state[r] = vec4<f32>(m, s, t, zl);
}

// Finish each row: (log p(label), entropy) out, (lse, entropy) saved.
@compute @workgroup_size(64, 1, 1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let st = state[r];
    let lse = st.x + log(st.y);
    let h = lse - st.z / st.y;
    var lp = 0.0;
    if (labels[r] < p.vocab) {
        lp = st.w - lse;
    }
    out[r] = vec2<f32>(lp, h);
    rowstats[r] = vec2<f32>(lse, h);
}

// The slice's logits become their gradient: with a = dL/d log p(label), b = dL/dH and
// p_j = exp(z_j - lse), dz_j = a·(onehot_j - p_j) - b·p_j·(z_j - lse + H). One thread a logit.
@compute @workgroup_size(64, 1, 1)
fn slice_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.x + gid.y * nw.x * 64u;
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    let v = p.v0 + i % p.cols;
    let st = rowstats[r];
    var a = g[r].x;
    if (labels[r] >= p.vocab) {
        a = 0.0;
    }
    let b = g[r].y;
    let z = logits[i];
    let pr = exp(z - st.x);
    var d = -a * pr - b * pr * (z - st.x + st.y);
    if (labels[r] == v) {
        d += a;
    }
    logits[i] = d;
}

// The log-probabilities alone, (R), from the output (R, 2) (read through binding 6), and back.
@group(0) @binding(7) var<storage, read_write> logprobs: array<f32>;
@group(0) @binding(8) var<storage, read> dlogprobs: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn logprob_column(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r < p.rows) {
        logprobs[r] = g[r].x;
    }
}

@compute @workgroup_size(64, 1, 1)
fn logprob_column_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r < p.rows) {
        out[r] = vec2<f32>(dlogprobs[r], 0.0);
    }
}
