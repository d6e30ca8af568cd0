//! How the register kernels of CPU adapters read their operands: one choice per device, from
//! [`GpuOptions`](super::GpuOptions) (whose defaults the environment may fill), never a process
//! global, so two devices in one process can run different kernel variants side by side.
//!
//! On lavapipe a storage-buffer load is built one SIMD lane at a time while a texel fetch is a
//! vector gather, so large operands are read from texture copies (see `gpu::texture`) and,
//! with 8-lane subgroups, shared across a subgroup. Three switches:
//! - [`RegisterFeed`]: matmul's operands and AdamW's state from buffers or textures;
//! - elementwise textures: the elementwise, activation and normalisation kernels' inputs (and
//!   AdamW's state, where the register feed takes textures) from texture copies;
//! - subgroup kernels: the subgroup variants of the texture-fed matmul and attention kernels;
//! - [`StoredMatmul`]: products with a frozen stored-form weight (`ops::quant`) fused, or the
//!   weight decoded to f32 first and fed to the f32 matmul.
//!
//! Each can be changed on an open device ([`Gpu::set_register_feed`], ...): tests run every
//! variant on one device. They only matter where [`Gpu::variant`] is `Register`.

use super::Gpu;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// How the register kernels (CPU adapters) read large operands: matmul's, and AdamW's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegisterFeed {
    /// Buffers where the CPU has AVX-512 (lavapipe's buffer loads are cheap there), else
    /// textures wherever the layout allows.
    #[default]
    Auto = 0,
    /// Always the storage buffers.
    Buffer = 1,
    /// Textures wherever the layout allows (rows a multiple of 4 elements).
    Texture = 2,
}

impl RegisterFeed {
    /// `auto`, `buffer` or `texture`; `what` names the setting in the error.
    pub fn parse(what: &str, s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(RegisterFeed::Auto),
            "buffer" | "buffers" => Ok(RegisterFeed::Buffer),
            "texture" | "textures" => Ok(RegisterFeed::Texture),
            _ => Err(Error::config(what, format!("`{s}` is not one of auto, buffer, texture"))),
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => RegisterFeed::Buffer,
            2 => RegisterFeed::Texture,
            _ => RegisterFeed::Auto,
        }
    }
}

/// How a product with a frozen stored-form weight (f16, bf16, GGUF's quantized types) runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoredMatmul {
    /// `Decode` for products of [`DECODE_MIN_ROWS`] rows or more on CPU adapters (the register
    /// f32 matmul is several times faster than decoding W inside every thread's inner loop),
    /// `Fused` otherwise.
    #[default]
    Auto = 0,
    /// Decode W inside the matmul kernel: no f32 copy of W at all.
    Fused = 1,
    /// Decode W (the rows one product reads) into a temporary f32 matrix, then run the f32
    /// matmul; the temporary is freed after the product (one matrix at a time, never the model).
    Decode = 2,
}

/// Rows of x from which `StoredMatmul::Auto` decodes W first on CPU adapters.
pub const DECODE_MIN_ROWS: usize = 32;

impl StoredMatmul {
    /// `auto`, `fused` or `decode`; `what` names the setting in the error.
    pub fn parse(what: &str, s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(StoredMatmul::Auto),
            "fused" => Ok(StoredMatmul::Fused),
            "decode" => Ok(StoredMatmul::Decode),
            _ => Err(Error::config(what, format!("`{s}` is not one of auto, fused, decode"))),
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => StoredMatmul::Fused,
            2 => StoredMatmul::Decode,
            _ => StoredMatmul::Auto,
        }
    }
}

/// Parses an on/off switch: `on`, `off`, `1`, `0`, `true`, `false`, `yes`, `no`.
pub(crate) fn parse_switch(what: &str, s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(Error::config(what, format!("`{s}` is not one of on, off"))),
    }
}

/// True where LLVM builds lavapipe's variable-lane inserts (each lane of a buffer load) with
/// AVX-512 masked broadcasts: a few instructions instead of a stack round trip (~25 cycles).
pub(crate) fn cheap_buffer_loads() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One device's operand choices (atomics: a device is shared across threads).
pub(crate) struct FeedChoice {
    register_feed: AtomicU8,
    elementwise_textures: AtomicBool,
    subgroup_kernels: AtomicBool,
    stored_matmul: AtomicU8,
}

impl FeedChoice {
    pub(crate) fn new(register_feed: RegisterFeed, elementwise_textures: bool, subgroup_kernels: bool, stored_matmul: StoredMatmul) -> Self {
        FeedChoice {
            register_feed: AtomicU8::new(register_feed as u8),
            elementwise_textures: AtomicBool::new(elementwise_textures),
            subgroup_kernels: AtomicBool::new(subgroup_kernels),
            stored_matmul: AtomicU8::new(stored_matmul as u8),
        }
    }
}

impl Gpu {
    /// The [`RegisterFeed`] set for this device ([`GpuOptions::register_feed`](super::GpuOptions)).
    pub fn register_feed(&self) -> RegisterFeed {
        RegisterFeed::from_u8(self.0.feed.register_feed.load(Ordering::Relaxed))
    }

    /// Choose how this device's register kernels read their operands from now on.
    pub fn set_register_feed(&self, feed: RegisterFeed) {
        self.0.feed.register_feed.store(feed as u8, Ordering::Relaxed);
    }

    /// Whether register kernels read large operands from texture copies (matmul, and AdamW's
    /// state): the [`RegisterFeed`] set, which on `Auto` is where buffer loads are costly.
    pub fn feed_textures(&self) -> bool {
        match self.register_feed() {
            RegisterFeed::Auto => !cheap_buffer_loads(),
            RegisterFeed::Buffer => false,
            RegisterFeed::Texture => true,
        }
    }

    /// Whether the elementwise, activation and normalisation kernels of CPU adapters may read
    /// large inputs from texture copies ([`GpuOptions::elementwise_textures`](super::GpuOptions)).
    pub fn elementwise_textures(&self) -> bool {
        self.0.feed.elementwise_textures.load(Ordering::Relaxed)
    }

    /// Allow or forbid the texture-fed elementwise kernels from now on.
    pub fn set_elementwise_textures(&self, on: bool) {
        self.0.feed.elementwise_textures.store(on, Ordering::Relaxed);
    }

    /// True where the texture-fed register kernels (matmul's `register_subgroup.wgsl`,
    /// attention's `subgroup.wgsl`) take their subgroup variants: allowed
    /// ([`GpuOptions::subgroup_kernels`](super::GpuOptions)), and the device has subgroups of
    /// exactly 8 consecutive lanes (lavapipe on 256-bit SIMD).
    pub fn subgroup_kernels(&self) -> bool {
        let info = &self.adapter().info;
        let eight_lanes = info.subgroup_min_size == 8 && info.subgroup_max_size == 8;
        self.0.feed.subgroup_kernels.load(Ordering::Relaxed) && self.has_subgroups() && eight_lanes
    }

    /// Allow (the default) or forbid the subgroup variants from now on.
    pub fn set_subgroup_kernels(&self, on: bool) {
        self.0.feed.subgroup_kernels.store(on, Ordering::Relaxed);
    }

    /// How products with a stored-form weight run here ([`GpuOptions::stored_matmul`](super::GpuOptions)).
    pub fn stored_matmul(&self) -> StoredMatmul {
        StoredMatmul::from_u8(self.0.feed.stored_matmul.load(Ordering::Relaxed))
    }

    /// Choose how products with a stored-form weight run from now on.
    pub fn set_stored_matmul(&self, choice: StoredMatmul) {
        self.0.feed.stored_matmul.store(choice as u8, Ordering::Relaxed);
    }
}
