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
//! - subgroup kernels: the subgroup variants of the texture-fed matmul and attention kernels.
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
}

impl FeedChoice {
    pub(crate) fn new(register_feed: RegisterFeed, elementwise_textures: bool, subgroup_kernels: bool) -> Self {
        FeedChoice {
            register_feed: AtomicU8::new(register_feed as u8),
            elementwise_textures: AtomicBool::new(elementwise_textures),
            subgroup_kernels: AtomicBool::new(subgroup_kernels),
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
}
