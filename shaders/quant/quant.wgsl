// Frozen weights in their stored form: y = x·Wᵀ (+ bias), dx = dy·W and the row gather, with W
// dequantized on the fly from its raw bytes (see src/ops/quant.rs).
//
// W is (N, K) row-major in one of ggml's stored types, held as the file's raw bytes in u32
// words: f16, bf16, Q8_0, Q4_0, Q4_1 (blocks of 32 along a row), Q4_K, Q6_K (super-blocks of
// 256). Blocks are 34, 18, 20, 144 and 210 bytes, so they are not word-aligned: every read goes
// through `byte_at` / `u16_at` / `u32_at`, which assemble bytes from the words. The one decoder,
// `w4(n, k0)`, returns the four elements W[n, k0..k0+3] (k0 a multiple of 4; four consecutive
// elements always lie in one block and one sub-block), zero past the edges.
//
// All entry points live in this one file so the block decoders exist once. The register ones
// (CPU adapters) use no workgroup memory and no barriers; only the tiled ones (real GPUs) touch
// the `var<workgroup>` tiles. Bindings: 0 params, 1 W's words, 2 x or dy, 3 bias, 4 the output
// (6: as vec4s), 5 token ids (gather); each entry point binds only what it uses.

struct Params {
    // Rows of x / dy (tokens for the gather).
    m: u32,
    // W's row length (in features; the table width for the gather).
    k: u32,
    // W's rows (out features; the vocabulary for the gather).
    n: u32,
    // Bytes per stored row of W.
    row_bytes: u32,
    // 1: add the bias (forward).
    has_bias: u32,
    // First stored row this call reads as row 0 (a slice of the vocabulary head).
    row0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;

// The stored type: 0 f16, 1 bf16, 2 Q8_0, 3 Q4_0, 4 Q4_1, 5 Q4_K, 6 Q6_K (`StoredType` order).
override KIND: u32 = 0u;
// Register kernels: rows per thread (a multiple of 4 is not required).
const RM: u32 = 8u;

// ---- byte access -------------------------------------------------------------------------

// Byte o of W.
fn byte_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xFFu;
}

// The little-endian u16 at an even byte offset o.
fn u16_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 2u) * 8u)) & 0xFFFFu;
}

// The four bytes o..o+3 as a little-endian u32, any alignment.
fn u32_at(o: u32) -> u32 {
    let s = (o & 3u) * 8u;
    let lo = w[o >> 2u];
    if (s == 0u) {
        return lo;
    }
    return (lo >> s) | (w[(o >> 2u) + 1u] << (32u - s));
}

// IEEE half bits to f32 by hand (`unpack2x16float` needs a capability some backends lack).
fn half_bits(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    if (e == 0u) {
        // Zero or subnormal: m · 2^-24.
        return bitcast<f32>(sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7F800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn half_at(o: u32) -> f32 {
    return half_bits(u16_at(o));
}

// The four bytes of v as unsigned values.
fn bytes4(v: u32) -> vec4<f32> {
    return vec4<f32>(f32(v & 0xFFu), f32((v >> 8u) & 0xFFu), f32((v >> 16u) & 0xFFu), f32(v >> 24u));
}

// The four bytes of v as signed values.
fn sbytes4(v: u32) -> vec4<f32> {
    let s = vec4<i32>(bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v));
    return vec4<f32>(s >> vec4<u32>(24u));
}

// ---- block decoders (ggml's dequantize_row_* in ggml-quants.c, four elements at a time) -------

// f16 / bf16: element e at bytes 2e (rows need not be word-aligned: K may be odd).
fn w4_half(n: u32, k0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k0 + j < p.k) {
            let h = u16_at(2u * (n * p.k + k0 + j));
            if (KIND == 0u) {
                v[j] = half_bits(h);
            } else {
                v[j] = bitcast<f32>(h << 16u);
            }
        }
    }
    return v;
}

// block_q8_0 {f16 d; i8 qs[32]} (34 bytes): x = d·q.
fn w4_q8_0(row: u32, k0: u32) -> vec4<f32> {
    let o = row + (k0 >> 5u) * 34u;
    return half_at(o) * sbytes4(u32_at(o + 2u + (k0 & 31u)));
}

// block_q4_0 {f16 d; u8 qs[16]} (18 bytes): element j < 16 is the low nibble of qs[j], j >= 16
// the high nibble of qs[j - 16]; x = d·(q - 8).
fn w4_q4_0(row: u32, k0: u32) -> vec4<f32> {
    let o = row + (k0 >> 5u) * 18u;
    let j = k0 & 31u;
    let q = (u32_at(o + 2u + (j & 15u)) >> select(0u, 4u, j >= 16u)) & 0x0F0F0F0Fu;
    return half_at(o) * (bytes4(q) - vec4<f32>(8.0));
}

// block_q4_1 {f16 d; f16 m; u8 qs[16]} (20 bytes): nibbles as Q4_0; x = d·q + m. Blocks are
// five words and rows whole blocks, so every block starts on a word: two plain loads, d and m
// from the first word, the four nibble bytes from one of the next four.
fn w4_q4_1(row: u32, k0: u32) -> vec4<f32> {
    let o = (row + (k0 >> 5u) * 20u) >> 2u;
    let j = k0 & 31u;
    let dm = w[o];
    let q = (w[o + 1u + ((j & 15u) >> 2u)] >> select(0u, 4u, j >= 16u)) & 0x0F0F0F0Fu;
    return half_bits(dm & 0xFFFFu) * bytes4(q) + vec4<f32>(half_bits(dm >> 16u));
}

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block s (0..7) from the 12 bytes at sc.
fn scale_min_k4(s: u32, sc: u32) -> vec2<f32> {
    if (s < 4u) {
        return vec2<f32>(f32(byte_at(sc + s) & 63u), f32(byte_at(sc + s + 4u) & 63u));
    }
    let d = (byte_at(sc + s + 4u) & 0xFu) | ((byte_at(sc + s - 4u) >> 6u) << 4u);
    let m = (byte_at(sc + s + 4u) >> 4u) | ((byte_at(sc + s) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// block_q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]} (144 bytes). Element j: chunk c = j/64
// reads qs[32c + j%32], low nibble for j%64 < 32 (sub-block 2c), high otherwise (2c + 1);
// x = d·sc·q - dmin·m.
fn w4_q4_k(row: u32, k0: u32) -> vec4<f32> {
    let o = row + (k0 >> 8u) * 144u;
    let j = k0 & 255u;
    let c = j >> 6u;
    let high = (j & 32u) != 0u;
    let sm = scale_min_k4(2u * c + select(0u, 1u, high), o + 4u);
    let q = (u32_at(o + 16u + 32u * c + (j & 31u)) >> select(0u, 4u, high)) & 0x0F0F0F0Fu;
    return half_at(o) * sm.x * bytes4(q) - vec4<f32>(half_at(o + 2u) * sm.y);
}

// block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d} (210 bytes). Element j: half h = j/128,
// quarter t = (j%128)/32, l = j%32; low 4 bits from ql[64h + l + 32(t&1)] (low nibble for t < 2),
// high 2 bits from bits 2t of qh[32h + l]; x = d·scales[8h + 2t + l/16]·(q - 32).
fn w4_q6_k(row: u32, k0: u32) -> vec4<f32> {
    let o = row + (k0 >> 8u) * 210u;
    let j = k0 & 255u;
    let h = j >> 7u;
    let t = (j >> 5u) & 3u;
    let l = j & 31u;
    let lo = (u32_at(o + 64u * h + l + 32u * (t & 1u)) >> (4u * (t >> 1u))) & 0x0F0F0F0Fu;
    let hi = (u32_at(o + 128u + 32u * h + l) >> (2u * t)) & 0x03030303u;
    let sc = f32(bitcast<i32>(byte_at(o + 192u + 8u * h + 2u * t + (l >> 4u)) << 24u) >> 24u);
    return half_at(o + 208u) * sc * (bytes4(lo | (hi << 4u)) - vec4<f32>(32.0));
}

// W[row0 + n, k0..k0+3] as f32, zero for rows past N or columns past K.
fn w4(n: u32, k0: u32) -> vec4<f32> {
    if (n >= p.n || k0 >= p.k) {
        return vec4<f32>(0.0);
    }
    let stored = n + p.row0;
    let row = stored * p.row_bytes;
    switch KIND {
        case 2u: { return w4_q8_0(row, k0); }
        case 3u: { return w4_q4_0(row, k0); }
        case 4u: { return w4_q4_1(row, k0); }
        case 5u: { return w4_q4_k(row, k0); }
        case 6u: { return w4_q6_k(row, k0); }
        default: { return w4_half(stored, k0); }
    }
}

// ---- register kernels (CPU adapters) ------------------------------------------------------

// x[r, k0..k0+3] of a (rows, cols) matrix, zero outside.
fn x4(r: u32, k0: u32, rows: u32, cols: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (r < rows) {
        for (var j = 0u; j < 4u; j++) {
            if (k0 + j < cols) {
                v[j] = x[r * cols + k0 + j];
            }
        }
    }
    return v;
}

// Store v at out[r, c0..c0+3] of a (rows, cols) matrix, inside only.
fn store4(v: vec4<f32>, r: u32, c0: u32, rows: u32, cols: u32) {
    if (r >= rows) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < cols) {
            out[r * cols + c0 + j] = v[j];
        }
    }
}

fn bias4(c0: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (p.has_bias == 1u) {
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.n) {
                v[j] = bias[c0 + j];
            }
        }
    }
    return v;
}

// y = x·Wᵀ (+ bias) for rows r0..r0+rows-1 (rows <= RM, a constant at each call) by columns
// c0..c0+3: four decoded W rows serve every row of x at each step of four k.
fn forward_block(r0: u32, c0: u32, rows: u32) {
    var acc: array<vec4<f32>, RM>;
    for (var k0 = 0u; k0 < p.k; k0 += 4u) {
        let w0 = w4(c0, k0);
        let w1 = w4(c0 + 1u, k0);
        let w2 = w4(c0 + 2u, k0);
        let w3 = w4(c0 + 3u, k0);
        for (var i = 0u; i < rows; i++) {
            let xv = x4(r0 + i, k0, p.m, p.k);
            acc[i] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
        }
    }
    // Store (plus bias), guarded at the edges.
    let b = bias4(c0);
    for (var i = 0u; i < rows; i++) {
        store4(acc[i] + b, r0 + i, c0, p.m, p.n);
    }
}

// y = x·Wᵀ (+ bias): each thread computes rows RM·gid.y.. (RM of them) by columns 4·gid.x..+3.
@compute @workgroup_size(8, 8, 1)
fn forward_register(@builtin(global_invocation_id) gid: vec3<u32>) {
    forward_block(gid.y * RM, gid.x * 4u, RM);
}

// The same for a few rows (generation: one row a sequence). forward_register's 8x8 workgroups
// of RM-row threads would run 64 rows of work for each one that exists; here a 64-wide
// workgroup of threads each computes 4 columns for ROWS rows (an override, 1 to RM, the row
// count rounded up).
override ROWS: u32 = 1u;

@compute @workgroup_size(64, 1, 1)
fn forward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    forward_block(gid.y * ROWS, gid.x * 4u, ROWS);
}

// dx = dy·W: each thread computes rows RM·gid.y.. by columns (of K) 4·gid.x..+3.
@compute @workgroup_size(8, 8, 1)
fn backward_register(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c0 = gid.x * 4u;
    let r0 = gid.y * RM;
    var acc: array<vec4<f32>, RM>;
    // Accumulate over the N rows of W: one decoded vec4 serves RM rows of dy.
    for (var n = 0u; n < p.n; n++) {
        let wv = w4(n, c0);
        for (var i = 0u; i < RM; i++) {
            let r = min(r0 + i, p.m - 1u);
            acc[i] = fma(vec4<f32>(x[r * p.n + n]), wv, acc[i]);
        }
    }
    // Store, guarded at the edges.
    for (var i = 0u; i < RM; i++) {
        store4(acc[i], r0 + i, c0, p.m, p.k);
    }
}

// ---- workgroup-memory kernels (real GPUs) -------------------------------------------------

// 64x64 output tiles, 16 deep; each of 16x16 threads owns a 4x4 block (as matmul/tiled.wgsl).
// a_tile[d * ROW + i / 4][i % 4] is row i of the left operand at depth d; b_tile[d * ROW + j / 4]
// [j % 4] column j of the right one. Rows padded to 17 vec4 against bank conflicts.
const ROW: u32 = 17u;
var<workgroup> a_tile: array<vec4<f32>, 272>;
var<workgroup> b_tile: array<vec4<f32>, 272>;

fn x_at(r: u32, c: u32, rows: u32, cols: u32) -> f32 {
    if (r >= rows || c >= cols) {
        return 0.0;
    }
    return x[r * cols + c];
}

// Every thread's 4x4 block += the tiles' product over the 16 depths.
fn accumulate_tiles(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var d = 0u; d < 16u; d++) {
        let av = a_tile[d * ROW + lid.y];
        let bv = b_tile[d * ROW + lid.x];
        (*acc)[0] = fma(vec4<f32>(av.x), bv, (*acc)[0]);
        (*acc)[1] = fma(vec4<f32>(av.y), bv, (*acc)[1]);
        (*acc)[2] = fma(vec4<f32>(av.z), bv, (*acc)[2]);
        (*acc)[3] = fma(vec4<f32>(av.w), bv, (*acc)[3]);
    }
}

// Stage a 64x16 tile of a (rows, cols) matrix at (r0, c0) as the left operand: four elements a
// thread, consecutive threads reading consecutive addresses.
fn stage_left(tid: u32, r0: u32, c0: u32, rows: u32, cols: u32) {
    for (var j = 0u; j < 4u; j++) {
        let e = tid + j * 256u;
        let d = e % 16u;
        let i = e / 16u;
        a_tile[d * ROW + i / 4u][i % 4u] = x_at(r0 + i, c0 + d, rows, cols);
    }
}

// y = x·Wᵀ (+ bias), one 64x64 tile of y per workgroup.
@compute @workgroup_size(16, 16, 1)
fn forward_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        // Load: x's 64x16 tile, and W's 64 rows x 16 columns decoded, one vec4 a thread.
        stage_left(tid, row0, k0, p.m, p.k);
        let nn = tid / 4u;
        let q = tid % 4u;
        let wv = w4(col0 + nn, k0 + 4u * q);
        for (var e = 0u; e < 4u; e++) {
            b_tile[(4u * q + e) * ROW + nn / 4u][nn % 4u] = wv[e];
        }
        // Barrier: the tiles are complete.
        workgroupBarrier();
        accumulate_tiles(lid, &acc);
        // Barrier: everyone is done reading before the next load.
        workgroupBarrier();
    }
    // Store (plus bias), guarded at the edges.
    let c = col0 + lid.x * 4u;
    let b = bias4(c);
    for (var i = 0u; i < 4u; i++) {
        store4(acc[i] + b, row0 + lid.y * 4u + i, c, p.m, p.n);
    }
}

// dx = dy·W, one 64x64 tile of dx per workgroup, reducing over W's rows 16 at a time.
@compute @workgroup_size(16, 16, 1)
fn backward_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    var acc: array<vec4<f32>, 4>;
    for (var n0 = 0u; n0 < p.n; n0 += 16u) {
        // Load: dy's 64x16 tile, and W's 16 rows x 64 columns decoded, one vec4 a thread.
        stage_left(tid, row0, n0, p.m, p.n);
        let nn = tid / 16u;
        let q = tid % 16u;
        b_tile[nn * ROW + q] = w4(n0 + nn, col0 + 4u * q);
        // Barrier: the tiles are complete.
        workgroupBarrier();
        accumulate_tiles(lid, &acc);
        // Barrier: everyone is done reading before the next load.
        workgroupBarrier();
    }
    // Store, guarded at the edges.
    for (var i = 0u; i < 4u; i++) {
        store4(acc[i], row0 + lid.y * 4u + i, col0 + lid.x * 4u, p.m, p.k);
    }
}

// ---- row gather (embedding lookup) --------------------------------------------------------

// out[t, 4c..4c+3] = W[ids[t], 4c..4c+3]; ids >= N give zeros. One thread per (t, c).
@compute @workgroup_size(64, 1, 1)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.x + gid.y * nw.x * 64u;
    let quads = (p.k + 3u) / 4u;
    let t = i / quads;
    if (t >= p.m) {
        return;
    }
    let c0 = (i % quads) * 4u;
    store4(w4(ids[t], c0), t, c0, p.m, p.k);
}

// ---- decode to f32 ------------------------------------------------------------------------

// out (N, K) = W decoded, rows row0.. of the stored matrix: the operand of the f32 matmul when a
// product has many rows (src/ops/quant.rs `StoredMatmul::Decode`), one matrix at a time.
@compute @workgroup_size(64, 1, 1)
fn decode(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.x + gid.y * nw.x * 64u;
    let quads = (p.k + 3u) / 4u;
    let r = i / quads;
    if (r >= p.n) {
        return;
    }
    let c0 = (i % quads) * 4u;
    store4(w4(r, c0), r, c0, p.n, p.k);
}

// The same for rows a multiple of 4 long (every quantized type: blocks of 32), VPT vec4 stores
// a thread into out4 (N, K / 4). With Q4_1 and VPT 8 a thread decodes one whole block from its
// five words (the per-vec4 decoder loads the first word again for every vec4).
override VPT: u32 = 8u;

@compute @workgroup_size(64, 1, 1)
fn decode_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = (gid.x + gid.y * nw.x * 64u) * VPT;
    let quads = p.k >> 2u;
    if (KIND == 4u && VPT == 8u) {
        // One Q4_1 block a thread: its five words loaded once.
        let r = i / quads;
        if (r >= p.n) {
            return;
        }
        let o = ((r + p.row0) * p.row_bytes + (i % quads) / 8u * 20u) >> 2u;
        let dm = w[o];
        let d = half_bits(dm & 0xFFFFu);
        let m = vec4<f32>(half_bits(dm >> 16u));
        for (var j = 0u; j < 4u; j++) {
            let q = w[o + 1u + j];
            out4[i + j] = d * bytes4(q & 0x0F0F0F0Fu) + m;
            out4[i + 4u + j] = d * bytes4((q >> 4u) & 0x0F0F0F0Fu) + m;
        }
        return;
    }
    for (var j = 0u; j < VPT; j++) {
        let q = i + j;
        let r = q / quads;
        if (r >= p.n) {
            return;
        }
        out4[q] = w4(r, (q % quads) * 4u);
    }
}
