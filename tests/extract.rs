//! `extract` on real collections: bad files are reported and skipped while
//! every valid image is extracted, a run killed midway resumes to outputs
//! identical to an uninterrupted run, and real photos from ../shared/data
//! extract with a small model.

use std::path::{Path, PathBuf};

mod common;

use common::tiny_weights_seeded;
use delg_gpu::io::features::FeatureSet;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::jobs::extract::{run_extract, ExtractConfig, ExtractJob};
use delg_gpu::model::params::random_weights;
use delg_gpu::model::resnet::{Layout, ResNetConfig};
use delg_gpu::testing::test_gpu;

fn tiny_weights(path: &Path) {
    tiny_weights_seeded(path, 5);
}

/// A tiny DOLG model (one block per stage, width 8, 24-d descriptors) with random weights.
fn tiny_dolg_weights(path: &Path) {
    use delg_gpu::model::dolg::{self, DolgConfig};
    use delg_gpu::model::ModelConfig;
    let mut model = DolgConfig::new(ResNetConfig {
        blocks: [1, 1, 1, 1],
        width: 8,
        ..ResNetConfig::resnet50(Layout::Torchvision)
    });
    model.output_dim = 24;
    let (_, _, _, params) = dolg::inference_graph(&model, 1, 64, 64).unwrap();
    let mut w = random_weights(&params.specs, 3);
    w.metadata
        .extend(ModelConfig::Dolg(model).metadata().unwrap());
    w.save(path).unwrap();
}

fn small_config() -> ExtractConfig {
    ExtractConfig {
        max_image_size: Some(96),
        scales: vec![0.5, 1.0, 1.5],
        global_scales: vec![1],
        max_features: 50,
        binarize: true,
        ..Default::default()
    }
}

fn job(input: &Path, out: &Path, weights: &Path) -> ExtractJob {
    ExtractJob {
        input: input.to_path_buf(),
        out: out.to_path_buf(),
        weights: weights.to_path_buf(),
        config: small_config(),
        shard: None,
        only: None,
        crops: Default::default(),
        quiet: true,
        batch: None,
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-extract-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_files_are_reported_and_a_killed_run_resumes_to_identical_outputs() {
    let Some(gpu) = test_gpu() else { return };
    let root = temp("bad");
    let imgs = root.join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for i in 0..4 {
        render_scene(i, 0, 80)
            .save(imgs.join(format!("scene{i}.jpg")))
            .unwrap();
    }
    render_scene(9, 1, 120)
        .save(imgs.join("sub/nested.png"))
        .unwrap();
    // A 16-bit PNG with alpha.
    let wide = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(70, 50, |x, y| {
        image::Rgba([(x * 900) as u16, (y * 1200) as u16, 30000, 65535])
    });
    wide.save(imgs.join("sixteen_bit.png")).unwrap();
    // Bad ones: truncated JPEG, empty file, text named .jpg, a 1×1 image.
    let jpeg = std::fs::read(imgs.join("scene0.jpg")).unwrap();
    std::fs::write(imgs.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(imgs.join("empty.jpg"), b"").unwrap();
    std::fs::write(imgs.join("notes.jpg"), b"this is a text file").unwrap();
    image::RgbImage::new(1, 1)
        .save(imgs.join("tiny.png"))
        .unwrap();
    let weights = root.join("w.safetensors");
    tiny_weights(&weights);

    let straight = root.join("straight");
    let s = run_extract(&gpu, &job(&imgs, &straight, &weights)).unwrap();
    let errors = std::fs::read_to_string(straight.join("errors.txt")).unwrap();
    for bad in ["truncated.jpg", "empty.jpg", "notes.jpg", "tiny.png"] {
        assert!(
            errors.contains(bad),
            "{bad} is not reported in errors.txt:\n{errors}"
        );
    }
    assert_eq!((s.images, s.extracted_now, s.failed), (10, 6, 4), "{s:?}");
    let set = FeatureSet::load(&straight).unwrap();
    assert_eq!(
        set.ids,
        vec![
            "scene0.jpg",
            "scene1.jpg",
            "scene2.jpg",
            "scene3.jpg",
            "sixteen_bit.png",
            "sub/nested.png"
        ]
    );
    assert_eq!(set.global_dim, 256);
    assert!(
        set.offsets
            .windows(2)
            .all(|w| (1..=50).contains(&(w[1] - w[0]))),
        "every image keeps 1..=50 features at τ = 0: {:?}",
        set.offsets
    );

    // A run killed after three images, mid-write of the fourth: a torn journal and no final files.
    let killed = root.join("killed");
    run_extract(&gpu, &job(&imgs, &killed, &weights)).unwrap();
    let journal = std::fs::read(killed.join("journal.bin")).unwrap();
    let set_k = FeatureSet::load(&killed).unwrap();
    let per_image = journal.len() / set_k.len();
    std::fs::write(
        killed.join("journal.bin"),
        &journal[..per_image * 3 + per_image / 2],
    )
    .unwrap();
    for f in [
        "global.npy",
        "ids.txt",
        "local_offsets.npy",
        "local_descriptors.npy",
    ] {
        std::fs::remove_file(killed.join(f)).unwrap();
    }
    let resumed = run_extract(&gpu, &job(&imgs, &killed, &weights)).unwrap();
    assert_eq!(
        (resumed.resumed, resumed.extracted_now, resumed.failed),
        (3, 3, 4),
        "failed images are retried, finished ones are not: {resumed:?}"
    );
    for f in [
        "global.npy",
        "ids.txt",
        "local_offsets.npy",
        "local_descriptors.npy",
        "local_locations.npy",
        "local_scales.npy",
        "local_attention.npy",
        "local_descriptors_bin.npy",
    ] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(killed.join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
    // Another model or configuration must not mix into the same folder.
    let mut other = job(&imgs, &killed, &weights);
    other.config.max_features = 10;
    assert!(run_extract(&gpu, &other)
        .unwrap_err()
        .to_string()
        .contains("different extraction settings"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn feature_folders_of_different_models_do_not_mix() {
    let Some(gpu) = test_gpu() else { return };
    let root = temp("models");
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..2 {
        render_scene(i, 0, 80)
            .save(images.join(format!("{i}.png")))
            .unwrap();
    }
    let mut sets = Vec::new();
    for seed in [5, 6] {
        let weights = root.join(format!("w{seed}.safetensors"));
        tiny_weights_seeded(&weights, seed);
        let out = root.join(format!("out{seed}"));
        run_extract(&gpu, &job(&images, &out, &weights)).unwrap();
        sets.push((FeatureSet::load(&out).unwrap(), out));
    }
    let [(a, da), (b, db)] = &sets[..] else {
        unreachable!()
    };
    assert!(a.model_id.is_some() && a.model_id != b.model_id);
    a.check_same_model(da, a, da).unwrap();
    // Same sizes, other weights: refused, naming both folders.
    let err = a.check_same_model(da, b, db).unwrap_err().to_string();
    assert!(
        err.contains("other weights") && err.contains(&db.display().to_string()),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn dolg_features_extract_and_search_like_delg_ones() {
    use delg_gpu::jobs::search::global_search;
    let Some(gpu) = test_gpu() else { return };
    let root = temp("dolg");
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (scene, view) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        render_scene(scene, view, 72)
            .save(images.join(format!("{scene}_{view}.png")))
            .unwrap();
    }
    let weights = root.join("dolg.safetensors");
    tiny_dolg_weights(&weights);
    let out = root.join("out");
    let summary = run_extract(
        &gpu,
        &ExtractJob {
            config: ExtractConfig::for_arch("dolg"),
            ..job(&images, &out, &weights)
        },
    )
    .unwrap();
    assert_eq!(
        (
            summary.extracted_now,
            summary.failed,
            summary.local_features
        ),
        (4, 0, 0)
    );
    let set = FeatureSet::load(&out).unwrap();
    assert_eq!((set.len(), set.global_dim, set.local_dim), (4, 24, 0));
    let hits = global_search(&gpu, &set.global, &set.global, 24, 4).unwrap();
    for (q, h) in hits.iter().enumerate() {
        assert_eq!(h[0].db, q, "an image is its own nearest neighbour");
        assert!((h[0].score - 1.0).abs() < 1e-4);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn real_photos_extract_with_a_small_model() {
    let Some(gpu) = test_gpu() else { return };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/instance_retrieval_dev/ukbench/jpg");
    if !data.is_dir() {
        eprintln!("skipped: {} is absent", data.display());
        return;
    }
    let root = temp("real");
    let weights = root.join("w.safetensors");
    tiny_weights(&weights);
    let mut j = job(&data, &root.join("out"), &weights);
    j.only = Some(vec![
        "ukbench00000.jpg".into(),
        "ukbench00001.jpg".into(),
        "ukbench00008.jpg".into(),
    ]);
    let s = run_extract(&gpu, &j).unwrap();
    assert_eq!((s.extracted_now, s.failed), (3, 0));
    let set = FeatureSet::load(&root.join("out")).unwrap();
    // Locations are in original pixels (640×480), though images were capped at 96 px.
    assert!(set
        .locations
        .chunks(2)
        .all(|p| (0.0..=480.0).contains(&p[0]) && (0.0..=640.0).contains(&p[1])));
    assert!(
        set.locations.chunks(2).any(|p| p[1] > 300.0),
        "keypoints span the original width"
    );
    let g = &set.global;
    let dot = |a: usize, b: usize| {
        (0..256)
            .map(|k| g[a * 256 + k] * g[b * 256 + k])
            .sum::<f32>()
    };
    assert!((dot(0, 0) - 1.0).abs() < 1e-5);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn timing_by_stage_names_every_stage_and_changes_no_output() {
    use delg_gpu::jobs::extract::prepare_image;
    use delg_gpu::jobs::extract::Extractor;
    let Some(gpu) = test_gpu() else { return };
    let dir = temp("timing");
    let weights = dir.join("tiny.safetensors");
    tiny_weights(&weights);
    let image = dir.join("scene.png");
    render_scene(4, 0, 80).save(&image).unwrap();
    let cfg = small_config();
    let prepared = prepare_image(&image, &cfg, None).unwrap();
    let mut ex = Extractor::load(&gpu, &weights, cfg).unwrap();
    let plain = ex.extract(&prepared).unwrap();
    ex.timing = Some(Default::default());
    let timed = ex.extract(&prepared).unwrap();
    let times = ex.timing.take().unwrap();
    assert_eq!(times.images, 1);
    let stages: Vec<&str> = times.seconds.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        stages,
        [
            "upload",
            "pyramid (resize)",
            "backbone at scale 0.500",
            "heads",
            "backbone at scale 1.000",
            "backbone at scale 1.500",
            "readback",
            "selection, global aggregation"
        ]
    );
    assert!(times.seconds.iter().all(|(_, s)| *s >= 0.0));
    assert_eq!(plain.global, timed.global);
    assert_eq!(plain.local.descriptors, timed.local.descriptors);
    assert_eq!(plain.local.locations, timed.local.locations);
    assert!(ex.device_bytes() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_steady_state_creates_nothing_and_submits_once_per_image() {
    use delg_gpu::jobs::extract::prepare_image;
    use delg_gpu::jobs::extract::Extractor;
    if test_gpu().is_none() {
        return;
    }
    // A device of its own: tests running beside this one would add to the counts.
    let gpu = delg_gpu::gpu::Gpu::new(&Default::default()).unwrap();
    let dir = temp("steady");
    let weights = dir.join("tiny.safetensors");
    tiny_weights(&weights);
    let (first, second) = (dir.join("a.png"), dir.join("b.png"));
    render_scene(5, 0, 80).save(&first).unwrap();
    render_scene(6, 0, 80).save(&second).unwrap();
    let cfg = small_config();
    let mut ex = Extractor::load(&gpu, &weights, cfg.clone()).unwrap();
    ex.extract(&prepare_image(&first, &cfg, None).unwrap())
        .unwrap();
    let image = prepare_image(&second, &cfg, None).unwrap();
    let before = gpu.host_work();
    ex.extract(&image).unwrap();
    let work = gpu.host_work() - before;
    assert_eq!(
        (
            work.submissions,
            work.bind_groups,
            work.buffers,
            work.textures
        ),
        (1, 0, 0, 0),
        "{work:?}"
    );
    assert_eq!(
        work.bytes_uploaded,
        image.pixels.data.len() as u64 * 4,
        "{work:?}"
    );
    assert!(work.bytes_read_back > 0, "{work:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `extract --batch 3` against `--batch 1` on a collection whose two sizes
/// interleave, with two 3×3 images (too small for DELG's network: a batch
/// that fails runs its images alone, each reported) and a file that does not
/// decode in the middle: the same features, bit for bit, since no kernel's
/// reduction runs across images or depends on the batch size, in fewer
/// submissions. Both runs overlap groups (each submitted before the last
/// one is read back) and equal the synchronous `Extractor::extract` of each
/// image alone, which overlaps nothing.
fn batched_matches_unbatched(
    name: &str,
    weights: impl Fn(&Path),
    config: ExtractConfig,
    too_small_fail: bool,
) {
    use delg_gpu::jobs::extract::{prepare_image, Extractor, LocalFeatures};
    let config = ExtractConfig {
        min_image_side: 1,
        ..config
    };
    if test_gpu().is_none() {
        return;
    }
    // A device of its own: tests running beside this one would add to the counts.
    let gpu = delg_gpu::gpu::Gpu::new(&Default::default()).unwrap();
    let root = temp(name);
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..9 {
        let size = if i % 2 == 0 { 80 } else { 72 };
        render_scene(i, 0, size)
            .save(images.join(format!("scene{i}.png")))
            .unwrap();
    }
    // Sorted among the scenes, so they fail mid-collection.
    for i in 0..2 {
        render_scene(20 + i, 0, 3)
            .save(images.join(format!("scene{}tiny{i}.png", 3 + 2 * i)))
            .unwrap();
    }
    std::fs::write(images.join("scene4broken.png"), b"not a png").unwrap();
    let w = root.join("w.safetensors");
    weights(&w);
    let run = |batch: usize| {
        let out = root.join(format!("batch{batch}"));
        let before = gpu.host_work();
        let s = run_extract(
            &gpu,
            &ExtractJob {
                config: config.clone(),
                batch: Some(batch),
                ..job(&images, &out, &w)
            },
        )
        .unwrap();
        let work = gpu.host_work() - before;
        let failed = if too_small_fail { 3 } else { 1 };
        assert_eq!(
            (s.extracted_now, s.failed),
            (12 - failed, failed),
            "batch {batch}: {s:?}"
        );
        let errors = std::fs::read_to_string(out.join("errors.txt")).unwrap();
        assert_eq!(
            errors.contains("tiny0.png") && errors.contains("tiny1.png"),
            too_small_fail,
            "batch {batch}: {errors}"
        );
        assert!(
            errors.contains("scene4broken.png"),
            "batch {batch}: {errors}"
        );
        // Every submission went in before the previous group was read, but
        // the first and those after a group that failed (read already).
        assert!(
            work.submissions_overlapped >= work.submissions - 1 - failed as u64,
            "batch {batch}: {work:?}"
        );
        (FeatureSet::load(&out).unwrap(), work.submissions)
    };
    let (one, one_submissions) = run(1);
    let (three, three_submissions) = run(3);
    let mut ex = Extractor::load(&gpu, &w, config.clone()).unwrap();
    let before = gpu.host_work();
    let alone: Vec<_> = one
        .ids
        .iter()
        .map(|id| {
            let image = prepare_image(&images.join(id), &config, None).unwrap();
            ex.extract(&image).unwrap()
        })
        .collect();
    assert_eq!((gpu.host_work() - before).submissions_overlapped, 0);
    assert_eq!(
        one.global,
        alone
            .iter()
            .flat_map(|x| x.global.clone())
            .collect::<Vec<_>>()
    );
    let local = |pick: fn(&LocalFeatures) -> &Vec<f32>| -> Vec<f32> {
        alone.iter().flat_map(|x| pick(&x.local).clone()).collect()
    };
    assert_eq!(one.descriptors, local(|l| &l.descriptors));
    assert_eq!(one.locations, local(|l| &l.locations));
    assert_eq!(one.scales, local(|l| &l.scales));
    assert_eq!(one.attention, local(|l| &l.attention));
    // 9 images in groups of 3, 3, 2, 1 (and the tiny pair) against each alone.
    assert!(
        three_submissions + 5 <= one_submissions,
        "batch 3 submitted {three_submissions} times, batch 1 {one_submissions}"
    );
    assert_eq!(one.ids, three.ids);
    assert_eq!(one.global, three.global);
    assert_eq!(one.offsets, three.offsets);
    assert_eq!(one.descriptors, three.descriptors);
    assert_eq!(one.locations, three.locations);
    assert_eq!(one.scales, three.scales);
    assert_eq!(one.attention, three.attention);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn delg_batched_extraction_equals_one_image_at_a_time() {
    batched_matches_unbatched("batch-delg", tiny_weights, small_config(), true);
}

#[test]
fn dolg_batched_extraction_equals_one_image_at_a_time() {
    batched_matches_unbatched(
        "batch-dolg",
        tiny_dolg_weights,
        ExtractConfig {
            max_image_size: Some(96),
            ..ExtractConfig::for_arch("dolg")
        },
        false,
    );
}

#[test]
fn f16_extraction_agrees_with_f32_or_is_refused_with_the_fix() {
    use delg_gpu::jobs::extract::{agreement, prepare_image, Extractor};
    use delg_gpu::tensor::Precision;
    let Some(gpu) = test_gpu() else { return };
    let dir = temp("f16");
    let weights = dir.join("tiny.safetensors");
    tiny_weights(&weights);
    let half = ExtractConfig {
        precision: Precision::F16,
        ..small_config()
    };
    if !gpu.features.contains(wgpu::Features::SHADER_F16) {
        let err = Extractor::load(&gpu, &weights, half)
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(&gpu.facts.name) && msg.contains("--precision f32"),
            "{msg}"
        );
        return;
    }
    let mut full = Extractor::load(&gpu, &weights, small_config()).unwrap();
    let mut halved = Extractor::load(&gpu, &weights, half).unwrap();
    for seed in [3, 4] {
        let image = dir.join(format!("scene{seed}.png"));
        render_scene(seed, 0, 96).save(&image).unwrap();
        let prepared = prepare_image(&image, &small_config(), None).unwrap();
        let a = full.extract(&prepared).unwrap();
        let b = halved.extract(&prepared).unwrap();
        let m = agreement(&a, &b, 1.0);
        // Rounding every activation to f16 moves the descriptors by ~1e-3:
        // far below what separates images. NaN fails every comparison.
        assert!(m.global_cosine > 0.999, "{m:?}");
        assert!(m.keypoints > 10 && m.found_share() > 0.9, "{m:?}");
        assert!(m.descriptor_max < 0.05, "{m:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two images of one size in flight at once share the pixel buffer (the
/// second upload is ordered after the first submission) and take the two
/// readbacks each plan has from the start: each reads back its own features,
/// bit for bit those of running it alone, and nothing is created.
#[test]
fn two_batches_in_flight_read_back_their_own_images() {
    use delg_gpu::jobs::extract::{prepare_image, Extractor};
    if test_gpu().is_none() {
        return;
    }
    // A device of its own: tests running beside this one would add to the counts.
    let gpu = delg_gpu::gpu::Gpu::new(&Default::default()).unwrap();
    let dir = temp("in-flight");
    let weights = dir.join("tiny.safetensors");
    tiny_weights(&weights);
    let cfg = small_config();
    let images: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.join(format!("{i}.png"));
            render_scene(30 + i, 0, 80).save(&path).unwrap();
            prepare_image(&path, &cfg, None).unwrap()
        })
        .collect();
    let mut ex = Extractor::load(&gpu, &weights, cfg.clone()).unwrap();
    let alone: Vec<_> = images.iter().map(|img| ex.extract(img).unwrap()).collect();
    let before = gpu.host_work();
    let first = ex.submit_batch(&[&images[0]]).unwrap();
    let second = ex.submit_batch(&[&images[1]]).unwrap();
    let mut both = ex.finish(first).unwrap();
    both.extend(ex.finish(second).unwrap());
    let work = gpu.host_work() - before;
    assert_eq!(
        (work.submissions, work.submissions_overlapped, work.buffers),
        (2, 1, 0),
        "{work:?}"
    );
    for (x, y) in both.into_iter().map(Result::unwrap).zip(&alone) {
        assert_eq!(x.global, y.global);
        assert_eq!(x.local.descriptors, y.local.descriptors);
        assert_eq!(x.local.locations, y.local.locations);
        assert_eq!(x.local.attention, y.local.attention);
    }
    let before = gpu.host_work();
    let first = ex.submit_batch(&[&images[0]]).unwrap();
    let second = ex.submit_batch(&[&images[1]]).unwrap();
    drop(first);
    let again = ex.finish(second).unwrap().pop().unwrap().unwrap();
    let work = gpu.host_work() - before;
    assert_eq!(work.buffers, 0, "{work:?}");
    assert_eq!(again.global, alone[1].global);
    // The dropped batch's readbacks are free again: a run alone still works.
    assert_eq!(ex.extract(&images[0]).unwrap().global, alone[0].global);
    let _ = std::fs::remove_dir_all(&dir);
}
