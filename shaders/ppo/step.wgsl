// What keeps a PPO step on the GPU between the rollout and the end-of-step metrics:
//   token_rewards (one thread per sequence): R_t = −β kl_t on the response tokens, plus the
//     sequence's shaped score clip(score + shift, ±clip) at its last response token (mask != 0),
//     0 elsewhere;
//   gather_rows (one thread per element): out[r, t] = src[rows[r], t], a minibatch's rows;
//   accumulate (one workgroup): acc[offset + j] += scale · Σ_i x[i · k + j] for j < k, the
//     column sums of an (n, k) table (a strided share per thread, then a tree in workgroup
//     memory: a fixed order, no atomics).

struct Params {
    rows: u32,     // token_rewards: B; gather_rows: output rows; accumulate: n
    cols: u32,     // T; accumulate: k
    offset: u32,   // accumulate
    clip_on: u32,  // token_rewards: clip the scores
    scale: f32,    // token_rewards: β; accumulate: the factor
    clip: f32,     // token_rewards
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;        // kl (B, T) | src (B, T) | table (n, k)
@group(0) @binding(3) var<storage, read> y: array<f32>;        // token_rewards: scores (B)
@group(0) @binding(4) var<storage, read> mask: array<f32>;     // token_rewards: (B, T)
@group(0) @binding(5) var<storage, read> rows: array<u32>;     // gather_rows: (rows)
@group(0) @binding(6) var<storage, read> shift: array<f32>;    // token_rewards: (B), e.g. a missing-EOS penalty

const WG: u32 = 64u;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn token_rewards(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;
    if (b >= p.rows) { return; }
    var last = p.cols; // none yet
    for (var t = 0u; t < p.cols; t++) {
        let i = b * p.cols + t;
        out[i] = -p.scale * x[i] * mask[i];
        if (mask[i] != 0.0) { last = t; }
    }
    if (last < p.cols) {
        var score = y[b] + shift[b];
        if (p.clip_on != 0u) {
            score = clamp(score, -p.clip, p.clip);
        }
        out[b * p.cols + last] += score;
    }
}

@compute @workgroup_size(WG)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.cols) { return; }
    let r = i / p.cols;
    out[i] = x[rows[r] * p.cols + i % p.cols];
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(local_invocation_index) lid: u32) {
    for (var j = 0u; j < p.cols; j++) {
        var s = 0.0;
        for (var i = lid; i < p.rows; i += WG) {
            s += x[i * p.cols + j];
        }
        part[lid] = s;
        workgroupBarrier();
        for (var k = WG / 2u; k > 0u; k >>= 1u) {
            if (lid < k) {
                part[lid] += part[lid + k];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            out[p.offset + j] += p.scale * part[0];
        }
        workgroupBarrier();
    }
}
