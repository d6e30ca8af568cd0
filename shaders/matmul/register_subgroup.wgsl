// Register-tiled matmul for CPU Vulkan drivers with subgroups (lavapipe), the fast path of
// register.wgsl: C = op(A)·op(B) (+ bias), f32, both operands read from rgba32float textures
// (vec4 number i of a tensor is texel (i mod W, i / W); see register.wgsl for why).
//
// On lavapipe a texel fetch is a call of ~170 instructions for the 8 lanes of a SIMD vector,
// and with the plain kernel fetches take about 60% of the time. The 8 lanes of a subgroup are
// 8 neighbouring threads of one row of the workgroup: they compute the same rows of C, so they
// need the same texels of A. Here each lane fetches 1/8 of them and subgroupBroadcast hands
// every lane the rest, so A costs TM/8 fetches per lane instead of TM. B's texels differ per
// lane (other columns), so the tile is tall: TM = 4*RB rows (8, 16 or 32) by TN = 4*CB columns.
//
// Blocks are mat4x4 used as four vec4 columns, as in register.wgsl:
//   A block: column i = row (r + i) of op(A) over k0..k0+3
//   B block: column q = row (k0 + q) of op(B) over columns c..c+3
//   C block: column i = row (r + i) of C over columns c..c+3
// The host runs this only where subgroups are exactly 8 lanes wide and WG_X is a multiple of
// 8, so a subgroup is 8 consecutive threads of one workgroup row (lavapipe's layout). Rows and
// columns past the edges are computed and never stored; a K that is not a multiple of 4 ends
// with one masked step.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    // log2 of the texture width in texels.
    tex_shift: u32,
    // Batch strides in elements (0 for an operand shared by the whole batch).
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    // 1: add the bias; 2: add a matrix shaped like C (in the bias binding)
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var a_tex: texture_2d<f32>;
@group(0) @binding(2) var b_tex: texture_2d<f32>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override C_VEC4: bool = true;
// K is not a multiple of 4: compile the masked last step.
override TAIL: bool = false;
// Row blocks of 4 per thread: 2, 4 or 8. Column blocks of 4: 1, 2, 4 or 8.
override RB: u32 = 8u;
override CB: u32 = 4u;
override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;

// One row block of accumulators: CB 4x4 blocks side by side.
struct Row {
    c0: mat4x4<f32>,
    c1: mat4x4<f32>,
    c2: mat4x4<f32>,
    c3: mat4x4<f32>,
    c4: mat4x4<f32>,
    c5: mat4x4<f32>,
    c6: mat4x4<f32>,
    c7: mat4x4<f32>,
}

var<private> acc0: Row;
var<private> acc1: Row;
var<private> acc2: Row;
var<private> acc3: Row;
var<private> acc4: Row;
var<private> acc5: Row;
var<private> acc6: Row;
var<private> acc7: Row;
// The B blocks of the current k step.
var<private> b0: mat4x4<f32>;
var<private> b1: mat4x4<f32>;
var<private> b2: mat4x4<f32>;
var<private> b3: mat4x4<f32>;
var<private> b4: mat4x4<f32>;
var<private> b5: mat4x4<f32>;
var<private> b6: mat4x4<f32>;
var<private> b7: mat4x4<f32>;
// C's element offset for this batch entry; A's and B's first vec4 for it.
var<private> base_c: u32;
var<private> vec_a: u32;
var<private> vec_b: u32;

// vec4 number i of a tensor: texel (i mod W, i / W).
fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    let w = (1u << p.tex_shift) - 1u;
    return textureLoad(t, vec2<i32>(i32(i & w), i32(i >> p.tex_shift)), 0);
}

// vec4s i, i + s, i + 2s, i + 3s.
fn tex4(t: texture_2d<f32>, i: u32, s: u32) -> mat4x4<f32> {
    return mat4x4<f32>(texel(t, i), texel(t, i + s), texel(t, i + 2u * s), texel(t, i + 3u * s));
}

// Zero the k entries at or past K (only in the last, partial step).
fn mask_k(v: vec4<f32>, k0: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k));
}

// Zero a whole row of B when its k is at or past K.
fn keep_k(v: vec4<f32>, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, k < p.k);
}

// This lane's share j of the A texels of rows row0.. at k0: texel j*8 + lane of the step.
// Not transposed: row row0 + 8j + lane over k0..k0+3. Transposed (stored (K, M)): k row
// k0 + lane % 4, rows row0 + 8j + 4 (lane / 4) .. + 3.
fn fetch_a(row0: u32, k0: u32, lane: u32, j: u32) -> vec4<f32> {
    if (TRANS_A) {
        return texel(a_tex, vec_a + (k0 + (lane & 3u)) * (p.m >> 2u) + (row0 >> 2u) + 2u * j + (lane >> 2u));
    }
    return texel(a_tex, vec_a + (row0 + 8u * j + lane) * (p.k >> 2u) + (k0 >> 2u));
}

// An A block from four lanes' texels (lanes 0-3 or 4-7 of a fetch).
fn a_block(t: mat4x4<f32>, k0: u32, tail: bool) -> mat4x4<f32> {
    var m = t;
    if (TRANS_A) {
        // Columns are k rows over four m: make them m rows over k.
        m = transpose(t);
    }
    if (tail) {
        m = mat4x4<f32>(mask_k(m[0], k0), mask_k(m[1], k0), mask_k(m[2], k0), mask_k(m[3], k0));
    }
    return m;
}

fn a_lo(f: vec4<f32>, k0: u32, tail: bool) -> mat4x4<f32> {
    let t = mat4x4<f32>(subgroupBroadcast(f, 0u), subgroupBroadcast(f, 1u), subgroupBroadcast(f, 2u), subgroupBroadcast(f, 3u));
    return a_block(t, k0, tail);
}

fn a_hi(f: vec4<f32>, k0: u32, tail: bool) -> mat4x4<f32> {
    let t = mat4x4<f32>(subgroupBroadcast(f, 4u), subgroupBroadcast(f, 5u), subgroupBroadcast(f, 6u), subgroupBroadcast(f, 7u));
    return a_block(t, k0, tail);
}

// The B block for k0..k0+3 at columns cl..cl+3 (column q = row k0 + q of op(B)).
fn load_b(k0: u32, cl: u32, tail: bool) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    if (TRANS_B) {
        // Stored (N, K): a texel holds four k of one column.
        t = tex4(b_tex, vec_b + cl * (p.k >> 2u) + (k0 >> 2u), p.k >> 2u);
        if (tail) {
            t = mat4x4<f32>(mask_k(t[0], k0), mask_k(t[1], k0), mask_k(t[2], k0), mask_k(t[3], k0));
        }
        t = transpose(t);
    } else {
        // Stored (K, N): a texel holds four columns of one k.
        t = tex4(b_tex, vec_b + k0 * (p.n >> 2u) + (cl >> 2u), p.n >> 2u);
        if (tail) {
            t = mat4x4<f32>(keep_k(t[0], k0), keep_k(t[1], k0 + 1u), keep_k(t[2], k0 + 2u), keep_k(t[3], k0 + 3u));
        }
    }
    return t;
}

// One column of a C block: c += sum_q av[q] * bm[q].
fn mac_col(cc: vec4<f32>, bm: mat4x4<f32>, av: vec4<f32>) -> vec4<f32> {
    return fma(bm[3], vec4<f32>(av.w), fma(bm[2], vec4<f32>(av.z), fma(bm[1], vec4<f32>(av.y), fma(bm[0], vec4<f32>(av.x), cc))));
}

// A 4x4 block of C plus the product of a 4x4 block of A and one of B.
fn mac(cm: mat4x4<f32>, bm: mat4x4<f32>, am: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(mac_col(cm[0], bm, am[0]), mac_col(cm[1], bm, am[1]),
                       mac_col(cm[2], bm, am[2]), mac_col(cm[3], bm, am[3]));
}

// One row block of accumulators times this step's B blocks.
fn mac_row(r: Row, am: mat4x4<f32>) -> Row {
    var o = r;
    o.c0 = mac(r.c0, b0, am);
    if (CB > 1u) {
        o.c1 = mac(r.c1, b1, am);
    }
    if (CB > 2u) {
        o.c2 = mac(r.c2, b2, am);
        o.c3 = mac(r.c3, b3, am);
    }
    if (CB > 4u) {
        o.c4 = mac(r.c4, b4, am);
        o.c5 = mac(r.c5, b5, am);
        o.c6 = mac(r.c6, b6, am);
        o.c7 = mac(r.c7, b7, am);
    }
    return o;
}

// One step of four k: fetch, share A through the subgroup, accumulate.
fn step(row0: u32, col0: u32, k0: u32, lane: u32, tail: bool) {
    // Load this lane's A texels and the B blocks.
    let f0 = fetch_a(row0, k0, lane, 0u);
    var f1: vec4<f32>;
    var f2: vec4<f32>;
    var f3: vec4<f32>;
    if (RB > 2u) {
        f1 = fetch_a(row0, k0, lane, 1u);
    }
    if (RB > 4u) {
        f2 = fetch_a(row0, k0, lane, 2u);
        f3 = fetch_a(row0, k0, lane, 3u);
    }
    b0 = load_b(k0, col0, tail);
    if (CB > 1u) {
        b1 = load_b(k0, col0 + 4u, tail);
    }
    if (CB > 2u) {
        b2 = load_b(k0, col0 + 8u, tail);
        b3 = load_b(k0, col0 + 12u, tail);
    }
    if (CB > 4u) {
        b4 = load_b(k0, col0 + 16u, tail);
        b5 = load_b(k0, col0 + 20u, tail);
        b6 = load_b(k0, col0 + 24u, tail);
        b7 = load_b(k0, col0 + 28u, tail);
    }
    // Accumulate, one row block at a time (its A block broadcast from four lanes).
    acc0 = mac_row(acc0, a_lo(f0, k0, tail));
    acc1 = mac_row(acc1, a_hi(f0, k0, tail));
    if (RB > 2u) {
        acc2 = mac_row(acc2, a_lo(f1, k0, tail));
        acc3 = mac_row(acc3, a_hi(f1, k0, tail));
    }
    if (RB > 4u) {
        acc4 = mac_row(acc4, a_lo(f2, k0, tail));
        acc5 = mac_row(acc5, a_hi(f2, k0, tail));
        acc6 = mac_row(acc6, a_lo(f3, k0, tail));
        acc7 = mac_row(acc7, a_hi(f3, k0, tail));
    }
}

// Bias for columns cl..cl+3 (zero without bias).
fn bias4(cl: u32) -> vec4<f32> {
    if (p.has_bias != 1u) {
        return vec4<f32>(0.0);
    }
    if (C_VEC4) {
        return bias[cl >> 2u];
    }
    let j = vec4<u32>(cl) + vec4<u32>(0u, 1u, 2u, 3u);
    return vec4<f32>(bias[j.x >> 2u][j.x & 3u], bias[j.y >> 2u][j.y & 3u],
                     bias[j.z >> 2u][j.z & 3u], bias[j.w >> 2u][j.w & 3u]);
}

// has_bias 2: C = op(A)·op(B) + Z, Z shaped like C in the bias binding; its elements i..i+3
// (columns cl..cl+3 of one row), zero past the last column.
fn addend4(i: u32, cl: u32) -> vec4<f32> {
    if (C_VEC4) {
        return bias[i >> 2u];
    }
    var z = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (cl + j < p.n) {
            let e = i + j;
            z[j] = bias[e >> 2u][e & 3u];
        }
    }
    return z;
}

// Store one C row (row r, columns cl..cl+3), skipping what lies outside C.
fn store_row(cv: vec4<f32>, r: u32, cl: u32) {
    if (r >= p.m || cl >= p.n) {
        return;
    }
    let i = base_c + r * p.n + cl;
    var v = cv;
    if (p.has_bias == 2u) {
        v += addend4(i, cl);
    }
    if (C_VEC4) {
        c[i >> 2u] = v;
        return;
    }
    c[i >> 2u][i & 3u] = v.x;
    if (cl + 1u < p.n) {
        let j = i + 1u;
        c[j >> 2u][j & 3u] = v.y;
    }
    if (cl + 2u < p.n) {
        let j = i + 2u;
        c[j >> 2u][j & 3u] = v.z;
    }
    if (cl + 3u < p.n) {
        let j = i + 3u;
        c[j >> 2u][j & 3u] = v.w;
    }
}

fn store_block(cm: mat4x4<f32>, r: u32, cl: u32) {
    let bv = bias4(cl);
    store_row(cm[0] + bv, r, cl);
    store_row(cm[1] + bv, r + 1u, cl);
    store_row(cm[2] + bv, r + 2u, cl);
    store_row(cm[3] + bv, r + 3u, cl);
}

fn store_acc_row(acc: Row, r: u32, col0: u32) {
    store_block(acc.c0, r, col0);
    if (CB > 1u) {
        store_block(acc.c1, r, col0 + 4u);
    }
    if (CB > 2u) {
        store_block(acc.c2, r, col0 + 8u);
        store_block(acc.c3, r, col0 + 12u);
    }
    if (CB > 4u) {
        store_block(acc.c4, r, col0 + 16u);
        store_block(acc.c5, r, col0 + 20u);
        store_block(acc.c6, r, col0 + 24u);
        store_block(acc.c7, r, col0 + 28u);
    }
}

// C (batch z) rows 4*RB*y.., columns 4*CB*x..
// (Subgroup built-ins need a 1-D workgroup: its WG_X x WG_Y threads are laid out row by row.)
@compute @workgroup_size(WG_X * WG_Y, 1, 1)
fn matmul(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let gid = vec3<u32>(wid.x * WG_X + li % WG_X, wid.y * WG_Y + li / WG_X, wid.z);
    let row0 = gid.y * RB * 4u;
    let col0 = gid.x * CB * 4u;
    base_c = gid.z * p.c_stride;
    vec_a = gid.z * (p.a_stride >> 2u);
    vec_b = gid.z * (p.b_stride >> 2u);
    // Accumulate over K, four at a time; a partial last step is masked.
    let k_full = p.k & ~3u;
    for (var k0 = 0u; k0 < k_full; k0 += 4u) {
        step(row0, col0, k0, lane, false);
    }
    if (TAIL) {
        step(row0, col0, k_full, lane, true);
    }
    // Store (plus bias), guarded at the edges.
    store_acc_row(acc0, row0, col0);
    store_acc_row(acc1, row0 + 4u, col0);
    if (RB > 2u) {
        store_acc_row(acc2, row0 + 8u, col0);
        store_acc_row(acc3, row0 + 12u, col0);
    }
    if (RB > 4u) {
        store_acc_row(acc4, row0 + 16u, col0);
        store_acc_row(acc5, row0 + 20u, col0);
        store_acc_row(acc6, row0 + 24u, col0);
        store_acc_row(acc7, row0 + 28u, col0);
    }
}
