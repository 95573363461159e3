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
    let h = parse_header::<T>(path, bytes)?;
    let body = &bytes[h.data_start..];
    check_body_length(path, &h, body.len() as u64)?;
    let mut data = vec![T::zeroed(); h.elems];
    bytemuck::cast_slice_mut::<T, u8>(&mut data).copy_from_slice(body);
    Ok((h.shape, data))
}

/// What a `.npy` header says: the shape, where the data starts, and the
/// number of elements.
struct Header {
    shape: Vec<usize>,
    data_start: usize,
    elems: usize,
    data_bytes: u64,
}

/// Reads the header at the start of `bytes` (which may stop after it).
fn parse_header<T: NpyElem>(path: &Path, bytes: &[u8]) -> Result<Header> {
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
    let sizes = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| Some((n, n.checked_mul(std::mem::size_of::<T>())?)));
    let Some((elems, want)) = sizes else {
        return Err(file_err(
            path,
            format!("shape {shape:?} is too large (corrupt header)"),
        ));
    };
    Ok(Header {
        shape,
        data_start: start + hlen,
        elems,
        data_bytes: want as u64,
    })
}

fn check_body_length(path: &Path, h: &Header, have: u64) -> Result<()> {
    if have != h.data_bytes {
        return Err(file_err(
            path,
            format!(
                "holds {have} data bytes, shape {:?} needs {} (truncated or corrupt)",
                h.shape, h.data_bytes
            ),
        ));
    }
    Ok(())
}

/// A `.npy` file whose rows are read on demand, so a large array (the local
/// descriptors of a shard) is never held whole.
#[derive(Clone, Debug)]
pub struct NpyRows {
    path: std::path::PathBuf,
    pub shape: Vec<usize>,
    data_start: u64,
    row_bytes: u64,
}

impl NpyRows {
    /// Reads and checks the header of `path` (element type `T`, at least one
    /// dimension, a file length that matches the shape).
    pub fn open<T: NpyElem>(path: &Path) -> Result<NpyRows> {
        use std::io::Read;
        let mut f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        // Headers are a few hundred bytes; a longer one than this is
        // refused as truncated.
        let mut head = Vec::new();
        (&mut f)
            .take(1 << 16)
            .read_to_end(&mut head)
            .map_err(|e| Error::io(path, e))?;
        let h = parse_header::<T>(path, &head)?;
        check_body_length(path, &h, len.saturating_sub(h.data_start as u64))?;
        let Some(&rows) = h.shape.first() else {
            return Err(file_err(path, "holds a scalar, expected rows"));
        };
        let row_bytes = if rows == 0 {
            0
        } else {
            h.data_bytes / rows as u64
        };
        Ok(NpyRows {
            path: path.to_path_buf(),
            data_start: h.data_start as u64,
            shape: h.shape,
            row_bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Rows `range` (each row's elements, flattened).
    pub fn read<T: NpyElem>(&self, range: std::ops::Range<usize>) -> Result<Vec<T>> {
        use std::io::{Read, Seek, SeekFrom};
        if range.start > range.end || range.end > self.rows() {
            return Err(Error::Internal(format!(
                "rows {range:?} of {} asked from {}",
                self.rows(),
                self.path.display()
            )));
        }
        let bytes = (range.end - range.start) as u64 * self.row_bytes;
        let mut data = vec![T::zeroed(); bytes as usize / std::mem::size_of::<T>()];
        let mut f = fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(
            self.data_start + range.start as u64 * self.row_bytes,
        ))
        .and_then(|_| f.read_exact(bytemuck::cast_slice_mut::<T, u8>(&mut data)))
        .map_err(|e| Error::io(&self.path, e))?;
        Ok(data)
    }
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

    #[test]
    fn rows_are_read_on_demand_from_a_checked_file() {
        let dir = std::env::temp_dir().join(format!("delg-npy-rows-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        write(&p, &[4, 3], &data).unwrap();
        let rows = NpyRows::open::<f32>(&p).unwrap();
        assert_eq!(rows.shape, vec![4, 3]);
        assert_eq!(rows.read::<f32>(1..3).unwrap(), data[3..9].to_vec());
        assert_eq!(rows.read::<f32>(4..4).unwrap(), Vec::<f32>::new());
        assert!(rows.read::<f32>(3..5).is_err());
        assert!(NpyRows::open::<i64>(&p)
            .unwrap_err()
            .to_string()
            .contains("dtype"));
        let raw = fs::read(&p).unwrap();
        fs::write(&p, &raw[..raw.len() - 4]).unwrap();
        let e = NpyRows::open::<f32>(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
