//! The GPU runtime: picks an adapter, opens a device with the adapter's real limits, and owns
//! the three shared mechanisms every op uses: the buffer pool, the pipeline cache and the
//! recorder that puts a whole training step into one command encoder.
//!
//! Adapter choice: a discrete GPU, then an integrated one, then anything else (lavapipe).
//! `PLUMB_BACKEND=vulkan|metal|dx12|gl` restricts the backend, `PLUMB_ADAPTER=<substring>`
//! picks by name, and `PLUMB_KERNELS=register|tiled` overrides the kernel variant.
//! `PLUMB_MAX_BINDING=4MiB` lays parameter stores out as if the adapter allowed at most that
//! many bytes per buffer and storage binding, so the segmented and row-chunked storage paths of
//! big models run with small ones on any adapter (tests, CI). `PLUMB_MAX_MEMORY=300MiB` caps
//! the buffer pool (a run that would pass it fails with the out-of-memory error). How CPU
//! adapters feed their register kernels is a per-device choice too (see [`feed`]):
//! `PLUMB_REGISTER_FEED`, `PLUMB_ELEMENTWISE_TEXTURES`, `PLUMB_SUBGROUP_KERNELS`. Every variable
//! only fills a [`GpuOptions`] default; two devices in one process may differ.
//!
//! Dependency direction: this module, `tensor`, `tape` and `params` are the engine core and name
//! nothing above them (`tests/engine_layers.rs` checks it). The core has its own small kernel
//! set (`linear`: fill, axpby, accumulate; `texture`: the operand packer; `shaders/core/`); op
//! families (`ops`) build on the core, embed their own shaders and register them in
//! `ops::SHADER_FAMILIES`, and models and trainers build on the families. A [`Kernel`] carries
//! its shader source, so the pipeline cache compiles any family's kernels without a registry.

pub mod feed;
mod kernels;
pub(crate) mod linear;
mod pool;
mod profile;
mod recorder;
pub(crate) mod texture;

pub use feed::{RegisterFeed, StoredMatmul};
pub use kernels::{Kernel, ShaderSource, CORE_SHADERS};
pub(crate) use pool::{alloc as pool_alloc_inner, PoolBuffer};
pub use pool::system_available;
pub use profile::{format_profile, ProfileRow};
pub use recorder::Binding;
pub use texture::FrozenTextures;

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Which family of compute kernels to use where a family has two (matmul, attention).
///
/// Real GPUs want workgroup-memory tiles; CPU Vulkan drivers such as lavapipe run those
/// slowly (0.4 GFLOP/s measured) and want register tiles without barriers instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVariant {
    /// Register-tiled, no workgroup memory, no barriers: for CPU adapters.
    Register,
    /// Workgroup-memory tiled: for real GPUs.
    Tiled,
}

impl KernelVariant {
    fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "register" | "cpu" => Ok(KernelVariant::Register),
            "tiled" | "gpu" => Ok(KernelVariant::Tiled),
            _ => Err(Error::config("PLUMB_KERNELS", format!("`{s}` is not one of register, tiled"))),
        }
    }
}

/// How to pick the adapter and its kernels. [`GpuOptions::from_env`] fills the fields from the
/// `PLUMB_*` variables; `Default` is the same without the environment.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Restrict to one backend: "vulkan", "metal", "dx12" or "gl". From `PLUMB_BACKEND`.
    pub backend: Option<String>,
    /// Pick the first adapter whose name contains this (case-insensitive). From `PLUMB_ADAPTER`.
    pub adapter: Option<String>,
    /// Force a kernel variant instead of choosing by device type. From `PLUMB_KERNELS`.
    pub kernels: Option<KernelVariant>,
    /// Lay parameter stores out as if the adapter allowed at most this many bytes per buffer
    /// and storage binding (when below its real limits), e.g. `Some(4 << 20)`: runs the
    /// segmented and row-chunked paths of big models with small ones. Other tensors keep the
    /// real limits. From `PLUMB_MAX_BINDING` (`4MiB`, `16KiB`, `1GiB`, or bytes).
    pub max_binding: Option<u64>,
    /// Fail allocations that would make the buffer pool hold more than this many bytes, with
    /// the same out-of-memory error a full GPU gives: tests the error path, and keeps a run
    /// inside a budget. From `PLUMB_MAX_MEMORY` (`300MiB`, ...).
    pub max_memory: Option<u64>,
    /// How register kernels read matmul's operands and AdamW's state (CPU adapters). From
    /// `PLUMB_REGISTER_FEED=auto|buffer|texture`; `Auto` by default.
    pub register_feed: RegisterFeed,
    /// Let the elementwise, activation and normalisation kernels of CPU adapters (and AdamW,
    /// where the register feed takes textures) read large inputs from texture copies (default
    /// true). From `PLUMB_ELEMENTWISE_TEXTURES=on|off`; the
    /// older `NOTEX` (any value) turns it off too.
    pub elementwise_textures: bool,
    /// Let texture-fed matmul and attention kernels use their subgroup variants where the device
    /// has 8-lane subgroups (default true). From `PLUMB_SUBGROUP_KERNELS=on|off`.
    pub subgroup_kernels: bool,
    /// Products with a frozen stored-form weight: fused, or W decoded to f32 first (see
    /// [`StoredMatmul`]). From `PLUMB_STORED_MATMUL=auto|fused|decode`; `Auto` by default.
    pub stored_matmul: StoredMatmul,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backend: None,
            adapter: None,
            kernels: None,
            max_binding: None,
            max_memory: None,
            register_feed: RegisterFeed::Auto,
            elementwise_textures: true,
            subgroup_kernels: true,
            stored_matmul: StoredMatmul::Auto,
        }
    }
}

/// Parses a byte count with an optional binary unit: `4194304`, `4MiB`, `4M`, `512KiB`, `1GiB`.
pub fn parse_bytes(what: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        u => return Err(Error::config(what, format!("`{s}`: unknown unit `{u}` (use B, KiB, MiB or GiB)"))),
    };
    let n: u64 = num.parse().map_err(|_| Error::config(what, format!("`{s}` is not a byte count such as 4MiB")))?;
    n.checked_shl(shift)
        .filter(|&b| b >> shift == n && b > 0)
        .ok_or_else(|| Error::config(what, format!("`{s}` must be a positive size below 2^64 bytes")))
}

impl GpuOptions {
    /// Options from the `PLUMB_*` environment variables (see the fields); unset ones keep
    /// their defaults. A malformed value is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let d = GpuOptions::default();
        let switch = |k: &str, default: bool| var(k).map_or(Ok(default), |s| feed::parse_switch(k, &s));
        Ok(GpuOptions {
            backend: var("PLUMB_BACKEND"),
            adapter: var("PLUMB_ADAPTER"),
            kernels: var("PLUMB_KERNELS").map(|s| KernelVariant::parse(&s)).transpose()?,
            max_binding: var("PLUMB_MAX_BINDING").map(|s| parse_bytes("PLUMB_MAX_BINDING", &s)).transpose()?,
            max_memory: var("PLUMB_MAX_MEMORY").map(|s| parse_bytes("PLUMB_MAX_MEMORY", &s)).transpose()?,
            register_feed: var("PLUMB_REGISTER_FEED").map_or(Ok(d.register_feed), |s| RegisterFeed::parse("PLUMB_REGISTER_FEED", &s))?,
            elementwise_textures: std::env::var_os("NOTEX").is_none() && switch("PLUMB_ELEMENTWISE_TEXTURES", d.elementwise_textures)?,
            subgroup_kernels: switch("PLUMB_SUBGROUP_KERNELS", d.subgroup_kernels)?,
            stored_matmul: var("PLUMB_STORED_MATMUL").map_or(Ok(d.stored_matmul), |s| StoredMatmul::parse("PLUMB_STORED_MATMUL", &s))?,
        })
    }
}

fn parse_backends(name: Option<&str>) -> Result<wgpu::Backends> {
    Ok(match name.map(|s| s.to_ascii_lowercase()) {
        None => wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL,
        Some(s) => match s.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            _ => return Err(Error::config("PLUMB_BACKEND", format!("`{s}` is not one of vulkan, metal, dx12, gl"))),
        },
    })
}

/// Everything `plumb info` prints about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

impl AdapterSummary {
    /// True where the adapter can run f16 arithmetic in shaders.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (i, l) = (&self.info, &self.limits);
        writeln!(f, "{} ({:?}, {:?})", i.name, i.backend, i.device_type)?;
        if !i.driver.is_empty() {
            writeln!(f, "  driver:                 {} {}", i.driver, i.driver_info)?;
        }
        writeln!(f, "  max buffer size:        {} MiB", l.max_buffer_size >> 20)?;
        writeln!(f, "  max storage binding:    {} MiB", l.max_storage_buffer_binding_size >> 20)?;
        writeln!(f, "  storage buffers/stage:  {}", l.max_storage_buffers_per_shader_stage)?;
        writeln!(f, "  workgroup storage:      {} KiB", l.max_compute_workgroup_storage_size >> 10)?;
        writeln!(f, "  invocations/workgroup:  {}", l.max_compute_invocations_per_workgroup)?;
        writeln!(f, "  workgroups/dimension:   {}", l.max_compute_workgroups_per_dimension)?;
        write!(f, "  shader f16:             {}", if self.has_f16() { "yes" } else { "no" })
    }
}

/// Every adapter wgpu can see for the given backend restriction.
pub fn list_adapters(backend: Option<&str>) -> Result<Vec<AdapterSummary>> {
    let instance = make_instance(parse_backends(backend)?);
    let adapters = pollster::block_on(instance.enumerate_adapters(parse_backends(backend)?));
    Ok(adapters
        .iter()
        .map(|a| AdapterSummary { info: a.get_info(), limits: a.limits(), features: a.features() })
        .collect())
}

fn make_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub(crate) struct GpuInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) summary: AdapterSummary,
    variant: AtomicU8,
    /// How CPU adapters feed their register kernels (see [`feed`]).
    pub(crate) feed: feed::FeedChoice,
    pub(crate) pipelines: kernels::PipelineCache,
    pub(crate) pool: Mutex<pool::Pool>,
    pub(crate) rec: Mutex<recorder::Recorder>,
    pub(crate) profiler: Mutex<profile::Profiler>,
    pub(crate) textures: Mutex<texture::TexturePool>,
    /// Most bytes per parameter-store buffer: the adapter's limits or the forced one.
    max_binding: u64,
    /// Budget of the buffer pool in bytes ([`GpuOptions::max_memory`]).
    pub(crate) max_memory: Option<u64>,
    /// The memory plan of the run, quoted by out-of-memory errors (see [`Gpu::set_memory_plan`]).
    pub(crate) memory_plan: Mutex<Option<String>>,
}

/// A handle to the opened device. Cheap to clone; every tensor keeps one.
#[derive(Clone)]
pub struct Gpu(pub(crate) Arc<GpuInner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.0.summary.info.name)
    }
}

impl Gpu {
    /// Open the best adapter with the options of the `PLUMB_*` variables ([`GpuOptions::from_env`]).
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(&GpuOptions::from_env()?)
    }

    /// Open an adapter chosen by `opts`.
    pub fn with_options(opts: &GpuOptions) -> Result<Gpu> {
        let backends = parse_backends(opts.backend.as_deref())?;
        let instance = make_instance(backends);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        if let Some(want) = &opts.adapter {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
            if adapters.is_empty() {
                if seen.is_empty() {
                    return Err(Error::NoAdapter(format!(" whose name contains `{want}` (adapters seen: none)")));
                }
                // Adapters exist, so no driver is missing: the name is wrong.
                return Err(Error::config(
                    "PLUMB_ADAPTER",
                    format!("no adapter's name contains `{want}`; adapters seen: {} (`plumb info` lists them)", seen.join(", ")),
                ));
            }
        }
        // Stable sort: wgpu lists Vulkan before GL, so equal ranks keep that order.
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let adapter = adapters.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(match &opts.backend {
                Some(b) => format!(" for backend `{b}`"),
                None => String::new(),
            })
        })?;
        let summary = AdapterSummary { info: adapter.get_info(), limits: adapter.limits(), features: adapter.features() };
        let mut features = wgpu::Features::empty();
        if summary.has_f16() {
            features |= wgpu::Features::SHADER_F16;
        }
        if summary.features.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("plumb"),
            required_features: features,
            required_limits: summary.limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Device { adapter: summary.info.name.clone(), msg: e.to_string() })?;
        // Errors we do not catch in a scope must not abort the process: log them instead.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| eprintln!("plumb: uncaptured GPU error: {e}")));
        let variant = opts.kernels.unwrap_or(if summary.info.device_type == wgpu::DeviceType::Cpu {
            KernelVariant::Register
        } else {
            KernelVariant::Tiled
        });
        let limits = summary.limits.clone();
        let real = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        // A multiple of 256, so that row chunks and segments keep their alignment.
        let max_binding = (opts.max_binding.map_or(real, |m| m.min(real)) / 256 * 256).max(256);
        Ok(Gpu(Arc::new(GpuInner {
            device,
            queue,
            summary,
            variant: AtomicU8::new(variant as u8),
            feed: feed::FeedChoice::new(opts.register_feed, opts.elementwise_textures, opts.subgroup_kernels, opts.stored_matmul),
            pipelines: kernels::PipelineCache::default(),
            pool: Mutex::new(pool::Pool::default()),
            rec: Mutex::new(recorder::Recorder::new(&limits)),
            profiler: Mutex::new(profile::Profiler::from_env()),
            textures: Mutex::new(texture::TexturePool::default()),
            max_binding,
            max_memory: opts.max_memory,
            memory_plan: Mutex::new(None),
        })))
    }

    /// The adapter this device was opened on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.0.summary
    }

    /// The device's limits (the adapter's real ones).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.summary.limits
    }

    /// Most bytes one parameter-store buffer (and so one storage binding) holds here: the
    /// smaller of the adapter's `max_buffer_size` and `max_storage_buffer_binding_size`, or the
    /// forced [`GpuOptions::max_binding`], rounded down to 256. Bigger parameters are split by
    /// rows ([`crate::params::RowChunks`]).
    pub fn max_binding_bytes(&self) -> u64 {
        self.0.max_binding
    }

    /// The memory this device may use, if known: the forced [`GpuOptions::max_memory`], else
    /// for a CPU adapter the system's available memory (wgpu does not report a GPU's).
    pub fn memory_budget(&self) -> Option<u64> {
        self.0.max_memory.or_else(|| if self.is_cpu() { system_available() } else { None })
    }

    /// Remember the run's memory plan (its text); an out-of-memory error quotes it.
    pub fn set_memory_plan(&self, plan: impl Into<String>) {
        *self.0.memory_plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.into());
    }

    /// True where f16 shaders can run on this device.
    pub fn has_f16(&self) -> bool {
        self.0.summary.has_f16()
    }

    /// True where compute shaders can use subgroup operations (requested when available).
    pub fn has_subgroups(&self) -> bool {
        self.0.device.features().contains(wgpu::Features::SUBGROUP)
    }

    /// True for CPU adapters such as lavapipe.
    pub fn is_cpu(&self) -> bool {
        self.0.summary.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The kernel variant in use (chosen by device type unless overridden).
    pub fn variant(&self) -> KernelVariant {
        if self.0.variant.load(Ordering::Relaxed) == KernelVariant::Tiled as u8 {
            KernelVariant::Tiled
        } else {
            KernelVariant::Register
        }
    }

    /// Override the kernel variant from now on (tests run both on one device).
    pub fn set_variant(&self, v: KernelVariant) {
        self.0.variant.store(v as u8, Ordering::Relaxed);
    }

    /// The raw wgpu device, for code that needs it directly.
    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }

    /// Workgroup counts for `n` threads in workgroups of `wg` threads, spread over x and y so
    /// that no dimension passes the adapter's limit. Shaders rebuild the linear index as
    /// `gid.x + gid.y * num_workgroups.x * wg`.
    pub fn groups_1d(&self, n: usize, wg: u32) -> [u32; 3] {
        let groups = n.div_ceil(wg as usize).max(1) as u64;
        let max = self.limits().max_compute_workgroups_per_dimension as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }

    /// Bytes currently held by the buffer pool: in use and cached for reuse.
    pub fn pool_bytes(&self) -> (u64, u64) {
        let p = self.0.pool.lock().unwrap_or_else(|e| e.into_inner());
        (p.in_use_bytes, p.cached_bytes)
    }

    /// The most GPU memory the pool held (in use + cached) since the last [`Gpu::reset_peak`].
    pub fn peak_bytes(&self) -> u64 {
        self.0.pool.lock().unwrap_or_else(|e| e.into_inner()).peak_bytes
    }

    /// Release cached buffers and start a new peak measurement from what is in use now.
    pub fn reset_peak(&self) {
        let mut p = self.0.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.trim();
        p.peak_bytes = p.in_use_bytes;
    }

    /// Release every cached (unused) buffer and operand texture back to the driver.
    pub fn trim_pool(&self) {
        self.0.pool.lock().unwrap_or_else(|e| e.into_inner()).trim();
        self.0.textures.lock().unwrap_or_else(|e| e.into_inner()).trim();
    }
}

/// Take a buffer of at least `bytes` bytes from the pool (or allocate one).
pub(crate) fn pool_alloc(gpu: &Gpu, bytes: u64, what: &str) -> Result<Arc<PoolBuffer>> {
    pool_alloc_inner(&gpu.0, bytes, what)
}
