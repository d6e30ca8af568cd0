//! Matrix products, the op that dominates training time: `C = op(A)·op(B) (+ bias)` with
//! optional transposes, batching (B batched like A, or one 2-D B shared by the whole batch),
//! f32 or f16 inputs (f32 accumulation and output), and the `linear` layer built on it.
//! Backward runs the same kernels with the transposes swapped; a shared B's gradient is summed
//! over the batch by flattening the batch into rows. The bias gradient is a deterministic
//! two-pass column sum. [`matmul_plus`] adds a matrix shaped like C as it stores C, for sums of
//! a product and a term already computed.
//!
//! Two kernel families, chosen by [`Gpu::variant`]:
//! - `Register` (CPU adapters such as lavapipe): register-tiled kernels with no workgroup memory
//!   and no barriers; each thread computes a block of up to 32x8 outputs. Where the stored rows
//!   are a multiple of 4 elements the operands are copied into rgba32float textures and read
//!   with texel fetches (lavapipe's are vector gathers, while its storage-buffer loads go one
//!   lane at a time through the stack); with 8-lane subgroups, `register_subgroup.wgsl` also
//!   shares A's texels across the subgroup. Otherwise `register.wgsl` reads the buffers. The
//!   thread tile and workgroup shape are chosen per shape by a small cost model, so decode-time
//!   products with a handful of rows stay fast too. On x86 CPUs with AVX-512, LLVM builds
//!   lavapipe's per-lane loads with masked broadcasts instead of stack round trips, buffer loads
//!   are cheap, and the buffer-fed kernel with 16x16 tiles is used throughout (see
//!   [`RegisterFeed`], a per-device choice: `GpuOptions::register_feed`, `PLUMB_REGISTER_FEED`).
//!   A CPU driver runs a workgroup's threads in SIMD batches along x, which pay off when the
//!   batch shares rows and spreads over columns; so a product with a few columns and many rows
//!   (LoRA's rank-16 ones) runs as its transpose, Cᵀ = op(B)ᵀ·op(A)ᵀ, and `transpose.wgsl`
//!   writes C (see [`RegisterPlan::new`]).
//! - `Tiled` (real GPUs): `tiled.wgsl` / `tiled_f16.wgsl`, 64x64 blocks staged in workgroup
//!   memory.

use crate::error::{Error, Result};
use crate::gpu::texture::{dummy_texture, texture_width, upload_texture, upload_textures, OperandTexture};
use crate::gpu::{Gpu, Kernel, KernelVariant, ShaderSource};
use crate::shader;
use crate::tape::Var;
use crate::tensor::{DType, Tensor};

static REGISTER: ShaderSource = shader!("matmul/register.wgsl");
static REGISTER_SUBGROUP: ShaderSource = shader!("matmul/register_subgroup.wgsl");
static TILED: ShaderSource = shader!("matmul/tiled.wgsl");
static TILED_F16: ShaderSource = shader!("matmul/tiled_f16.wgsl");
static CONVERT_F16: ShaderSource = shader!("matmul/convert_f16.wgsl");
static COLSUM: ShaderSource = shader!("matmul/colsum.wgsl");
static COLSUM_TEXTURE: ShaderSource = shader!("matmul/colsum_texture.wgsl");
static TRANSPOSE: ShaderSource = shader!("matmul/transpose.wgsl");
/// Shaders of this family.
pub static SHADERS: &[&ShaderSource] = &[&REGISTER, &REGISTER_SUBGROUP, &TILED, &TILED_F16, &CONVERT_F16, &COLSUM, &COLSUM_TEXTURE, &TRANSPOSE];

/// Sizes of one product, shared by every matmul kernel.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    /// log2 of the operand textures' width in texels (register kernels fed by textures).
    tex_shift: u32,
    /// Batch strides in elements (0 for an operand shared by the batch).
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    /// Register kernels: 1 to add the bias, 2 to add a matrix shaped like C (the tiled ones
    /// take the bias as a constant).
    has_bias: u32,
}

/// One product after shape checks: `batch` products of (m, k)·(k, n).
#[derive(Clone, Copy, Debug)]
struct Problem {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    /// The operand is 2-D and used by every batch entry.
    shared_a: bool,
    shared_b: bool,
}

/// Check shapes and dtypes; returns the problem and the output shape.
fn problem(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Problem, Vec<usize>)> {
    const OP: &str = "matmul";
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 {
        return Err(Error::shape(OP, format!("operands need at least 2 dimensions, got {sa:?} and {sb:?}")));
    }
    match (a.dtype(), b.dtype()) {
        (DType::F32, DType::F32) => {}
        (DType::F16, DType::F16) if a.gpu().has_f16() => {}
        (DType::F16, DType::F16) => return Err(Error::shape(OP, "f16 inputs need an adapter with shader f16")),
        (x, y) => return Err(Error::shape(OP, format!("inputs must be both f32 or both f16, got {x:?} and {y:?}"))),
    }
    let (lead_a, lead_b) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let (a0, a1) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (b0, b1) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, ka) = if trans_a { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if trans_b { (b1, b0) } else { (b0, b1) };
    if ka != kb {
        return Err(Error::shape(OP, format!("inner sizes differ: {sa:?}{} · {sb:?}{}", t(trans_a), t(trans_b))));
    }
    let lead = match (lead_a.is_empty(), lead_b.is_empty()) {
        (_, true) => lead_a,
        (true, false) => lead_b,
        (false, false) if lead_a == lead_b => lead_a,
        _ => return Err(Error::shape(OP, format!("batch dimensions differ: {sa:?} vs {sb:?}"))),
    };
    let batch: usize = lead.iter().product();
    let mut out = lead.to_vec();
    out.extend([m, n]);
    let shared_a = lead_a.is_empty() && batch > 1;
    let shared_b = lead_b.is_empty() && batch > 1;
    let p = Problem { batch, m, k: ka, n, trans_a, trans_b, shared_a, shared_b };
    for (what, x) in [("A", batch * m * ka), ("B", batch * ka * n), ("output", batch * m * n)] {
        if x > u32::MAX as usize / 2 {
            return Err(Error::shape(OP, format!("{what} {x} too large")));
        }
    }
    Ok((p, out))
}

fn t(trans: bool) -> &'static str {
    if trans {
        "ᵀ"
    } else {
        ""
    }
}

/// `C = op(A)·op(B) (+ bias)`, f32 output.
///
/// A is (..., M, K), or stored (..., K, M) with `trans_a`; B is (..., K, N), or stored
/// (..., N, K) with `trans_b`. The leading dimensions are the batch: B has the same ones as A or
/// none (one B for the whole batch); likewise A may be 2-D with a batched B. `bias` (N), f32, is
/// added to every row. Inputs are both f32 or both f16 (f16 needs [`Gpu::has_f16`]); the sums
/// are f32 either way. The output is (..., M, N).
pub fn matmul_forward(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    product(a, b, bias.map_or(Extra::None, Extra::Bias), trans_a, trans_b)
}

/// `C = op(A)·op(B) + Z`, Z (f32) shaped like C: a product and a sum of two terms in one pass,
/// where a gradient or an output is the sum of a product and something already computed (the
/// adapted projections of `ops::lora`). On the register kernels Z is read where C is stored;
/// elsewhere the product is followed by an in-place add.
pub fn matmul_plus(a: &Tensor, b: &Tensor, z: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    product(a, b, Extra::Addend(z), trans_a, trans_b)
}

/// [`matmul_forward`] and [`matmul_plus`]: shape checks, the output, the kernel.
fn product(a: &Tensor, b: &Tensor, extra: Extra, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (mut p, out_shape) = problem(a, b, trans_a, trans_b)?;
    match extra {
        Extra::None => {}
        Extra::Bias(bias) => {
            bias.expect_dtype("matmul bias", DType::F32)?;
            bias.expect_shape("matmul bias", &[p.n])?;
        }
        Extra::Addend(z) => {
            z.expect_dtype("matmul addend", DType::F32)?;
            z.expect_shape("matmul addend", &out_shape)?;
        }
    }
    let out = Tensor::empty(a.gpu(), &out_shape, DType::F32, "matmul output")?;
    if out.is_empty() {
        return Ok(out);
    }
    // One B for the whole batch and A not transposed: the batch is just more rows.
    if p.shared_b && !p.trans_a {
        p = Problem { m: p.batch * p.m, batch: 1, shared_b: false, ..p };
    }
    match (a.gpu().variant(), extra) {
        (KernelVariant::Register, _) => register_forward(a, b, extra, &out, &p)?,
        (KernelVariant::Tiled, Extra::Addend(z)) => {
            tiled_forward(a, b, None, &out, &p)?;
            crate::gpu::linear::add_assign(&out, z, 1.0)?;
        }
        (KernelVariant::Tiled, _) => tiled_forward(a, b, extra.tensor(), &out, &p)?,
    }
    Ok(out)
}

/// What a register kernel adds to the product as it stores C.
#[derive(Clone, Copy)]
enum Extra<'a> {
    None,
    /// (N), added to every row.
    Bias(&'a Tensor),
    /// Shaped like C.
    Addend(&'a Tensor),
}

impl<'a> Extra<'a> {
    fn tensor(self) -> Option<&'a Tensor> {
        match self {
            Extra::None => None,
            Extra::Bias(t) | Extra::Addend(t) => Some(t),
        }
    }

    /// The kernels' `has_bias`.
    fn code(self) -> u32 {
        match self {
            Extra::None => 0,
            Extra::Bias(_) => 1,
            Extra::Addend(_) => 2,
        }
    }
}

fn params(p: &Problem) -> Params {
    let (m, k, n) = (p.m as u32, p.k as u32, p.n as u32);
    Params {
        m,
        k,
        n,
        tex_shift: 0,
        a_stride: if p.shared_a { 0 } else { m * k },
        b_stride: if p.shared_b { 0 } else { k * n },
        c_stride: m * n,
        has_bias: 0,
    }
}

fn batch_groups(gpu: &Gpu, p: &Problem) -> Result<u32> {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    if p.batch > max {
        return Err(Error::shape("matmul", format!("batch {} exceeds the adapter's {max} workgroups", p.batch)));
    }
    Ok(p.batch as u32)
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The workgroup-memory kernel (real GPUs).
fn tiled_forward(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, out: &Tensor, p: &Problem) -> Result<()> {
    let gpu = a.gpu();
    let shader = if a.dtype() == DType::F16 { &TILED_F16 } else { &TILED };
    let consts = [("TRANS_A", flag(p.trans_a)), ("TRANS_B", flag(p.trans_b)), ("HAS_BIAS", flag(bias.is_some()))];
    let groups = [p.n.div_ceil(64) as u32, p.m.div_ceil(64) as u32, batch_groups(gpu, p)?];
    let bias_bind = bias.unwrap_or(a).binding();
    gpu.dispatch(
        &Kernel::new(shader, "matmul").with(&consts),
        bytemuck::bytes_of(&params(p)),
        &[a.binding(), b.binding(), bias_bind, out.binding()],
        groups,
    )
}

/// Thread tile and workgroup shape of a register kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tile {
    /// 4-row blocks per thread and 4-column blocks per thread.
    rb: usize,
    cb: usize,
    wg_x: usize,
    wg_y: usize,
}

/// How the register kernels read their operands: a per-device choice, see [`Gpu::register_feed`].
pub use crate::gpu::RegisterFeed;
use crate::gpu::feed::cheap_buffer_loads;

/// Where the register kernel reads its operands from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    /// Storage buffers (any shape).
    Buffer,
    /// Textures (stored rows a multiple of 4 elements).
    Texture,
    /// Textures, A's texels shared across an 8-lane subgroup.
    Subgroup,
}

/// Pick the register tile for `batch` outputs of (m, n). Estimated time = padded work x cost
/// per multiply-add / how evenly the workgroups fill the CPU's threads. Per step of 4 k a
/// thread with a TM x TN tile loads TM vec4 of A and TN of B for 4·TM·TN multiply-adds, so the
/// cost per multiply-add is `alpha · (1/TM + 1/TN) + beta`, beta being arithmetic and spills.
/// With subgroups a lane fetches only TM/8 of A's: `alpha · (1/(8·TN) + 1/TM) + beta`, so tall
/// tiles win. Fitted on lavapipe: alpha 0.28 for texel fetches, beta 0.028; buffer loads cost
/// five times a fetch on AVX2 and about half of one with AVX-512 (1024³ at 19, 28 and 32
/// GFLOP/s for 8x8, 16x16 and 16x32 tiles there). Texture-fed tiles stop at 32x8 and 16x16
/// outputs a thread: bigger ones were no faster here and take many seconds to compile.
///
/// Few tiles, because every pipeline costs resident memory: lavapipe keeps ~6.5 MiB per 16x16
/// variant (and ~9.5 per 16x32) even when its code comes from Mesa's shader cache, and a
/// training step needs one per transpose pair and tile. So large products take 16x16 tiles,
/// or 4x4 where there are only a few rows: a W2 step went from seven register pipelines
/// (51 MiB) to three at about the same speed on lavapipe with AVX-512. (Its 128x128 weight
/// gradients over 1,024 rows took 2.8 ms as one 16x16-tile workgroup, 3.2 ms as four 8x8.)
fn register_tile(m: usize, n: usize, k: usize, batch: usize, feed: Feed, cheap_loads: bool) -> (f64, Tile) {
    let threads = std::thread::available_parallelism().map(|x| x.get()).unwrap_or(2);
    // Small products (under ~8 MFLOP, a millisecond or so) take the small tiles, which compile
    // in a fraction of the time.
    let small = batch * m * n * k < (1 << 22);
    let candidates: &[(usize, usize)] = match (feed, small) {
        (Feed::Subgroup, false) => &[(8, 2), (4, 2), (2, 2)],
        (Feed::Subgroup, true) => &[(2, 2), (2, 1)],
        (_, false) => &[(4, 4), (4, 3), (1, 1)],
        (_, true) => &[(2, 2), (1, 2), (1, 1)],
    };
    let buffer_alpha = if cheap_loads { 0.45 } else { 5.0 };
    let mut best = (f64::MAX, Tile { rb: candidates[0].0, cb: candidates[0].1, wg_x: 8, wg_y: 8 });
    for &(rb, cb) in candidates {
        for (wg_x, wg_y, penalty) in WORKGROUPS {
            let (tm, tn) = ((4 * rb) as f64, (4 * cb) as f64);
            let loads = match feed {
                Feed::Buffer => buffer_alpha * (1.0 / tm + 1.0 / tn),
                Feed::Texture => 1.0 / tm + 1.0 / tn,
                Feed::Subgroup => 1.0 / tm + 1.0 / (8.0 * tn),
            };
            let (gy, gx) = (m.div_ceil(4 * rb * wg_y), n.div_ceil(4 * cb * wg_x));
            let padded = (gy * 4 * rb * wg_y * gx * 4 * cb * wg_x * batch) as f64;
            let groups = gx * gy * batch;
            let fill = groups as f64 / (threads * groups.div_ceil(threads)) as f64;
            // Three column blocks (16x12 outputs) only where they save much padding: 192
            // columns ran at 24 GFLOP/s against 20 with 16x16 tiles, 576 no faster (AVX-512).
            let odd = if cb == 3 { 1.06 } else { 1.0 };
            let cost = padded * (0.28 * loads + 0.028) / fill * penalty * odd;
            if cost < best.0 {
                best = (cost, Tile { rb, cb, wg_x, wg_y });
            }
        }
    }
    best
}

/// Register kernels' workgroup shapes `(x, y)` and a cost factor for the smaller ones. A CPU
/// driver runs a workgroup's invocations in SIMD batches of 8 along x, and the threads of a
/// batch share A's loads when they share rows, so x is at least 8. Workgroups of 64 keep the
/// pipeline count down for large products; smaller ones, for a few percent more estimated
/// cost, spread short products over more of the CPU's threads. Measured on lavapipe (AVX-512,
/// 2 threads): LoRA's weight gradient 16x1024x576 went from 6.4 GFLOP/s as one 64-wide
/// workgroup to 16.4 as five 8-wide ones, and 16x1024x1536 from 12.8 to 23.0 at 16 wide.
const WORKGROUPS: [(usize, usize, f64); 10] = [
    (8, 8, 1.0),
    (16, 4, 1.0),
    (32, 2, 1.0),
    (64, 1, 1.0),
    (8, 4, 1.05),
    (16, 2, 1.05),
    (32, 1, 1.05),
    (8, 2, 1.1),
    (16, 1, 1.1),
    (8, 1, 1.15),
];

/// The register-tiled kernels (CPU adapters).
/// Texture copies of A's and B's first `a_vecs` and `b_vecs` vec4s.
fn operand_textures(a: &Tensor, a_vecs: usize, b: &Tensor, b_vecs: usize, width: usize) -> Result<[OperandTexture; 2]> {
    let mut t = upload_textures(&[(a, a_vecs), (b, b_vecs)], width)?;
    let tb = t.pop().ok_or_else(|| Error::shape("matmul", "operand textures"))?;
    let ta = t.pop().ok_or_else(|| Error::shape("matmul", "operand textures"))?;
    Ok([ta, tb])
}

/// What a register kernel call needs besides its tensors: the operand feed, the tile and the
/// pipeline constants (the kernel is `REGISTER_SUBGROUP` for [`Feed::Subgroup`], else
/// `REGISTER`), and the texture width.
struct RegisterPlan {
    /// Compute Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped, then transpose it into C: for
    /// products with far fewer columns than rows.
    swap: bool,
    /// The product the kernel computes (swapped with `swap`) and its estimated cost.
    problem: Problem,
    cost: f64,
    feed: Feed,
    tile: Tile,
    consts: Vec<(&'static str, f64)>,
    width: usize,
    a_vecs: usize,
    b_vecs: usize,
}

impl RegisterPlan {
    /// The plan for `p`, or for its transpose where the cost model prefers it: one product of
    /// at most 32 columns and at least four times as many rows, without a bias. (A transpose of
    /// the whole output costs more than the padding it saves on wider products: 1024x16x576 ran
    /// at 3.4 GFLOP/s swapped against 6.4 as it is.)
    fn new(gpu: &Gpu, p: &Problem, has_extra: bool) -> RegisterPlan {
        let plan = RegisterPlan::oriented(gpu, p, false);
        if p.batch != 1 || has_extra || p.n > 32 || p.m < 4 * p.n {
            return plan;
        }
        let swapped = Problem { m: p.n, n: p.m, trans_a: !p.trans_b, trans_b: !p.trans_a, ..*p };
        let other = RegisterPlan::oriented(gpu, &swapped, true);
        if other.cost < plan.cost {
            other
        } else {
            plan
        }
    }

    fn oriented(gpu: &Gpu, p: &Problem, swap: bool) -> RegisterPlan {
        // Stored layouts: rows of `pitch` elements; vec4 counts of the whole operands.
        let a_pitch = if p.trans_a { p.m } else { p.k };
        let b_pitch = if p.trans_b { p.k } else { p.n };
        let a_vecs = if p.shared_a { 1 } else { p.batch } * p.m * p.k / 4;
        let b_vecs = if p.shared_b { 1 } else { p.batch } * p.k * p.n / 4;
        let width = texture_width(gpu, a_vecs, b_vecs);
        let textures = a_pitch % 4 == 0 && b_pitch % 4 == 0 && width.is_some();
        let cheap_loads = cheap_buffer_loads();
        let feed = match (textures && gpu.feed_textures(), gpu.subgroup_kernels()) {
            (false, _) => Feed::Buffer,
            (true, false) => Feed::Texture,
            (true, true) => Feed::Subgroup,
        };
        let (cost, tile) = register_tile(p.m, p.n, p.k, p.batch, feed, cheap_loads);
        let mut consts = vec![
            ("TRANS_A", flag(p.trans_a)),
            ("TRANS_B", flag(p.trans_b)),
            ("C_VEC4", flag(p.n.is_multiple_of(4))),
            ("TAIL", flag(!p.k.is_multiple_of(4))),
            ("RB", tile.rb as f64),
            ("CB", tile.cb as f64),
            ("WG_X", tile.wg_x as f64),
            ("WG_Y", tile.wg_y as f64),
        ];
        if feed != Feed::Subgroup {
            consts.extend([
                ("FROM_TEXTURE", flag(feed == Feed::Texture)),
                ("A_VEC4", flag(a_pitch % 4 == 0)),
                ("B_VEC4", flag(b_pitch % 4 == 0)),
            ]);
        }
        RegisterPlan { swap, problem: *p, cost, feed, tile, consts, width: width.unwrap_or(16), a_vecs, b_vecs }
    }

    fn shader(&self) -> &'static ShaderSource {
        if self.feed == Feed::Subgroup {
            &REGISTER_SUBGROUP
        } else {
            &REGISTER
        }
    }
}

/// Start compiling, in the background, the kernels of 2-D f32 products `(m, k, n, trans_a,
/// trans_b)` that will be recorded soon: a layer's forward names its backward's products, so
/// on a cold start those compile while the forward records (see `gpu::kernels`). Only the
/// register kernels of CPU adapters take long enough to compile for this to matter.
pub fn prefetch_products(gpu: &Gpu, products: &[(usize, usize, usize, bool, bool)]) {
    if gpu.variant() != KernelVariant::Register {
        return;
    }
    for &(m, k, n, trans_a, trans_b) in products {
        if m == 0 || k == 0 || n == 0 {
            continue;
        }
        let p = Problem { batch: 1, m, k, n, trans_a, trans_b, shared_a: false, shared_b: false };
        let plan = RegisterPlan::new(gpu, &p, false);
        gpu.prefetch_pipeline(plan.shader(), "matmul", plan.consts);
    }
}

/// The products [`grad_a`] and [`grad_b`] record for a 2-D `op(A)·op(B)` of (m, k)·(k, n).
fn backward_products(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> [(usize, usize, usize, bool, bool); 2] {
    let da = match (trans_a, trans_b) {
        (false, false) => (m, n, k, false, true),
        (false, true) => (m, n, k, false, false),
        (true, false) => (k, n, m, false, true),
        (true, true) => (k, n, m, true, true),
    };
    let db = match (trans_a, trans_b) {
        (false, false) => (k, m, n, true, false),
        (true, false) => (k, m, n, false, false),
        (false, true) => (n, m, k, true, false),
        (true, true) => (n, m, k, true, true),
    };
    [da, db]
}

/// The register-tiled kernels (CPU adapters).
fn register_forward(a: &Tensor, b: &Tensor, extra: Extra, out: &Tensor, p: &Problem) -> Result<()> {
    let gpu = a.gpu();
    // The register kernels read f32: widen f16 operands first.
    if a.dtype() == DType::F16 {
        return register_forward(&to_f32(a)?, &to_f32(b)?, extra, out, p);
    }
    let RegisterPlan { swap, problem, feed, tile, consts, width, a_vecs, b_vecs, .. } = RegisterPlan::new(gpu, p, extra.tensor().is_some());
    // Swapped: the kernel computes Cᵀ = op(B)ᵀ·op(A)ᵀ into a temporary, transposed into C after.
    let (a, b, p) = if swap { (b, a, &problem) } else { (a, b, p) };
    let c = out;
    let swapped_out = if swap { Some(Tensor::empty(gpu, &[p.m, p.n], DType::F32, "matmul transposed output")?) } else { None };
    let out = swapped_out.as_ref().unwrap_or(c);
    let groups = [
        p.n.div_ceil(4 * tile.cb * tile.wg_x) as u32,
        p.m.div_ceil(4 * tile.rb * tile.wg_y) as u32,
        batch_groups(gpu, p)?,
    ];
    let mut params = params(p);
    params.has_bias = extra.code();
    // Without a bias, bind something read-only that is not C (the kernel never reads it).
    let bias_bind = extra.tensor().unwrap_or(a).binding_vec4();
    if feed != Feed::Buffer {
        params.tex_shift = width.trailing_zeros();
    }
    if feed == Feed::Subgroup {
        let [ta, tb] = operand_textures(a, a_vecs, b, b_vecs, width)?;
        gpu.dispatch_with_textures(
            &Kernel::new(&REGISTER_SUBGROUP, "matmul").with(&consts),
            bytemuck::bytes_of(&params),
            &[&ta.view, &tb.view],
            &[bias_bind, out.binding_vec4()],
            groups,
        )?;
    } else {
        let (ta, tb) = if feed == Feed::Texture {
            let [ta, tb] = operand_textures(a, a_vecs, b, b_vecs, width)?;
            (ta, tb)
        } else {
            (dummy_texture(gpu), dummy_texture(gpu))
        };
        gpu.dispatch_with_textures(
            &Kernel::new(&REGISTER, "matmul").with(&consts),
            bytemuck::bytes_of(&params),
            &[&ta.view, &tb.view],
            &[a.binding_vec4(), b.binding_vec4(), bias_bind, out.binding_vec4()],
            groups,
        )?;
    }
    match &swapped_out {
        Some(t) => transpose_into(t, p.m, p.n, c),
        None => Ok(()),
    }
}

/// `out` (cols, rows) = `x`ᵀ for `x` (rows, cols), both row-major f32.
fn transpose_into(x: &Tensor, rows: usize, cols: usize, out: &Tensor) -> Result<()> {
    let gpu = x.gpu();
    let p = [rows as u32, cols as u32, 0, 0];
    gpu.dispatch(&Kernel::new(&TRANSPOSE, "transpose"), bytemuck::bytes_of(&p), &[x.binding(), out.binding()], gpu.groups_1d(rows * cols, 64))
}

/// An f32 copy of an f16 tensor.
fn to_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return Ok(x.clone());
    }
    x.expect_dtype("matmul to_f32", DType::F16)?;
    let gpu = x.gpu();
    let out = Tensor::empty(gpu, x.shape(), DType::F32, "matmul f32 copy")?;
    let p = [x.len() as u32, 0, 0, 0];
    gpu.dispatch(
        &Kernel::new(&CONVERT_F16, "to_f32"),
        bytemuck::bytes_of(&p),
        &[x.binding(), out.binding()],
        gpu.groups_1d(x.len(), 256),
    )?;
    Ok(out)
}

/// Column sums over groups of `group_rows` rows: (rows, n) to (ceil(rows / group_rows), n).
fn colsum(x: &Tensor, rows: usize, n: usize, group_rows: usize) -> Result<Tensor> {
    let gpu = x.gpu();
    let groups = rows.div_ceil(group_rows);
    let out = Tensor::empty(gpu, &[groups, n], DType::F32, "column sums")?;
    let p = [rows as u32, n as u32, group_rows as u32, 0];
    gpu.dispatch(
        &Kernel::new(&COLSUM, "colsum"),
        bytemuck::bytes_of(&p),
        &[x.binding(), out.binding()],
        gpu.groups_1d(groups * n, 64),
    )?;
    Ok(out)
}

/// [`colsum`] reading `x` (n a multiple of 4) from a texture `width` texels wide.
fn colsum_texture(x: &Tensor, rows: usize, n: usize, group_rows: usize, width: usize) -> Result<Tensor> {
    let gpu = x.gpu();
    let groups = rows.div_ceil(group_rows);
    let out = Tensor::empty(gpu, &[groups, n], DType::F32, "column sums")?;
    let tex = upload_texture(x, rows * n / 4, width)?;
    let p = [rows as u32, (n / 4) as u32, group_rows as u32, width.trailing_zeros()];
    gpu.dispatch_with_textures(
        &Kernel::new(&COLSUM_TEXTURE, "colsum"),
        bytemuck::bytes_of(&p),
        &[&tex.view],
        &[out.binding_vec4()],
        gpu.groups_1d(groups * n / 4, 64),
    )?;
    Ok(out)
}

/// Column sums of `dy` seen as (rows, N) with N its last dimension: the gradient of a bias
/// added to every row. Deterministic: groups of 64 rows, then the group sums, in order.
pub fn bias_grad(dy: &Tensor) -> Result<Tensor> {
    dy.expect_dtype("bias_grad", DType::F32)?;
    let n = dy.last_dim();
    if n == 0 || dy.shape().is_empty() {
        return Err(Error::shape("bias_grad", format!("need a (rows, N) tensor, got {:?}", dy.shape())));
    }
    let rows = dy.len() / n;
    if rows == 0 {
        return Tensor::zeros(dy.gpu(), &[n], DType::F32, "bias gradient");
    }
    const GROUP: usize = 64;
    let sums = if rows <= GROUP {
        dy.clone()
    } else if let Some(width) = texture_width(dy.gpu(), dy.len() / 4, dy.len() / 4).filter(|_| {
        // CPU adapters read the big first pass from a texture (see `Feed`).
        dy.gpu().variant() == KernelVariant::Register && n.is_multiple_of(4)
    }) {
        colsum_texture(dy, rows, n, GROUP, width)?
    } else {
        colsum(dy, rows, n, GROUP)?
    };
    let rows = sums.len() / n;
    colsum(&sums, rows, n, rows)?.reshape(&[n])
}

/// Sum a (batch, ...) tensor over its first dimension.
fn sum_batch(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let batch = x.len() / n.max(1);
    colsum(x, batch, n, batch)?.reshape(shape)
}

/// Reshape to 2-D (rows, last two dims merged as stored) — the batch flattened into rows.
fn flat(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    let cols = s[s.len() - 1];
    x.reshape(&[x.len() / cols.max(1), cols])
}

/// Gradients of `matmul_forward(a, b, None, trans_a, trans_b)` given `dc`, the gradient of its
/// output: `(da, db)`, shaped like `a` and `b` (f32 even for f16 inputs). A 2-D operand used
/// by a whole batch gets its gradient summed over the batch.
pub fn matmul_backward(a: &Tensor, b: &Tensor, dc: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Tensor, Tensor)> {
    Ok((grad_a(a, b, dc, trans_a, trans_b)?, grad_b(a, b, dc, trans_a, trans_b)?))
}

fn mm(x: &Tensor, y: &Tensor, tx: bool, ty: bool) -> Result<Tensor> {
    matmul_forward(x, y, None, tx, ty)
}

/// dA in A's stored layout: dC·op(B)ᵀ, or its transpose op(B)·dCᵀ when A is stored transposed.
fn grad_a(a: &Tensor, b: &Tensor, dc: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (p, out_shape) = problem(a, b, trans_a, trans_b)?;
    dc.expect_shape("matmul backward", &out_shape)?;
    let b = to_f32(b)?;
    let g = match (trans_a, trans_b) {
        (false, false) => mm(dc, &b, false, true)?,
        (false, true) => mm(dc, &b, false, false)?,
        (true, false) => mm(&b, dc, false, true)?,
        (true, true) => mm(&b, dc, true, true)?,
    };
    if p.shared_a {
        sum_batch(&g, a.shape())
    } else {
        Ok(g)
    }
}

/// dB in B's stored layout: op(A)ᵀ·dC, or its transpose dCᵀ·op(A) when B is stored transposed.
fn grad_b(a: &Tensor, b: &Tensor, dc: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (p, out_shape) = problem(a, b, trans_a, trans_b)?;
    dc.expect_shape("matmul backward", &out_shape)?;
    let a = to_f32(a)?;
    // A shared B with A not transposed: flatten the batch into rows, one 2-D product sums it.
    let flatten = p.shared_b && !trans_a;
    let (a, dc) = if flatten { (flat(&a)?, flat(dc)?) } else { (a, dc.clone()) };
    let g = match (trans_a, trans_b) {
        (false, false) => mm(&a, &dc, true, false)?,
        (true, false) => mm(&a, &dc, false, false)?,
        (false, true) => mm(&dc, &a, true, false)?,
        (true, true) => mm(&dc, &a, true, true)?,
    };
    if p.shared_b && !flatten {
        sum_batch(&g, b.shape())
    } else {
        Ok(g)
    }
}

/// `op(a)·op(b)` on the tape (see [`matmul_forward`] for shapes). Backward computes only the
/// gradients that are needed.
pub fn matmul(a: &Var, b: &Var, trans_a: bool, trans_b: bool) -> Result<Var> {
    let out = matmul_forward(a.tensor(), b.tensor(), None, trans_a, trans_b)?;
    if (a.requires_grad() || b.requires_grad()) && a.shape().len() == 2 && b.shape().len() == 2 {
        let (p, _) = problem(a.tensor(), b.tensor(), trans_a, trans_b)?;
        prefetch_products(out.gpu(), &backward_products(p.m, p.k, p.n, trans_a, trans_b));
    }
    let (at, bt) = (a.tensor().clone(), b.tensor().clone());
    let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
    Ok(Var::from_op(out, &[a, b], move |g| {
        let da = if need_a { Some(grad_a(&at, &bt, g, trans_a, trans_b)?) } else { None };
        let db = if need_b { Some(grad_b(&at, &bt, g, trans_a, trans_b)?) } else { None };
        Ok(vec![da, db])
    }))
}

/// The linear layer in PyTorch/HF layout: `x` (..., in), `w` (out, in), `b` (out);
/// `y = x·wᵀ + b`, (..., out). Backward: `dx = dy·w`, `dw = dyᵀ·x` and `db` = column sums of
/// `dy`, all rows of the batch flattened; only the needed ones are computed.
pub fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
    if xs.is_empty() || ws.len() != 2 || ws[1] != xs[xs.len() - 1] {
        return Err(Error::shape("linear", format!("x {xs:?} and w {ws:?} (need w = (out, in), x = (..., in))")));
    }
    let (inp, outp) = (ws[1], ws[0]);
    let rows = x.tensor().len() / inp.max(1);
    let x2 = x.tensor().reshape(&[rows, inp])?;
    let y = matmul_forward(&x2, w.tensor(), b.map(|b| b.tensor()), false, true)?;
    if x.requires_grad() || w.requires_grad() {
        // dx = dy·w and dw = dyᵀ·x
        prefetch_products(y.gpu(), &[(rows, outp, inp, false, false), (outp, rows, inp, true, false)]);
    }
    let mut ys = xs.clone();
    if let Some(last) = ys.last_mut() {
        *last = outp;
    }
    let y = y.reshape(&ys)?;
    let wt = w.tensor().clone();
    let (need_x, need_w) = (x.requires_grad(), w.requires_grad());
    let (has_b, need_b) = (b.is_some(), b.is_some_and(|b| b.requires_grad()));
    let inputs: Vec<&Var> = match b {
        Some(b) => vec![x, w, b],
        None => vec![x, w],
    };
    Ok(Var::from_op(y, &inputs, move |g| {
        let dy = g.reshape(&[rows, outp])?;
        let dx = if need_x { Some(mm(&dy, &to_f32(&wt)?, false, false)?.reshape(&xs)?) } else { None };
        let dw = if need_w { Some(mm(&dy, &to_f32(&x2)?, true, false)?) } else { None };
        let mut grads = vec![dx, dw];
        if has_b {
            grads.push(if need_b { Some(bias_grad(&dy)?) } else { None });
        }
        Ok(grads)
    }))
}

/// CPU references (f64), used by the gradient-check table and the tests.
pub mod reference {
    /// `op(a)·op(b) (+ bias)` for `batch` products; `a_shared` / `b_shared` mark a 2-D operand
    /// used by every batch entry. a is (m, k) or stored (k, m) with `ta`; b is (k, n) or stored
    /// (n, k) with `tb`. Returns (batch, m, n) row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        bias: Option<&[f64]>,
        batch: usize,
        (m, k, n): (usize, usize, usize),
        (ta, tb): (bool, bool),
        (a_shared, b_shared): (bool, bool),
    ) -> Vec<f64> {
        let mut c = vec![0.0; batch * m * n];
        // Element (i, q) of op(A) is at a_row(i) + q * a_step; (q, j) of op(B) at b_col(j) + q * b_step.
        let (a_step, b_step) = (if ta { m } else { 1 }, if tb { 1 } else { n });
        for z in 0..batch {
            let ao = if a_shared { 0 } else { z * m * k };
            let bo = if b_shared { 0 } else { z * k * n };
            for i in 0..m {
                let a_row = ao + if ta { i } else { i * k };
                for j in 0..n {
                    let b_col = bo + if tb { j * k } else { j };
                    let mut s = bias.map_or(0.0, |b| b[j]);
                    for q in 0..k {
                        s += a[a_row + q * a_step] * b[b_col + q * b_step];
                    }
                    c[z * m * n + i * n + j] = s;
                }
            }
        }
        c
    }

    /// `x·wᵀ + b` with x (rows, in), w (out, in).
    pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, inp: usize, out: usize) -> Vec<f64> {
        matmul(x, w, b, 1, (rows, inp, out), (false, true), (false, false))
    }

    /// Column sums of a (rows, n) matrix.
    pub fn bias_grad(dy: &[f64], n: usize) -> Vec<f64> {
        let mut s = vec![0.0; n];
        for (i, v) in dy.iter().enumerate() {
            s[i % n] += v;
        }
        s
    }
}
