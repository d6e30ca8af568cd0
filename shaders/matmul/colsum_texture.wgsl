// Column sums over groups of rows, reading the matrix from an rgba32float texture: the first
// pass of the bias gradient on CPU adapters (see register.wgsl on why texel fetches beat buffer
// loads there). The (rows, n) matrix with n a multiple of 4 is held as vec4s: vec4 number i is
// texel (i mod W, i / W), W = 2^tex_shift. out[g, 4j..4j+3] = sum of vec4 (r, j) for r in
// [g * group_rows, (g + 1) * group_rows). One thread per output vec4, rows added in order:
// deterministic, no atomics.

struct Params {
    rows: u32,
    // Columns / 4.
    n4: u32,
    group_rows: u32,
    tex_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var x: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let groups = (p.rows + p.group_rows - 1u) / p.group_rows;
    if (i >= groups * p.n4) {
        return;
    }
    let g = i / p.n4;
    let j = i % p.n4;
    let r_end = min(g * p.group_rows + p.group_rows, p.rows);
    let w = (1u << p.tex_shift) - 1u;
    // Accumulate this column quad over the group's rows, in order.
    var s = vec4<f32>(0.0);
    for (var r = g * p.group_rows; r < r_end; r++) {
        let t = r * p.n4 + j;
        s += textureLoad(x, vec2<i32>(i32(t & w), i32(t >> p.tex_shift)), 0);
    }
    out[i] = s;
}
