//! Model weights in safetensors files, in PyTorch's tensor layouts (OIHW
//! convolutions, `[out, in]` linears) and parameter names, with the model
//! configuration in the file's metadata. Any float or integer dtype is read
//! and converted to f32 (torchvision's `num_batches_tracked` is int64).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::{f16_to_f32, HostTensor, Shape, Tensor};

#[derive(Clone, Debug, Default)]
pub struct WeightFile {
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: BTreeMap<String, String>,
    /// FNV-1a of the file's bytes, as hex, when read from disk: feature
    /// folders record it to tell models apart.
    pub fingerprint: Option<String>,
}

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(crate) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("exact chunk")))
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        Dtype::BF16 => each(bytes, |b: [u8; 2]| {
            f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
        }),
        Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        Dtype::U8 => bytes.iter().map(|&b| b as f32).collect(),
        _ => return None,
    })
}

impl WeightFile {
    pub fn load(path: &Path) -> Result<WeightFile> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| file_err(path, format!("not a valid safetensors file ({e}); convert checkpoints with the scripts in tools/")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| file_err(path, e))?;
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                file_err(
                    path,
                    format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()),
                )
            })?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(file_err(
                    path,
                    format!(
                        "tensor '{name}' holds {} at element {i}: the weights are corrupt (a diverged training run?); use another checkpoint",
                        data[i]
                    ),
                ));
            }
            tensors.insert(
                name,
                Tensor {
                    shape: Shape::new(view.shape()),
                    data,
                },
            );
        }
        Ok(WeightFile {
            tensors,
            metadata,
            fingerprint: Some(format!("{:016x}", crate::io::features::fnv1a(&bytes))),
        })
    }

    /// Only the metadata of a safetensors file, from its header.
    pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|_| file_err(path, "too short for a safetensors file"))?;
        let len = u64::from_le_bytes(len);
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        // safetensors caps headers at 100 MB; a larger length, or one past
        // the end of the file, means another format (checked before allocating).
        if len > 100_000_000 || len > file_len.saturating_sub(8) {
            return Err(file_err(
                path,
                "not a safetensors file (header length out of range)",
            ));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header)
            .map_err(|_| file_err(path, "truncated safetensors header"))?;
        let json: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| file_err(path, format!("not a safetensors file ({e})")))?;
        Ok(json
            .get("__metadata__")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Writes all tensors as f32 with the metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::npy::write_atomic(path, &self.to_bytes())
    }

    /// The safetensors bytes of the file: f32 tensors and metadata in sorted
    /// order with a compact header, as tools/delg_weights.py writes them, so
    /// that the same weights always give the same bytes (the safetensors
    /// crate orders metadata by hash).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = String::from("{\"__metadata__\":{");
        for (i, (k, v)) in self.metadata.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            header += &format!("{sep}{}:{}", json_string(k), json_string(v));
        }
        header.push('}');
        let mut offset = 0;
        for (name, t) in &self.tensors {
            let dims: Vec<String> = t.shape.dims().iter().map(|d| d.to_string()).collect();
            let end = offset + 4 * t.data.len();
            header += &format!(
                ",{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                json_string(name),
                dims.join(",")
            );
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut bytes = Vec::with_capacity(8 + header.len() + offset);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for t in self.tensors.values() {
            for v in &t.data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        bytes
    }

    /// Checks the file against the tensors a model expects, naming every
    /// missing, unexpected and mis-shaped tensor in one error. Names starting
    /// with one of `optional_prefixes` may be present without being expected
    /// (e.g. training-only heads in a file used for extraction).
    pub fn check(
        &self,
        path: &Path,
        expected: &[(String, Shape)],
        optional_prefixes: &[&str],
    ) -> Result<()> {
        let want: BTreeMap<&str, &Shape> = expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let mut problems = Vec::new();
        for (name, shape) in &want {
            match self.tensors.get(*name) {
                None => problems.push(format!("missing '{name}' {shape:?}")),
                Some(t) if &&t.shape != shape => {
                    problems.push(format!("'{name}' is {:?}, expected {shape:?}", t.shape))
                }
                _ => {}
            }
        }
        for name in self.tensors.keys() {
            // Batch counters carry no weights; torchvision state dicts include them.
            let optional = name.ends_with("num_batches_tracked")
                || optional_prefixes.iter().any(|p| name.starts_with(p));
            if !want.contains_key(name.as_str()) && !optional {
                problems.push(format!("unexpected '{name}'"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let shown = problems.len().min(20);
        let more = if problems.len() > shown {
            format!(" (and {} more)", problems.len() - shown)
        } else {
            String::new()
        };
        Err(file_err(
            path,
            format!(
                "weights do not fit the model: {}{more}",
                problems[..shown].join("; ")
            ),
        ))
    }
}

/// `s` as a JSON string the way Python's `json.dumps` writes it
/// (`ensure_ascii`: everything outside printable ASCII escaped).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\r' => out += "\\r",
            '\t' => out += "\\t",
            '\u{8}' => out += "\\b",
            '\u{c}' => out += "\\f",
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out += &format!("\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn round_trip_and_mismatch_report() {
        let dir = std::env::temp_dir().join(format!("delg-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.safetensors");
        let mut w = WeightFile::default();
        w.tensors.insert(
            "conv1.weight".into(),
            Tensor::new([2, 1, 1, 1], vec![1.0, 2.0]).unwrap(),
        );
        w.tensors
            .insert("fc.bias".into(), Tensor::new([3], vec![0.5; 3]).unwrap());
        w.metadata.insert("arch".into(), "delg".into());
        w.save(&p).unwrap();
        let r = WeightFile::load(&p).unwrap();
        assert_eq!(r.tensors, w.tensors);
        assert_eq!(r.metadata["arch"], "delg");
        let expected = vec![
            ("conv1.weight".to_string(), Shape::new(&[2, 1, 3, 3])),
            ("bn1.weight".to_string(), Shape::new(&[2])),
        ];
        let e = r.check(&p, &expected, &[]).unwrap_err().to_string();
        assert!(!r
            .check(&p, &expected, &["fc."])
            .unwrap_err()
            .to_string()
            .contains("fc.bias"));
        assert!(
            e.contains("missing 'bn1.weight'")
                && e.contains("'conv1.weight' is [2×1×1×1]")
                && e.contains("unexpected 'fc.bias'"),
            "{e}"
        );
        std::fs::write(dir.join("bad.safetensors"), b"12345678junk").unwrap();
        assert!(WeightFile::load(&dir.join("bad.safetensors"))
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
