// Masked mean cross-entropy from the chunked head's per-row log-probabilities (see
// src/ops/vocab_head.rs): loss = -Σ w_r·log p_r / Σ w_r with w_r = mask_r (1 without a mask), 0
// for labels >= vocab; 0 when the weights sum to 0. The row terms are summed by the loss
// family's fixed-order reduction; here: the weight sum, the row terms and the backward.

struct Params {
    rows: u32,
    vocab: u32,
    // 1: read the mask.
    has_mask: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> weight_sum: array<f32>;
// The head's output (R, 3): log p(label), entropy, mean logit.
@group(0) @binding(4) var<storage, read> head: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
// The loss's gradient (one element).
@group(0) @binding(6) var<storage, read> g: array<f32>;
// The gradient of the head's output (R, 3).
@group(0) @binding(7) var<storage, read_write> dhead: array<f32>;

fn weight(r: u32) -> f32 {
    if (labels[r] >= p.vocab) {
        return 0.0;
    }
    if (p.has_mask == 1u) {
        return mask[r];
    }
    return 1.0;
}

// The weights' sum, by one thread in row order (deterministic).
@compute @workgroup_size(1, 1, 1)
fn weights() {
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        s += weight(r);
    }
    weight_sum[0] = s;
}

// Each row's share of the loss.
@compute @workgroup_size(64, 1, 1)
fn rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    var v = 0.0;
    if (weight_sum[0] > 0.0) {
        v = -head[3u * r] * weight(r) / weight_sum[0];
    }
    row_loss[r] = v;
}

// d loss / d head = (-g·w_r / Σw, 0, 0).
@compute @workgroup_size(64, 1, 1)
fn grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gid.x + gid.y * nw.x * 64u;
    if (r >= p.rows) {
        return;
    }
    var d = 0.0;
    if (weight_sum[0] > 0.0) {
        d = -g[0] * weight(r) / weight_sum[0];
    }
    dhead[3u * r] = d;
    dhead[3u * r + 1u] = 0.0;
    dhead[3u * r + 2u] = 0.0;
}
