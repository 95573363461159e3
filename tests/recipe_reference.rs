//! `extract`, end to end, against the independent reference of the whole
//! recipe in tools/recipe_reference.py (fixtures in tests/fixtures/recipe):
//! generated images of odd sizes and query crops through every DELG layout
//! (delg, torchvision with S at stride 16 and at 32) and DOLG with and without
//! the multi-atrous block. Nothing on the reference side comes from the
//! project's functions: keypoints are its receptive-field centres.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use delg_gpu::io::features::{FeatureSet, ImageFeatures};
use delg_gpu::io::npy;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::extract::{run_extract, ExtractConfig, ExtractJob};
use delg_gpu::model::META_CONFIG;
use delg_gpu::testing::{max_abs_error, test_gpu};
use serde_json::Value;

const DIR: &str = "recipe";
const MIN_COSINE: f64 = 0.99999;
const MAX_OFFSET_PX: f64 = 0.5;
const MAX_DESCRIPTOR_ERROR: f64 = 1e-3;
const MAX_ATTENTION_ERROR: f64 = 1e-4;

fn manifest() -> Value {
    let text = std::fs::read_to_string(common::fixture(DIR, "cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-recipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn array(name: &str) -> Vec<f32> {
    npy::read::<f32>(&common::fixture(DIR, name)).unwrap().1
}

/// The case's weight file; the torchvision-at-stride-32 case is the stride-16
/// weights with `s_stride32` set in their configuration.
fn weights(case: &Value, dir: &Path) -> PathBuf {
    let path = common::fixture("", case["weights"].as_str().unwrap());
    let mut file = WeightFile::load(&path).unwrap();
    let mut config: Value = serde_json::from_str(&file.metadata[META_CONFIG]).unwrap();
    let wanted = case["s_stride32"].as_bool().unwrap();
    if config["backbone"]["s_stride32"].as_bool() == Some(wanted) {
        return path;
    }
    config["backbone"]["s_stride32"] = Value::Bool(wanted);
    file.metadata
        .insert(META_CONFIG.to_string(), config.to_string());
    let copy = dir.join("weights.safetensors");
    file.save(&copy).unwrap();
    copy
}

/// Worst figures of one case over its images.
#[derive(Debug, Default)]
struct Worst {
    cosine: f64,
    offset_px: f64,
    descriptor: f64,
    attention: f64,
    keypoints: usize,
}

/// Largest |a − b| of the project's output and the reference's; infinite on NaN.
fn max_abs(got: &[f32], want: &[f32]) -> f64 {
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    max_abs_error(got, &want)
}

/// Checks one image; `bits` are its binarised descriptors ([n, dim/8]).
fn compare(
    what: &str,
    got: &ImageFeatures,
    bits: &[u8],
    stem: &str,
    dim: usize,
    worst: &mut Worst,
) {
    let cosine = common::cosine(&got.global, &array(&format!("{stem}_global.npy")));
    assert!(cosine >= MIN_COSINE, "{what}: global cosine {cosine}");
    worst.cosine = worst.cosine.min(cosine);
    if dim == 0 {
        assert_eq!(got.num_local(), 0, "{what}: DOLG has no local features");
        return;
    }
    let scales = array(&format!("{stem}_scales.npy"));
    let locations = array(&format!("{stem}_locations.npy"));
    let descriptors = array(&format!("{stem}_descriptors.npy"));
    let attention = array(&format!("{stem}_attention.npy"));
    let want_bits = npy::read::<u8>(&common::fixture(DIR, &format!("{stem}_bits.npy")))
        .unwrap()
        .1;
    let row = dim / 8;
    assert_eq!(
        got.num_local(),
        scales.len(),
        "{what}: {} keypoints, the reference has {}",
        got.num_local(),
        scales.len()
    );
    for k in 0..scales.len() {
        let want = [locations[2 * k] as f64, locations[2 * k + 1] as f64];
        // The nearest of ours at the same scale.
        let found = (0..got.num_local())
            .filter(|&m| (got.scales[m] - scales[k]).abs() <= 1e-6 * scales[k])
            .map(|m| {
                let (dy, dx) = (
                    got.locations[2 * m] as f64 - want[0],
                    got.locations[2 * m + 1] as f64 - want[1],
                );
                (m, dy.hypot(dx))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((m, offset)) = found else {
            panic!("{what}: no keypoint at scale {}", scales[k]);
        };
        assert!(
            offset <= MAX_OFFSET_PX,
            "{what}: reference keypoint {want:?} at scale {} is {offset:.3} px from ours",
            scales[k]
        );
        let d = max_abs(
            &got.descriptors[m * dim..(m + 1) * dim],
            &descriptors[k * dim..(k + 1) * dim],
        );
        assert!(
            d <= MAX_DESCRIPTOR_ERROR,
            "{what}: keypoint {want:?} descriptor error {d:.2e}"
        );
        // A sign may differ only where the reference component is within
        // the descriptor tolerance of 0.
        for bit in 0..dim {
            let byte = |b: &[u8], i: usize| b[i * row + bit / 8] >> (7 - bit % 8) & 1;
            if byte(bits, m) != byte(&want_bits, k) {
                let v = descriptors[k * dim + bit];
                assert!(
                    (v.abs() as f64) <= MAX_DESCRIPTOR_ERROR,
                    "{what}: keypoint {want:?} bit {bit} differs, reference component {v}"
                );
            }
        }
        let a = max_abs(&got.attention[m..m + 1], &attention[k..k + 1]);
        assert!(
            a <= MAX_ATTENTION_ERROR,
            "{what}: keypoint {want:?} attention error {a:.2e}"
        );
        worst.offset_px = worst.offset_px.max(offset);
        worst.descriptor = worst.descriptor.max(d);
        worst.attention = worst.attention.max(a);
    }
    worst.keypoints += scales.len();
}

fn run_case(case: &Value, manifest: &Value) -> Worst {
    let gpu = test_gpu().expect("checked by the caller");
    let name = case["name"].as_str().unwrap();
    let dir = temp(name);
    let weights = weights(case, &dir);
    let mut config = ExtractConfig::for_arch(case["arch"].as_str().unwrap());
    if let Some(tau) = case["score_threshold"].as_f64() {
        config.score_threshold = Some(tau as f32);
        config.max_features = case["max_features"].as_u64().unwrap() as usize;
        config.binarize = true;
    }
    let images: Vec<String> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let queries: HashMap<String, [f64; 4]> =
        serde_json::from_value(manifest["queries"].clone()).unwrap();
    let mut worst = Worst {
        cosine: 1.0,
        ..Default::default()
    };
    for cropped in [false, true] {
        let out = dir.join(if cropped { "queries" } else { "database" });
        let only: Vec<String> = images
            .iter()
            .filter(|i| !cropped || queries.contains_key(*i))
            .cloned()
            .collect();
        let job = ExtractJob {
            input: common::fixture(DIR, ""),
            out: out.clone(),
            weights: weights.clone(),
            config: config.clone(),
            shard: None,
            only: Some(only.clone()),
            crops: if cropped {
                queries.clone()
            } else {
                HashMap::new()
            },
            quiet: true,
            batch: None,
        };
        let summary = run_extract(&gpu, &job).unwrap();
        let errors = std::fs::read_to_string(out.join("errors.txt")).unwrap();
        assert_eq!(summary.failed, 0, "{name}: {errors}");
        let set = FeatureSet::load(&out).unwrap();
        let all_bits = if set.local_dim == 0 {
            Vec::new()
        } else {
            npy::read::<u8>(&out.join("local_descriptors_bin.npy"))
                .unwrap()
                .1
        };
        for (i, image) in only.iter().enumerate() {
            assert_eq!(&set.ids[i], image);
            let stem = format!(
                "{name}_{}{}",
                if cropped { "query_" } else { "" },
                image.trim_end_matches(".png")
            );
            let bits = if set.local_dim == 0 {
                Vec::new()
            } else {
                let (a, b) = (set.offsets[i] as usize, set.offsets[i + 1] as usize);
                let row = set.local_dim / 8;
                all_bits[a * row..b * row].to_vec()
            };
            compare(
                &stem,
                &set.image(i),
                &bits,
                &stem,
                set.local_dim,
                &mut worst,
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    println!("{name}: {worst:?}");
    worst
}

fn run_cases(arch: &str) {
    if test_gpu().is_none() {
        return;
    }
    let manifest = manifest();
    let cases: Vec<&Value> = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["arch"] == arch)
        .collect();
    assert!(!cases.is_empty(), "no {arch} case in cases.json");
    for case in cases {
        let worst = run_case(case, &manifest);
        if arch == "delg" {
            assert!(
                worst.keypoints > 0,
                "{}: no keypoint compared",
                case["name"]
            );
        }
    }
}

#[test]
fn delg_extraction_matches_the_reference_recipe_in_every_layout() {
    run_cases("delg");
}

#[test]
fn dolg_extraction_matches_the_reference_recipe_with_and_without_multi_atrous() {
    run_cases("dolg");
}

#[test]
// `!(x <= limit)` is the point: the checks above pass only a comparison NaN fails.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn a_nan_fails_every_figure_this_file_checks() {
    assert!(!(max_abs(&[f32::NAN], &[0.0]) <= MAX_DESCRIPTOR_ERROR));
    assert!(!(max_abs(&[0.0, 1.0], &[0.0, f32::NAN]) <= MAX_ATTENTION_ERROR));
    assert!(!(common::cosine(&[1.0, f32::NAN], &[1.0, 0.0]) >= MIN_COSINE));
}

#[test]
fn an_image_too_small_for_every_level_is_reported_with_the_reason() {
    let Some(gpu) = test_gpu() else { return };
    let dir = temp("tiny");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // 3 px: its largest global level is round(3·1.41) = 4 px, below the
    // 5 px the DELG layout's unpadded stem pool needs.
    image::RgbImage::from_pixel(3, 3, image::Rgb([50, 100, 150]))
        .save(images.join("speck.png"))
        .unwrap();
    let out = dir.join("out");
    let job = ExtractJob {
        input: images,
        out: out.clone(),
        weights: common::fixture("delg_tiny", "weights_delg.safetensors"),
        config: ExtractConfig {
            min_image_side: 1,
            ..ExtractConfig::default()
        },
        shard: None,
        only: None,
        crops: HashMap::new(),
        quiet: true,
        batch: None,
    };
    // With no image extracted the job fails as a whole, naming errors.txt.
    let err = run_extract(&gpu, &job).unwrap_err().to_string();
    assert!(err.contains("none of its 1 images"), "{err}");
    let errors = std::fs::read_to_string(out.join("errors.txt")).unwrap();
    assert!(
        errors.starts_with("speck.png\t") && errors.contains("too small"),
        "{errors}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
