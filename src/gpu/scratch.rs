//! A device's scratch memory: buffers and textures that an op needs only
//! while its own dispatches run (staging textures, unfolded operands). All
//! dispatches of a device are recorded and executed in order on one queue,
//! so one resource per purpose serves every op and every cached plan; it only
//! ever grows, to the largest size asked for.

use std::collections::BTreeMap;

use super::device::Gpu;
use crate::error::{Error, Result};

#[derive(Default)]
pub struct Scratch {
    buffers: BTreeMap<&'static str, wgpu::Buffer>,
    textures: BTreeMap<&'static str, wgpu::Texture>,
}

/// A 2-D scratch texture: `width` texels per row, at least `rows` rows.
#[derive(Clone, Copy, Debug)]
pub struct TextureNeed {
    pub format: wgpu::TextureFormat,
    pub width: u32,
    pub rows: u32,
}

impl Gpu {
    fn with_scratch<T>(&self, f: impl FnOnce(&mut Scratch) -> Result<T>) -> Result<T> {
        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| Error::Internal("scratch memory lock poisoned".into()))?;
        f(&mut scratch)
    }

    /// The scratch buffer for `purpose`, of at least `bytes`.
    pub fn scratch_buffer(&self, purpose: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        self.with_scratch(|s| {
            if let Some(b) = s.buffers.get(purpose).filter(|b| b.size() >= bytes) {
                return Ok(b.clone());
            }
            let b = self.storage_buffer(purpose, bytes)?;
            s.buffers.insert(purpose, b.clone());
            Ok(b)
        })
    }

    /// The scratch texture for `purpose`: same format and width as asked,
    /// at least as many rows.
    pub fn scratch_texture(
        &self,
        purpose: &'static str,
        need: TextureNeed,
    ) -> Result<wgpu::Texture> {
        self.with_scratch(|s| {
            let fits = |t: &wgpu::Texture| {
                t.format() == need.format && t.width() == need.width && t.height() >= need.rows
            };
            if let Some(t) = s.textures.get(purpose).filter(|t| fits(t)) {
                return Ok(t.clone());
            }
            let texture = self.scoped(&format!("allocating the {purpose} texture"), || {
                self.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(purpose),
                    size: wgpu::Extent3d {
                        width: need.width,
                        height: need.rows,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: need.format,
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            })?;
            s.textures.insert(purpose, texture.clone());
            Ok(texture)
        })
    }

    /// Device bytes the scratch memory holds now.
    pub fn scratch_bytes(&self) -> u64 {
        self.with_scratch(|s| {
            let buffers: u64 = s.buffers.values().map(|b| b.size()).sum();
            let textures: u64 = s
                .textures
                .values()
                .map(|t| {
                    let texel = t.format().block_copy_size(None).unwrap_or(16) as u64;
                    t.width() as u64 * t.height() as u64 * texel
                })
                .sum();
            Ok(buffers + textures)
        })
        .unwrap_or(0)
    }
}
