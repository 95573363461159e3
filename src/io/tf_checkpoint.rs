//! TensorFlow 2 checkpoints read without TensorFlow: the TensorBundle format
//! of training checkpoints (`ckpt-N.index` + `ckpt-N.data-00000-of-00001`) and
//! of a SavedModel's `variables/`.
//!
//! The `.index` file is a LevelDB table (data blocks of prefix-compressed
//! keys with restart points, an index block, a 48-byte footer) whose values
//! are `BundleEntryProto`s: dtype, shape, shard, offset, size and a CRC-32C of
//! the tensor's bytes in its `.data` shard. The key "" holds the header. The
//! object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`, a serialized string tensor)
//! names every variable by the attributes that lead to it from the root.
//! Every length, offset and count is checked against the files, every block
//! and tensor against its checksum, and nothing is allocated that the file
//! does not hold.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::io::weights::to_f32;
use crate::tensor::{HostTensor, Tensor};

/// The key of the serialized object graph in a TF2 checkpoint.
pub const OBJECT_GRAPH_KEY: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
/// The attribute name of a variable's value in the object graph.
const VARIABLE_VALUE: &str = "VARIABLE_VALUE";
/// Far above any real index (a ResNet-101 training checkpoint's is well
/// under 1 MB); the bound keeps a hostile path from being read whole.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Keys share prefixes, so a small index can spell keys whose lengths add up
/// quadratically; real ones add up to well under 1 MB.
const MAX_KEY_BYTES: usize = 64 << 20;
/// Object paths longer than any model's (real ones are under 200 bytes):
/// a deep chain of objects would otherwise spell quadratically long paths.
const MAX_PATH_LEN: usize = 4096;
/// More shards than TensorFlow ever writes for one model.
const MAX_SHARDS: u64 = 10_000;
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: usize = 48;
/// A block's trailer: compression type and masked CRC-32C.
const TRAILER_LEN: usize = 5;

/// A checkpoint's dtypes delg-gpu reads (tensorflow/core/framework/types.proto).
fn dtype_of(code: u64) -> Option<(Dtype, usize)> {
    Some(match code {
        1 => (Dtype::F32, 4),
        2 => (Dtype::F64, 8),
        3 => (Dtype::I32, 4),
        4 => (Dtype::U8, 1),
        9 => (Dtype::I64, 8),
        14 => (Dtype::BF16, 2),
        19 => (Dtype::F16, 2),
        _ => return None,
    })
}
const DT_STRING: u64 = 7;

#[derive(Clone, Debug)]
pub struct Entry {
    /// TensorFlow's DataType code.
    pub dtype: u64,
    pub shape: Vec<usize>,
    shard: usize,
    offset: u64,
    size: u64,
    /// Masked CRC-32C of the bytes, when the entry records one.
    crc: Option<u32>,
}

/// An opened checkpoint: its index parsed, its shards found and sized.
#[derive(Debug)]
pub struct Checkpoint {
    pub index_path: PathBuf,
    shards: Vec<PathBuf>,
    pub entries: BTreeMap<String, Entry>,
}

/// One variable of the object graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Attribute path from the root (`model/backbone/conv1/kernel`).
    pub path: String,
    /// Its key in the index.
    pub key: String,
}

// --- CRC-32C (Castagnoli), as LevelDB and TensorFlow mask it ----------------

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c_extend(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// LevelDB's mask: a CRC stored next to data that itself holds CRCs.
fn crc_mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

// --- Varints and protobuf --------------------------------------------------

/// A varint at `*pos`, advancing past it.
fn varint(buf: &[u8], pos: &mut usize) -> std::result::Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| format!("a varint runs past the end at byte {}", *pos))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(format!(
        "a varint longer than 10 bytes ends at byte {}",
        *pos
    ))
}

fn varint_usize(buf: &[u8], pos: &mut usize) -> std::result::Result<usize, String> {
    usize::try_from(varint(buf, pos)?).map_err(|_| "a length beyond the address space".into())
}

enum Wire<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message in order (fixed64 fields skipped).
fn proto_fields(buf: &[u8]) -> std::result::Result<Vec<(u64, Wire<'_>)>, String> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let field = tag >> 3;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|&end| end <= buf.len())
                    .ok_or("a protobuf fixed64 runs past the end of its message")?;
                continue;
            }
            2 => {
                let len = varint_usize(buf, &mut pos)?;
                let end = pos
                    .checked_add(len)
                    .filter(|&end| end <= buf.len())
                    .ok_or("a protobuf field runs past the end of its message")?;
                let bytes = &buf[pos..end];
                pos = end;
                Wire::Bytes(bytes)
            }
            5 => {
                let bytes = buf
                    .get(pos..pos + 4)
                    .ok_or("a protobuf fixed32 runs past the end of its message")?;
                pos += 4;
                Wire::Fixed32(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            }
            other => {
                return Err(format!(
                    "protobuf wire type {other} is not one TensorFlow writes"
                ))
            }
        };
        fields.push((field, value));
    }
    Ok(fields)
}

fn proto_str(bytes: &[u8], what: &str) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

// --- The LevelDB table of the .index --------------------------------------

/// A table's keys and the values they point at.
type KeyValues<'a> = Vec<(Vec<u8>, &'a [u8])>;

/// (offset, size) of a block.
fn block_handle(buf: &[u8], pos: &mut usize) -> std::result::Result<(u64, u64), String> {
    Ok((varint(buf, pos)?, varint(buf, pos)?))
}

/// The contents of the block at `handle`, its checksum verified.
fn block(file: &[u8], (offset, size): (u64, u64)) -> std::result::Result<&[u8], String> {
    let table_end = file.len() - FOOTER_LEN;
    let start = usize::try_from(offset).ok().filter(|&o| o <= table_end);
    let end = start
        .zip(usize::try_from(size).ok())
        .and_then(|(s, n)| s.checked_add(n)?.checked_add(TRAILER_LEN))
        .filter(|&end| end <= table_end);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(format!(
            "a block at byte {offset} of {size} bytes lies outside the table (cut short?)"
        ));
    };
    let contents_end = end - TRAILER_LEN;
    let kind = file[contents_end];
    let stored = u32::from_le_bytes(file[contents_end + 1..end].try_into().expect("4 bytes"));
    if crc_mask(crc32c_extend(0, &file[start..=contents_end])) != stored {
        return Err(format!(
            "the block at byte {offset} fails its checksum (a damaged file)"
        ));
    }
    match kind {
        0 => Ok(&file[start..contents_end]),
        1 => Err(format!(
            "the block at byte {offset} is snappy-compressed, which delg-gpu does not read (TensorFlow writes checkpoint indexes uncompressed)"
        )),
        other => Err(format!("the block at byte {offset} has compression type {other}")),
    }
}

/// The key/value pairs of a block, keys rebuilt from their shared prefixes.
/// `key_budget` is what rebuilt keys may still take, all blocks together.
fn block_entries<'a>(
    block: &'a [u8],
    key_budget: &mut usize,
) -> std::result::Result<KeyValues<'a>, String> {
    let n = block.len();
    let restarts = n
        .checked_sub(4)
        .map(|at| u32::from_le_bytes(block[at..].try_into().expect("4 bytes")) as usize)
        .ok_or("a block too short for its restart count")?;
    let entries_end = restarts
        .checked_mul(4)
        .and_then(|r| n.checked_sub(r + 4))
        .ok_or("a block's restart count exceeds its size")?;
    let mut out = Vec::new();
    let mut key: Vec<u8> = Vec::new();
    let mut pos = 0;
    while pos < entries_end {
        let area = &block[..entries_end];
        let shared = varint_usize(area, &mut pos)?;
        let unshared = varint_usize(area, &mut pos)?;
        let value_len = varint_usize(area, &mut pos)?;
        if shared > key.len() {
            return Err(format!(
                "an entry shares {shared} bytes with a key of {}",
                key.len()
            ));
        }
        let value_start = pos
            .checked_add(unshared)
            .filter(|&e| e <= entries_end)
            .ok_or("a key runs past its block")?;
        let value_end = value_start
            .checked_add(value_len)
            .filter(|&e| e <= entries_end)
            .ok_or("a value runs past its block")?;
        key.truncate(shared);
        key.extend_from_slice(&area[pos..value_start]);
        *key_budget = key_budget
            .checked_sub(key.len())
            .ok_or("keys adding up to more than any checkpoint holds")?;
        out.push((key.clone(), &area[value_start..value_end]));
        pos = value_end;
    }
    Ok(out)
}

/// Every key/value pair of a LevelDB table, in order.
fn table_entries(file: &[u8]) -> std::result::Result<KeyValues<'_>, String> {
    if file.len() < FOOTER_LEN {
        return Err("too short for a checkpoint index (no table footer)".into());
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let magic = u64::from_le_bytes(footer[40..].try_into().expect("8 bytes"));
    if magic != TABLE_MAGIC {
        return Err("not a TensorFlow checkpoint index (no table footer magic)".into());
    }
    let mut pos = 0;
    let _metaindex = block_handle(&footer[..40], &mut pos)?;
    let index = block_handle(&footer[..40], &mut pos)?;
    let mut out = Vec::new();
    let mut key_budget = MAX_KEY_BYTES;
    for (_, handle) in block_entries(block(file, index)?, &mut key_budget)? {
        let mut pos = 0;
        let data = block(file, block_handle(handle, &mut pos)?)?;
        out.extend(block_entries(data, &mut key_budget)?);
    }
    Ok(out)
}

// --- Bundle entries ---------------------------------------------------------

/// (num_shards, little-endian) of the BundleHeaderProto.
fn parse_header(value: &[u8]) -> std::result::Result<(u64, bool), String> {
    let (mut shards, mut little) = (0, true);
    for (field, wire) in proto_fields(value)? {
        match (field, wire) {
            (1, Wire::Varint(n)) => shards = n,
            (2, Wire::Varint(e)) => little = e == 0,
            _ => {}
        }
    }
    Ok((shards, little))
}

fn parse_shape(msg: &[u8]) -> std::result::Result<Vec<usize>, String> {
    let mut dims = Vec::new();
    for (field, wire) in proto_fields(msg)? {
        match (field, wire) {
            (2, Wire::Bytes(dim)) => {
                let mut size = 0u64;
                for (f, w) in proto_fields(dim)? {
                    if let (1, Wire::Varint(s)) = (f, w) {
                        size = s;
                    }
                }
                // A negative size (-1, unknown) is a 10-byte varint: far above this.
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s <= u32::MAX as usize)
                    .ok_or_else(|| format!("a dimension of size {}", size as i64))?;
                dims.push(size);
            }
            (3, Wire::Varint(unknown_rank)) if unknown_rank != 0 => {
                return Err("a tensor of unknown rank".into())
            }
            _ => {}
        }
    }
    Ok(dims)
}

fn parse_entry(value: &[u8]) -> std::result::Result<Entry, String> {
    let mut entry = Entry {
        dtype: 0,
        shape: Vec::new(),
        shard: 0,
        offset: 0,
        size: 0,
        crc: None,
    };
    for (field, wire) in proto_fields(value)? {
        match (field, wire) {
            (1, Wire::Varint(d)) => entry.dtype = d,
            (2, Wire::Bytes(shape)) => entry.shape = parse_shape(shape)?,
            (3, Wire::Varint(s)) => {
                entry.shard = usize::try_from(s)
                    .ok()
                    .filter(|&s| (s as u64) < MAX_SHARDS)
                    .ok_or_else(|| format!("shard {}", s as i64))?
            }
            (4, Wire::Varint(o)) => entry.offset = o,
            (5, Wire::Varint(s)) => entry.size = s,
            (6, Wire::Fixed32(c)) => entry.crc = Some(c),
            (7, Wire::Bytes(_)) => {
                return Err("a partitioned (sliced) variable, which delg-gpu does not read".into())
            }
            _ => {}
        }
    }
    let numel = entry
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("a shape whose element count overflows")?;
    if let Some((_, width)) = dtype_of(entry.dtype) {
        if numel.checked_mul(width).map(|b| b as u64) != Some(entry.size) {
            return Err(format!(
                "{} bytes for a {:?} tensor of dtype {}",
                entry.size, entry.shape, entry.dtype
            ));
        }
    }
    Ok(entry)
}

impl Checkpoint {
    /// Opens the checkpoint whose `.index` is `prefix` + ".index".
    pub fn open(prefix: &Path) -> Result<Checkpoint> {
        let index_path = PathBuf::from(format!("{}.index", prefix.display()));
        let file = File::open(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(&index_path, e))?
            .len();
        if len > MAX_INDEX_BYTES {
            return Err(Error::file(
                &index_path,
                format!("{len} bytes, more than any checkpoint index has"),
            ));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MAX_INDEX_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&index_path, e))?;
        let bad = |reason: String| Error::file(&index_path, reason);
        let mut header = None;
        let mut entries = BTreeMap::new();
        for (key, value) in table_entries(&bytes).map_err(bad)? {
            if key.is_empty() {
                header = Some(parse_header(value).map_err(|e| bad(format!("header: {e}")))?);
                continue;
            }
            let key = proto_str(&key, "a key").map_err(bad)?;
            let entry = parse_entry(value).map_err(|e| bad(format!("'{key}': {e}")))?;
            entries.insert(key, entry);
        }
        let (num_shards, little) = header
            .ok_or_else(|| bad("no bundle header: not a TensorFlow checkpoint index".into()))?;
        if !little {
            return Err(bad(
                "written on a big-endian machine, which is not supported".into(),
            ));
        }
        if num_shards == 0 || num_shards > MAX_SHARDS {
            return Err(bad(format!("a header stating {num_shards} data shards")));
        }
        let shards: Vec<PathBuf> = (0..num_shards)
            .map(|i| {
                PathBuf::from(format!(
                    "{}.data-{i:05}-of-{num_shards:05}",
                    prefix.display()
                ))
            })
            .collect();
        let mut shard_len = Vec::with_capacity(shards.len());
        for shard in &shards {
            let meta = std::fs::metadata(shard).map_err(|e| {
                Error::file(
                    shard,
                    format!("cannot be read ({e}): a checkpoint is its .index and all its .data files together"),
                )
            })?;
            shard_len.push(meta.len());
        }
        for (key, entry) in &entries {
            let fits = shard_len.get(entry.shard).is_some_and(|&n| {
                entry
                    .offset
                    .checked_add(entry.size)
                    .is_some_and(|end| end <= n)
            });
            if !fits {
                return Err(bad(format!(
                    "'{key}' lies outside its data file (shard {}, bytes {}+{}): a truncated or mismatched .data file",
                    entry.shard, entry.offset, entry.size
                )));
            }
        }
        Ok(Checkpoint {
            index_path,
            shards,
            entries,
        })
    }

    /// The bytes of `entry` in its shard, checksum verified.
    fn raw(&self, key: &str, entry: &Entry) -> Result<Vec<u8>> {
        let path = &self.shards[entry.shard];
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::Start(entry.offset))
            .map_err(|e| Error::io(path, e))?;
        // The size was checked against the file's length when opened.
        let mut bytes = vec![0u8; entry.size as usize];
        file.read_exact(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if entry.dtype != DT_STRING {
            if let Some(crc) = entry.crc {
                if crc_mask(crc32c_extend(0, &bytes)) != crc {
                    return Err(Error::file(
                        path,
                        format!("'{key}' fails its checksum (a damaged file)"),
                    ));
                }
            }
        }
        Ok(bytes)
    }

    fn entry(&self, key: &str) -> Result<&Entry> {
        self.entries
            .get(key)
            .ok_or_else(|| Error::file(&self.index_path, format!("holds no tensor '{key}'")))
    }

    /// A numeric tensor, converted to f32.
    pub fn tensor(&self, key: &str) -> Result<HostTensor> {
        let entry = self.entry(key)?;
        let Some((dtype, _)) = dtype_of(entry.dtype) else {
            return Err(Error::file(
                &self.index_path,
                format!("'{key}' has dtype {}, not a number type", entry.dtype),
            ));
        };
        let data = to_f32(dtype, &self.raw(key, entry)?).ok_or_else(|| {
            Error::Internal(format!(
                "dtype {dtype:?} listed as numeric but not converted"
            ))
        })?;
        Tensor::new(entry.shape.clone(), data)
    }

    /// A scalar string tensor's bytes. On disk: varint length, masked
    /// CRC-32C of the length, the bytes; the entry's CRC covers the length,
    /// that checksum and the bytes.
    pub fn string_scalar(&self, key: &str) -> Result<Vec<u8>> {
        let entry = self.entry(key)?;
        let path = &self.shards[entry.shard];
        if entry.dtype != DT_STRING || entry.shape.iter().product::<usize>() != 1 {
            return Err(Error::file(
                &self.index_path,
                format!("'{key}' is not a single string"),
            ));
        }
        let raw = self.raw(key, entry)?;
        let bad = |what: &str| Error::file(path, format!("'{key}': {what}"));
        let mut pos = 0;
        let len = varint(&raw, &mut pos).map_err(|e| bad(&e))?;
        let length_crc = raw.get(pos..pos + 4).ok_or_else(|| bad("cut short"))?;
        // TensorFlow sums a length that fits in 32 bits as a u32 (compatibility).
        let mut crc = match u32::try_from(len) {
            Ok(short) => crc32c_extend(0, &short.to_le_bytes()),
            Err(_) => crc32c_extend(0, &len.to_le_bytes()),
        };
        if crc_mask(crc).to_le_bytes() != length_crc {
            return Err(bad("its length fails its checksum (a damaged file)"));
        }
        crc = crc32c_extend(crc, length_crc);
        let body = &raw[pos + 4..];
        if len != body.len() as u64 {
            return Err(bad("its length does not match its size"));
        }
        crc = crc32c_extend(crc, body);
        if entry.crc.is_some_and(|stored| stored != crc_mask(crc)) {
            return Err(bad("fails its checksum (a damaged file)"));
        }
        Ok(body.to_vec())
    }

    /// Every variable value the object graph names (optimizer slots left
    /// out), at the path its attribute names give from the root, as
    /// tools/convert_delg_tf2.py's `read_checkpoint` finds them: breadth
    /// first over children that are not aliases, and a node the root does
    /// not reach at its key less "/.ATTRIBUTES/VARIABLE_VALUE". A later
    /// variable at an earlier one's path replaces it.
    pub fn variables(&self) -> Result<Vec<Variable>> {
        if !self.entries.contains_key(OBJECT_GRAPH_KEY) {
            return Err(Error::file(
                &self.index_path,
                "a name-based (TF1) checkpoint; delg-gpu reads the TF2 object-based checkpoints of the Keras DELG model",
            ));
        }
        let graph = self.string_scalar(OBJECT_GRAPH_KEY)?;
        let variables = graph_variables(&graph)
            .map_err(|e| Error::file(&self.index_path, format!("object graph: {e}")))?;
        for var in &variables {
            self.entry(&var.key)?;
        }
        Ok(variables)
    }
}

/// The variables a serialized `TrackableObjectGraph` names, as
/// [`Checkpoint::variables`] describes.
pub fn graph_variables(graph: &[u8]) -> std::result::Result<Vec<Variable>, String> {
    let nodes = parse_object_graph(graph)?;
    let paths = object_paths(&nodes)?;
    let mut order: Vec<Variable> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (id, node) in nodes.iter().enumerate() {
        for (name, key) in &node.attributes {
            if name != VARIABLE_VALUE || key.contains(".OPTIMIZER_SLOT") {
                continue;
            }
            let path = match paths.get(&id) {
                Some(p) => p.clone(),
                None => key
                    .strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE")
                    .unwrap_or(key)
                    .to_string(),
            };
            let var = Variable {
                path: path.clone(),
                key: key.clone(),
            };
            match at.get(&path) {
                Some(&i) => order[i] = var,
                None => {
                    at.insert(path, order.len());
                    order.push(var);
                }
            }
        }
    }
    Ok(order)
}

#[derive(Debug, Default)]
struct GraphNode {
    /// (node id, local name)
    children: Vec<(usize, String)>,
    /// (attribute name, checkpoint key)
    attributes: Vec<(String, String)>,
}

fn parse_object_graph(buf: &[u8]) -> std::result::Result<Vec<GraphNode>, String> {
    let mut nodes = Vec::new();
    for (field, wire) in proto_fields(buf)? {
        let (1, Wire::Bytes(node)) = (field, wire) else {
            continue;
        };
        let mut out = GraphNode::default();
        for (field, wire) in proto_fields(node)? {
            match (field, wire) {
                (1, Wire::Bytes(child)) => {
                    let (mut id, mut name) = (0u64, String::new());
                    for (f, w) in proto_fields(child)? {
                        match (f, w) {
                            (1, Wire::Varint(v)) => id = v,
                            (2, Wire::Bytes(s)) => name = proto_str(s, "a child's name")?,
                            _ => {}
                        }
                    }
                    out.children
                        .push((usize::try_from(id).unwrap_or(usize::MAX), name));
                }
                (2, Wire::Bytes(attr)) => {
                    let (mut name, mut key) = (String::new(), String::new());
                    for (f, w) in proto_fields(attr)? {
                        match (f, w) {
                            (1, Wire::Bytes(s)) => name = proto_str(s, "an attribute name")?,
                            (3, Wire::Bytes(s)) => key = proto_str(s, "a checkpoint key")?,
                            _ => {}
                        }
                    }
                    out.attributes.push((name, key));
                }
                _ => {}
            }
        }
        nodes.push(out);
    }
    if nodes.is_empty() {
        return Err("no objects".into());
    }
    Ok(nodes)
}

/// Aliases the object graph holds besides the attribute names
/// (SavedModel's `variables/N`, Keras' `layer-N`, ...): not followed.
fn is_alias(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    numbered("")
        || numbered("layer-")
        || numbered("layer_with_weights-")
        || matches!(
            name,
            "variables" | "trainable_variables" | "non_trainable_variables" | "keras_api"
        )
}

/// node id → its path from the root (breadth first, so the shortest).
fn object_paths(nodes: &[GraphNode]) -> std::result::Result<HashMap<usize, String>, String> {
    let mut paths = HashMap::from([(0usize, String::new())]);
    let mut queue = VecDeque::from([0usize]);
    while let Some(node) = queue.pop_front() {
        let here = paths[&node].clone();
        let Some(n) = nodes.get(node) else {
            return Err(format!("a child is node {node} of {}", nodes.len()));
        };
        for (child, name) in &n.children {
            if !paths.contains_key(child) && !is_alias(name) {
                let path = format!("{here}/{name}").trim_start_matches('/').to_string();
                if path.len() > MAX_PATH_LEN {
                    return Err(format!("an object path longer than {MAX_PATH_LEN} bytes"));
                }
                paths.insert(*child, path);
                queue.push_back(*child);
            }
        }
    }
    Ok(paths)
}

/// The checkpoint prefix a path names, as tools/convert_delg_tf2.py finds
/// it: a SavedModel directory (its `variables/variables`), a `variables/`
/// directory, a training checkpoint directory (the latest checkpoint its
/// `checkpoint` file names), a file of a checkpoint (`.index`, `.data-*`) or
/// the prefix itself.
pub fn checkpoint_prefix(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        if path.join("saved_model.pb").exists() || path.join("variables/variables.index").exists() {
            return Ok(path.join("variables").join("variables"));
        }
        if path.join("variables.index").exists() {
            return Ok(path.join("variables"));
        }
        let state = path.join("checkpoint");
        let text = std::fs::read(&state).map_err(|_| {
            Error::file(
                path,
                "a directory with neither saved_model.pb, variables.index nor a 'checkpoint' file: not a TensorFlow checkpoint",
            )
        })?;
        let text = String::from_utf8_lossy(&text[..text.len().min(1 << 20)]).into_owned();
        let latest = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("model_checkpoint_path:"))
            .and_then(|v| v.trim().strip_prefix('"')?.strip_suffix('"'))
            .ok_or_else(|| Error::file(&state, "names no model_checkpoint_path"))?;
        let prefix = path.join(latest);
        if !PathBuf::from(format!("{}.index", prefix.display())).exists() {
            return Err(Error::file(
                &state,
                format!("names checkpoint '{latest}', which has no .index beside it"),
            ));
        }
        return Ok(prefix);
    }
    let text = path.to_string_lossy();
    let prefix = text
        .strip_suffix(".index")
        .or_else(|| data_file_prefix(&text))
        .unwrap_or(&text);
    if !Path::new(&format!("{prefix}.index")).exists() {
        return Err(Error::file(
            path,
            "no checkpoint there (expected a prefix with a .index file beside it, a checkpoint directory or a SavedModel directory)",
        ));
    }
    Ok(PathBuf::from(prefix))
}

/// `X` of `X.data-00000-of-00001`.
fn data_file_prefix(path: &str) -> Option<&str> {
    let (prefix, tail) = path.rsplit_once(".data-")?;
    let (a, b) = tail.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    (digits(a) && digits(b)).then_some(prefix)
}

/// Whether `path` names a TensorFlow checkpoint rather than a single file of
/// another format: a directory, a checkpoint file or a prefix.
pub fn looks_like_checkpoint(path: &Path) -> bool {
    let text = path.to_string_lossy();
    path.is_dir()
        || text.ends_with(".index")
        || data_file_prefix(&text).is_some()
        || Path::new(&format!("{text}.index")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // RFC 3720 B.4: 32 bytes of zeros, and the usual "123456789".
        assert_eq!(crc32c_extend(0, &[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c_extend(0, b"123456789"), 0xe306_9283);
        assert_eq!(
            crc32c_extend(crc32c_extend(0, b"1234"), b"56789"),
            0xe306_9283
        );
    }

    #[test]
    fn aliases_are_the_converters() {
        for name in [
            "0",
            "17",
            "variables",
            "keras_api",
            "layer-3",
            "layer_with_weights-0",
        ] {
            assert!(is_alias(name), "{name}");
        }
        for name in ["layer-", "backbone", "conv1", "_variables", "layer-x"] {
            assert!(!is_alias(name), "{name}");
        }
    }

    #[test]
    fn data_file_names_give_their_prefix() {
        assert_eq!(
            data_file_prefix("a/ckpt-1.data-00000-of-00001"),
            Some("a/ckpt-1")
        );
        assert_eq!(data_file_prefix("a/ckpt-1.data-x-of-00001"), None);
        assert_eq!(data_file_prefix("a/ckpt-1.index"), None);
    }
}
