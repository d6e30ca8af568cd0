// Row-wise softmax statistics over logits (N, V), fused with what each caller needs:
//   ce_*        cross-entropy: per-row weighted loss and, in the same pass, dlogits =
//               w_i / sum(w) * (softmax - onehot). The softmax is never stored.
//   logprobs_*  per-token log-probabilities logit[label] - logsumexp, saving the logsumexp.
// Two variants of each: *_register (one thread loops over a whole row; no workgroup memory, no
// barriers: for CPU adapters) and *_tiled (one workgroup per row, strided loads, a tree
// reduction in workgroup memory: for real GPUs). Rows of any length are walked in a loop.
// Labels >= V mark ignored rows: loss 0, gradient 0 (the weights pass has zeroed their weight).
// Register rows walk 8 elements per loop iteration (llvmpipe's loop limit, see scan_row); the
// host sends rows longer than 200000 to the tiled kernel.

struct Params {
    n: u32,   // rows
    v: u32,   // row length (vocabulary)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_out: array<f32>;
@group(0) @binding(5) var<storage, read> weights: array<f32>;
@group(0) @binding(6) var<storage, read> weight_sum: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;

const LOWEST: f32 = -3.4028235e38;
const RWG: u32 = 64u;   // register variant: rows per workgroup
const WG: u32 = 256u;   // tiled variant: threads per row (a power of two)

var<workgroup> red_max: array<f32, WG>;
var<workgroup> red_sum: array<f32, WG>;

// Merge two (max, sum of exp(x - max)) pairs.
fn combine(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Online (max, sum exp(x - max)) over logits[base + j] for j = start, start + stride, ...
// Eight elements per iteration: llvmpipe (lavapipe) stops an invocation after 65535 loop
// iterations in total over all its loops, so a thread that walks a whole GPT-2 row must take
// big steps. The tail loop takes at most 7 more.
fn scan_row(base: u32, start: u32, stride: u32) -> vec2<f32> {
    var m = LOWEST;
    var s = 0.0;
    var j = start;
    for (; j + 7u * stride < p.v; j += 8u * stride) {
        let i = base + j;
        let a = vec4<f32>(logits[i], logits[i + stride], logits[i + 2u * stride], logits[i + 3u * stride]);
        let b = vec4<f32>(logits[i + 4u * stride], logits[i + 5u * stride], logits[i + 6u * stride], logits[i + 7u * stride]);
        let mn = max(m, max(max(max(a.x, a.y), max(a.z, a.w)), max(max(b.x, b.y), max(b.z, b.w))));
        let ones = vec4<f32>(1.0);
        s = s * exp(m - mn) + dot(exp(a - vec4<f32>(mn)), ones) + dot(exp(b - vec4<f32>(mn)), ones);
        m = mn;
    }
    for (; j < p.v; j += stride) {
        let x = logits[base + j];
        let mn = max(m, x);
        s = s * exp(m - mn) + exp(x - mn);
        m = mn;
    }
    return vec2<f32>(m, s);
}

// One workgroup reduces its threads' partial (max, sum) pairs; every thread gets the total.
fn reduce_workgroup(lid: u32, part: vec2<f32>) -> vec2<f32> {
    // store each thread's partial
    red_max[lid] = part.x;
    red_sum[lid] = part.y;
    workgroupBarrier();
    // tree: halve the active threads each step (fixed order: deterministic)
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            let c = combine(vec2<f32>(red_max[lid], red_sum[lid]), vec2<f32>(red_max[lid + k], red_sum[lid + k]));
            red_max[lid] = c.x;
            red_sum[lid] = c.y;
        }
        workgroupBarrier();
    }
    return vec2<f32>(red_max[0], red_sum[0]);
}

// Cross-entropy row scale: w_i / sum(w), or 0 when the weights sum to 0.
fn ce_scale(row: u32) -> f32 {
    let total = weight_sum[0];
    return select(0.0, weights[row] / total, total > 0.0);
}

// Store the row's logsumexp and its weighted loss (never 0 * inf: ignored rows write 0).
fn ce_store_row(row: u32, base: u32, lse: f32, scale: f32) {
    let t = labels[row];
    let valid = t < p.v && scale != 0.0;
    let x_t = logits[base + min(t, p.v - 1u)];
    lse_out[row] = lse;
    row_out[row] = select(0.0, scale * (lse - x_t), valid);
}

// dlogits[base + j] = scale * (softmax_j - onehot_j); never 0 * inf on ignored rows.
fn grad_at(base: u32, j: u32, t: u32, lse: f32, scale: f32) {
    let g = scale * (exp(logits[base + j] - lse) - select(0.0, 1.0, j == t));
    dlogits[base + j] = select(0.0, g, scale != 0.0);
}

// dlogits over the row's elements start, start + stride, ...; eight per iteration (see scan_row).
fn ce_write_grad(row: u32, base: u32, lse: f32, scale: f32, start: u32, stride: u32) {
    let t = labels[row];
    var j = start;
    for (; j + 7u * stride < p.v; j += 8u * stride) {
        grad_at(base, j, t, lse, scale);
        grad_at(base, j + stride, t, lse, scale);
        grad_at(base, j + 2u * stride, t, lse, scale);
        grad_at(base, j + 3u * stride, t, lse, scale);
        grad_at(base, j + 4u * stride, t, lse, scale);
        grad_at(base, j + 5u * stride, t, lse, scale);
        grad_at(base, j + 6u * stride, t, lse, scale);
        grad_at(base, j + 7u * stride, t, lse, scale);
    }
    for (; j < p.v; j += stride) {
        grad_at(base, j, t, lse, scale);
    }
}

fn logprobs_store_row(row: u32, base: u32, lse: f32) {
    let t = labels[row];
    let x_t = logits[base + min(t, p.v - 1u)];
    lse_out[row] = lse;
    row_out[row] = select(0.0, x_t - lse, t < p.v);
}

fn register_row(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * RWG;
}

fn tiled_row(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(RWG)
fn ce_register(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = register_row(gid, nwg);
    if (row >= p.n) { return; }
    let base = row * p.v;
    // accumulate: one pass for max and sum, then the loss and the gradient
    let st = scan_row(base, 0u, 1u);
    let lse = st.x + log(st.y);
    let scale = ce_scale(row);
    ce_store_row(row, base, lse, scale);
    ce_write_grad(row, base, lse, scale, 0u, 1u);
}

@compute @workgroup_size(RWG)
fn ce_register_nograd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = register_row(gid, nwg);
    if (row >= p.n) { return; }
    let base = row * p.v;
    let st = scan_row(base, 0u, 1u);
    ce_store_row(row, base, st.x + log(st.y), ce_scale(row));
}

@compute @workgroup_size(WG)
fn ce_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = tiled_row(wid, nwg);
    if (row >= p.n) { return; }   // uniform: depends on the workgroup only
    let base = row * p.v;
    // accumulate strided partials, then reduce across the workgroup
    let st = reduce_workgroup(lid, scan_row(base, lid, WG));
    let lse = st.x + log(st.y);
    let scale = ce_scale(row);
    // store: thread 0 the row's loss, every thread its share of the gradient
    if (lid == 0u) {
        ce_store_row(row, base, lse, scale);
    }
    ce_write_grad(row, base, lse, scale, lid, WG);
}

@compute @workgroup_size(WG)
fn ce_tiled_nograd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let row = tiled_row(wid, nwg);
    if (row >= p.n) { return; }
    let base = row * p.v;
    let st = reduce_workgroup(lid, scan_row(base, lid, WG));
    if (lid == 0u) {
        ce_store_row(row, base, st.x + log(st.y), ce_scale(row));
    }
}

@compute @workgroup_size(RWG)
fn logprobs_register(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = register_row(gid, nwg);
    if (row >= p.n) { return; }
    let base = row * p.v;
    let st = scan_row(base, 0u, 1u);
    logprobs_store_row(row, base, st.x + log(st.y));
}

@compute @workgroup_size(WG)
fn logprobs_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = tiled_row(wid, nwg);
    if (row >= p.n) { return; }
    let base = row * p.v;
    let st = reduce_workgroup(lid, scan_row(base, lid, WG));
    if (lid == 0u) {
        logprobs_store_row(row, base, st.x + log(st.y));
    }
}
