//! NumPy `.npy` files (format version 1.0, little-endian, C order): what
//! `extract` writes so numpy and FAISS users read features with `np.load`.
//! Writes are atomic: a temporary file in the same folder, then a rename.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Element types we store, with their numpy dtype descriptor.
pub trait NpyElem: bytemuck::Pod {
    const DESCR: &'static str;
}
impl NpyElem for f32 {
    const DESCR: &'static str = "<f4";
}
impl NpyElem for f64 {
    const DESCR: &'static str = "<f8";
}
impl NpyElem for i64 {
    const DESCR: &'static str = "<i8";
}
impl NpyElem for u8 {
    const DESCR: &'static str = "|u1";
}
impl NpyElem for i32 {
    const DESCR: &'static str = "<i4";
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + dict + newline, padded to 64 bytes.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.div_ceil(64) * 64 - unpadded));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `data` with `shape` to `path` atomically.
pub fn write<T: NpyElem>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(file_err(
            path,
            format!("shape {shape:?} needs {n} values, got {}", data.len()),
        ));
    }
    let mut out = NpyWriter::create(path, shape)?;
    out.append(data)?;
    out.finish()
}

/// A `.npy` file written row by row: the header (whose shape must be known
/// up front) first, then the values as they come, so an array larger than
/// memory can be written. Atomic like `write`.
pub struct NpyWriter<T: NpyElem> {
    file: AtomicFile,
    /// Values the shape still expects.
    remaining: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: NpyElem> NpyWriter<T> {
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyWriter<T>> {
        let mut file = AtomicFile::create(path)?;
        file.write(&header(T::DESCR, shape))?;
        Ok(NpyWriter {
            file,
            remaining: shape.iter().product(),
            _elem: std::marker::PhantomData,
        })
    }

    pub fn append(&mut self, values: &[T]) -> Result<()> {
        self.remaining = self.remaining.checked_sub(values.len()).ok_or_else(|| {
            Error::Internal(format!(
                "{}: more values than its shape holds",
                self.file.path.display()
            ))
        })?;
        self.file.write(bytemuck::cast_slice(values))
    }

    /// Puts the file in place once every value of the shape was appended.
    pub fn finish(self) -> Result<()> {
        if self.remaining != 0 {
            return Err(Error::Internal(format!(
                "{}: {} values short of its shape",
                self.file.path.display(),
                self.remaining
            )));
        }
        self.file.commit()
    }
}

/// A file written under a temporary sibling name and renamed into place by
/// `commit`, so a crash never leaves a half-written file under the final
/// name; dropped without `commit`, the temporary file is removed.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: Option<std::io::BufWriter<fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let tmp = path.with_extension(format!(
            "{}.tmp",
            path.extension()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let f = fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            out: Some(std::io::BufWriter::new(f)),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("open until commit");
        out.write_all(bytes).map_err(|e| file_err(&self.tmp, e))
    }

    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("open until commit");
        let f = out
            .into_inner()
            .map_err(|e| file_err(&self.tmp, e.error()))?;
        f.sync_all().map_err(|e| file_err(&self.tmp, e))?;
        fs::rename(&self.tmp, &self.path).map_err(|e| file_err(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            // Not committed: an error happened; leave no temporary behind.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a file through a temporary sibling and a rename, so a crash never
/// leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write(bytes)?;
    file.commit()
}

/// Reads an array written by `write` (or numpy with the same dtype, C order).
pub fn read<T: NpyElem>(path: &Path) -> Result<(Vec<usize>, Vec<T>)> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// Parses the bytes of a `.npy` file (`path` names it in errors). The shape
/// is checked against the bytes present before the array is allocated.
pub fn parse<T: NpyElem>(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<T>)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(file_err(path, "not a .npy file"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(file_err(path, format!("unsupported .npy version {v}"))),
    };
    let dict = std::str::from_utf8(
        bytes
            .get(start..start.saturating_add(hlen))
            .ok_or_else(|| file_err(path, "truncated header"))?,
    )
    .map_err(|_| file_err(path, "header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let at = dict
            .find(&format!("'{key}'"))
            .ok_or_else(|| file_err(path, format!("header lacks '{key}'")))?;
        Ok(dict[at + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")?;
    if !descr.starts_with(&format!("'{}'", T::DESCR)) {
        return Err(file_err(
            path,
            format!(
                "dtype is {}, expected '{}'",
                descr.split(',').next().unwrap_or(""),
                T::DESCR
            ),
        ));
    }
    if field("fortran_order")?.starts_with("True") {
        return Err(file_err(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_txt = field("shape")?;
    let inner = shape_txt
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("");
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| file_err(path, format!("bad shape '{inner}'")))
        })
        .collect::<Result<_>>()?;
    let body = &bytes[start + hlen..];
    let sizes = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| Some((n, n.checked_mul(std::mem::size_of::<T>())?)));
    let Some((n, want)) = sizes else {
        return Err(file_err(
            path,
            format!("shape {shape:?} is too large (corrupt header)"),
        ));
    };
    if body.len() != want {
        return Err(file_err(
            path,
            format!(
                "holds {} data bytes, shape {shape:?} needs {want} (truncated or corrupt)",
                body.len()
            ),
        ));
    }
    let mut data = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut data).copy_from_slice(body);
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let dir = std::env::temp_dir().join(format!("delg-npy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        write(&p, &[2, 3], &data).unwrap();
        let raw = fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([raw[8], raw[9]]) as usize;
        assert_eq!(
            (10 + hlen) % 64,
            0,
            "numpy requires a 64-byte aligned header"
        );
        assert_eq!(read::<f32>(&p).unwrap(), (vec![2, 3], data));
        let p1 = dir.join("b.npy");
        write(&p1, &[3], &[1i64, -2, 3]).unwrap();
        assert_eq!(read::<i64>(&p1).unwrap(), (vec![3], vec![1, -2, 3]));
        assert!(read::<f32>(&p1).unwrap_err().to_string().contains("dtype"));
        let p0 = dir.join("empty.npy");
        write::<f32>(&p0, &[0, 128], &[]).unwrap();
        assert_eq!(read::<f32>(&p0).unwrap(), (vec![0, 128], vec![]));
        fs::write(dir.join("bad.npy"), b"hello").unwrap();
        assert!(read::<f32>(&dir.join("bad.npy"))
            .unwrap_err()
            .to_string()
            .contains("not a .npy"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
