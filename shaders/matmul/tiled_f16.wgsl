enable f16;

// Workgroup-memory tiled matmul for real GPUs, f16 inputs: C = op(A)·op(B) (+ bias), with f32
// accumulation and an f32 C. The same kernel as tiled.wgsl but for the element type of A and B.
//
// The classic scheme: a 16x16 workgroup computes a 64x64 block of C, each thread a 4x4 block.
// Per step of 16 k the workgroup stages a 64x16 tile of op(A) and a 16x64 tile of op(B) in
// workgroup memory (each thread loads four elements of each, reading along the contiguous
// dimension of the stored layout, zero outside the matrices), waits at a barrier, then every
// thread accumulates from the tiles. Any shape works; the loads guard every element.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    _pad0: u32,
    // Batch strides in elements (0 for a B shared by the whole batch).
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;

// a_tile[k * ROW + i] holds rows 4i..4i+3 of the A tile at k; b_tile[k * ROW + j] columns
// 4j..4j+3. Rows of 16 vec4 padded to 17 so that threads storing down a column of a tile (the
// layouts read along k) hit different banks.
const ROW: u32 = 17u;
var<workgroup> a_tile: array<vec4<f32>, 272>;
var<workgroup> b_tile: array<vec4<f32>, 272>;

// Element (row, kk) of op(A) for this batch entry, 0 outside.
fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    return f32(a[base + select(row * p.k + kk, kk * p.m + row, TRANS_A)]);
}

// Element (kk, col) of op(B) for this batch entry, 0 outside.
fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    return f32(b[base + select(kk * p.n + col, col * p.k + kk, TRANS_B)]);
}

fn store(base: u32, row: u32, col: u32, v: f32) {
    if (row < p.m && col < p.n) {
        var x = v;
        if (HAS_BIAS) {
            x += bias[col];
        }
        c[base + row * p.n + col] = x;
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let base_a = wid.z * p.a_stride;
    let base_b = wid.z * p.b_stride;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        // Load: 1024 elements of each tile, four per thread, consecutive threads reading
        // consecutive addresses of the stored layout.
        for (var j = 0u; j < 4u; j++) {
            let e = tid + j * 256u;
            var i: u32;
            var kk: u32;
            if (TRANS_A) {
                i = e % TILE;
                kk = e / TILE;
            } else {
                kk = e % DEPTH;
                i = e / DEPTH;
            }
            a_tile[kk * ROW + i / 4u][i % 4u] = load_a(base_a, row0 + i, k0 + kk);
            if (TRANS_B) {
                kk = e % DEPTH;
                i = e / DEPTH;
            } else {
                i = e % TILE;
                kk = e / TILE;
            }
            b_tile[kk * ROW + i / 4u][i % 4u] = load_b(base_b, k0 + kk, col0 + i);
        }
        // Barrier: the tiles are complete.
        workgroupBarrier();
        // Accumulate this thread's 4x4 block.
        for (var kk = 0u; kk < DEPTH; kk++) {
            let av = a_tile[kk * ROW + lid.y];
            let bv = b_tile[kk * ROW + lid.x];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        // Barrier: everyone is done reading before the next load.
        workgroupBarrier();
    }
    // Store (plus bias), guarded at the edges.
    let base_c = wid.z * p.c_stride;
    let r = row0 + lid.y * 4u;
    let cl = col0 + lid.x * 4u;
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(base_c, r + i, cl + j, rows[i][j]);
        }
    }
}
