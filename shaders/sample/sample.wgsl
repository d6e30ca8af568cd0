// Token sampling, one decode step per dispatch, no readback.
//
// For row b (unless done[b], which emits pad_id):
//   greedy (temperature 0): the lowest index holding the largest logit;
//   otherwise weights w_i = exp((l_i - max) / T) over an allowed set of logits >= a threshold:
//     top-k threshold: the k-th largest logit (ties at the threshold stay in);
//     top-p threshold: the largest logit t such that the mass of {l_i >= t} reaches top_p of
//     the mass left after top-k (the smallest nucleus of whole tie groups);
//   then inverse-CDF sampling in index order: the first i whose running sum of weights passes
//   u * total, with u a counter-based hash of (seed, row, step).
//
// No sorting: thresholds are found exactly by a 5-way search over order-preserving u32 keys of
// the logits (4 candidate thresholds per pass over the row, as one vec4), about 14 passes per
// threshold. NaN logits count as -inf. Rows whose largest logit is not finite (all -inf, or +inf
// present) fall back to greedy.
//
// Two entry points share the per-pass helpers:
//   sample_rows_serial (CPU adapters, rows up to 1536 logits): one invocation per row, no
//     workgroup memory, no barriers; a workgroup holds ROWS rows, which lavapipe runs as SIMD
//     lanes. At most 32 passes over the row: lavapipe silently ends a shader's loops after
//     65535 iterations in total per invocation.
//   sample_rows (real GPUs, and longer rows on CPU adapters): one workgroup per row; each pass
//     is strided over WG threads and reduced in a fixed order (no atomics), so it is
//     deterministic; the reduced values come back through workgroupUniformLoad, so the searches
//     keep uniform control flow around the barriers.

override ROWS: u32 = 8u;  // rows per workgroup in sample_rows_serial
override WG: u32 = 64u;   // threads per workgroup (one workgroup per row)
override FOLD: u32 = 8u;  // threads in the reduction's second level; divides WG

struct Params {
    batch: u32,
    vocab: u32,
    out_cols: u32,
    step: u32,
    pad_id: u32,
    top_k: u32,     // 0 (or >= vocab): off
    top_p: f32,     // >= 1: off
    inv_temp: f32,  // 1 / temperature (unused when greedy)
    seed_lo: u32,
    seed_hi: u32,
    n_stop: u32,
    greedy: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;            // (B, V)
@group(0) @binding(2) var<storage, read_write> next_ids: array<u32>;    // (B)
@group(0) @binding(3) var<storage, read_write> out: array<u32>;         // (B, out_cols)
@group(0) @binding(4) var<storage, read_write> done: array<u32>;        // (B)
@group(0) @binding(5) var<storage, read> stop_ids: array<u32>;          // (n_stop), at least 1 slot

var<workgroup> partials: array<vec4<u32>, WG>;
var<workgroup> folded: array<vec4<u32>, FOLD>;
var<workgroup> result: vec4<u32>;
var<workgroup> chunk_sums: array<f32, WG>;

const KEY_NEG_INF: u32 = 0x007fffffu;  // order_key(-inf)
const KEY_POS_INF: u32 = 0xff800000u;  // order_key(+inf)

const OP_ADD: u32 = 0u;     // u32 sums (counts)
const OP_ADD_F32: u32 = 1u; // f32 sums carried as bits
const OP_ARGMAX: u32 = 2u;  // (key, index): larger key, then lower index

// A u32 whose unsigned order is the order of the f32 values; NaN maps to -inf, -0 to +0.
fn order_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return KEY_NEG_INF; }
    if (b == 0x80000000u) { b = 0u; }
    if ((b & 0x80000000u) != 0u) { return ~b; }
    return b | 0x80000000u;
}

fn key_value(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
    return bitcast<f32>(~k);
}

// Unnormalised probability of logit x (key k) given the row maximum m (finite).
fn weight(x: f32, k: u32, m: f32) -> f32 {
    if (k <= KEY_NEG_INF) { return 0.0; }
    if (x >= m) { return 1.0; }
    let d = (x - m) * p.inv_temp;
    if (d < -104.0) { return 0.0; }
    return exp(d);
}

// PCG hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform in [0, 1) with 24 random bits, a function of (seed, row, step) only.
fn uniform_draw(row: u32) -> f32 {
    let h = pcg(p.step + pcg(row + pcg(p.seed_hi + pcg(p.seed_lo))));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

fn combine(op: u32, a: vec4<u32>, b: vec4<u32>) -> vec4<u32> {
    if (op == OP_ADD) { return a + b; }
    if (op == OP_ADD_F32) { return bitcast<vec4<u32>>(bitcast<vec4<f32>>(a) + bitcast<vec4<f32>>(b)); }
    // OP_ARGMAX on (x: key, y: index)
    if (b.x > a.x || (b.x == a.x && b.y < a.y)) { return b; }
    return a;
}

// Combine one vec4 per thread, in a fixed order; every thread gets the result as a uniform value.
// Three barriers: store, fold WG/FOLD partials per folding thread, finish on thread 0.
fn reduce(op: u32, v: vec4<u32>, lid: u32) -> vec4<u32> {
    // store
    partials[lid] = v;
    workgroupBarrier();
    // fold
    if (lid < FOLD) {
        let run = WG / FOLD;
        var acc = partials[lid * run];
        for (var j = 1u; j < run; j++) {
            acc = combine(op, acc, partials[lid * run + j]);
        }
        folded[lid] = acc;
    }
    workgroupBarrier();
    // finish and broadcast
    if (lid == 0u) {
        var acc = folded[0];
        for (var j = 1u; j < FOLD; j++) {
            acc = combine(op, acc, folded[j]);
        }
        result = acc;
    }
    return workgroupUniformLoad(&result);
}

fn reduce_f32(v: vec4<f32>, lid: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(reduce(OP_ADD_F32, bitcast<vec4<u32>>(v), lid));
}

// Four thresholds splitting (lo, hi] into five near-equal parts (repeats when the span is < 5).
fn cuts(lo: u32, hi: u32) -> vec4<u32> {
    let span = hi - lo;
    let q = span / 5u;
    let r = span % 5u;
    return vec4<u32>(lo + q + min(1u, r), lo + 2u * q + min(2u, r), lo + 3u * q + min(3u, r), lo + 4u * q + min(4u, r));
}

// Narrow [lo, hi] (the largest key that passes lies in it) after testing the four cuts.
fn narrow(lo: u32, hi: u32, c: vec4<u32>, ok: vec4<bool>) -> vec2<u32> {
    var l = lo;
    var h = hi;
    for (var j = 0u; j < 4u; j++) {
        if (ok[j]) { l = max(l, c[j]); } else { h = min(h, c[j] - 1u); }
    }
    return vec2<u32>(l, h);
}

fn top_k_on() -> bool {
    return p.top_k > 0u && p.top_k < p.vocab;
}

fn is_finite_key(k: u32) -> bool {
    return k > KEY_NEG_INF && k < KEY_POS_INF;
}

// The uniform draw scaled to the allowed mass, kept strictly below it.
fn goal_of(row: u32, total: f32) -> f32 {
    let g = uniform_draw(row) * total;
    if (g >= total) { return bitcast<f32>(bitcast<u32>(total) - 1u); }
    return g;
}

// Pass helpers over row `base`: each covers indices start, start + stride, ... below its end.

// (largest key, its lowest index) among the covered indices.
fn part_argmax(base: u32, start: u32, stride: u32) -> vec2<u32> {
    var best = vec2<u32>(0u, 0xffffffffu);
    for (var i = start; i < p.vocab; i += stride) {
        let k = order_key(logits[base + i]);
        if (k > best.x) { best = vec2<u32>(k, i); }
    }
    return best;
}

// How many covered keys are >= each cut.
fn part_count(base: u32, start: u32, stride: u32, c: vec4<u32>) -> vec4<u32> {
    var n = vec4<u32>(0u);
    for (var i = start; i < p.vocab; i += stride) {
        let k = order_key(logits[base + i]);
        n += select(vec4<u32>(0u), vec4<u32>(1u), vec4<u32>(k) >= c);
    }
    return n;
}

// Weight mass of the covered keys >= each cut (c.x is the smallest cut).
fn part_mass(base: u32, start: u32, stride: u32, c: vec4<u32>, m: f32) -> vec4<f32> {
    var mass = vec4<f32>(0.0);
    for (var i = start; i < p.vocab; i += stride) {
        let x = logits[base + i];
        let k = order_key(x);
        if (k >= c.x) {
            mass += select(vec4<f32>(0.0), vec4<f32>(weight(x, k, m)), vec4<u32>(k) >= c);
        }
    }
    return mass;
}

// Weight mass of the allowed keys (>= thr) among start, start + stride, ... < end.
fn part_total(base: u32, start: u32, end: u32, stride: u32, thr: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var i = start; i < end; i += stride) {
        let x = logits[base + i];
        let k = order_key(x);
        if (k >= thr) { s += weight(x, k, m); }
    }
    return s;
}

// Walk [start, end) adding allowed weights to `acc`; the first index where the running sum
// passes `goal`, else the last allowed index with weight (else `fallback`): rounding can leave
// the walk just short of a goal that the chunk sums placed inside.
fn walk(base: u32, start: u32, end: u32, thr: u32, m: f32, acc_in: f32, goal: f32, fallback: u32) -> u32 {
    var acc = acc_in;
    var pick = fallback;
    for (var i = start; i < end; i++) {
        let x = logits[base + i];
        let k = order_key(x);
        if (k >= thr) {
            let w = weight(x, k, m);
            if (w > 0.0) {
                pick = i;
                acc += w;
                if (acc > goal) { break; }
            }
        }
    }
    return pick;
}

// Write the row's token; a stop token marks the row done.
fn emit(row: u32, tok: u32) {
    next_ids[row] = tok;
    out[row * p.out_cols + p.step] = tok;
    for (var j = 0u; j < p.n_stop; j++) {
        if (stop_ids[j] == tok) { done[row] = 1u; }
    }
}

fn emit_pad(row: u32) {
    next_ids[row] = p.pad_id;
    out[row * p.out_cols + p.step] = p.pad_id;
}

// Register variant: one invocation per row, every pass a plain loop over the row.
@compute @workgroup_size(ROWS)
fn sample_rows_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * ROWS;
    if (row >= p.batch) { return; }
    // Finished rows emit the pad token.
    if (done[row] != 0u) {
        emit_pad(row);
        return;
    }
    let base = row * p.vocab;
    let best = part_argmax(base, 0u, 1u);
    if (p.greedy != 0u || !is_finite_key(best.x)) {
        emit(row, best.y);
        return;
    }
    let m = key_value(best.x);
    // Top-k: the largest key t with count(key >= t) >= k.
    var thr = 0u;
    if (top_k_on()) {
        var lo = 0u;
        var hi = best.x;
        while (lo < hi) {
            let c = cuts(lo, hi);
            let lh = narrow(lo, hi, c, part_count(base, 0u, 1u, c) >= vec4<u32>(p.top_k));
            lo = lh.x;
            hi = lh.y;
        }
        thr = lo;
    }
    // Top-p: the largest key t with mass(key >= t) >= top_p * mass(key >= top-k threshold).
    if (p.top_p < 1.0) {
        let need = p.top_p * part_total(base, 0u, p.vocab, 1u, thr, m);
        var lo = thr;
        var hi = best.x;
        while (lo < hi) {
            let c = cuts(lo, hi);
            let lh = narrow(lo, hi, c, part_mass(base, 0u, 1u, c, m) >= vec4<f32>(need));
            lo = lh.x;
            hi = lh.y;
        }
        thr = lo;
    }
    // Sample: the allowed mass, then walk to the goal.
    let total = part_total(base, 0u, p.vocab, 1u, thr, m);
    emit(row, walk(base, 0u, p.vocab, thr, m, 0.0, goal_of(row, total), best.y));
}

// Tiled variant: one workgroup per row; passes strided over WG threads, then reduced.
@compute @workgroup_size(WG)
fn sample_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.batch) { return; }
    // Finished rows emit the pad token.
    if (lid == 0u) { result = vec4<u32>(done[row], 0u, 0u, 0u); }
    if (workgroupUniformLoad(&result).x != 0u) {
        if (lid == 0u) { emit_pad(row); }
        return;
    }
    let base = row * p.vocab;
    let part = part_argmax(base, lid, WG);
    let best = reduce(OP_ARGMAX, vec4<u32>(part, 0u, 0u), lid);
    if (p.greedy != 0u || !is_finite_key(best.x)) {
        if (lid == 0u) { emit(row, best.y); }
        return;
    }
    let m = key_value(best.x);
    // Top-k: the largest key t with count(key >= t) >= k.
    var thr = 0u;
    if (top_k_on()) {
        var lo = 0u;
        var hi = best.x;
        while (lo < hi) {
            let c = cuts(lo, hi);
            let n = reduce(OP_ADD, part_count(base, lid, WG, c), lid);
            let lh = narrow(lo, hi, c, n >= vec4<u32>(p.top_k));
            lo = lh.x;
            hi = lh.y;
        }
        thr = lo;
    }
    // Top-p: the largest key t with mass(key >= t) >= top_p * mass(key >= top-k threshold).
    if (p.top_p < 1.0) {
        let s = part_total(base, lid, p.vocab, WG, thr, m);
        let need = p.top_p * reduce_f32(vec4<f32>(s, 0.0, 0.0, 0.0), lid).x;
        var lo = thr;
        var hi = best.x;
        while (lo < hi) {
            let c = cuts(lo, hi);
            let mass = reduce_f32(part_mass(base, lid, WG, c, m), lid);
            let lh = narrow(lo, hi, c, mass >= vec4<f32>(need));
            lo = lh.x;
            hi = lh.y;
        }
        thr = lo;
    }
    // Sample, pass 1: each thread sums the weights of one contiguous chunk of the row.
    let chunk = (p.vocab + WG - 1u) / WG;
    let start = min(lid * chunk, p.vocab);
    let end = min(start + chunk, p.vocab);
    let s = part_total(base, start, end, 1u, thr, m);
    chunk_sums[lid] = s;
    workgroupBarrier();
    // Scan: every thread adds the chunk sums in the same order, so the chunk boundaries agree
    // bit for bit and exactly one chunk holds the goal.
    var before = 0.0;
    for (var j = 0u; j < lid; j++) { before += chunk_sums[j]; }
    let after = before + s;
    var total = after;
    for (var j = lid + 1u; j < WG; j++) { total += chunk_sums[j]; }
    let goal = goal_of(row, total);
    // Pass 2: the owning thread walks its chunk.
    if (s > 0.0 && before <= goal && goal < after) {
        emit(row, walk(base, start, end, thr, m, before, goal, start));
    }
}
