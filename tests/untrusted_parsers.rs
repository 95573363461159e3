//! Property tests for the parsers of untrusted files (safetensors headers,
//! PyTorch and TensorFlow checkpoints, `.npy` headers, gnd.json, CSV lists,
//! the extraction journal): valid samples mutated by a seeded loop, and random bytes, give a result or an
//! error, never a panic, and never an allocation larger than the file
//! justifies (a length field claiming 10^12 elements must not be believed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use delg_gpu::io::features::{FileStamp, ImageFeatures, Journal};
use delg_gpu::io::groundtruth::GroundTruth;
use delg_gpu::io::tf_checkpoint::{graph_variables, Checkpoint, OBJECT_GRAPH_KEY};
use delg_gpu::io::weights::WeightFile;
use delg_gpu::io::{gldv2, npy};
use delg_gpu::jobs::collection::read_box_list;
use delg_gpu::jobs::weights_import::{import, ImportOptions, LayoutChoice};
use delg_gpu::tensor::{Rng, Tensor};

/// The system allocator, noting the largest single request of the thread
/// being watched (tests run in parallel threads).
struct Watching;

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `parse` on each mutant of `sample` written to a file, checking the
/// largest allocation against the file's size. Returns how many parsed.
fn mutate_and_parse(name: &str, sample: &[u8], parse: impl Fn(&Path)) -> usize {
    const ROUNDS: usize = 1500;
    let dir = std::env::temp_dir().join(format!("delg-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(name);
    let mut rng = Rng::new(0x5eed ^ name.len() as u64);
    let mut pick = |n: usize| rng.below(n.max(1));
    let mut parsed = 0;
    for round in 0..ROUNDS {
        let mut bytes = sample.to_vec();
        if round % 10 == 9 {
            // Pure noise of a random length.
            bytes = (0..pick(300)).map(|_| pick(256) as u8).collect();
        }
        for _ in 0..1 + pick(4) {
            let at = pick(bytes.len());
            match pick(6) {
                0 if !bytes.is_empty() => bytes[at] ^= 1 << pick(8),
                1 if !bytes.is_empty() => bytes[at] = pick(256) as u8,
                2 => bytes.truncate(at),
                3 => bytes.insert(at, pick(256) as u8),
                // A length or count field made huge.
                4 if bytes.len() >= 8 => {
                    let at = at.min(bytes.len() - 8);
                    let huge = [u64::MAX, 1 << 40, u32::MAX as u64, 1 << 62][pick(4)];
                    bytes[at..at + 8].copy_from_slice(&huge.to_le_bytes());
                }
                // Digits made long (sizes in text headers).
                5 => {
                    let digits = "9".repeat(1 + pick(25));
                    bytes.splice(at..at, digits.bytes());
                }
                _ => {}
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        LARGEST.with(|l| l.set(0));
        WATCHED.with(|w| w.set(true));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&path)));
        WATCHED.with(|w| w.set(false));
        assert!(ok.is_ok(), "{name}: panicked on {bytes:?}");
        let largest = LARGEST.with(Cell::get);
        let allowed = 16 * bytes.len() + (1 << 20);
        assert!(
            largest <= allowed,
            "{name}: allocated {largest} bytes for a {}-byte file: {bytes:?}",
            bytes.len()
        );
        parsed += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    parsed
}

fn sample_file(name: &str, write: impl Fn(&Path)) -> Vec<u8> {
    let p = std::env::temp_dir().join(format!("delg-fuzz-sample-{}-{name}", std::process::id()));
    write(&p);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    bytes
}

#[test]
fn torch_checkpoints() {
    // A small torch.save archive (tools/make_torch_checkpoint_fixture.py):
    // zip records, pickle and storages all within reach of the mutations.
    let sample = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_checkpoint/tiny.pth"),
    )
    .unwrap();
    let read = |p: &Path| delg_gpu::io::torch_checkpoint::load(p).is_ok();
    assert!(!read(&std::env::temp_dir().join("missing.pth")));
    let parsed = mutate_and_parse("tiny.pth", &sample, |p| {
        let _ = read(p);
    });
    assert_eq!(parsed, 1500);
}

#[test]
fn tf2_checkpoint_indexes() {
    // The index of a TensorFlow training checkpoint (tools/make_tf2_checkpoint_fixture.py)
    // mutated beside its intact data file, through the whole import.
    let ckpt = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert_tf2/ckpt");
    let sample = std::fs::read(ckpt.join("ckpt-1.index")).unwrap();
    let data = std::fs::read(ckpt.join("ckpt-1.data-00000-of-00001")).unwrap();
    let imported = Cell::new(0);
    mutate_and_parse("ckpt-1.index", &sample, |p| {
        let beside = p.with_file_name("ckpt-1.data-00000-of-00001");
        if !beside.exists() {
            std::fs::write(&beside, &data).unwrap();
        }
        let opts = ImportOptions {
            src: p.to_path_buf(),
            out: p.with_file_name("out.safetensors"),
            arch: None,
            layout: LayoutChoice::Auto,
            dilations: vec![],
            keep_classifier: false,
            score_threshold: None,
        };
        imported.set(imported.get() + usize::from(import(&opts).is_ok()));
    });
    // Most mutations land in tensor entries and block contents, which the
    // checksums refuse; some (the restart array, the footer's padding) are harmless.
    assert!(imported.get() < 1500, "{} mutants imported", imported.get());
}

#[test]
fn tf2_object_graphs() {
    // The serialized object graph of the same checkpoint, parsed directly
    // (in a checkpoint, its checksum would refuse most mutations first).
    let ckpt =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert_tf2/ckpt/ckpt-1");
    let checkpoint = Checkpoint::open(&ckpt).unwrap();
    let sample = checkpoint.string_scalar(OBJECT_GRAPH_KEY).unwrap();
    let variables = graph_variables(&sample).unwrap();
    assert!(variables
        .iter()
        .any(|v| v.path == "model/backbone/conv1/kernel"));
    let parsed = mutate_and_parse("graph.pb", &sample, |p| {
        let _ = graph_variables(&std::fs::read(p).unwrap());
    });
    assert_eq!(parsed, 1500);
}

#[test]
fn safetensors_headers() {
    let sample = sample_file("w.safetensors", |p| {
        let mut w = WeightFile::default();
        w.tensors.insert(
            "conv.weight".into(),
            Tensor::new([2, 3], vec![0.5; 6]).unwrap(),
        );
        w.tensors
            .insert("bn.bias".into(), Tensor::new([4], vec![1.0; 4]).unwrap());
        w.metadata.insert("arch".into(), "delg".into());
        w.save(p).unwrap();
    });
    mutate_and_parse("w.safetensors", &sample, |p| {
        let _ = WeightFile::load(p);
        let _ = WeightFile::read_metadata(p);
    });
}

#[test]
fn npy_headers() {
    let sample = sample_file("a.npy", |p| {
        npy::write(p, &[3, 4], &(0..12).map(|i| i as f32).collect::<Vec<_>>()).unwrap()
    });
    mutate_and_parse("a.npy", &sample, |p| {
        let _ = npy::read::<f32>(p);
        let _ = npy::read::<i64>(p);
    });
    // A header claiming 10^12 elements over an empty body.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }\n";
    let mut huge = b"\x93NUMPY\x01\x00".to_vec();
    huge.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    huge.extend_from_slice(dict.as_bytes());
    let e = npy::parse::<f32>(Path::new("huge.npy"), &huge).unwrap_err();
    assert!(e.to_string().contains("holds 0 data bytes"), "{e}");
}

#[test]
fn ground_truth_json() {
    let sample = br#"{"image_dir": "jpg", "image_ext": ".jpg", "db": ["a", "b", "c"],
        "query_images_not_in_db": ["q"],
        "queries": [{"id": "q0", "image": "q", "bbox": [1, 2, 30.5, 40], "easy": ["a"],
                     "hard": ["b"], "junk": ["c"], "protocol": "official"},
                    {"id": "q1", "image": "a", "easy": ["b"], "protocol": "official"}],
        "labels": {"a": ["x"], "b": ["x"]}}"#;
    let text = std::str::from_utf8(sample).unwrap();
    GroundTruth::parse(text).expect("the sample is valid");
    mutate_and_parse("gnd.json", sample, |p| {
        let _ = GroundTruth::load(p);
    });
}

#[test]
fn csv_lists() {
    let boxes = b"a.jpg,1,2,30,40\nsub/b.png, 0.5, 0, 10, 12.5\n";
    assert_eq!(
        read_box_list(&write_temp("boxes.csv", boxes))
            .unwrap()
            .len(),
        2
    );
    for bad in [
        "a.jpg,nan,0,1,1",
        "a.jpg,5,0,1,1",
        "a.jpg,1,2,3",
        ",0,0,1,1",
    ] {
        let e = read_box_list(&write_temp("bad.csv", bad.as_bytes())).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{bad}: {e}");
    }
    mutate_and_parse("boxes.csv", boxes, |p| {
        let _ = read_box_list(p);
    });
    let solution = b"id,images,Usage\nq1,\"a b c\",Public\nq2,,Ignored\nq3,d,Private\n";
    mutate_and_parse("solution.csv", solution, |p| {
        if let Ok(s) = gldv2::read_retrieval_solution(p) {
            let _ = gldv2::read_retrieval_predictions(p, &s);
        }
        let _ = gldv2::read_recognition_solution(p);
    });
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("delg-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn extraction_journal() {
    let sample = sample_file("journal.bin", |p| {
        let (mut j, _) = Journal::open(p).unwrap();
        for (i, n) in [(0, 2usize), (1, 0), (2, 3)] {
            let f = ImageFeatures {
                id: format!("img{i}.jpg"),
                global: vec![0.25; 8],
                descriptors: vec![0.5; n * 4],
                locations: vec![1.0; n * 2],
                scales: vec![1.0; n],
                attention: vec![2.0; n],
            };
            j.append(
                &f,
                FileStamp {
                    size: 100 + i,
                    modified_ns: 7,
                },
            )
            .unwrap();
        }
        j.flush().unwrap();
    });
    mutate_and_parse("journal.bin", &sample, |p| {
        // Every record the scan accepts reads back.
        if let Ok((mut j, records)) = Journal::open(p) {
            for r in &records {
                j.read(r).unwrap();
            }
        }
    });
}
