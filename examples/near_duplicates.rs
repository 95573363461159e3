//! Finds near-duplicates in a folder: every image's nearest neighbours by
//! global descriptor, each candidate pair verified by local matching and
//! RANSAC, pairs printed by inliers (then similarity), best first.
//!
//!     cargo run --release --example near_duplicates -- IMAGES [WEIGHTS]
//!
//! Without arguments it generates three scenes, a second view of one and an
//! exact copy of another, and uses a tiny random model.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use delg_gpu::{
    image_files, match_features, search, write_features, Extractor, FeatureSet, Gpu, GpuOptions,
    MatchParams, RansacParams,
};

/// Neighbours checked per image.
const NEIGHBOURS: usize = 5;
/// Pairs with at least this many RANSAC inliers are reported as duplicates.
/// Unrelated images still get some (RANSAC fits chance matches, more so in
/// small images): tune it on a few known pairs of your collection.
const MIN_INLIERS: usize = 40;

fn main() {
    common::main(run)
}

fn run(args: &[String]) -> delg_gpu::Result<()> {
    let images = match args.first() {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = common::scratch("duplicates")?;
            for scene in 0..3 {
                let image = delg_gpu::render_scene(scene, 0, 128);
                common::save(&image, &dir.join(format!("scene{scene}.png")))?;
            }
            let copy = delg_gpu::render_scene(0, 0, 128);
            common::save(&copy, &dir.join("scene0_copy.png"))?;
            let other_view = delg_gpu::render_scene(1, 1, 128);
            common::save(&other_view, &dir.join("scene1_view1.png"))?;
            dir
        }
    };
    let files = image_files(&images)?;
    let gpu = Gpu::new(&GpuOptions::default())?;
    let model = common::model(args.get(1))?;
    let mut extractor = Extractor::new(&gpu, &model)?;
    let mut features = extractor.extract_files(&files)?;
    for (f, path) in features.iter_mut().zip(&files) {
        f.id = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into();
    }
    // Through a feature folder, as a real collection would be stored.
    let store = common::scratch("duplicates-features")?;
    write_features(&store, &features)?;
    let set = FeatureSet::load(&store)?;

    let hits = search(&gpu, &set, &set, NEIGHBOURS.min(set.len()))?;
    // Each unordered pair once: (first, second) → global similarity.
    let mut pairs = BTreeMap::new();
    for (q, ranking) in hits.iter().enumerate() {
        for hit in ranking.iter().filter(|h| h.db != q) {
            pairs.insert((q.min(hit.db), q.max(hit.db)), hit.score);
        }
    }
    let mut verified = Vec::new();
    for (&(a, b), &score) in &pairs {
        let m = match_features(
            &set.image(a),
            &set.image(b),
            &MatchParams::default(),
            &RansacParams::default(),
        )?;
        verified.push((m.inliers, score, a, b));
    }
    verified.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.total_cmp(&x.1)));
    println!("inliers  similarity  pair");
    for (inliers, score, a, b) in verified {
        let verdict = if inliers >= MIN_INLIERS {
            "  duplicate"
        } else {
            ""
        };
        println!(
            "{inliers:>7}  {score:>10.4}  {} ~ {}{verdict}",
            set.ids[a], set.ids[b]
        );
    }
    Ok(())
}
