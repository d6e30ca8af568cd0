// The chunked vocabulary head's row kernels (see src/ops/vocab_head.rs). The logits of one
// vocabulary slice, (R, S), come from the matmul family; these kernels fold them into per-row
// running statistics with an online log-sum-exp, finish the rows, and in the backward turn a
// recomputed slice of logits into its gradient in place. One thread per row (or per element in
// the backward): deterministic, no atomics, no workgroup memory.
//
// Per-row state (R, 8): m the running max, s = Σ exp(z - m), t = Σ exp(z - m)·z, the label's
// logit, then Σ z (the plain sum of the logits, for their mean) and three unused lanes.
// Merging a slice: M = max(m, m'), s = s·e^(m-M) + Σ e^(z-M), likewise t.
// Finished rows: lse = m + ln s, log p(label) = z_label - lse, entropy H = lse - t / s, mean
// logit Σz / V.

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
    // The output column `column` / `column_grad` read and write (0 log p, 1 entropy, 2 mean logit).
    column: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The slice's logits (R, S); the backward overwrites them with their gradient.
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
// Per-row state (R, 8), two vec4 a row.
@group(0) @binding(3) var<storage, read_write> state: array<vec4<f32>>;
// Output (R, 3): log p(label), entropy, mean logit.
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// Saved for the backward (R, 2): lse, entropy.
@group(0) @binding(5) var<storage, read_write> rowstats: array<vec2<f32>>;
// The output's gradient (R, 3).
@group(0) @binding(6) var<storage, read> g: array<f32>;

const NEG_BIG: f32 = -3.0e38;

// Fold one slice of logits into each row's state.
@compute @workgroup_size(64, 1, 1)
fn slice_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    var st = vec4<f32>(NEG_BIG, 0.0, 0.0, 0.0);
    var zsum = 0.0;
    if (p.first == 0u) {
        st = state[2u * r];
        zsum = state[2u * r + 1u].x;
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
        zsum += z;
    }
    var zl = st.w;
    let label = labels[r];
    if (label >= p.v0 && label < p.v0 + p.cols) {
        zl = logits[base + label - p.v0];
    }
    state[2u * r] = vec4<f32>(m, s, t, zl);
    state[2u * r + 1u] = vec4<f32>(zsum, 0.0, 0.0, 0.0);
}

// Finish each row: (log p(label), entropy, mean logit) out, (lse, entropy) saved.
@compute @workgroup_size(64, 1, 1)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let st = state[2u * r];
    let lse = st.x + log(st.y);
    let h = lse - st.z / st.y;
    var lp = 0.0;
    if (labels[r] < p.vocab) {
        lp = st.w - lse;
    }
    out[3u * r] = lp;
    out[3u * r + 1u] = h;
    out[3u * r + 2u] = state[2u * r + 1u].x / f32(p.vocab);
    rowstats[r] = vec2<f32>(lse, h);
}

// The slice's logits become their gradient: with a = dL/d log p(label), b = dL/dH, c = dL/d mean
// and p_j = exp(z_j - lse), dz_j = a·(onehot_j - p_j) - b·p_j·(z_j - lse + H) + c / V. One
// thread a logit.
@compute @workgroup_size(64, 1, 1)
fn slice_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.x + gid.y * nw.x * 64u;
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    let v = p.v0 + i % p.cols;
    let st = rowstats[r];
    var a = g[3u * r];
    if (labels[r] >= p.vocab) {
        a = 0.0;
    }
    let b = g[3u * r + 1u];
    let c = g[3u * r + 2u];
    let z = logits[i];
    let pr = exp(z - st.x);
    var d = -a * pr - b * pr * (z - st.x + st.y) + c / f32(p.vocab);
    if (labels[r] == v) {
        d += a;
    }
    logits[i] = d;
}

// One column of the output (R, 3) (read through binding 6) as (R), and its gradient back.
@group(0) @binding(7) var<storage, read_write> column_out: array<f32>;
@group(0) @binding(8) var<storage, read> dcolumn: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn column(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r < p.rows) {
        column_out[r] = g[3u * r + p.column];
    }
}

@compute @workgroup_size(64, 1, 1)
fn column_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r < p.rows) {
        for (var j = 0u; j < 3u; j++) {
            out[3u * r + j] = select(0.0, dcolumn[r], j == p.column);
        }
    }
}
