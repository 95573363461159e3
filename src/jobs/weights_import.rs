//! `delg-gpu weights import`: a PyTorch checkpoint to a delg-gpu weight file
//! without Python. The names and the configuration are mapped exactly as
//! tools/convert_torch.py (DELG) and tools/convert_dolg_pyth.py (DOLG) map
//! them, and the file is written as tools/delg_weights.py writes it, so both
//! paths give the same bytes (tests/weights_import.rs checks it); the Python
//! converters stay the reference.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::io::tf_checkpoint;
use crate::io::torch_checkpoint::{self, Value};
use crate::io::weights::{json_string, WeightFile};
use crate::model::resnet::{self, Layout, ResNetConfig};
use crate::model::{ModelConfig, ARCH_BACKBONE, META_ARCH, META_CONFIG, META_SCORE_THRESHOLD};
use crate::tensor::{HostTensor, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Delg,
    Dolg,
}

/// DELG backbone layout: `None` decides from the tensors (delg when the
/// convolutions have biases), as the converter's `--layout auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutChoice {
    Auto,
    Torchvision,
    Delg,
}

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub src: PathBuf,
    pub out: PathBuf,
    /// The model a PyTorch checkpoint holds (a TF2 checkpoint is always DELG).
    pub arch: Option<Arch>,
    pub layout: LayoutChoice,
    /// DOLG: rates of the multi-atrous block (not stored in checkpoints).
    pub dilations: Vec<usize>,
    /// DOLG: keep `desc_cls.*` to continue training.
    pub keep_classifier: bool,
    /// DELG: attention threshold τ stored in the file.
    pub score_threshold: Option<f64>,
}

/// A JSON value written the way Python's `json.dumps` writes it (", " and
/// ": " separators, keys in insertion order, Python's float repr), because the
/// configuration is stored in the metadata as that text.
enum PyJson {
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    Str(String),
    List(Vec<PyJson>),
    Object(Vec<(&'static str, PyJson)>),
}

impl PyJson {
    fn dumps(&self) -> String {
        match self {
            PyJson::Int(i) => i.to_string(),
            PyJson::Float(f) => python_float_repr(*f),
            PyJson::Bool(b) => if *b { "true" } else { "false" }.into(),
            PyJson::Null => "null".into(),
            PyJson::Str(s) => json_string(s),
            PyJson::List(items) => {
                let items: Vec<String> = items.iter().map(PyJson::dumps).collect();
                format!("[{}]", items.join(", "))
            }
            PyJson::Object(fields) => {
                let fields: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{}: {}", json_string(k), v.dumps()))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
        }
    }

    fn ints(values: &[usize]) -> PyJson {
        PyJson::List(values.iter().map(|&v| PyJson::Int(v as i64)).collect())
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for
/// exponents -4..16, else scientific with a signed two-digit exponent.
pub fn python_float_repr(x: f64) -> String {
    let sci = format!("{x:e}"); // shortest digits: "-1.25e-7"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            let zeros = "0".repeat(point as usize - digits.len());
            format!("{sign}{digits}{zeros}.0")
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let esign = if exp < 0 { "-" } else { "+" };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

/// Imports `opts.src` (a PyTorch checkpoint, or a TensorFlow 2 checkpoint in
/// any of the forms [`tf_checkpoint::checkpoint_prefix`] takes) into
/// `opts.out`; returns the lines to show the user.
pub fn import(opts: &ImportOptions) -> Result<Vec<String>> {
    let src = &opts.src;
    let (file, notes) = if tf_checkpoint::looks_like_checkpoint(src) {
        if opts.arch == Some(Arch::Dolg) {
            return Err(Error::InvalidArgument(format!(
                "{}: a TensorFlow checkpoint holds a DELG model (DOLG's official checkpoints are PyTorch's): drop --arch dolg",
                src.display()
            )));
        }
        tf2_delg_file(src, opts)?
    } else {
        let root = if src.extension().is_some_and(|e| e == "safetensors") {
            safetensors_state_dict(src)?
        } else {
            torch_checkpoint::load(src)?
        };
        match opts.arch {
            Some(Arch::Delg) => delg_file(src, &root, opts)?,
            Some(Arch::Dolg) => dolg_file(src, &root, opts)?,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "{}: a PyTorch checkpoint: say which model it holds with --arch delg or --arch dolg",
                    src.display()
                )))
            }
        }
    };
    save_checked(src, file, notes, &opts.out)
}

/// A `.safetensors` state dict (PyTorch names, no delg-gpu metadata needed)
/// as the dict a `torch.save` file pickles.
fn safetensors_state_dict(src: &Path) -> Result<Value> {
    let items = WeightFile::load(src)?
        .tensors
        .into_iter()
        .map(|(name, t)| (Value::Str(name.into()), Value::Tensor(Rc::new(t))))
        .collect();
    Ok(Value::Dict(Rc::new(items), 1))
}

/// Writes `file` to `out` once the extractor would accept it (configuration
/// and shapes); the first note says what was written.
fn save_checked(
    src: &Path,
    file: WeightFile,
    mut notes: Vec<String>,
    out: &Path,
) -> Result<Vec<String>> {
    let (specs, what) = if file.metadata.get(META_ARCH).map(String::as_str) == Some(ARCH_BACKBONE) {
        let config: ResNetConfig = serde_json::from_str(&file.metadata[META_CONFIG])
            .map_err(|e| Error::Internal(format!("backbone configuration: {e}")))?;
        let what = format!(
            "a {}-layout ResNet backbone without heads (`delg-gpu train --init {}` gives it DELG or DOLG heads)",
            config.layout.name(),
            out.display()
        );
        (resnet::backbone_params(&config)?, what)
    } else {
        let model = ModelConfig::from_metadata(&file.metadata, src)?;
        (model.parameters()?.specs, format!("{} model", model.arch()))
    };
    let expected: Vec<_> = specs
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    file.check(src, &expected, crate::model::params::TRAINING_ONLY)?;
    file.save(out)?;
    let n: usize = file.tensors.values().map(|t| t.data.len()).sum();
    notes.insert(
        0,
        format!(
            "wrote {}: {what}, {} tensors, {:.2} M parameters",
            out.display(),
            file.tensors.len(),
            n as f64 / 1e6
        ),
    );
    Ok(notes)
}

/// The state dict under the first of `keys` holding a dict (again and again
/// when `nested`), `module.` prefixes stripped, in the pickle's order with a
/// later duplicate replacing the value in place (as a Python dict does).
fn state_dict(
    src: &Path,
    root: &Value,
    keys: &[&str],
    nested: bool,
) -> Result<Vec<(String, HostTensor)>> {
    let mut obj = root;
    while let Some(inner) = keys
        .iter()
        .filter_map(|k| obj.get(k))
        .find(|v| matches!(v, Value::Dict(..)))
    {
        obj = inner;
        if !nested {
            break;
        }
    }
    let not_found = || {
        Error::file(
            src,
            format!(
                "holds no state dict (a dict of tensors, possibly under one of {keys:?}); save one with torch.save(model.state_dict(), 'weights.pth')"
            ),
        )
    };
    let Value::Dict(items, _) = obj else {
        return Err(not_found());
    };
    if items.is_empty() {
        return Err(not_found());
    }
    let mut order: Vec<(String, HostTensor)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in items.iter() {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            let name = match k {
                Value::Str(s) => format!("'{s}'"),
                other => format!("a {} key", other.kind()),
            };
            return Err(Error::file(
                src,
                format!("{name} of the state dict is a {}, not a tensor", v.kind()),
            ));
        };
        let name = name.strip_prefix("module.").unwrap_or(name).to_string();
        match index.get(&name) {
            Some(&i) => order[i].1 = (**t).clone(),
            None => {
                index.insert(name.clone(), order.len());
                order.push((name, (**t).clone()));
            }
        }
    }
    Ok(order)
}

fn dim(
    src: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    name: &str,
    axis: usize,
) -> Result<usize> {
    let t = tensors
        .get(name)
        .ok_or_else(|| Error::file(src, format!("has no '{name}' (docs/weights.md)")))?;
    t.shape.dims().get(axis).copied().ok_or_else(|| {
        Error::file(
            src,
            format!("'{name}' is {:?}, which has no axis {axis}", t.shape),
        )
    })
}

/// Blocks per stage: one more than the largest index `layer{s}.{i}.` uses.
fn stage_blocks(src: &Path, names: impl Iterator<Item = String> + Clone) -> Result<[usize; 4]> {
    let mut blocks = [0; 4];
    for (s, b) in blocks.iter_mut().enumerate() {
        let prefix = format!("layer{}.", s + 1);
        let last = names
            .clone()
            .filter_map(|n| {
                n.strip_prefix(&prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .ok_or_else(|| {
                Error::file(
                    src,
                    format!("no '{prefix}*' tensors: not a four-stage ResNet"),
                )
            })?;
        *b = last + 1;
    }
    Ok(blocks)
}

fn metadata_file(tensors: BTreeMap<String, HostTensor>, arch: &str, config: PyJson) -> WeightFile {
    let mut file = WeightFile {
        tensors,
        ..Default::default()
    };
    file.metadata.insert(META_ARCH.into(), arch.into());
    file.metadata.insert(META_CONFIG.into(), config.dumps());
    file
}

fn backbone_json(layout: &str, blocks: [usize; 4], width: usize, s_stride32: bool) -> PyJson {
    PyJson::Object(vec![
        ("layout", PyJson::Str(layout.into())),
        ("blocks", PyJson::ints(&blocks)),
        ("width", PyJson::Int(width as i64)),
        ("s_stride32", PyJson::Bool(s_stride32)),
    ])
}

/// As tools/convert_torch.py with `--heads model` (the source is a whole DELG model).
fn delg_file(src: &Path, root: &Value, opts: &ImportOptions) -> Result<(WeightFile, Vec<String>)> {
    const KEYS: &[&str] = &["state_dict", "model", "model_state", "model_state_dict"];
    let mut dropped = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, t) in state_dict(src, root, KEYS, true)? {
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            dropped.push(name);
        } else {
            tensors.insert(name, t);
        }
    }
    dropped.sort();
    if !tensors.contains_key("conv1.weight") {
        let hint = if tensors.keys().any(|n| n.starts_with("globalmodel.")) {
            " (pycls names: an official DOLG checkpoint? use --arch dolg)"
        } else {
            ""
        };
        return Err(Error::file(
            src,
            format!("no 'conv1.weight': not a ResNet backbone in torchvision names{hint}"),
        ));
    }
    let layout = match opts.layout {
        LayoutChoice::Auto => Layout::detect(|name| tensors.contains_key(name)).name(),
        LayoutChoice::Torchvision => "torchvision",
        LayoutChoice::Delg => "delg",
    };
    let notes = dropped_note(&dropped, 6, "tensors delg-gpu does not use: ");
    if !tensors.contains_key("whiten.weight") {
        // A bare backbone (an ImageNet initialisation) stays one: training
        // creates the heads; tools/convert_torch.py --heads init is the way to
        // random heads for extraction.
        let blocks = stage_blocks(src, tensors.keys().cloned())?;
        let width = dim(src, &tensors, "conv1.weight", 0)?;
        let config = backbone_json(layout, blocks, width, false);
        return Ok((metadata_file(tensors, ARCH_BACKBONE, config), notes));
    }
    let file = delg_weight_file(src, tensors, layout, opts.score_threshold)?;
    Ok((file, notes))
}

/// A whole DELG model in delg-gpu names → its weight file, configured as
/// tools/delg_weights.py's `model_config` configures it (head sizes read
/// from the heads, GeM p = 3).
fn delg_weight_file(
    src: &Path,
    tensors: BTreeMap<String, HostTensor>,
    layout: &str,
    score_threshold: Option<f64>,
) -> Result<WeightFile> {
    let blocks = stage_blocks(src, tensors.keys().cloned())?;
    let width = dim(src, &tensors, "conv1.weight", 0)?;
    let config = PyJson::Object(vec![
        (
            "backbone",
            backbone_json(layout, blocks, width, layout == "delg"),
        ),
        ("gem_p", PyJson::Float(3.0)),
        ("gem_eps", PyJson::Float(1e-6)),
        (
            "global_dim",
            PyJson::Int(dim(src, &tensors, "whiten.weight", 0)? as i64),
        ),
        (
            "attention_dim",
            PyJson::Int(dim(src, &tensors, "attention.conv1.weight", 0)? as i64),
        ),
        (
            "local_dim",
            PyJson::Int(dim(src, &tensors, "autoencoder.encoder.weight", 0)? as i64),
        ),
    ]);
    let mut file = metadata_file(tensors, "delg", config);
    if let Some(tau) = score_threshold {
        if !tau.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "--score-threshold {tau} is not a number"
            )));
        }
        file.metadata
            .insert(META_SCORE_THRESHOLD.into(), python_float_repr(tau));
    }
    Ok(file)
}

fn dropped_note(dropped: &[String], shown: usize, what: &str) -> Vec<String> {
    if dropped.is_empty() {
        return Vec::new();
    }
    let more = if dropped.len() > shown { " ..." } else { "" };
    let names = dropped[..dropped.len().min(shown)].join(", ");
    vec![format!("dropped {} {what}{names}{more}", dropped.len())]
}

/// pycls part names of a bottleneck block → torchvision's.
const BLOCK_PARTS: &[(&str, &str)] = &[
    ("f.a", "conv1"),
    ("f.a_bn", "bn1"),
    ("f.b", "conv2"),
    ("f.b_bn", "bn2"),
    ("f.c", "conv3"),
    ("f.c_bn", "bn3"),
    ("proj", "downsample.0"),
    ("bn", "downsample.1"),
];
const DOLG_HEADS: &[&str] = &["pool_g.", "fc_t.", "localmodel.", "fc.", "desc_cls."];

/// Our name for an official DOLG one, or None to drop it (convert_dolg_pyth.rename).
fn dolg_rename(name: &str) -> Option<String> {
    if name.ends_with("num_batches_tracked") || name.contains('\n') {
        return None;
    }
    if let Some(rest) = name.strip_prefix("globalmodel.stem.") {
        for (part, ours) in [("conv.", "conv1."), ("bn.", "bn1.")] {
            if let Some(tail) = rest.strip_prefix(part).filter(|t| !t.is_empty()) {
                return Some(format!("{ours}{tail}"));
            }
        }
    }
    if let Some(rest) = name.strip_prefix("globalmodel.s") {
        let mut chars = rest.chars();
        let stage = chars.next().filter(char::is_ascii_digit)?;
        let rest = chars.as_str().strip_prefix(".b")?;
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let block: i64 = rest[..digits].parse().ok()?;
        let rest = rest[digits..].strip_prefix('.')?;
        // The first part (in this order) followed by a non-empty rest, as the regex matches.
        for (part, ours) in BLOCK_PARTS {
            if let Some(tail) = rest
                .strip_prefix(part)
                .and_then(|t| t.strip_prefix('.'))
                .filter(|t| !t.is_empty())
            {
                return Some(format!("layer{stage}.{}.{ours}.{tail}", block - 1));
            }
        }
        return None;
    }
    DOLG_HEADS
        .iter()
        .any(|h| name.starts_with(h))
        .then(|| name.to_string())
}

/// Reverses axis 1 of a tensor (the first convolution's BGR → RGB inputs).
fn flip_axis1(t: &HostTensor) -> Option<HostTensor> {
    let dims = t.shape.dims();
    let (&outer, &channels) = (dims.first()?, dims.get(1)?);
    let inner: usize = dims[2..].iter().product();
    let mut data = Vec::with_capacity(t.data.len());
    for o in 0..outer {
        for c in (0..channels).rev() {
            let start = (o * channels + c) * inner;
            data.extend_from_slice(&t.data[start..start + inner]);
        }
    }
    Tensor::new(t.shape.clone(), data).ok()
}

/// As tools/convert_dolg_pyth.py.
fn dolg_file(src: &Path, root: &Value, opts: &ImportOptions) -> Result<(WeightFile, Vec<String>)> {
    let state = state_dict(src, root, &["model_state", "state_dict", "model"], false).map_err(
        |e| match e {
            Error::File { path, reason } => Error::file(
                path,
                format!("{reason} (a DOLG checkpoint is pycls's, with 'model_state')"),
            ),
            other => other,
        },
    )?;
    let mut tensors = BTreeMap::new();
    let mut dropped = Vec::new();
    for (name, t) in state {
        match dolg_rename(&name) {
            Some(new) if opts.keep_classifier || !new.starts_with("desc_cls.") => {
                tensors.insert(new, t);
            }
            _ if name.ends_with("num_batches_tracked") => {}
            _ => dropped.push(name),
        }
    }
    let missing: Vec<&str> = [
        "conv1.weight",
        "fc_t.weight",
        "fc.weight",
        "localmodel.conv1.weight",
    ]
    .into_iter()
    .filter(|n| !tensors.contains_key(*n))
    .collect();
    if !missing.is_empty() {
        return Err(Error::file(
            src,
            format!("not a DOLG checkpoint: missing {}", missing.join(", ")),
        ));
    }
    let conv1 = flip_axis1(&tensors["conv1.weight"]).ok_or_else(|| {
        Error::file(
            src,
            format!(
                "'conv1.weight' is {:?}, not a convolution",
                tensors["conv1.weight"].shape
            ),
        )
    })?;
    tensors.insert("conv1.weight".into(), conv1);
    tensors
        .entry("pool_g.p".into())
        .or_insert_with(|| Tensor::new([1], vec![3.0]).expect("one value"));
    let blocks = stage_blocks(src, tensors.keys().cloned())?;
    let width = dim(src, &tensors, "conv1.weight", 0)?;
    let multi_atrous = if tensors.contains_key("localmodel.aspp.conv_after.0.weight") {
        let branches = tensors
            .keys()
            .filter(|n| {
                n.strip_prefix("localmodel.aspp.aspp.")
                    .and_then(|r| r.strip_suffix(".weight"))
                    .is_some_and(|i| !i.is_empty() && i.chars().all(|c| c.is_ascii_digit()))
            })
            .count();
        if branches != opts.dilations.len() + 1 {
            return Err(Error::InvalidArgument(format!(
                "{}: the checkpoint has {} dilated branches; pass --dilations with that many rates",
                src.display(),
                branches.saturating_sub(1)
            )));
        }
        PyJson::Object(vec![
            ("dilations", PyJson::ints(&opts.dilations)),
            (
                "branch_dim",
                PyJson::Int(dim(src, &tensors, "localmodel.aspp.aspp.0.weight", 0)? as i64),
            ),
        ])
    } else {
        PyJson::Null
    };
    let config = PyJson::Object(vec![
        (
            "backbone",
            backbone_json("torchvision", blocks, width, false),
        ),
        ("gem_eps", PyJson::Float(1e-6)),
        (
            "fusion_dim",
            PyJson::Int(dim(src, &tensors, "fc_t.weight", 0)? as i64),
        ),
        (
            "output_dim",
            PyJson::Int(dim(src, &tensors, "fc.weight", 0)? as i64),
        ),
        ("multi_atrous", multi_atrous),
    ]);
    let notes = dropped_note(&dropped, 8, "tensors: ");
    Ok((metadata_file(tensors, "dolg", config), notes))
}

// --- TensorFlow 2: the official Keras DELG model ----------------------------

/// How a TF2 variable is laid out in ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TfLayout {
    /// A convolution kernel: HWIO → OIHW.
    Kernel,
    /// A dense kernel `[in, out]` → `[out, in]` (all axes reversed, as numpy's `.T`).
    Dense,
    AsIs,
}

/// Keras variable names → ours.
const TF_VARIABLE: &[(&str, &str)] = &[
    ("kernel", "weight"),
    ("bias", "bias"),
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
];
/// Layers of a residual block (`backbone/l{stage}{letter}/...`) → ours.
const TF_BLOCK_LAYER: &[(&str, &str)] = &[
    ("conv2a", "conv1"),
    ("conv2b", "conv2"),
    ("conv2c", "conv3"),
    ("conv_shortcut", "downsample.0"),
    ("bn2a", "bn1"),
    ("bn2b", "bn2"),
    ("bn2c", "bn3"),
    ("bn_shortcut", "downsample.1"),
];
/// Every other layer of the model → ours.
const TF_LAYER: &[(&str, &str)] = &[
    ("backbone/conv1", "conv1"),
    ("backbone/bn_conv1", "bn1"),
    ("backbone/embedding_layer", "whiten"),
    ("attention/conv1", "attention.conv1"),
    ("attention/bn_conv1", "attention.bn"),
    ("attention/conv2", "attention.conv2"),
    ("autoencoder/conv1", "autoencoder.encoder"),
    ("autoencoder/conv2", "autoencoder.decoder"),
    ("attn_classification", "attention_classifier"),
];

fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Variables of a training checkpoint that are not weights of the network.
fn tf2_not_a_weight(rel: &str) -> bool {
    rel.starts_with("optimizer/")
        || matches!(
            rel,
            "save_counter" | "scale_factor" | "step" | "global_step"
        )
}

/// (our name, layout) of a model-relative object path, or None
/// (tools/convert_delg_tf2.py's `our_name`).
fn tf2_name(path: &str) -> Option<(String, TfLayout)> {
    let layout_of = |var: &str| {
        if var == "kernel" {
            TfLayout::Kernel
        } else {
            TfLayout::AsIs
        }
    };
    // backbone/l{digit}{a-z}/{word}/{word}
    if let Some(rest) = path.strip_prefix("backbone/l") {
        let mut chars = rest.chars();
        if let (Some(stage), Some(letter), Some('/')) = (chars.next(), chars.next(), chars.next()) {
            let parts: Vec<&str> = chars.as_str().split('/').collect();
            if stage.is_ascii_digit()
                && letter.is_ascii_lowercase()
                && parts.len() == 2
                && parts.iter().all(|p| is_word(p))
            {
                let stage = stage.to_digit(10)?;
                let layer = lookup(TF_BLOCK_LAYER, parts[0])?;
                let var = lookup(TF_VARIABLE, parts[1])?;
                if !(2..=5).contains(&stage) {
                    return None;
                }
                let block = letter as u32 - 'a' as u32;
                return Some((
                    format!("layer{}.{block}.{layer}.{var}", stage - 1),
                    layout_of(parts[1]),
                ));
            }
        }
    }
    if path == "cosine_weights" {
        return Some(("arcface.weight".into(), TfLayout::Dense));
    }
    let (layer, var) = path.rsplit_once('/').unwrap_or(("", path));
    let ours = lookup(TF_LAYER, layer)?;
    let our_var = lookup(TF_VARIABLE, var)?;
    let dense = matches!(layer, "backbone/embedding_layer" | "attn_classification");
    let layout = if dense && var == "kernel" {
        TfLayout::Dense
    } else {
        layout_of(var)
    };
    Some((format!("{ours}.{our_var}"), layout))
}

/// `t` with its axes in the order `perm` (ours[i] = theirs[perm[i]]).
fn permuted(t: &HostTensor, perm: &[usize]) -> Result<HostTensor> {
    let dims = t.shape.dims();
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut strides = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    let mut data = Vec::with_capacity(t.data.len());
    let mut index = vec![0usize; dims.len()];
    for _ in 0..t.data.len() {
        let at: usize = index.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum();
        data.push(t.data[at]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < out_dims[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Tensor::new(out_dims, data)
}

/// As tools/convert_delg_tf2.py: the variables under the model's root
/// (found by its `backbone/conv1/kernel`), renamed and laid out as ours.
fn tf2_delg_file(src: &Path, opts: &ImportOptions) -> Result<(WeightFile, Vec<String>)> {
    let prefix = tf_checkpoint::checkpoint_prefix(src)?;
    let ckpt = tf_checkpoint::Checkpoint::open(&prefix)?;
    let index = ckpt.index_path.clone();
    let mut variables = ckpt.variables()?;
    variables.sort_by(|a, b| a.path.cmp(&b.path));
    const ANCHOR: &str = "backbone/conv1/kernel";
    let anchors: Vec<&str> = variables
        .iter()
        .map(|v| v.path.as_str())
        .filter(|p| *p == ANCHOR || p.ends_with(&format!("/{ANCHOR}")))
        .collect();
    if anchors.len() != 1 {
        let sample: Vec<&str> = variables.iter().take(8).map(|v| v.path.as_str()).collect();
        return Err(Error::file(
            &index,
            format!(
                "expected one '{ANCHOR}' (a Keras DELG model), found {}; the checkpoint holds: {} ...",
                anchors.len(),
                sample.join(", ")
            ),
        ));
    }
    let root = anchors[0][..anchors[0].len() - ANCHOR.len()].to_string();
    let mut tensors = BTreeMap::new();
    let (mut skipped, mut unmapped) = (0usize, Vec::new());
    for var in &variables {
        let Some(rel) = var
            .path
            .strip_prefix(&root)
            .filter(|r| !tf2_not_a_weight(r))
        else {
            skipped += 1;
            continue;
        };
        let Some((name, layout)) = tf2_name(rel) else {
            unmapped.push(format!("{} {:?}", var.path, ckpt.entries[&var.key].shape));
            continue;
        };
        let t = ckpt.tensor(&var.key)?;
        let t = match layout {
            TfLayout::Kernel if t.shape.rank() == 4 => permuted(&t, &[3, 2, 0, 1])?,
            TfLayout::Dense => {
                let reversed: Vec<usize> = (0..t.shape.rank()).rev().collect();
                permuted(&t, &reversed)?
            }
            _ => t,
        };
        if tensors.insert(name.clone(), t).is_some() {
            return Err(Error::file(
                &index,
                format!("two variables map to '{name}' (the second is {})", var.path),
            ));
        }
    }
    if !unmapped.is_empty() {
        unmapped.truncate(30);
        return Err(Error::file(
            &index,
            format!(
                "variables with no delg-gpu name (not the official Keras DELG model?):\n  {}",
                unmapped.join("\n  ")
            ),
        ));
    }
    for (name, hint) in [
        (
            "whiten.weight",
            "no embedding layer, a DELF rather than DELG model?",
        ),
        (
            "autoencoder.encoder.weight",
            "no autoencoder, trained with use_autoencoder=False?",
        ),
    ] {
        if !tensors.contains_key(name) {
            return Err(Error::file(
                &index,
                format!("has no '{name}' (docs/weights.md): {hint}"),
            ));
        }
    }
    let file = delg_weight_file(&index, tensors, "delg", opts.score_threshold)?;
    let notes = if skipped > 0 {
        vec![format!("skipped {skipped} variables that are not network weights (optimizer state, counters, ArcFace scale)")]
    } else {
        Vec::new()
    };
    Ok((file, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        for (x, want) in [
            (3.0, "3.0"),
            (1e-6, "1e-06"),
            (454.6, "454.6"),
            (0.0001, "0.0001"),
            (-2.5e-5, "-2.5e-05"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.1, "0.1"),
        ] {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn dolg_names_map_as_the_python_converter_maps_them() {
        for (name, want) in [
            ("globalmodel.stem.conv.weight", Some("conv1.weight")),
            (
                "globalmodel.s3.b2.f.a_bn.running_var",
                Some("layer3.1.bn1.running_var"),
            ),
            (
                "globalmodel.s1.b1.proj.weight",
                Some("layer1.0.downsample.0.weight"),
            ),
            (
                "globalmodel.s1.b1.bn.bias",
                Some("layer1.0.downsample.1.bias"),
            ),
            (
                "globalmodel.s2.b1.f.b.weight",
                Some("layer2.0.conv2.weight"),
            ),
            (
                "localmodel.aspp.aspp.0.weight",
                Some("localmodel.aspp.aspp.0.weight"),
            ),
            ("globalmodel.s1.b1.f.a_bn.num_batches_tracked", None),
            ("globalmodel.head.fc.weight", None),
        ] {
            assert_eq!(dolg_rename(name).as_deref(), want, "{name}");
        }
    }
}
