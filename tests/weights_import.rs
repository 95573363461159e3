//! `delg-gpu weights import`: PyTorch checkpoints read without Python
//! (src/io/torch_checkpoint.rs) and mapped as the Python converters map them.
//! The sources are the checkpoints tools/test_converters.py and
//! tools/test_convert_dolg.py saved and converted with tools/convert_torch.py
//! and tools/convert_dolg_pyth.py; the import must give the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use delg_gpu::io::torch_checkpoint::{self, Value};
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::tensor::Tensor;

fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("delg-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the binary's `weights import`; (success, stdout + stderr).
fn import(src: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let (src, out) = (src.to_str().unwrap(), out.to_str().unwrap());
    delg_gpu(&[&["weights", "import", src, "--out", out][..], extra].concat())
}

fn assert_same_bytes(src: &Path, want: &Path, extra: &[&str], name: &str) {
    let out = scratch(name);
    let (ok, text) = import(src, &out, extra);
    assert!(ok, "{text}");
    let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(want).unwrap());
    assert!(
        got == want,
        "{name}: {} bytes, the Python converter wrote {}; first difference at {:?}",
        got.len(),
        want.len(),
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
}

#[test]
fn delg_checkpoint_imports_to_the_python_converters_bytes() {
    assert_same_bytes(
        &fixture("convert", "torch_source.pth"),
        &fixture("convert", "torch_weights.safetensors"),
        &["--arch", "delg"],
        "delg.safetensors",
    );
}

#[test]
fn dolg_checkpoint_imports_to_the_python_converters_bytes() {
    assert_same_bytes(
        &fixture("convert_dolg", "source.pyth"),
        &fixture("convert_dolg", "weights.safetensors"),
        &["--arch", "dolg", "--dilations", "2,3,6"],
        "dolg.safetensors",
    );
}

#[test]
fn wrong_arch_and_wrong_files_get_one_clear_line() {
    let out = scratch("wrong.safetensors");
    let dolg = fixture("convert_dolg", "source.pyth");
    let (ok, text) = import(&dolg, &out, &["--arch", "delg"]);
    assert!(
        !ok && text.contains("source.pyth") && text.contains("--arch dolg"),
        "{text}"
    );
    let (ok, text) = import(&dolg, &out, &["--arch", "dolg", "--dilations", "6,12"]);
    assert!(!ok && text.contains("3 dilated branches"), "{text}");
    let (ok, text) = import(&fixture("convert", "image.npy"), &out, &["--arch", "delg"]);
    assert!(
        !ok && text.contains("not a torch.save zip archive"),
        "{text}"
    );
    assert!(!out.exists());
}

fn tensor<'a>(state: &'a Value, name: &str) -> &'a delg_gpu::tensor::HostTensor {
    match state.get(name) {
        Some(Value::Tensor(t)) => t,
        other => panic!("'{name}' is {other:?}"),
    }
}

#[test]
fn strided_offset_half_integer_and_parameter_tensors_read_as_torch_saved_them() {
    let root = torch_checkpoint::load(&fixture("torch_checkpoint", "tiny.pth")).unwrap();
    assert!(matches!(root.get("epoch"), Some(Value::Int(3))));
    assert!(matches!(
        root.get("big"),
        Some(Value::Int(1_099_511_627_776))
    ));
    assert!(matches!(root.get("neg"), Some(Value::Int(-5))));
    assert!(matches!(root.get("lr"), Some(Value::Float(x)) if *x == 0.01));
    assert!(matches!(root.get("name"), Some(Value::Str(s)) if &**s == "tiny"));
    let Some(Value::List(flags, _)) = root.get("flags") else {
        panic!("flags")
    };
    assert!(matches!(
        &flags[..],
        [Value::Bool(true), Value::Bool(false), Value::None]
    ));
    let state = root.get("model_state").unwrap();
    let t = tensor(state, "transposed");
    assert_eq!(t.shape.dims(), &[4, 3]);
    assert_eq!(
        t.data,
        vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    );
    assert_eq!(tensor(state, "offset_row").data, vec![4., 5., 6., 7.]);
    assert_eq!(tensor(state, "half").data, vec![0.5, -2.0, 65504.0]);
    let count = tensor(state, "count");
    assert_eq!((count.shape.rank(), count.data.clone()), (0, vec![7.0]));
    let param = tensor(state, "param");
    assert_eq!(
        (param.shape.dims(), param.data.clone()),
        (&[1, 2][..], vec![1.5, -0.25])
    );
}

/// `bytes` with the last occurrence of `from` replaced by `to` (same length;
/// the last, so that archive member names change in the central directory).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .rposition(|w| w == from)
        .expect("pattern in fixture");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn globals_outside_a_state_dict_are_refused_by_name() {
    let tiny = std::fs::read(fixture("torch_checkpoint", "tiny.pth")).unwrap();
    let evil = patched(
        &tiny,
        b"collections\nOrderedDict",
        b"subprocess\ncheck_output",
    );
    let e = torch_checkpoint::parse(&evil).unwrap_err();
    assert!(
        e.contains("'subprocess.check_output'") && e.contains("state_dict"),
        "{e}"
    );
    let storage = patched(&tiny, b"torch\nFloatStorage", b"torch\nFloatStorag3");
    let e = torch_checkpoint::parse(&storage).unwrap_err();
    assert!(e.contains("'torch.FloatStorag3'"), "{e}");
    for name in torch_checkpoint::ACCEPTED_GLOBALS {
        assert!(name.starts_with("torch.") || *name == "collections.OrderedDict");
    }
}

#[test]
fn storages_that_do_not_fit_the_archive_are_refused() {
    let tiny = std::fs::read(fixture("torch_checkpoint", "tiny.pth")).unwrap();
    // A storage entry cut short: its size no longer matches the elements the pickle states.
    let short = patched(&tiny, b"tiny/data/", b"tiny/gone/");
    let e = torch_checkpoint::parse(&short).unwrap_err();
    assert!(e.contains("missing from the archive"), "{e}");
    let cut = &tiny[..tiny.len() - 30];
    assert!(torch_checkpoint::parse(cut).unwrap_err().contains("zip"));
}

/// The TF2 fixtures: the model of tf2_weights.safetensors as TensorFlow wrote
/// it (tools/make_tf2_checkpoint_fixture.py).
fn tf2(path: &str) -> PathBuf {
    fixture("convert_tf2", path)
}

#[test]
fn tf2_checkpoints_import_to_the_python_converters_bytes() {
    let want = fixture("convert", "tf2_weights.safetensors");
    // A training checkpoint (with optimizer slots) by its directory, prefix
    // and index file; a SavedModel's variables by their directory.
    for (i, src) in [
        "ckpt",
        "ckpt/ckpt-1",
        "ckpt/ckpt-1.index",
        "exported/variables",
    ]
    .into_iter()
    .enumerate()
    {
        assert_same_bytes(&tf2(src), &want, &[], &format!("tf2-{i}.safetensors"));
    }
}

/// A copy of the training checkpoint in a scratch directory, `damage`
/// applied to (index bytes, data bytes) first; returns its prefix.
fn damaged_checkpoint(name: &str, damage: impl Fn(&mut Vec<u8>, &mut Vec<u8>)) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut index = std::fs::read(tf2("ckpt/ckpt-1.index")).unwrap();
    let mut data = std::fs::read(tf2("ckpt/ckpt-1.data-00000-of-00001")).unwrap();
    damage(&mut index, &mut data);
    std::fs::write(dir.join("ckpt-1.index"), index).unwrap();
    if !data.is_empty() {
        std::fs::write(dir.join("ckpt-1.data-00000-of-00001"), data).unwrap();
    }
    dir.join("ckpt-1")
}

#[test]
fn damaged_tf2_checkpoints_get_one_clear_line_naming_the_file() {
    let out = scratch("tf2-damaged.safetensors");
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "no data file",
            damaged_checkpoint("tf2-nodata", |_, d| d.clear()),
            "ckpt-1.data-00000-of-00001: cannot be read",
        ),
        (
            "data cut short",
            damaged_checkpoint("tf2-short", |_, d| d.truncate(d.len() / 2)),
            "lies outside its data file",
        ),
        (
            "a weight changed",
            damaged_checkpoint("tf2-flip", |_, d| d[100] ^= 1),
            "fails its checksum",
        ),
        (
            "the object graph changed",
            damaged_checkpoint("tf2-graph", |_, d| *d.last_mut().unwrap() ^= 1),
            "'_CHECKPOINTABLE_OBJECT_GRAPH': fails its checksum",
        ),
        (
            "an index block changed",
            damaged_checkpoint("tf2-index", |i, _| i[200] ^= 1),
            "ckpt-1.index: the block at byte 0 fails its checksum",
        ),
        (
            "not an index",
            damaged_checkpoint("tf2-noindex", |i, _| i.truncate(20)),
            "no table footer",
        ),
    ];
    for (what, src, needle) in cases {
        let (ok, text) = import(&src, &out, &[]);
        assert!(!ok && text.contains(needle), "{what}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{what}: {text}");
    }
    let (ok, text) = import(&tf2("ckpt"), &out, &["--arch", "dolg"]);
    assert!(!ok && text.contains("drop --arch dolg"), "{text}");
    let (ok, text) = import(&fixture("convert", "torch_source.pth"), &out, &[]);
    assert!(!ok && text.contains("--arch delg or --arch dolg"), "{text}");
    let (ok, text) = import(&fixture("convert", "nothing-here"), &out, &[]);
    assert!(!ok && text.contains("nothing-here"), "{text}");
    assert!(!out.exists());
}

/// Runs the binary with `args`; (success, stdout + stderr).
fn delg_gpu(args: &[&str]) -> (bool, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    (run.status.success(), text)
}

/// A bare ResNet backbone (what torchvision's ImageNet files hold; here a
/// tiny random one as a plain `.safetensors` state dict with a classifier)
/// imports as a backbone: a training run starts from its tensors and gives
/// it heads, and extraction refuses it, saying what to do.
#[test]
fn a_bare_backbone_imports_as_one_and_starts_a_training_run() {
    let whole = scratch("tiny-torchvision.safetensors");
    let tiny = ["--depth", "tiny", "--layout", "torchvision"];
    let out = whole.to_str().unwrap();
    let (ok, text) =
        delg_gpu(&[&["init-weights", "--out", out, "--seed", "3"][..], &tiny].concat());
    assert!(ok, "{text}");
    let mut state = WeightFile::load(&whole).unwrap();
    state.metadata.clear();
    state
        .tensors
        .retain(|n, _| n.starts_with("conv1.") || n.starts_with("bn1.") || n.starts_with("layer"));
    let backbone_tensors = state.tensors.clone();
    let classifier = Tensor::new([10, 64], vec![0.5; 640]).unwrap();
    state.tensors.insert("fc.weight".into(), classifier);
    let source = scratch("backbone-state-dict.safetensors");
    state.save(&source).unwrap();

    let imported = scratch("backbone.safetensors");
    let (ok, text) = import(&source, &imported, &["--arch", "delg"]);
    assert!(ok && text.contains("backbone without heads"), "{text}");
    let file = WeightFile::load(&imported).unwrap();
    assert_eq!(file.metadata["delg_gpu.arch"], "backbone");
    assert!(
        file.tensors == backbone_tensors,
        "the classifier goes, the backbone stays as it was"
    );

    let (ok, text) = delg_gpu(&[
        "extract",
        "--weights",
        imported.to_str().unwrap(),
        "--out",
        scratch("features").to_str().unwrap(),
        fixture("convert", "image.npy")
            .parent()
            .unwrap()
            .to_str()
            .unwrap(),
    ]);
    assert!(
        !ok && text.contains("only a ResNet backbone") && text.contains("train --init"),
        "{text}"
    );

    // A learning rate too small to move an f32 weight: after one step the
    // backbone's convolutions are still the imported ones, heads exist.
    let data = scratch("data");
    for class in 0..2u64 {
        let dir = data.join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for view in 0..2 {
            render_scene(class, view, 48)
                .save(dir.join(format!("{view}.png")))
                .unwrap();
        }
    }
    let run = scratch("run");
    let (ok, text) = delg_gpu(
        &[
            &[
                "train",
                "--data",
                data.to_str().unwrap(),
                "--run",
                run.to_str().unwrap(),
                "--init",
                imported.to_str().unwrap(),
                "--batch",
                "2",
                "--size",
                "48",
                "--steps",
                "1",
                "--lr",
                "1e-30",
                "--val-fraction",
                "0",
                "--quiet",
            ][..],
            &tiny,
        ]
        .concat(),
    );
    assert!(ok, "{text}");
    let trained = WeightFile::load(&run.join("model.safetensors")).unwrap();
    assert!(trained.tensors.contains_key("whiten.weight"));
    for (name, t) in &backbone_tensors {
        if name.ends_with(".weight") && !name.contains("bn") && !name.contains("downsample.1") {
            assert!(
                trained.tensors[name].data == t.data,
                "{name} is not the imported one"
            );
        }
    }
}
