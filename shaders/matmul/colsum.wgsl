// Column sums of a (rows, n) matrix over groups of rows: out[g, j] = sum of x[r, j] for r in
// [g * group_rows, (g + 1) * group_rows). One thread per output, rows added in order, so the
// result is deterministic (no atomics). The bias gradient runs it twice: groups of rows, then
// the group sums.

struct Params {
    rows: u32,
    n: u32,
    group_rows: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let groups = (p.rows + p.group_rows - 1u) / p.group_rows;
    if (i >= groups * p.n) {
        return;
    }
    let g = i / p.n;
    let j = i % p.n;
    let r_end = min(g * p.group_rows + p.group_rows, p.rows);
    // Accumulate this column over the group's rows, in order.
    var s = 0.0;
    for (var r = g * p.group_rows; r < r_end; r++) {
        s += x[r * p.n + j];
    }
    out[i] = s;
}
