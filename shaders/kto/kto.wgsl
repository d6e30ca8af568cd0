// KTO, one batch of N unpaired completions (desirable or undesirable), in one workgroup:
//   phase 1: the KL estimate z0 = max(mean_j (kl_policy_j - kl_ref_j), 0) over the mismatched
//            (prompt, completion) rows, a constant of the loss (TRL detaches it);
//   phase 2: per row i, its weighted loss and the derivative of the batch loss (the mean over
//            all N rows) with respect to the policy's sequence log-prob logp_i;
//   phase 3: the batch sums of the loss and of TRL's metrics (a tree in workgroup memory, a
//            fixed order, no atomics).
// kto_backward scales the stored derivatives by the upstream gradient. The formulas are
// documented on `KtoLoss` in src/ops/kto.rs.
//
// stats: 0 loss (mean)  1 sum of beta r over desirable  2 over undesirable  3 sum of logp over
//        desirable  4 over undesirable  5 count desirable  6 count undesirable  7 kl (z0)

struct Params {
    n: u32,
    n_kl: u32,         // rows of kl_policy / kl_ref; 0: no KL term (z0 = 0)
    loss_type: u32,    // 0 kto, 1 apo_zero_unpaired
    _pad0: u32,
    beta: f32,
    w_desirable: f32,
    w_undesirable: f32,
    inv_n: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // forward: d loss / d logp (N); backward: g times it
@group(0) @binding(2) var<storage, read_write> stats: array<f32>; // forward only (8)
@group(0) @binding(3) var<storage, read> logp: array<f32>;        // forward: policy sums; backward: stored derivatives
@group(0) @binding(4) var<storage, read> ref_logp: array<f32>;    // forward: reference sums; backward: upstream gradient
@group(0) @binding(5) var<storage, read> label: array<f32>;       // 1 desirable, 0 undesirable
@group(0) @binding(6) var<storage, read> kl_policy: array<f32>;
@group(0) @binding(7) var<storage, read> kl_ref: array<f32>;

const WG: u32 = 64u;

var<workgroup> part_a: array<vec4<f32>, WG>;
var<workgroup> part_b: array<vec4<f32>, WG>;

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// sigma'(x) = sigma(x) sigma(-x)
fn dsigmoid(x: f32) -> f32 {
    return sigmoid(x) * sigmoid(-x);
}

// The tree reduction of part_a / part_b into element 0.
fn reduce_parts(lid: u32) {
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part_a[lid] += part_a[lid + k];
            part_b[lid] += part_b[lid + k];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn kto_forward(@builtin(local_invocation_index) lid: u32) {
    // phase 1: the KL estimate, a strided share per thread then a tree
    var kl_sum = 0.0;
    for (var j = lid; j < p.n_kl; j += WG) {
        kl_sum += kl_policy[j] - kl_ref[j];
    }
    part_a[lid] = vec4<f32>(kl_sum, 0.0, 0.0, 0.0);
    part_b[lid] = vec4<f32>(0.0);
    workgroupBarrier();
    reduce_parts(lid);
    var kl = 0.0;
    if (p.n_kl > 0u) {
        kl = max(part_a[0].x / f32(p.n_kl), 0.0);
    }
    workgroupBarrier(); // every thread has read part_a[0] before it is overwritten

    // phase 2: each row's loss and derivative; metric terms accumulate per thread
    let b = p.beta;
    var a = vec4<f32>(0.0);  // loss, beta r desirable, beta r undesirable, logp desirable
    var c = vec4<f32>(0.0);  // logp undesirable, count desirable, count undesirable, -
    for (var i = lid; i < p.n; i += WG) {
        let r = logp[i] - ref_logp[i];
        var loss = 0.0;
        var d = 0.0;
        if (label[i] > 0.5) {
            var z = b * r;
            if (p.loss_type == 0u) {
                z = b * (r - kl);
            }
            loss = p.w_desirable * (1.0 - sigmoid(z));
            d = -p.w_desirable * b * dsigmoid(z);
            a += vec4<f32>(0.0, b * r, 0.0, logp[i]);
            c += vec4<f32>(0.0, 1.0, 0.0, 0.0);
        } else {
            if (p.loss_type == 0u) {
                let z = b * (kl - r);
                loss = p.w_undesirable * (1.0 - sigmoid(z));
                d = p.w_undesirable * b * dsigmoid(z);
            } else {
                loss = p.w_undesirable * sigmoid(b * r);
                d = p.w_undesirable * b * dsigmoid(b * r);
            }
            a += vec4<f32>(0.0, 0.0, b * r, 0.0);
            c += vec4<f32>(logp[i], 0.0, 1.0, 0.0);
        }
        a.x += loss;
        out[i] = d * p.inv_n;
    }

    // phase 3: batch sums
    part_a[lid] = a;
    part_b[lid] = c;
    workgroupBarrier();
    reduce_parts(lid);
    if (lid == 0u) {
        let sa = part_a[0];
        let sb = part_b[0];
        stats[0] = sa.x * p.inv_n;
        stats[1] = sa.y;
        stats[2] = sa.z;
        stats[3] = sa.w;
        stats[4] = sb.x;
        stats[5] = sb.y;
        stats[6] = sb.z;
        stats[7] = kl;
    }
}

// out[i] = g * (stored d loss / d logp_i), g = the upstream gradient (one element)
@compute @workgroup_size(WG)
fn kto_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    out[i] = ref_logp[0] * logp[i];
}
