// GRPO's loss with TRL's variants (GRPOTrainer._compute_loss), in two dispatches:
//   grpo_sequences (one thread per sequence): n_b = Σ_t m_t and the sequence's mean log
//     importance weight s_b = Σ_t m_t (logp - old) / max(n_b, 1) (GSPO's, importance level
//     "sequence");
//   grpo_variant_loss (one workgroup): the normaliser of the loss type, then per token
//     w = exp(logp - old) (token level) or exp(s_b) (sequence level),
//     L_t = -min(w A, clip(w, 1 - ε_low, 1 + ε_high) A) + β k3(ref - logp),
//     the loss Σ_b Σ_t m_t L_t c_b, and d loss / d logp (stored for the backward), with
//       grpo:    c_b = 1 / (B max(n_b, 1))      bnpo, dapo: c_b = 1 / max(Σ n_b, 1)
//       dr_grpo: c_b = 1 / (B T_max)
//     and the metrics as masked token means: k3 KL, low / high / region clip ratios.
//   grpo_variant_backward: the stored derivatives times the upstream gradient.
// Batch sums: a strided share per thread, then a tree in workgroup memory (fixed order).
//
// stats: 0 loss  1 kl  2 clip low  3 clip high  4 clip region

struct Params {
    rows: u32,
    cols: u32,
    loss_type: u32,     // 0 grpo, 1 bnpo, 2 dr_grpo, 3 dapo
    sequence_level: u32,
    eps_low: f32,
    eps_high: f32,
    beta: f32,
    max_completion: f32, // T_max of dr_grpo
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // seq (B, 2) | d logp (B·T) | d logp scaled
@group(0) @binding(2) var<storage, read_write> stats: array<f32>; // (5), grpo_variant_loss only
@group(0) @binding(3) var<storage, read> logp: array<f32>;        // backward: the stored d logp
@group(0) @binding(4) var<storage, read> old_logp: array<f32>;    // backward: the upstream gradient
@group(0) @binding(5) var<storage, read> mask: array<f32>;
@group(0) @binding(6) var<storage, read> advantages: array<f32>;  // (B)
@group(0) @binding(7) var<storage, read> ref_logp: array<f32>;    // read when beta != 0
@group(0) @binding(8) var<storage, read> seq: array<f32>;         // (B, 2) from grpo_sequences

const WG: u32 = 64u;

var<workgroup> part_a: array<vec4<f32>, WG>;
var<workgroup> part_b: array<f32, WG>;

fn tree_sum(lid: u32) {
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part_a[lid] += part_a[lid + k];
            part_b[lid] += part_b[lid + k];
        }
        workgroupBarrier();
    }
}

// exp(-d) - 1 + d, as a series for small |d|.
fn k3(d: f32) -> f32 {
    if (abs(d) < 0.1) {
        return d * d * (0.5 + d * (-1.0 / 6.0 + d * (1.0 / 24.0 + d * (-1.0 / 120.0 + d * (1.0 / 720.0)))));
    }
    return exp(-d) - 1.0 + d;
}

@compute @workgroup_size(WG)
fn grpo_sequences(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = gid.x + gid.y * nwg.x * WG;
    if (b >= p.rows) { return; }
    var n = 0.0;
    var s = 0.0;
    for (var t = 0u; t < p.cols; t++) {
        let i = b * p.cols + t;
        n += mask[i];
        s += mask[i] * (logp[i] - old_logp[i]);
    }
    out[2u * b] = n;
    out[2u * b + 1u] = s / max(n, 1.0);
}

@compute @workgroup_size(WG)
fn grpo_variant_loss(@builtin(local_invocation_index) lid: u32) {
    // phase 1: the batch's completion tokens Σ n_b (bnpo, dapo)
    var n_sum = 0.0;
    for (var b = lid; b < p.rows; b += WG) {
        n_sum += seq[2u * b];
    }
    part_a[lid] = vec4<f32>(0.0);
    part_b[lid] = n_sum;
    workgroupBarrier();
    tree_sum(lid);
    let n_tokens = max(part_b[0], 1.0);
    workgroupBarrier();

    // phase 2: per token
    var acc = vec4<f32>(0.0); // loss, kl, low, high (kl and clips masked, summed)
    var mass = 0.0;
    let n = p.rows * p.cols;
    for (var i = lid; i < n; i += WG) {
        let b = i / p.cols;
        let m = mask[i];
        if (m == 0.0) {
            out[i] = 0.0;
            continue;
        }
        var c = 1.0 / n_tokens;                                        // bnpo, dapo
        if (p.loss_type == 0u) { c = 1.0 / (f32(p.rows) * max(seq[2u * b], 1.0)); }
        if (p.loss_type == 2u) { c = 1.0 / (f32(p.rows) * p.max_completion); }
        var lw = logp[i] - old_logp[i];
        if (p.sequence_level == 1u) { lw = seq[2u * b + 1u]; }
        let w = exp(lw);
        let a = advantages[b];
        let l1 = w * a;
        let l2 = clamp(w, 1.0 - p.eps_low, 1.0 + p.eps_high) * a;
        var loss = -min(l1, l2);
        // d(-l1)/d lw = -l1; token level: d lw / d logp_i = 1; sequence level: the sequence's
        // tokens share lw, whose derivative m_i / n_b summed over the n_b tokens gives 1 too
        var d = select(0.0, -l1, l1 <= l2);
        var kl = 0.0;
        if (p.beta != 0.0) {
            let dk = logp[i] - ref_logp[i];
            kl = k3(dk);
            loss += p.beta * kl;
            d += p.beta * (1.0 - exp(-dk));
        }
        out[i] = m * d * c;
        acc += vec4<f32>(m * loss * c, m * kl, m * select(0.0, 1.0, w < 1.0 - p.eps_low && a < 0.0), m * select(0.0, 1.0, w > 1.0 + p.eps_high && a > 0.0));
        mass += m;
    }

    // phase 3: batch sums
    part_a[lid] = acc;
    part_b[lid] = mass;
    workgroupBarrier();
    tree_sum(lid);
    if (lid == 0u) {
        let s = part_a[0];
        let msum = max(part_b[0], 1.0);
        stats[0] = s.x;
        stats[1] = s.y / msum;
        stats[2] = s.z / msum;
        stats[3] = s.w / msum;
        stats[4] = (s.z + s.w) / msum;
    }
}

// out[i] = g * (stored d loss / d logp_i); g = upstream[0] (bound at 4)
@compute @workgroup_size(WG)
fn grpo_variant_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.cols) { return; }
    out[i] = old_logp[0] * logp[i];
}
