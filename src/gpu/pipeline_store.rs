//! Compiled pipelines kept across runs: wgpu's `PipelineCache` (Vulkan only),
//! stored in the user's cache folder, one file per adapter.
//!
//! A file is used only when it was written by this module for the same
//! adapter, driver and delg-gpu version, and the SHA-256 of its payload
//! matches. wgpu checks its own small header but hands the rest to the driver
//! as it is, and a driver given damaged data may crash; so anything stale,
//! truncated or corrupt is ignored and replaced by the next save.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"DELGPLC1";
/// A cache file larger than this is not one of ours.
const MAX_FILE_BYTES: u64 = 1 << 30;
const MAX_KEY_BYTES: usize = 4096;

pub(crate) struct PipelineStore {
    pub(crate) cache: wgpu::PipelineCache,
    file: PathBuf,
    key: String,
    /// Pipelines compiled since the file was read; nothing new, nothing to save.
    compiled: AtomicUsize,
}

impl PipelineStore {
    /// The store for this adapter in `dir`, primed with the file's pipelines
    /// when they are valid; `None` when the adapter has no pipeline cache.
    pub(crate) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        dir: &Path,
    ) -> Option<PipelineStore> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let stem = wgpu::util::pipeline_cache_key(info)?;
        let key = format!(
            "{stem}|{}|{}|delg-gpu {}",
            info.driver,
            info.driver_info,
            env!("CARGO_PKG_VERSION")
        );
        let file = dir.join(format!("{stem}.bin"));
        let stored = read_file(&file).and_then(|bytes| payload(&bytes, &key).map(<[u8]>::to_vec));
        // SAFETY: `stored` is only ever bytes that `get_data` returned for an
        // adapter and driver with this key, proven unchanged by their SHA-256.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("delg-gpu pipelines"),
                data: stored.as_deref(),
                fallback: true,
            })
        };
        Some(PipelineStore {
            cache,
            file,
            key,
            compiled: AtomicUsize::new(0),
        })
    }

    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    pub(crate) fn note_compiled(&self) {
        self.compiled.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the cache when pipelines were compiled since it was read. The
    /// file is replaced in one rename, so concurrent runs never see half of one.
    pub(crate) fn save(&self) -> Result<()> {
        if self.compiled.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let Some(data) = self.cache.get_data() else {
            return Ok(());
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // A per-process temporary name: two runs saving at once must not
        // write into the same half-finished file.
        let tmp = self
            .file
            .with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, encode(&self.key, &data)).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.file).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&self.file, e)
        })?;
        self.compiled.store(0, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for PipelineStore {
    fn drop(&mut self) {
        // A cache that cannot be written costs the next start its speed, never a result.
        if let Err(e) = self.save() {
            eprintln!(
                "note: pipeline cache not saved ({e}); run with --no-pipeline-cache to skip it"
            );
        }
    }
}

fn read_file(path: &Path) -> Option<Vec<u8>> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > MAX_FILE_BYTES {
        return None;
    }
    std::fs::read(path).ok()
}

/// magic | key length (u32 LE) | key | payload length (u64 LE) | SHA-256 of payload | payload
fn encode(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 + key.len() + 8 + 32 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of a file `encode` wrote for `key`, or `None` for anything else.
fn payload<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (key_len, rest) = rest.split_first_chunk::<4>()?;
    let key_len = u32::from_le_bytes(*key_len) as usize;
    if key_len > MAX_KEY_BYTES || rest.len() < key_len {
        return None;
    }
    let (stored_key, rest) = rest.split_at(key_len);
    if stored_key != key.as_bytes() {
        return None;
    }
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (digest, data) = rest.split_first_chunk::<32>()?;
    let whole = u64::try_from(data.len()).ok()? == u64::from_le_bytes(*len);
    (whole && Sha256::digest(data).as_slice() == digest).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::{encode, payload};

    #[test]
    fn only_an_intact_file_for_the_same_key_is_used() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let file = encode("vulkan_1_2|driver 1", &data);
        assert_eq!(payload(&file, "vulkan_1_2|driver 1"), Some(&data[..]));
        // Another driver or version: stale.
        assert_eq!(payload(&file, "vulkan_1_2|driver 2"), None);
        // Any flipped byte, anywhere.
        for at in [0, 9, 12, 40, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            assert_eq!(payload(&bad, "vulkan_1_2|driver 1"), None, "byte {at}");
        }
        // Truncated or extended.
        for len in [0, 7, 30, file.len() - 1] {
            assert_eq!(
                payload(&file[..len], "vulkan_1_2|driver 1"),
                None,
                "length {len}"
            );
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(payload(&longer, "vulkan_1_2|driver 1"), None);
    }
}
