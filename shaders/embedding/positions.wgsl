// Learned position embeddings (GPT-2's wpe): for x (B, T, C) and a (P, C) table,
//   add:      out[b, t, c] = x[b, t, c] + wpe[offset + t, c]
//   backward: dwpe[r, c] = sum over b of dout[b, r - offset, c] for offset <= r < offset + T, else 0
// The backward writes every element of dwpe, one thread per element, summing the batch in order.

struct Params {
    batch: u32,
    seq: u32,
    cols: u32,
    offset: u32,
    // rows of the position table
    table_rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// out (add) or dwpe (backward).
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
// x (add) or dout (backward).
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    let row_len = p.seq * p.cols;
    if (i >= p.batch * row_len) { return; }
    let tc = i % row_len;
    dst[i] = src[i] + wpe[p.offset * p.cols + tc];
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.table_rows * p.cols) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    // accumulate: the batch in order (rows outside the window get zero)
    var s = 0.0;
    if (r >= p.offset && r < p.offset + p.seq) {
        let tc = (r - p.offset) * p.cols + c;
        for (var b = 0u; b < p.batch; b++) {
            s += src[b * p.seq * p.cols + tc];
        }
    }
    // store
    dst[i] = s;
}
