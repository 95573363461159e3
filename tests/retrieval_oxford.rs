//! Acceptance test of RANSAC geometric verification on the Oxford
//! affine-covariant sequences: putative matches are drawn from each pair's
//! ground-truth homography (a grid of img1 points mapped into img j with
//! 1 px noise) plus as many random outliers (50%), and the estimated model
//! must map img1's corners within a few pixels of the true homography; on
//! the near-affine pairs, so must DELG's own affine RANSAC.
//!
//! The data folder is `<repo>/../shared/data/oxford_affine` or
//! `$DELG_SHARED_DATA/oxford_affine`; the test is skipped when neither exists.

use std::path::PathBuf;

use delg_gpu::retrieval::ransac::{ransac, Model, RansacParams, Transform};
use delg_gpu::tensor::Rng;

const SEQUENCES: [&str; 8] = [
    "graf", "wall", "boat", "bark", "bikes", "trees", "leuven", "ubc",
];
/// Corner-error bound (px, mean over img1's 4 corners) for the homography.
const HOMOGRAPHY_TOL: f64 = 3.0;
/// Pairs whose best affine approximation is this close (mean corner px) to
/// the homography count as near-affine; the affine RANSAC must then come
/// within `AFFINE_SLACK` px of that approximation's own corner error.
const NEAR_AFFINE: f64 = 3.0;
const AFFINE_SLACK: f64 = 1.0;

fn data_dir() -> Option<PathBuf> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let env = std::env::var_os("DELG_SHARED_DATA").map(PathBuf::from);
    [Some(beside), env]
        .into_iter()
        .flatten()
        .map(|d| d.join("oxford_affine"))
        .find(|d| d.join("meta.json").is_file())
}

fn read_h(path: &std::path::Path) -> Transform {
    let text = std::fs::read_to_string(path).unwrap();
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 9, "{}", path.display());
    Transform([[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]])
}

fn size(meta: &serde_json::Value, seq: &str, img: usize) -> [f64; 2] {
    let s = &meta[seq]["images"][img.to_string()]["size"];
    [s[0].as_f64().unwrap(), s[1].as_f64().unwrap()]
}

fn corner_error(truth: &Transform, model_yx: &Transform, w: f64, h: f64) -> f64 {
    truth.corner_error(&model_yx.swap_axes(), w, h)
}

struct Pair {
    /// img1 points, (y, x).
    src: Vec<[f64; 2]>,
    /// img j points, (y, x).
    dst: Vec<[f64; 2]>,
    inliers: usize,
}

fn putative_matches(h: &Transform, size1: [f64; 2], size_j: [f64; 2], seed: u64) -> Pair {
    let mut rng = Rng::new(seed);
    let (mut src, mut dst) = (vec![], vec![]);
    let (nx, ny) = (24, 18);
    for gy in 0..ny {
        for gx in 0..nx {
            let p = [
                (gx as f64 + 0.5) * size1[0] / nx as f64,
                (gy as f64 + 0.5) * size1[1] / ny as f64,
            ];
            let q = h.apply(p);
            let q = [q[0] + rng.normal(), q[1] + rng.normal()];
            if (0.0..size_j[0]).contains(&q[0]) && (0.0..size_j[1]).contains(&q[1]) {
                src.push([p[1], p[0]]);
                dst.push([q[1], q[0]]);
            }
        }
    }
    let inliers = src.len();
    for _ in 0..inliers {
        src.push([rng.range(0.0, size1[1]), rng.range(0.0, size1[0])]);
        dst.push([rng.range(0.0, size_j[1]), rng.range(0.0, size_j[0])]);
    }
    Pair { src, dst, inliers }
}

#[test]
fn ransac_recovers_ground_truth_homographies() {
    let Some(dir) = data_dir() else {
        println!("skipped: oxford_affine not found beside the repo or in $DELG_SHARED_DATA");
        return;
    };
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let mut failures = vec![];
    let mut near_affine = 0;
    println!(
        "pair        matches  H-inliers  H-corner-px  affine-approx-px  A-inliers  A-corner-px"
    );
    for (s, seq) in SEQUENCES.iter().enumerate() {
        let size1 = size(&meta, seq, 1);
        for j in 2..=6 {
            let truth = read_h(&dir.join(seq).join(format!("H1to{j}p")));
            let pair = putative_matches(&truth, size1, size(&meta, seq, j), (s * 10 + j) as u64);
            let [w, h] = size1;
            let hom = ransac(&pair.src, &pair.dst, &RansacParams::homography())
                .unwrap()
                .expect("a homography");
            let h_err = corner_error(&truth, &hom.model, w, h);
            // How far the best affine map is from the truth at the corners,
            // fitted to the noise-free correspondences.
            let truth_yx = truth.swap_axes();
            let exact: Vec<[f64; 2]> = pair.src[..pair.inliers]
                .iter()
                .map(|&p| truth_yx.apply(p))
                .collect();
            let approx = Transform::estimate(Model::Affine, &pair.src[..pair.inliers], &exact)
                .unwrap()
                .expect("an affine approximation");
            let approx_err = corner_error(&truth, &approx, w, h);
            let aff = ransac(&pair.src, &pair.dst, &RansacParams::default())
                .unwrap()
                .expect("an affine model");
            let a_err = corner_error(&truth, &aff.model, w, h);
            println!(
                "{seq:>6} 1→{j}  {:>7}  {:>9}  {h_err:>11.2}  {approx_err:>16.2}  {:>9}  {a_err:>11.2}",
                pair.src.len(),
                hom.num_inliers,
                aff.num_inliers,
            );
            if h_err >= HOMOGRAPHY_TOL || hom.num_inliers < pair.inliers {
                failures.push(format!("{seq} 1→{j} homography: {h_err:.2} px"));
            }
            if approx_err < NEAR_AFFINE {
                near_affine += 1;
                if a_err >= approx_err + AFFINE_SLACK {
                    failures.push(format!("{seq} 1→{j} affine: {a_err:.2} px"));
                }
            }
        }
    }
    assert!(near_affine >= 25, "only {near_affine} near-affine pairs");
    assert!(failures.is_empty(), "{failures:?}");
}
