// Register-tiled matmul for CPU Vulkan drivers (lavapipe): C = op(A)·op(B) (+ bias), f32.
//
// No workgroup memory and no barriers: on a CPU driver each invocation is one SIMD lane, every
// storage load is a per-lane loop, and barriers turn the workgroup into coroutines. What pays is
// many multiply-adds per loaded value, so each thread computes a block of RB x CB 4x4 sub-tiles
// (up to 16 x 32 outputs) held in private variables, and walks K four steps at a time, loading
// 4x4 blocks of A and B with vec4 loads where the layout allows.
//
// A 4x4 block is a mat4x4 used as four vec4 columns:
//   A block: column i = row (r + i) of op(A) over k0..k0+3
//   B block: column q = row (k0 + q) of op(B) over columns c..c+3
//   C block: column i = row (r + i) of C over columns c..c+3
// so C[i] += sum_q A[i][q] * B[q]. In a CPU driver's SoA code a transpose is free (a renaming).
//
// Where A and B come from. Lavapipe on a CPU without AVX-512 builds each storage-buffer load one
// lane at a time through the stack (~25 cycles per lane and component), which caps a buffer-fed
// kernel near 4 GFLOP/s; its texel fetches are vector gathers, several times cheaper. So with
// FROM_TEXTURE the vec4 loads read rgba32float textures holding the same data (the host copies
// the buffers in): vec4 number i of a tensor is texel (i mod W, i / W), W = 2^tex_shift. (With
// AVX-512 the per-lane loads are cheap and the buffers are read directly, 16x16 tiles.)
//
// Overrides pick the layout (TRANS_A, TRANS_B), the load width (A_VEC4, B_VEC4, C_VEC4: vec4
// loads need the contiguous dimension to be a multiple of 4, else scalar loads), the bias, the
// thread tile (RB row blocks in 1, 2, 4; CB column blocks in 1, 2, 3, 4, 8) and the workgroup
// shape. Rows and columns past the edge are computed from whatever the (bounds-checked) loads
// return and never stored, so interior and edge threads run the same code; only the stores are
// guarded. A K that is not a multiple of 4 ends with one masked step.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    // log2 of the texture width in texels (texture-fed only).
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
@group(0) @binding(3) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> c: array<vec4<f32>>;

override FROM_TEXTURE: bool = false;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override A_VEC4: bool = true;
override B_VEC4: bool = true;
override C_VEC4: bool = true;
// K is not a multiple of 4: compile the masked last step.
override TAIL: bool = false;
override RB: u32 = 4u;
override CB: u32 = 8u;
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
// The B blocks of the current k step.
var<private> b0: mat4x4<f32>;
var<private> b1: mat4x4<f32>;
var<private> b2: mat4x4<f32>;
var<private> b3: mat4x4<f32>;
var<private> b4: mat4x4<f32>;
var<private> b5: mat4x4<f32>;
var<private> b6: mat4x4<f32>;
var<private> b7: mat4x4<f32>;
// Element offsets of this batch entry.
var<private> base_a: u32;
var<private> base_b: u32;
var<private> base_c: u32;

// vec4 number i of A or B (four consecutive elements), from the texture or the buffer.
fn a_vec(i: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        let w = (1u << p.tex_shift) - 1u;
        return textureLoad(a_tex, vec2<i32>(i32(i & w), i32(i >> p.tex_shift)), 0);
    }
    return a[i];
}

fn b_vec(i: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        let w = (1u << p.tex_shift) - 1u;
        return textureLoad(b_tex, vec2<i32>(i32(i & w), i32(i >> p.tex_shift)), 0);
    }
    return b[i];
}

fn a1(i: u32) -> f32 {
    return a[i >> 2u][i & 3u];
}

fn b1s(i: u32) -> f32 {
    return b[i >> 2u][i & 3u];
}

// Four scalars of A at i, i + s, i + 2s, i + 3s.
fn a4(i: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(a1(i), a1(i + s), a1(i + 2u * s), a1(i + 3u * s));
}

fn b4s(i: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(b1s(i), b1s(i + s), b1s(i + 2u * s), b1s(i + 3u * s));
}

// Zero the k entries at or past K (only in the last, partial step).
fn mask_k(v: vec4<f32>, k0: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.k));
}

// Zero a whole row of B when its k is at or past K.
fn keep_k(v: vec4<f32>, k: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, k < p.k);
}

// The A block for rows r..r+3 at k0..k0+3 (column i = row r + i over k).
fn load_a(r: u32, k0: u32, tail: bool) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    if (TRANS_A) {
        // Stored (K, M): one vec4 over four rows per k.
        let i = base_a + k0 * p.m + r;
        if (A_VEC4) {
            let m4 = p.m >> 2u;
            let j = i >> 2u;
            t = transpose(mat4x4<f32>(a_vec(j), a_vec(j + m4), a_vec(j + 2u * m4), a_vec(j + 3u * m4)));
        } else {
            t = transpose(mat4x4<f32>(a4(i, 1u), a4(i + p.m, 1u), a4(i + 2u * p.m, 1u), a4(i + 3u * p.m, 1u)));
        }
    } else {
        // Stored (M, K): one vec4 over four k per row.
        let i = base_a + r * p.k + k0;
        if (A_VEC4) {
            let k4 = p.k >> 2u;
            let j = i >> 2u;
            t = mat4x4<f32>(a_vec(j), a_vec(j + k4), a_vec(j + 2u * k4), a_vec(j + 3u * k4));
        } else {
            t = mat4x4<f32>(a4(i, 1u), a4(i + p.k, 1u), a4(i + 2u * p.k, 1u), a4(i + 3u * p.k, 1u));
        }
    }
    if (tail) {
        t = mat4x4<f32>(mask_k(t[0], k0), mask_k(t[1], k0), mask_k(t[2], k0), mask_k(t[3], k0));
    }
    return t;
}

// The B block for k0..k0+3 at columns cl..cl+3 (column q = row k0 + q of op(B)).
fn load_b(k0: u32, cl: u32, tail: bool) -> mat4x4<f32> {
    var t: mat4x4<f32>;
    if (TRANS_B) {
        // Stored (N, K): one vec4 over four k per column.
        let i = base_b + cl * p.k + k0;
        if (B_VEC4) {
            let k4 = p.k >> 2u;
            let j = i >> 2u;
            t = mat4x4<f32>(b_vec(j), b_vec(j + k4), b_vec(j + 2u * k4), b_vec(j + 3u * k4));
        } else {
            t = mat4x4<f32>(b4s(i, 1u), b4s(i + p.k, 1u), b4s(i + 2u * p.k, 1u), b4s(i + 3u * p.k, 1u));
        }
        if (tail) {
            t = mat4x4<f32>(mask_k(t[0], k0), mask_k(t[1], k0), mask_k(t[2], k0), mask_k(t[3], k0));
        }
        t = transpose(t);
    } else {
        // Stored (K, N): one vec4 over four columns per k.
        let i = base_b + k0 * p.n + cl;
        if (B_VEC4) {
            let n4 = p.n >> 2u;
            let j = i >> 2u;
            t = mat4x4<f32>(b_vec(j), b_vec(j + n4), b_vec(j + 2u * n4), b_vec(j + 3u * n4));
        } else {
            t = mat4x4<f32>(b4s(i, 1u), b4s(i + p.n, 1u), b4s(i + 2u * p.n, 1u), b4s(i + 3u * p.n, 1u));
        }
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
    }
    if (CB > 3u) {
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

// One step of four k: load the blocks, then accumulate.
fn step(row0: u32, col0: u32, k0: u32, tail: bool) {
    // Load B blocks (shared by all row blocks).
    b0 = load_b(k0, col0, tail);
    if (CB > 1u) {
        b1 = load_b(k0, col0 + 4u, tail);
    }
    if (CB > 2u) {
        b2 = load_b(k0, col0 + 8u, tail);
    }
    if (CB > 3u) {
        b3 = load_b(k0, col0 + 12u, tail);
    }
    if (CB > 4u) {
        b4 = load_b(k0, col0 + 16u, tail);
        b5 = load_b(k0, col0 + 20u, tail);
        b6 = load_b(k0, col0 + 24u, tail);
        b7 = load_b(k0, col0 + 28u, tail);
    }
    // Load an A block per row block and accumulate.
    acc0 = mac_row(acc0, load_a(row0, k0, tail));
    if (RB > 1u) {
        acc1 = mac_row(acc1, load_a(row0 + 4u, k0, tail));
    }
    if (RB > 2u) {
        acc2 = mac_row(acc2, load_a(row0 + 8u, k0, tail));
        acc3 = mac_row(acc3, load_a(row0 + 12u, k0, tail));
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
    }
    if (CB > 3u) {
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
@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * RB * 4u;
    let col0 = gid.x * CB * 4u;
    base_a = gid.z * p.a_stride;
    base_b = gid.z * p.b_stride;
    base_c = gid.z * p.c_stride;
    // Accumulate over K, four at a time; a partial last step is masked.
    let k_full = p.k & ~3u;
    for (var k0 = 0u; k0 < k_full; k0 += 4u) {
        step(row0, col0, k0, false);
    }
    if (TAIL) {
        step(row0, col0, k_full, true);
    }
    // Store (plus bias), guarded at the edges.
    store_acc_row(acc0, row0, col0);
    if (RB > 1u) {
        store_acc_row(acc1, row0 + 4u, col0);
    }
    if (RB > 2u) {
        store_acc_row(acc2, row0 + 8u, col0);
        store_acc_row(acc3, row0 + 12u, col0);
    }
}
