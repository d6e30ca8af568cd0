// RLOO (TRL's RLOOTrainer): advantages with the leave-one-out baseline, and the sequence-level
// clipped loss. The formulas are documented in src/ops/rloo.rs.
//   rloo_advantages (one workgroup): per sequence b, r_b clipped to the reward range, minus
//     β Σ_t m_t (old_t − ref_t) when the KL is on; the baseline (Σ_group r − r_b) / (G − 1);
//     A_b = r_b − baseline, then (A − mean A) / (std A + 1e-4) over the batch when normalising;
//     stats: the masked token mean of old − ref, the mean shaped reward.
//   rloo_sequences (one thread per sequence): s_b = Σ_t m_t (logp − old), w = exp(s_b), the
//     sequence loss −min(w A, clip(w, 1 − ε_low, 1 + ε_high) A), its derivative in s_b over B,
//     and the clip flags;
//   rloo_reduce (one workgroup): the means over sequences: loss, clip low, high, region;
//   rloo_backward: d logp_bt = g · d_b · m_bt.
// Batch sums: a strided share per thread, then a tree in workgroup memory (fixed order).

struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    flags: u32,      // 1: KL in the reward, 2: normalise advantages, 4: clip rewards
    beta: f32,
    clip_lo: f32,
    clip_hi: f32,
    eps_low: f32,
    eps_high: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // advantages (B) | seq (B, 4) | d logp (B, T)
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;  // shaped rewards (B) | stats (4)
@group(0) @binding(3) var<storage, read> a: array<f32>;           // rewards (B) | logp (B, T) | seq (B, 4)
@group(0) @binding(4) var<storage, read> b_in: array<f32>;        // old logp (B, T) | upstream (1)
@group(0) @binding(5) var<storage, read> ref_logp: array<f32>;    // (B, T), read when the KL is on
@group(0) @binding(6) var<storage, read> mask: array<f32>;        // (B, T)
@group(0) @binding(7) var<storage, read> advantages: array<f32>;  // (B), rloo_sequences
@group(0) @binding(8) var<storage, read_write> adv_stats: array<f32>; // (2), rloo_advantages

const WG: u32 = 64u;
const SEQ: u32 = 4u;

var<workgroup> part: array<vec4<f32>, WG>;

fn tree_sum(lid: u32) {
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] += part[lid + k];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn rloo_advantages(@builtin(local_invocation_index) lid: u32) {
    let with_kl = (p.flags & 1u) != 0u;
    // phase 1: shaped rewards, and the KL sums for the metrics
    var acc = vec4<f32>(0.0); // masked KL, mask, shaped reward
    for (var b = lid; b < p.rows; b += WG) {
        var r = a[b];
        if ((p.flags & 4u) != 0u) {
            r = clamp(r, p.clip_lo, p.clip_hi);
        }
        if (with_kl) {
            var kl = 0.0;
            var m = 0.0;
            for (var t = 0u; t < p.cols; t++) {
                let i = b * p.cols + t;
                kl += mask[i] * (b_in[i] - ref_logp[i]);
                m += mask[i];
            }
            r -= p.beta * kl;
            acc += vec4<f32>(kl, m, 0.0, 0.0);
        }
        out2[b] = r;
        acc.z += r;
    }
    storageBarrier();
    workgroupBarrier();
    // phase 2: leave-one-out baselines (each thread the same rows as in phase 1)
    let g = p.group;
    var moments = vec4<f32>(0.0); // Σ A
    for (var b = lid; b < p.rows; b += WG) {
        let first = (b / g) * g;
        var sum = 0.0;
        for (var j = first; j < first + g; j++) {
            sum += out2[j];
        }
        let adv = out2[b] - (sum - out2[b]) / f32(g - 1u);
        out[b] = adv;
        moments.x += adv;
    }
    // the metrics and the batch mean of A
    part[lid] = vec4<f32>(acc.x, acc.y, acc.z, moments.x);
    workgroupBarrier();
    tree_sum(lid);
    let sums = part[0];
    let n = f32(p.rows);
    if (lid == 0u) {
        adv_stats[0] = sums.x / max(sums.y, 1.0);
        adv_stats[1] = sums.z / n;
    }
    if ((p.flags & 2u) == 0u) {
        return;
    }
    // phase 3: normalise with the batch mean and unbiased std (torch.std)
    let mean = sums.w / n;
    workgroupBarrier();
    var sq = 0.0;
    for (var b = lid; b < p.rows; b += WG) {
        let d = out[b] - mean;
        sq += d * d;
    }
    part[lid] = vec4<f32>(sq, 0.0, 0.0, 0.0);
    workgroupBarrier();
    tree_sum(lid);
    let sd = sqrt(part[0].x / max(n - 1.0, 1.0));
    for (var b = lid; b < p.rows; b += WG) {
        out[b] = (out[b] - mean) / (sd + 1e-4);
    }
}

@compute @workgroup_size(WG)
fn rloo_sequences(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;
    if (b >= p.rows) { return; }
    var s = 0.0;
    for (var t = 0u; t < p.cols; t++) {
        let i = b * p.cols + t;
        s += mask[i] * (a[i] - b_in[i]);
    }
    let w = exp(s);
    let adv = advantages[b];
    let l1 = w * adv;
    let l2 = clamp(w, 1.0 - p.eps_low, 1.0 + p.eps_high) * adv;
    // d(−min(l1, l2))/ds: −w A where the unclipped term is the minimum (also when they are equal:
    // the clip is then inactive), 0 where the clipped one is
    let d = select(0.0, -l1, l1 <= l2);
    out[SEQ * b] = -min(l1, l2);
    out[SEQ * b + 1u] = d / f32(p.rows);
    out[SEQ * b + 2u] = select(0.0, 1.0, w < 1.0 - p.eps_low && adv < 0.0);
    out[SEQ * b + 3u] = select(0.0, 1.0, w > 1.0 + p.eps_high && adv > 0.0);
}

// out2 = [loss, clip low, clip high, clip region], means over the sequences
@compute @workgroup_size(WG)
fn rloo_reduce(@builtin(local_invocation_index) lid: u32) {
    var acc = vec4<f32>(0.0);
    for (var b = lid; b < p.rows; b += WG) {
        acc += vec4<f32>(a[SEQ * b], a[SEQ * b + 2u], a[SEQ * b + 3u], 0.0);
    }
    part[lid] = acc;
    workgroupBarrier();
    tree_sum(lid);
    if (lid == 0u) {
        let m = part[0] / f32(p.rows);
        out2[0] = m.x;
        out2[1] = m.y;
        out2[2] = m.z;
        out2[3] = m.y + m.z;
    }
}

// out[i] = g · d_b · m_i, g = upstream[0] (bound at 4)
@compute @workgroup_size(WG)
fn rloo_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.cols) { return; }
    let b = i / p.cols;
    out[i] = b_in[0] * a[SEQ * b + 1u] * mask[i];
}
