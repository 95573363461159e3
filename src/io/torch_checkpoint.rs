//! PyTorch checkpoints (`torch.save` zip archives: torchvision `.pth` state
//! dicts, pycls `.pyth` training checkpoints) read without Python, through an
//! unpickler restricted to what a state dict needs. A pickle can name any
//! Python callable; this one knows only the few globals in
//! [`ACCEPTED_GLOBALS`] and refuses every other one by name, so reading an
//! untrusted file never does more than build dicts, lists and tensors.
//! Every length, offset, stride and size is checked against the file, and
//! the tensors built may not hold more elements than the file has bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::io::weights::to_f32;
use crate::tensor::{HostTensor, Shape, Tensor};

/// The globals a state dict pickle may name (`module.name`).
pub const ACCEPTED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ByteStorage",
];

/// Deeper nesting than any checkpoint has; the bound keeps recursion (and
/// dropping the values) off the end of the stack on hostile input.
const MAX_DEPTH: usize = 100;

/// A value of the pickle: what a checkpoint holds.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Containers carry their nesting depth, so that checking it stays cheap
    /// when a hostile pickle shares one value many times over.
    Tuple(Rc<Vec<Value>>, usize),
    List(Rc<Vec<Value>>, usize),
    /// Keys and values in insertion order (a later equal key replaces the value).
    Dict(Rc<Vec<(Value, Value)>>, usize),
    Tensor(Rc<HostTensor>),
    Global(Rc<str>),
    Storage(Rc<StorageRef>),
}

#[derive(Debug)]
pub struct StorageRef {
    dtype: Dtype,
    /// Elements, as the persistent id states (checked against the archive).
    numel: usize,
    bytes: Range<usize>,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }

    fn tuple(items: Vec<Value>) -> Value {
        let d = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        Value::Tuple(Rc::new(items), d)
    }

    /// What the value is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(..) => "tuple",
            Value::List(..) => "list",
            Value::Dict(..) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Global(_) => "class",
            Value::Storage(_) => "storage",
        }
    }

    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items, _) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The entries of a stored (uncompressed) zip archive, as byte ranges of it.
fn zip_entries(bytes: &[u8]) -> std::result::Result<HashMap<String, Range<usize>>, String> {
    let u16_at = |o: usize| -> std::result::Result<usize, String> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| "truncated zip archive".to_string())
    };
    let u32_at = |o: usize| -> std::result::Result<usize, String> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "truncated zip archive".to_string())
    };
    // The end-of-central-directory record: in the last 22 + 65535 bytes.
    let tail = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (tail..bytes.len().saturating_sub(21))
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or("no zip end record (truncated download?)")?;
    let count = u16_at(eocd + 10)?;
    let mut at = u32_at(eocd + 16)?;
    if count == 0xffff || at == 0xffff_ffff {
        return Err("a zip64 archive (over 4 GiB), which is not supported".into());
    }
    let mut entries = HashMap::new();
    for _ in 0..count {
        if bytes.get(at..at + 4) != Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
            return Err("corrupt zip central directory".into());
        }
        let method = u16_at(at + 10)?;
        let size = u32_at(at + 20)?;
        let (name_len, extra_len, comment_len) =
            (u16_at(at + 28)?, u16_at(at + 30)?, u16_at(at + 32)?);
        let local = u32_at(at + 42)?;
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or("truncated zip archive")?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(format!(
                "zip member '{name}' is compressed; torch.save stores members uncompressed: re-save the file with torch.save"
            ));
        }
        if size == 0xffff_ffff || local == 0xffff_ffff {
            return Err("a zip64 archive (over 4 GiB), which is not supported".into());
        }
        if bytes.get(local..local + 4) != Some(&[0x50, 0x4b, 0x03, 0x04][..]) {
            return Err(format!("zip member '{name}' points outside the archive"));
        }
        let start = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                format!("zip member '{name}' runs past the end of the file (truncated?)")
            })?;
        entries.insert(name, start..end);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

fn storage_dtype(class: &str) -> Option<(Dtype, usize)> {
    Some(match class {
        "torch.FloatStorage" => (Dtype::F32, 4),
        "torch.DoubleStorage" => (Dtype::F64, 8),
        "torch.HalfStorage" => (Dtype::F16, 2),
        "torch.BFloat16Storage" => (Dtype::BF16, 2),
        "torch.LongStorage" => (Dtype::I64, 8),
        "torch.IntStorage" => (Dtype::I32, 4),
        "torch.ByteStorage" => (Dtype::U8, 1),
        _ => return None,
    })
}

fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// The restricted unpickler over one archive.
struct Unpickler<'a> {
    archive: &'a [u8],
    entries: &'a HashMap<String, Range<usize>>,
    /// The archive's folder (`archive/`, or the saved file's stem).
    prefix: String,
    pickle: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Tensor elements still allowed: the archive's size.
    budget: usize,
    /// Container items that copies of shared containers may still take.
    copy_budget: usize,
}

type Res<T> = std::result::Result<T, String>;

impl Unpickler<'_> {
    fn take(&mut self, n: usize) -> Res<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.pickle.len());
        let end = end.ok_or("the pickle ends in the middle of an instruction (truncated?)")?;
        let out = &self.pickle[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Res<usize> {
        let b = self.take(n)?;
        let mut v = 0u64;
        for (i, &x) in b.iter().enumerate() {
            v |= (x as u64) << (8 * i);
        }
        usize::try_from(v).map_err(|_| "length out of range".to_string())
    }

    fn string(&mut self, len_bytes: usize) -> Res<Value> {
        let n = self.uint(len_bytes)?;
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")?;
        Ok(Value::Str(s.into()))
    }

    fn line(&mut self) -> Res<String> {
        let rest = &self.pickle[self.pos..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or("a global's name is not terminated")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Res<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the pickle pops past a mark".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack".into())
    }

    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or("the pickle closes a mark it never opened")?;
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: Value) -> Res<()> {
        if v.depth() > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH}"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn top(&mut self) -> Res<&mut Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the pickle reads past a mark".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack".into())
    }

    /// The items of a container about to change; a copy when the memo
    /// shares it, the copying bounded by the pickle's size.
    fn unshare<T: Clone>(&mut self, items: Rc<Vec<T>>) -> Res<Vec<T>> {
        Rc::try_unwrap(items).or_else(|shared| {
            self.copy_budget = self
                .copy_budget
                .checked_sub(shared.len())
                .ok_or("the pickle copies its containers over and over")?;
            Ok(shared.to_vec())
        })
    }

    fn global(&mut self, module: &str, name: &str) -> Res<Value> {
        let full = format!("{module}.{name}");
        if !ACCEPTED_GLOBALS.contains(&full.as_str()) {
            return Err(format!(
                "it names the Python global '{full}', which a state dict of tensors never needs (accepted: {}); \
                 if it pickles a whole model or other objects, save only its state_dict: torch.save(model.state_dict(), 'weights.pth')",
                ACCEPTED_GLOBALS.join(", ")
            ));
        }
        Ok(Value::Global(full.into()))
    }

    fn int(v: &Value, what: &str) -> Res<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative {what}")),
            other => Err(format!("{what} is a {}, not an int", other.kind())),
        }
    }

    fn ints(v: &Value, what: &str) -> Res<Vec<usize>> {
        match v {
            Value::Tuple(items, _) | Value::List(items, _) => {
                items.iter().map(|x| Self::int(x, what)).collect()
            }
            other => Err(format!("{what} is a {}, not a tuple", other.kind())),
        }
    }

    /// `('storage', class, key, location, numel)` → the storage's bytes.
    fn persistent_load(&self, pid: Value) -> Res<Value> {
        let Value::Tuple(t, _) = &pid else {
            return Err(format!("a persistent id is a {}, not a tuple", pid.kind()));
        };
        let (class, key, numel) = match &t[..] {
            [Value::Str(tag), Value::Global(class), Value::Str(key), _, numel]
                if &**tag == "storage" =>
            {
                (class, key, Self::int(numel, "a storage size")?)
            }
            _ => return Err("a persistent id is not a torch storage reference".into()),
        };
        let (dtype, size) =
            storage_dtype(class).ok_or_else(|| format!("'{class}' is not a storage type"))?;
        let member = format!("{}data/{key}", self.prefix);
        let bytes = self
            .entries
            .get(&member)
            .ok_or_else(|| format!("storage '{member}' is missing from the archive"))?;
        if numel.checked_mul(size) != Some(bytes.len()) {
            return Err(format!(
                "storage '{member}' holds {} bytes, not {numel} elements of {size} bytes",
                bytes.len()
            ));
        }
        Ok(Value::Storage(Rc::new(StorageRef {
            dtype,
            numel,
            bytes: bytes.clone(),
        })))
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` → the tensor as f32.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Res<Value> {
        let [Value::Storage(storage), offset, size, stride, ..] = args else {
            return Err("_rebuild_tensor_v2 called without (storage, offset, size, stride)".into());
        };
        let offset = Self::int(offset, "a tensor offset")?;
        let (size, stride) = (
            Self::ints(size, "a tensor size")?,
            Self::ints(stride, "a tensor stride")?,
        );
        if size.len() != stride.len() || size.len() > 8 {
            return Err(format!("a tensor has size {size:?} and stride {stride:?}"));
        }
        let count = size
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .filter(|&n| n <= self.budget)
            .ok_or("the tensors hold more elements than the file has bytes")?;
        self.budget -= count;
        let mut data = Vec::with_capacity(count);
        if count > 0 {
            // The last element read must lie inside the storage.
            let last = size
                .iter()
                .zip(&stride)
                .try_fold(offset, |a, (&n, &s)| a.checked_add((n - 1).checked_mul(s)?));
            if last.is_none_or(|l| l >= storage.numel) {
                return Err(format!(
                    "a tensor of size {size:?}, stride {stride:?} at offset {offset} reads past its storage of {} elements",
                    storage.numel
                ));
            }
            let esize = elem_size(storage.dtype);
            let raw = &self.archive[storage.bytes.clone()];
            let contiguous = stride
                == (0..size.len())
                    .map(|i| size[i + 1..].iter().product::<usize>())
                    .collect::<Vec<_>>();
            let bytes = if contiguous {
                raw[offset * esize..(offset + count) * esize].to_vec()
            } else {
                let mut out = Vec::with_capacity(count * esize);
                let mut index = vec![0usize; size.len()];
                for _ in 0..count {
                    let e: usize =
                        offset + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
                    out.extend_from_slice(&raw[e * esize..(e + 1) * esize]);
                    for d in (0..size.len()).rev() {
                        index[d] += 1;
                        if index[d] < size[d] {
                            break;
                        }
                        index[d] = 0;
                    }
                }
                out
            };
            data = to_f32(storage.dtype, &bytes).ok_or("unsupported storage type")?;
        }
        let tensor = Tensor::new(Shape::new(&size), data).map_err(|e| e.to_string())?;
        Ok(Value::Tensor(Rc::new(tensor)))
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Res<Value> {
        let (Value::Global(name), Value::Tuple(args, _)) = (&callable, &args) else {
            return Err(format!(
                "calls a {} with a {}",
                callable.kind(),
                args.kind()
            ));
        };
        match (&**name, &args[..]) {
            ("collections.OrderedDict", []) => Ok(Value::Dict(Rc::default(), 1)),
            ("torch._utils._rebuild_tensor_v2", args) => self.rebuild_tensor(args),
            ("torch._utils._rebuild_parameter", [t @ Value::Tensor(_), ..]) => Ok(t.clone()),
            (name, _) => Err(format!(
                "calls '{name}' with arguments it never takes in a state dict"
            )),
        }
    }

    fn run(&mut self) -> Res<Value> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'}' => self.push(Value::Dict(Rc::default(), 1))?,
                b']' => self.push(Value::List(Rc::default(), 1))?,
                b')' => self.push(Value::tuple(Vec::new()))?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'(' => self.marks.push(self.stack.len()),
                b'q' | b'r' | 0x94 => {
                    let id = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len(),
                    } as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(id, v);
                }
                b'h' | b'j' => {
                    let id = self.uint(if op == b'h' { 1 } else { 4 })? as u32;
                    let v = self
                        .memo
                        .get(&id)
                        .cloned()
                        .ok_or("the pickle reads an unset memo slot")?;
                    self.push(v)?;
                }
                0x8c => {
                    let v = self.string(1)?;
                    self.push(v)?
                }
                b'X' => {
                    let v = self.string(4)?;
                    self.push(v)?
                }
                0x8d => {
                    let v = self.string(8)?;
                    self.push(v)?
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Value::Int(v))?
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Value::Int(v))?
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Value::Int(v))?
                }
                0x8a => {
                    let n = self.uint(1)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let b = self.take(n)?;
                    let mut v = 0i64;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend
                    }
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                    self.push(Value::Float(f64::from_be_bytes(b)))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| self.pop()).collect::<Res<Vec<_>>>()?;
                    items.reverse();
                    self.push(Value::tuple(items))?
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of values".into());
                    }
                    let child = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
                    let Value::Dict(dict, depth) = self.pop()? else {
                        return Err("sets an item on something that is not a dict".into());
                    };
                    let mut dict = self.unshare(dict)?;
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                    self.push(Value::Dict(Rc::new(dict), depth.max(child)))?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let child = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
                    let Value::List(list, depth) = self.pop()? else {
                        return Err("appends to something that is not a list".into());
                    };
                    let mut list = self.unshare(list)?;
                    list.extend(items);
                    self.push(Value::List(Rc::new(list), depth.max(child)))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(&module, &name)?;
                    self.push(v)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err("STACK_GLOBAL without two strings".into());
                    };
                    let v = self.global(m, n)?;
                    self.push(v)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?
                }
                b'b' => {
                    // An OrderedDict's attributes (state_dict()._metadata): not weights.
                    self.pop()?;
                    if !matches!(self.top()?, Value::Dict(..)) {
                        return Err("sets the state of an object that is not a dict".into());
                    }
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {} is not one a state dict needs",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// The pickled object of a `torch.save` file (`path` names it in errors).
pub fn load(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|reason| Error::file(path, reason))
}

/// [`load`] on the bytes of a file; the error is the reason.
pub fn parse(bytes: &[u8]) -> std::result::Result<Value, String> {
    if !bytes.starts_with(b"PK\x03\x04") {
        let hint = if bytes.first() == Some(&0x80) {
            "a torch.save file in the legacy (pre-1.6) format: load and re-save it with a current torch"
        } else {
            "not a torch.save zip archive (.pth/.pt/.pyth)"
        };
        return Err(hint.into());
    }
    let entries = zip_entries(bytes)?;
    let pkl = entries
        .keys()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .min()
        .ok_or("the archive has no '<name>/data.pkl': not a torch.save file")?
        .clone();
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    if let Some(order) = entries.get(&format!("{prefix}byteorder")) {
        if &bytes[order.clone()] != b"little" {
            return Err("saved on a big-endian machine, which is not supported".into());
        }
    }
    let mut unpickler = Unpickler {
        archive: bytes,
        entries: &entries,
        prefix,
        pickle: &bytes[entries[&pkl].clone()],
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: bytes.len(),
        copy_budget: 16 * bytes.len(),
    };
    unpickler.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored zip archive of `members`, as torch.save writes one.
    fn stored_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data) in members {
            let local = out.len() as u32;
            let fixed = |sig: u32, out: &mut Vec<u8>| {
                out.extend_from_slice(&sig.to_le_bytes());
                out.extend_from_slice(&[0; 14]); // versions, flags, method 0, time, crc
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            };
            fixed(0x0403_4b50, &mut out);
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            // The central record has "version made by" before the fields the local one has.
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&[0; 2]);
            let mut rest = Vec::new();
            fixed(0, &mut rest);
            central.extend_from_slice(&rest[4..]);
            central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
            central.extend_from_slice(&local.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let at = out.len() as u32;
        let n = members.len() as u16;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out
    }

    fn pickle(ops: &[u8]) -> std::result::Result<Value, String> {
        parse(&stored_zip(&[("a/data.pkl", ops), ("a/data/0", &[0u8; 8])]))
    }

    #[test]
    fn a_plain_dict_reads() {
        let v = pickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00kK\x07u.").unwrap();
        assert!(matches!(v.get("k"), Some(Value::Int(7))));
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_the_stack() {
        let mut ops = b"\x80\x02".to_vec();
        ops.extend(std::iter::repeat_n(b']', 150));
        ops.extend(std::iter::repeat_n(b'a', 149));
        ops.push(b'.');
        assert!(pickle(&ops).unwrap_err().contains("nested deeper"));
    }

    /// `_rebuild_tensor_v2` on the 2-float storage `a/data/0` with `size`
    /// and `stride` (one dimension each, as BININT).
    fn rebuild(offset: u32, size: u32, stride: u32) -> std::result::Result<Value, String> {
        let mut ops = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ".to_vec();
        ops.push(b'J');
        ops.extend_from_slice(&offset.to_le_bytes());
        for v in [size, stride] {
            ops.push(b'J');
            ops.extend_from_slice(&v.to_le_bytes());
            ops.push(0x85);
        }
        ops.extend_from_slice(b"\x89tR.");
        pickle(&ops)
    }

    #[test]
    fn tensors_must_lie_inside_their_storage_and_the_file() {
        let Value::Tensor(t) = rebuild(1, 1, 1).unwrap() else {
            panic!()
        };
        assert_eq!(t.data, vec![0.0]);
        assert!(rebuild(0, 3, 1)
            .unwrap_err()
            .contains("reads past its storage"));
        assert!(rebuild(1, 2, 1)
            .unwrap_err()
            .contains("reads past its storage"));
        assert!(rebuild(0, 2, 0x7fff_ffff)
            .unwrap_err()
            .contains("reads past"));
        assert!(rebuild(0, 0x7fff_ffff, 0)
            .unwrap_err()
            .contains("more elements than the file"));
    }

    #[test]
    fn other_opcodes_are_refused() {
        // INST (an old-style call by name) is not one a state dict needs.
        let e = pickle(b"\x80\x02ios\nsystem\n.").unwrap_err();
        assert!(e.contains("opcode 0x69"), "{e}");
    }
}
