//! A device's scratch memory: buffers and textures that an op needs only
//! while its own dispatches run (staging textures, unfolded operands,
//! reduction partials). All dispatches of a device are recorded and executed
//! in order on one queue, so one resource per purpose serves every op and
//! every cached plan.
//!
//! Ops declare what they need for given shapes (`Op::scratch`); the planner
//! reserves the largest need of each purpose before any op is recorded, and
//! recording only looks the resources up. So the memory a plan takes is
//! known before it is recorded (`--plan-only` reports it), and an op that
//! asks for more than it declared is an internal error, not a silent
//! allocation.

use std::collections::{BTreeMap, HashMap};

use super::buffer::storage_size;
use super::device::Gpu;
use crate::error::{Error, Result};

/// Textures are kept per purpose, format and width (a kernel addresses its
/// texture by coordinates, so only the row count may grow).
type TextureKey = (&'static str, wgpu::TextureFormat, u32);

#[derive(Default)]
pub struct Scratch {
    buffers: BTreeMap<&'static str, wgpu::Buffer>,
    textures: HashMap<TextureKey, wgpu::Texture>,
}

/// A 2-D scratch texture: `width` texels per row, at least `rows` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextureNeed {
    pub format: wgpu::TextureFormat,
    pub width: u32,
    pub rows: u32,
}

impl TextureNeed {
    fn key(&self, purpose: &'static str) -> TextureKey {
        (purpose, self.format, self.width)
    }
    fn bytes(&self) -> u64 {
        let texel = self.format.block_copy_size(None).unwrap_or(16) as u64;
        self.width as u64 * self.rows as u64 * texel
    }
}

/// What an op needs while its dispatches run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScratchNeed {
    Buffer {
        purpose: &'static str,
        bytes: u64,
    },
    Texture {
        purpose: &'static str,
        need: TextureNeed,
    },
}

impl ScratchNeed {
    pub fn bytes(&self) -> u64 {
        match self {
            ScratchNeed::Buffer { bytes, .. } => storage_size(*bytes),
            ScratchNeed::Texture { need, .. } => need.bytes(),
        }
    }
}

/// The largest need of each purpose (and texture shape): what a device
/// holds after reserving all of `needs`.
pub fn merge_needs(needs: impl IntoIterator<Item = ScratchNeed>) -> Vec<ScratchNeed> {
    let mut buffers: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut textures: HashMap<TextureKey, TextureNeed> = HashMap::new();
    for n in needs {
        match n {
            ScratchNeed::Buffer { purpose, bytes } => {
                let b = buffers.entry(purpose).or_default();
                *b = (*b).max(bytes);
            }
            ScratchNeed::Texture { purpose, need } => {
                let t = textures.entry(need.key(purpose)).or_insert(need);
                t.rows = t.rows.max(need.rows);
            }
        }
    }
    let buffers = buffers
        .into_iter()
        .map(|(purpose, bytes)| ScratchNeed::Buffer { purpose, bytes });
    let textures = textures
        .into_iter()
        .map(|((purpose, ..), need)| ScratchNeed::Texture { purpose, need });
    buffers.chain(textures).collect()
}

/// Device bytes `needs` take once merged.
pub fn needs_bytes(needs: impl IntoIterator<Item = ScratchNeed>) -> u64 {
    merge_needs(needs).iter().map(ScratchNeed::bytes).sum()
}

fn undeclared(purpose: &str, what: String) -> Error {
    Error::Internal(format!(
        "scratch '{purpose}' ({what}) was not declared by its op's `scratch` before recording"
    ))
}

impl Gpu {
    fn with_scratch<T>(&self, f: impl FnOnce(&mut Scratch) -> Result<T>) -> Result<T> {
        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| Error::Internal("scratch memory lock poisoned".into()))?;
        f(&mut scratch)
    }

    /// Grows the scratch memory to hold every one of `needs`. Plans recorded
    /// earlier keep the resources they were recorded with alive.
    pub fn reserve_scratch(&self, needs: &[ScratchNeed]) -> Result<()> {
        self.with_scratch(|s| {
            for n in merge_needs(needs.iter().copied()) {
                match n {
                    ScratchNeed::Buffer { purpose, bytes } => {
                        if s.buffers.get(purpose).is_some_and(|b| b.size() >= bytes) {
                            continue;
                        }
                        let b = self.storage_buffer(purpose, bytes)?;
                        s.buffers.insert(purpose, b);
                    }
                    ScratchNeed::Texture { purpose, need } => {
                        let key = need.key(purpose);
                        if s.textures
                            .get(&key)
                            .is_some_and(|t| t.height() >= need.rows)
                        {
                            continue;
                        }
                        let t = self.scratch_texture_of(purpose, need)?;
                        s.textures.insert(key, t);
                    }
                }
            }
            Ok(())
        })
    }

    fn scratch_texture_of(&self, purpose: &str, need: TextureNeed) -> Result<wgpu::Texture> {
        self.counters.add(super::counters::Count::Texture, 1);
        self.scoped(&format!("allocating the {purpose} texture"), || {
            self.device.create_texture(&wgpu::TextureDescriptor {
                label: Some(purpose),
                size: wgpu::Extent3d {
                    width: need.width,
                    height: need.rows.max(1),
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: need.format,
                usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            })
        })
    }

    /// The reserved scratch buffer for `purpose`, of at least `bytes`.
    pub fn scratch_buffer(&self, purpose: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        self.with_scratch(|s| {
            s.buffers
                .get(purpose)
                .filter(|b| b.size() >= bytes)
                .cloned()
                .ok_or_else(|| undeclared(purpose, format!("{bytes} bytes")))
        })
    }

    /// The reserved scratch texture for `purpose`: the format and width
    /// asked for, at least as many rows.
    pub fn scratch_texture(
        &self,
        purpose: &'static str,
        need: TextureNeed,
    ) -> Result<wgpu::Texture> {
        self.with_scratch(|s| {
            s.textures
                .get(&need.key(purpose))
                .filter(|t| t.height() >= need.rows)
                .cloned()
                .ok_or_else(|| undeclared(purpose, format!("{need:?}")))
        })
    }

    /// Device bytes the scratch memory holds now.
    pub fn scratch_bytes(&self) -> u64 {
        self.with_scratch(|s| {
            let buffers: u64 = s.buffers.values().map(|b| b.size()).sum();
            let textures: u64 = s
                .textures
                .iter()
                .map(|((_, format, width), t)| {
                    TextureNeed {
                        format: *format,
                        width: *width,
                        rows: t.height(),
                    }
                    .bytes()
                })
                .sum();
            Ok(buffers + textures)
        })
        .unwrap_or(0)
    }
}
