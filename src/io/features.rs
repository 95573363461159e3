//! Feature sets on disk: the final files numpy and FAISS read directly, and
//! the journal that makes long extractions resumable.
//!
//! Final layout of a feature folder:
//! - `global.npy` [N, D] float32, row-major, one L2-normalised descriptor per image;
//! - `ids.txt`, one image path per line (relative to the input folder), row order;
//! - local features in CSR form: `local_offsets.npy` [N+1] int64 (image i owns
//!   rows offsets[i]..offsets[i+1]), `local_descriptors.npy` [M, d] float32,
//!   `local_locations.npy` [M, 2] float32 (y, x) in original-image pixels,
//!   `local_scales.npy` [M] float32, `local_attention.npy` [M] float32, and,
//!   when binarised descriptors are asked for, `local_descriptors_bin.npy` [M, d/8] uint8.
//!
//! While a run is in progress every finished image is appended to
//! `journal.bin` as one checksummed record with the image file's size and
//! modification time; a run killed at any moment resumes from the valid
//! prefix of the journal (re-extracting files that changed since), and the
//! final files are written (atomically) from it at the end.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::npy::{self, NpyRows};

/// Everything extracted from one image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageFeatures {
    pub id: String,
    pub global: Vec<f32>,
    /// [n, d] row-major.
    pub descriptors: Vec<f32>,
    /// [n, 2] (y, x).
    pub locations: Vec<f32>,
    pub scales: Vec<f32>,
    pub attention: Vec<f32>,
}

impl ImageFeatures {
    pub fn num_local(&self) -> usize {
        self.scales.len()
    }
}

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Journal records before file stamps: the features alone.
const RECORD_MAGIC_UNSTAMPED: u32 = 0xDE16_F00D;
/// Records since: the file's stamp, then the features.
const RECORD_MAGIC: u32 = 0xDE16_F00E;

/// What identifies the content of an image file cheaply: a file replaced
/// under the same path changes its size or its modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (negative before it).
    pub modified_ns: i64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Result<FileStamp> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified = meta.modified().map_err(|e| Error::io(path, e))?;
        let modified_ns = match modified.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(before) => -(before.duration().as_nanos() as i64),
        };
        Ok(FileStamp {
            size: meta.len(),
            modified_ns,
        })
    }
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    out.extend_from_slice(bytemuck::cast_slice(v));
}

fn encode(f: &ImageFeatures, stamp: FileStamp) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&stamp.size.to_le_bytes());
    p.extend_from_slice(&stamp.modified_ns.to_le_bytes());
    p.extend_from_slice(&(f.id.len() as u64).to_le_bytes());
    p.extend_from_slice(f.id.as_bytes());
    for v in [
        &f.global,
        &f.descriptors,
        &f.locations,
        &f.scales,
        &f.attention,
    ] {
        put_f32s(&mut p, v);
    }
    p
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// The bytes of a length-prefixed f32 array, not yet converted.
    fn f32_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n.checked_mul(4)?)
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// A record's payload split into its fields; the five arrays (global,
/// descriptors, locations, scales, attention) stay bytes, so indexing a
/// journal allocates nothing per feature.
struct Fields<'a> {
    stamp: Option<FileStamp>,
    id: String,
    arrays: [&'a [u8]; 5],
}

fn split_fields(payload: &[u8], stamped: bool) -> Option<Fields<'_>> {
    let mut c = Cursor(payload);
    let stamp = if stamped {
        Some(FileStamp {
            size: c.u64()?,
            modified_ns: c.u64()? as i64,
        })
    } else {
        None
    };
    let n = usize::try_from(c.u64()?).ok()?;
    let id = String::from_utf8(c.take(n)?.to_vec()).ok()?;
    let arrays = [
        c.f32_bytes()?,
        c.f32_bytes()?,
        c.f32_bytes()?,
        c.f32_bytes()?,
        c.f32_bytes()?,
    ];
    c.0.is_empty().then_some(Fields { stamp, id, arrays })
}

fn decode(payload: &[u8], stamped: bool) -> Option<ImageFeatures> {
    let Fields { id, arrays, .. } = split_fields(payload, stamped)?;
    let [global, descriptors, locations, scales, attention] = arrays.map(f32s);
    Some(ImageFeatures {
        id,
        global,
        descriptors,
        locations,
        scales,
        attention,
    })
}

/// Magic (u32), payload length (u64), checksum (u64).
const RECORD_HEADER: usize = 20;

/// Where one finished image sits in the journal: enough to resume, order
/// and count the images without holding their features in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalRecord {
    pub id: String,
    /// `None` for records written before stamps existed.
    pub stamp: Option<FileStamp>,
    pub num_local: usize,
    payload_at: u64,
    payload_len: usize,
    stamped: bool,
}

/// The record whose header is `header`, checked against the bytes that
/// `payload` holds; `None` for a torn or corrupt record.
fn check_record(
    header: &[u8; RECORD_HEADER],
    payload: &[u8],
    payload_at: u64,
) -> Option<JournalRecord> {
    let stamped = match u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) {
        RECORD_MAGIC => true,
        RECORD_MAGIC_UNSTAMPED => false,
        _ => return None,
    };
    let sum = u64::from_le_bytes(header[12..].try_into().expect("8 bytes"));
    if fnv1a(payload) != sum {
        return None;
    }
    let fields = split_fields(payload, stamped)?;
    Some(JournalRecord {
        num_local: fields.arrays[3].len() / 4,
        id: fields.id,
        stamp: fields.stamp,
        payload_at,
        payload_len: payload.len(),
        stamped,
    })
}

/// The valid records at the start of a journal of `len` bytes, read one at
/// a time, and the length of that valid prefix; a torn or corrupt record
/// ends it. A record's length is checked against the bytes left before its
/// payload is allocated.
fn scan_journal(path: &Path, mut input: impl Read, len: u64) -> Result<(Vec<JournalRecord>, u64)> {
    let mut records = Vec::new();
    let mut at = 0u64;
    let mut payload = Vec::new();
    let mut header = [0u8; RECORD_HEADER];
    let read = |input: &mut dyn Read, buf: &mut [u8]| match input.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    };
    loop {
        let left = len - at;
        if left < RECORD_HEADER as u64 || !read(&mut input, &mut header)? {
            break;
        }
        let payload_len = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        if payload_len > left - RECORD_HEADER as u64 {
            break;
        }
        payload.resize(payload_len as usize, 0);
        if !read(&mut input, &mut payload)? {
            break;
        }
        let payload_at = at + RECORD_HEADER as u64;
        match check_record(&header, &payload, payload_at) {
            Some(r) => records.push(r),
            None => break,
        }
        at = payload_at + payload_len;
    }
    Ok((records, at))
}

/// Append-only, crash-safe record of finished images.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    /// Length of the valid records, where the next one goes.
    end: u64,
}

impl Journal {
    /// Opens (or creates) the journal, returning where the images already
    /// finished are (an image finished twice appears twice, the later
    /// record last). A torn record at the end (the process died mid-write)
    /// is cut off. Read record by record: memory does not grow with the
    /// journal's features.
    pub fn open(path: &Path) -> Result<(Journal, Vec<JournalRecord>)> {
        let mut done = Vec::new();
        let mut valid_len = 0u64;
        if path.exists() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            (done, valid_len) = scan_journal(path, std::io::BufReader::new(file), len)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| file_err(path, e))?;
        file.set_len(valid_len).map_err(|e| file_err(path, e))?;
        let mut out = BufWriter::new(file);
        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(valid_len))
            .map_err(|e| file_err(path, e))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                out,
                end: valid_len,
            },
            done,
        ))
    }

    pub fn append(&mut self, f: &ImageFeatures, stamp: FileStamp) -> Result<JournalRecord> {
        let payload = encode(f, stamp);
        let mut rec = Vec::with_capacity(payload.len() + RECORD_HEADER);
        rec.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        rec.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        rec.extend_from_slice(&fnv1a(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        self.out
            .write_all(&rec)
            .map_err(|e| file_err(&self.path, e))?;
        let record = JournalRecord {
            id: f.id.clone(),
            stamp: Some(stamp),
            num_local: f.num_local(),
            payload_at: self.end + RECORD_HEADER as u64,
            payload_len: payload.len(),
            stamped: true,
        };
        self.end += rec.len() as u64;
        Ok(record)
    }

    /// Pushes buffered records to the OS (called after every batch).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| file_err(&self.path, e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| file_err(&self.path, e))
    }

    /// The features of a record of this journal (flushed first), read back
    /// from the file.
    pub fn read(&mut self, record: &JournalRecord) -> Result<ImageFeatures> {
        use std::io::{Seek, SeekFrom};
        self.out.flush().map_err(|e| file_err(&self.path, e))?;
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut payload = vec![0u8; record.payload_len];
        file.seek(SeekFrom::Start(record.payload_at))
            .and_then(|_| file.read_exact(&mut payload))
            .map_err(|e| Error::io(&self.path, e))?;
        decode(&payload, record.stamped)
            .filter(|f| f.id == record.id)
            .ok_or_else(|| {
                file_err(
                    &self.path,
                    format!(
                        "the record of '{}' changed while the run was writing its final files; run extract again",
                        record.id
                    ),
                )
            })
    }
}

/// The final files of a feature folder, written one image at a time (each
/// file atomically), so memory does not grow with the collection. The
/// numbers of images and of local features are fixed up front: they go
/// into the `.npy` headers before the rows.
pub struct FeatureSetWriter {
    dir: PathBuf,
    gdim: usize,
    local_dim: usize,
    local_rows: i64,
    global: npy::NpyWriter<f32>,
    offsets: npy::NpyWriter<i64>,
    descriptors: npy::NpyWriter<f32>,
    locations: npy::NpyWriter<f32>,
    scales: npy::NpyWriter<f32>,
    attention: npy::NpyWriter<f32>,
    binarized: Option<npy::NpyWriter<u8>>,
    ids: npy::AtomicFile,
}

impl FeatureSetWriter {
    /// The descriptor sizes are the model's, so an empty set still has
    /// shape (0, D).
    pub fn create(
        dir: &Path,
        images: usize,
        local_features: usize,
        gdim: usize,
        local_dim: usize,
        binarized: bool,
    ) -> Result<FeatureSetWriter> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (n, m) = (images, local_features);
        let mut offsets = npy::NpyWriter::create(&dir.join("local_offsets.npy"), &[n + 1])?;
        offsets.append(&[0i64])?;
        Ok(FeatureSetWriter {
            dir: dir.to_path_buf(),
            gdim,
            local_dim,
            local_rows: 0,
            global: npy::NpyWriter::create(&dir.join("global.npy"), &[n, gdim])?,
            offsets,
            descriptors: npy::NpyWriter::create(
                &dir.join("local_descriptors.npy"),
                &[m, local_dim],
            )?,
            locations: npy::NpyWriter::create(&dir.join("local_locations.npy"), &[m, 2])?,
            scales: npy::NpyWriter::create(&dir.join("local_scales.npy"), &[m])?,
            attention: npy::NpyWriter::create(&dir.join("local_attention.npy"), &[m])?,
            binarized: binarized
                .then(|| {
                    npy::NpyWriter::create(
                        &dir.join("local_descriptors_bin.npy"),
                        &[m, local_dim.div_ceil(8)],
                    )
                })
                .transpose()?,
            ids: npy::AtomicFile::create(&dir.join("ids.txt"))?,
        })
    }

    /// Appends the next image's rows.
    pub fn push(&mut self, f: &ImageFeatures) -> Result<()> {
        // ids.txt holds one id per line: a line break in an id would shift
        // every row after it (discovery refuses such names; this guards the file).
        if f.id.contains(['\n', '\r']) {
            return Err(Error::Internal(format!(
                "image id {:?} contains a line break and cannot go into ids.txt",
                f.id
            )));
        }
        if f.global.len() != self.gdim {
            return Err(file_err(
                &self.dir,
                format!(
                    "image '{}' has a {}-d global descriptor, the model {}-d",
                    f.id,
                    f.global.len(),
                    self.gdim
                ),
            ));
        }
        let m = f.num_local();
        if f.descriptors.len() != m * self.local_dim
            || f.locations.len() != m * 2
            || f.attention.len() != m
        {
            return Err(file_err(
                &self.dir,
                format!("image '{}' has inconsistent local feature arrays", f.id),
            ));
        }
        self.local_rows += m as i64;
        self.global.append(&f.global)?;
        self.offsets.append(&[self.local_rows])?;
        self.descriptors.append(&f.descriptors)?;
        self.locations.append(&f.locations)?;
        self.scales.append(&f.scales)?;
        self.attention.append(&f.attention)?;
        if let Some(bin) = &mut self.binarized {
            bin.append(&crate::retrieval::matching::binarize(
                &f.descriptors,
                self.local_dim,
            )?)?;
        }
        self.ids.write(format!("{}\n", f.id).as_bytes())
    }

    /// Puts every file in place, ids.txt last; errors unless exactly the
    /// announced numbers of images and local features were pushed.
    pub fn finish(self) -> Result<()> {
        self.global.finish()?;
        self.offsets.finish()?;
        self.descriptors.finish()?;
        self.locations.finish()?;
        self.scales.finish()?;
        self.attention.finish()?;
        if let Some(bin) = self.binarized {
            bin.finish()?;
        }
        self.ids.commit()
    }
}

/// Writes the final files of a feature folder from finished images, in the
/// given order.
pub fn write_feature_set(
    dir: &Path,
    images: &[ImageFeatures],
    gdim: usize,
    local_dim: usize,
    binarized: bool,
) -> Result<()> {
    let m = images.iter().map(ImageFeatures::num_local).sum();
    let mut out = FeatureSetWriter::create(dir, images.len(), m, gdim, local_dim, binarized)?;
    for f in images {
        out.push(f)?;
    }
    out.finish()
}

/// A feature folder read back (for search, eval and merge).
#[derive(Clone, Debug, Default)]
pub struct FeatureSet {
    pub ids: Vec<String>,
    pub global: Vec<f32>,
    pub global_dim: usize,
    pub offsets: Vec<i64>,
    pub descriptors: Vec<f32>,
    pub local_dim: usize,
    pub locations: Vec<f32>,
    pub scales: Vec<f32>,
    pub attention: Vec<f32>,
    /// Fingerprint of the weights that produced the features (`model_id` in
    /// the folder's config.json), when recorded.
    pub model_id: Option<String>,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Reads a feature folder whole; [`FeatureFiles::open`] checks it
    /// without reading the arrays.
    pub fn load(dir: &Path) -> Result<FeatureSet> {
        let files = FeatureFiles::open(dir)?;
        let (n, m) = (files.ids.len(), files.num_local());
        let model_id = fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("model_id")?.as_str().map(str::to_string));
        Ok(FeatureSet {
            model_id,
            global_dim: files.global_dim(),
            global: files.global.read(0..n)?,
            local_dim: files.local_dim(),
            descriptors: files.descriptors.read(0..m)?,
            locations: files.locations.read(0..m)?,
            scales: files.scales.read(0..m)?,
            attention: files.attention.read(0..m)?,
            offsets: files.offsets,
            ids: files.ids,
        })
    }

    /// Errors unless `other` (from `other_dir`) comes from the same model as
    /// this set (from `dir`): the same weights where both folders record
    /// them, else at least the same descriptor sizes.
    pub fn check_same_model(&self, dir: &Path, other: &FeatureSet, other_dir: &Path) -> Result<()> {
        if let (Some(a), Some(b)) = (&self.model_id, &other.model_id) {
            if a != b {
                return Err(file_err(
                    dir,
                    format!(
                        "was extracted with other weights than {} (model {a} vs {b}): extract both with the same model",
                        other_dir.display()
                    ),
                ));
            }
        }
        if (self.global_dim, self.local_dim) != (other.global_dim, other.local_dim) {
            return Err(file_err(
                dir,
                format!(
                    "holds {}-d global / {}-d local features but {} holds {}-d / {}-d: extract both with the same model",
                    self.global_dim,
                    self.local_dim,
                    other_dir.display(),
                    other.global_dim,
                    other.local_dim
                ),
            ));
        }
        Ok(())
    }

    pub fn image(&self, i: usize) -> ImageFeatures {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        ImageFeatures {
            id: self.ids[i].clone(),
            global: self.global[i * self.global_dim..(i + 1) * self.global_dim].to_vec(),
            descriptors: self.descriptors[a * self.local_dim..b * self.local_dim].to_vec(),
            locations: self.locations[a * 2..b * 2].to_vec(),
            scales: self.scales[a..b].to_vec(),
            attention: self.attention[a..b].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, m: usize) -> ImageFeatures {
        let v = |n: usize, s: f32| (0..n).map(|i| i as f32 * s).collect::<Vec<_>>();
        ImageFeatures {
            id: id.into(),
            global: v(4, 0.1),
            descriptors: v(m * 3, 0.2),
            locations: v(m * 2, 1.0),
            scales: v(m, 0.5),
            attention: v(m, 2.0),
        }
    }

    #[test]
    fn journal_survives_a_torn_tail_and_resumes() {
        let dir = std::env::temp_dir().join(format!("delg-journal-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("journal.bin");
        let (mut j, done) = Journal::open(&p).unwrap();
        assert!(done.is_empty());
        let stamp = FileStamp {
            size: 10,
            modified_ns: -5,
        };
        j.append(&sample("a.jpg", 2), stamp).unwrap();
        j.append(&sample("b/c.png", 0), stamp).unwrap();
        j.flush().unwrap();
        drop(j);
        // Simulate a crash in the middle of a third record.
        let mut bytes = fs::read(&p).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[7, 0, 0]);
        fs::write(&p, &bytes).unwrap();
        let (mut j, done) = Journal::open(&p).unwrap();
        let features: Vec<ImageFeatures> = done.iter().map(|r| j.read(r).unwrap()).collect();
        assert_eq!(features, vec![sample("a.jpg", 2), sample("b/c.png", 0)]);
        assert!(done.iter().all(|r| r.stamp == Some(stamp)));
        assert_eq!(done.iter().map(|r| r.num_local).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(
            fs::metadata(&p).unwrap().len() as usize,
            good,
            "torn tail cut off"
        );
        j.append(&sample("d.jpg", 1), stamp).unwrap();
        j.flush().unwrap();
        drop(j);
        let (mut j, done) = Journal::open(&p).unwrap();
        assert_eq!(done.len(), 3);
        let done: Vec<ImageFeatures> = done.iter().map(|r| j.read(r).unwrap()).collect();

        write_feature_set(&dir, &done, 4, 3, true).unwrap();
        let fs_ = FeatureSet::load(&dir).unwrap();
        assert_eq!(fs_.len(), 3);
        assert_eq!(fs_.offsets, vec![0, 2, 2, 3]);
        assert_eq!(fs_.image(2), sample("d.jpg", 1));
        assert_eq!(
            npy::read::<u8>(&dir.join("local_descriptors_bin.npy"))
                .unwrap()
                .0,
            vec![3, 1]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A record in the format before file stamps (magic, length, checksum,
    /// then the features alone).
    fn unstamped_record(f: &ImageFeatures) -> Vec<u8> {
        let stamped = encode(
            f,
            FileStamp {
                size: 0,
                modified_ns: 0,
            },
        );
        let payload = &stamped[16..];
        let mut rec = RECORD_MAGIC_UNSTAMPED.to_le_bytes().to_vec();
        rec.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        rec.extend_from_slice(&fnv1a(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        rec
    }

    #[test]
    fn journals_before_file_stamps_still_read() {
        let dir = std::env::temp_dir().join(format!("delg-journal-old-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("journal.bin");
        let mut bytes = unstamped_record(&sample("old.jpg", 1));
        fs::write(&p, &bytes).unwrap();
        let (mut j, records) = Journal::open(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len() as usize, bytes.len());
        assert_eq!(records[0].stamp, None);
        assert_eq!(j.read(&records[0]).unwrap(), sample("old.jpg", 1));
        drop(j);
        bytes[30] ^= 1; // a flipped bit fails the checksum
        fs::write(&p, &bytes).unwrap();
        assert!(Journal::open(&p).unwrap().1.is_empty());
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The streamed files are the bytes of each array concatenated over the
    /// images and written whole, as feature folders always were.
    #[test]
    fn streamed_feature_files_equal_whole_arrays() {
        let dir = std::env::temp_dir().join(format!("delg-streamed-{}", std::process::id()));
        let images = [sample("a.jpg", 3), sample("b.png", 0), sample("c/d.gif", 5)];
        write_feature_set(&dir, &images, 4, 3, true).unwrap();
        let whole = |pick: fn(&ImageFeatures) -> &Vec<f32>| -> Vec<f32> {
            images
                .iter()
                .flat_map(|f| pick(f).iter().copied())
                .collect()
        };
        let expect = dir.join("expected.npy");
        for (name, shape, values) in [
            ("global.npy", vec![3, 4], whole(|f| &f.global)),
            (
                "local_descriptors.npy",
                vec![8, 3],
                whole(|f| &f.descriptors),
            ),
            ("local_locations.npy", vec![8, 2], whole(|f| &f.locations)),
            ("local_scales.npy", vec![8], whole(|f| &f.scales)),
            ("local_attention.npy", vec![8], whole(|f| &f.attention)),
        ] {
            npy::write(&expect, &shape, &values).unwrap();
            assert_eq!(
                fs::read(dir.join(name)).unwrap(),
                fs::read(&expect).unwrap(),
                "{name}"
            );
        }
        npy::write(&expect, &[4], &[0i64, 3, 3, 8]).unwrap();
        assert_eq!(
            fs::read(dir.join("local_offsets.npy")).unwrap(),
            fs::read(&expect).unwrap()
        );
        let bits = crate::retrieval::matching::binarize(&whole(|f| &f.descriptors), 3).unwrap();
        npy::write(&expect, &[8, 1], &bits).unwrap();
        assert_eq!(
            fs::read(dir.join("local_descriptors_bin.npy")).unwrap(),
            fs::read(&expect).unwrap()
        );
        assert_eq!(
            fs::read_to_string(dir.join("ids.txt")).unwrap(),
            "a.jpg\nb.png\nc/d.gif\n"
        );
        // Fewer images than announced: an error, and no file is put in place.
        let partial = dir.join("partial");
        let mut out = FeatureSetWriter::create(&partial, 2, 3, 4, 3, false).unwrap();
        out.push(&images[0]).unwrap();
        assert!(out.finish().unwrap_err().to_string().contains("short"));
        assert_eq!(
            fs::read_dir(&partial).unwrap().count(),
            0,
            "temporaries removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_sets_keep_their_widths_and_ids_stay_one_per_line() {
        let dir = std::env::temp_dir().join(format!("delg-empty-set-{}", std::process::id()));
        write_feature_set(&dir, &[], 128, 16, false).unwrap();
        assert_eq!(
            npy::read::<f32>(&dir.join("global.npy")).unwrap().0,
            vec![0, 128]
        );
        let set = FeatureSet::load(&dir).unwrap();
        assert_eq!((set.len(), set.global_dim, set.local_dim), (0, 128, 16));
        let e = write_feature_set(&dir, &[sample("a\nb.jpg", 0)], 4, 3, false).unwrap_err();
        assert!(e.to_string().contains("line break"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A finished feature folder's files, opened and checked to agree in their
/// sizes, but not read: rows are read on demand (or memory-mapped by
/// numpy), so a folder larger than memory can be used.
#[derive(Debug)]
pub struct FeatureFiles {
    pub ids: Vec<String>,
    /// [N+1]: image i owns local rows offsets[i]..offsets[i+1] (checked to
    /// start at 0, never decrease and end at the number of rows).
    pub offsets: Vec<i64>,
    pub global: NpyRows,
    pub descriptors: NpyRows,
    pub locations: NpyRows,
    pub scales: NpyRows,
    pub attention: NpyRows,
}

impl FeatureFiles {
    pub fn open(dir: &Path) -> Result<FeatureFiles> {
        let ids_path = dir.join("ids.txt");
        let ids: Vec<String> = match fs::read_to_string(&ids_path) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(file_err(
                    dir,
                    "has no ids.txt: its extraction has not finished (rerun it; it resumes from journal.bin), \
                     or it is not a folder written by `delg-gpu extract`",
                ))
            }
            Err(e) => return Err(Error::io(ids_path, e)),
        };
        let global = NpyRows::open::<f32>(&dir.join("global.npy"))?;
        let (_, offsets) = npy::read::<i64>(&dir.join("local_offsets.npy"))?;
        let descriptors = NpyRows::open::<f32>(&dir.join("local_descriptors.npy"))?;
        let locations = NpyRows::open::<f32>(&dir.join("local_locations.npy"))?;
        let scales = NpyRows::open::<f32>(&dir.join("local_scales.npy"))?;
        let attention = NpyRows::open::<f32>(&dir.join("local_attention.npy"))?;
        let (n, m) = (ids.len(), descriptors.rows());
        let consistent = global.shape.len() == 2
            && global.rows() == n
            && descriptors.shape.len() == 2
            && locations.shape == [m, 2]
            && scales.shape == [m]
            && attention.shape == [m]
            && offsets.len() == n + 1
            && offsets.first() == Some(&0)
            && offsets.last() == Some(&(m as i64))
            && offsets.windows(2).all(|w| w[0] <= w[1]);
        if !consistent {
            return Err(file_err(
                dir,
                "feature files disagree in their sizes (mixed or partially copied folder?)",
            ));
        }
        Ok(FeatureFiles {
            ids,
            offsets,
            global,
            descriptors,
            locations,
            scales,
            attention,
        })
    }

    pub fn global_dim(&self) -> usize {
        self.global.shape[1]
    }

    pub fn local_dim(&self) -> usize {
        self.descriptors.shape[1]
    }

    /// Local feature rows of all images together.
    pub fn num_local(&self) -> usize {
        self.descriptors.rows()
    }

    /// The local feature rows of image `i`.
    pub fn local_range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }
}
