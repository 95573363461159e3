//! A training run interrupted and resumed ends with exactly the weights of an
//! uninterrupted run with the same seed, with and without gradient
//! accumulation; accumulated gradients are the mean of the micro-batch
//! gradients; `train --plan-only` reports what the executables allocate; and
//! the stop-gradient keeps the local losses out of the backbone.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;

use delg_gpu::gpu::{Gpu, GpuOptions};
use delg_gpu::graph::TensorKind;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::jobs::extract::{Extractor, PreparedImage};
use delg_gpu::jobs::train::{
    build_step, planned_memory, run_train, upload_state, validation_executable, DataSource,
    Schedule, TrainConfig, TrainJob, TrainModel, GRAD_SUM,
};
use delg_gpu::model::delg::{training_graph, DelgConfig, DelgLossConfig};
use delg_gpu::model::dolg::{DolgConfig, DolgLossConfig, MultiAtrous};
use delg_gpu::model::params::random_weights;
use delg_gpu::model::resnet::{Layout, ResNetConfig};
use delg_gpu::tensor::{HostTensor, Rng, Tensor};
use delg_gpu::testing::test_gpu;

fn tiny() -> DelgConfig {
    let mut m = DelgConfig::new(ResNetConfig {
        blocks: [1, 1, 1, 1],
        width: 8,
        ..ResNetConfig::resnet50(Layout::Delg)
    });
    m.attention_dim = 8;
    m.local_dim = 8;
    m
}

fn config(classes: usize) -> TrainConfig {
    let model = tiny();
    let loss = DelgLossConfig::paper(classes);
    TrainConfig {
        net: TrainModel::Delg { model, loss },
        batch: 4,
        accumulate: 1,
        image_size: 48,
        steps: 5,
        lr: 0.01,
        schedule: Schedule::Cosine { warmup: 2 },
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
        clip_norm: 10.0,
        bn_momentum: 0.1,
        seed: 3,
        checkpoint_every: 0,
        val_fraction: 0.0,
        flip: true,
    }
}

/// A tiny DOLG with the multi-atrous block and the CurricularFace head, whose
/// statistic t is state a resumed run must restore.
fn tiny_dolg(classes: usize) -> TrainModel {
    let mut model = DolgConfig::new(tiny().backbone);
    model.output_dim = 16;
    model.multi_atrous = Some(MultiAtrous {
        dilations: vec![1, 2, 3],
        branch_dim: 8,
    });
    let loss = DolgLossConfig::official(classes);
    assert!(loss.curricular, "the official head re-weights");
    TrainModel::Dolg { model, loss }
}

/// Resumes at step 1 of 5; with accumulation, each step is `accumulate`
/// micro-batches of 4 / `accumulate` images.
fn resume_ends_where_an_uninterrupted_run_ends(accumulate: usize, dolg: bool) {
    let Some(gpu) = test_gpu() else { return };
    let root = std::env::temp_dir().join(format!(
        "delg-resume-{}-{accumulate}-{dolg}",
        std::process::id()
    ));
    let data = root.join("data");
    for class in 0..3u64 {
        let dir = data.join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for view in 0..3 {
            render_scene(class, view, 64)
                .save(dir.join(format!("{view}.png")))
                .unwrap();
        }
    }
    let job = |run: &str| TrainJob {
        data: DataSource::Folders(data.clone()).load().unwrap(),
        run: root.join(run),
        init: None,
        config: TrainConfig {
            batch: 4 / accumulate,
            accumulate,
            net: if dolg { tiny_dolg(3) } else { config(3).net },
            ..config(3)
        },
        max_pixels: delg_gpu::io::images::DEFAULT_MAX_PIXELS,
        quiet: true,
    };

    run_train(&gpu, &job("straight"), &AtomicBool::new(false)).unwrap();
    // Ctrl-C before the first step ends: one step, a checkpoint, return.
    let interrupted = run_train(&gpu, &job("resumed"), &AtomicBool::new(true)).unwrap();
    assert_eq!(interrupted.step, 1);
    let resumed = run_train(&gpu, &job("resumed"), &AtomicBool::new(false)).unwrap();
    assert_eq!(resumed.step, 5);

    let a = WeightFile::load(&root.join("straight/checkpoint.safetensors")).unwrap();
    let b = WeightFile::load(&root.join("resumed/checkpoint.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        assert_eq!(
            Some(t),
            b.tensors.get(name),
            "'{name}' differs after resuming"
        );
    }
    let metrics = std::fs::read_to_string(root.join("resumed/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 5, "each step logged once");
    if dolg {
        assert!(
            a.tensors["desc_cls.t"].data[0] != 0.0,
            "CurricularFace t never moved"
        );
    }
    // The trained model loads straight into the extractor.
    let model = root.join("resumed/model.safetensors");
    let mut extractor = Extractor::load(&gpu, &model, Default::default()).unwrap();
    let (h, w) = (40, 56);
    let pixels = Rng::new(1).tensor([1, h, w, 3], -1.0, 1.0);
    let out = extractor
        .extract(&PreparedImage {
            pixels,
            resize_factor: (1.0, 1.0),
        })
        .unwrap();
    assert!(out.global.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_run_ends() {
    resume_ends_where_an_uninterrupted_run_ends(1, false);
}

#[test]
fn resumed_run_with_accumulation_ends_where_an_uninterrupted_run_ends() {
    resume_ends_where_an_uninterrupted_run_ends(2, false);
}

#[test]
fn resumed_dolg_run_ends_where_an_uninterrupted_run_ends() {
    resume_ends_where_an_uninterrupted_run_ends(1, true);
}

#[test]
fn accumulated_gradient_is_the_mean_of_the_micro_batch_gradients() {
    let Some(gpu) = test_gpu() else { return };
    let cfg = TrainConfig {
        batch: 2,
        accumulate: 2,
        ..config(3)
    };
    let step = build_step(&cfg).unwrap();
    let file = random_weights(&step.specs, 5);
    let store = upload_state(&gpu, &step, &file, &cfg).unwrap();
    let (micro, _) = step.executables(&gpu, &store).unwrap();
    let mut rng = Rng::new(9);
    let batches: Vec<_> = [[0.0, 1.0], [2.0, 0.0]]
        .into_iter()
        .map(|labels| {
            let s = cfg.image_size;
            let images = rng.tensor([2, s, s, 3], -1.0, 1.0);
            (images, Tensor::new([2], labels.to_vec()).unwrap())
        })
        .collect();
    let sums = || -> BTreeMap<String, Vec<f32>> {
        store
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with(GRAD_SUM))
            .map(|(n, t)| (n.clone(), t.download(&gpu).unwrap().data))
            .collect()
    };
    let run = |(images, labels): &(HostTensor, HostTensor), keep: f32| {
        micro.set_input(step.images, images).unwrap();
        micro.set_input(step.labels, labels).unwrap();
        micro
            .set_input(step.keep, &Tensor::new([1], vec![keep]).unwrap())
            .unwrap();
        micro.run().unwrap();
    };
    // Each micro-batch alone (keep = 0 starts a new sum): g_i / 2.
    run(&batches[0], 0.0);
    let first = sums();
    run(&batches[1], 0.0);
    let second = sums();
    // Both into one sum: g_0 / 2 + g_1 / 2, the gradient of the 4-image mean loss.
    run(&batches[0], 0.0);
    run(&batches[1], 1.0);
    let both = sums();
    assert!(!both.is_empty());
    for (name, got) in &both {
        let want: Vec<f32> = first[name]
            .iter()
            .zip(&second[name])
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(got, &want, "'{name}': the sum is not g_0/2 + g_1/2");
    }
    assert_ne!(first, second, "both micro-batches gave one gradient");
}

#[test]
fn local_losses_never_reach_the_backbone() {
    let model = tiny();
    let loss = DelgLossConfig::paper(4);
    let (mut g, t, params) = training_graph(&model, &loss, 2, 32, 0.1).unwrap();
    let ids: HashMap<String, _> = g
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == TensorKind::Param)
        .map(|(k, i)| (i.name.clone(), delg_gpu::graph::TensorId(k)))
        .collect();
    let backbone: Vec<_> = params
        .specs
        .iter()
        .filter(|s| {
            s.name.starts_with("layer") || s.name.starts_with("conv1") || s.name.starts_with("bn1.")
        })
        .map(|s| ids[&s.name])
        .collect();
    let heads: Vec<_> = [
        "attention.conv1.weight",
        "autoencoder.encoder.weight",
        "autoencoder.decoder.weight",
        "attention_classifier.weight",
    ]
    .iter()
    .map(|n| ids[*n])
    .collect();
    // The local losses alone give the heads gradients and the backbone none.
    let local = g
        .apply1(
            delg_gpu::ops::elementwise::Binary::new(delg_gpu::ops::elementwise::BinaryKind::Add),
            &[t.attention_loss, t.reconstruction_loss],
        )
        .unwrap();
    let grads = g.grad(local, &[backbone.clone(), heads].concat()).unwrap();
    let (bb, hd) = grads.split_at(backbone.len());
    assert!(
        bb.iter().all(Option::is_none),
        "a backbone parameter gets gradient from the local losses"
    );
    assert!(
        hd.iter().all(Option::is_some),
        "every local head parameter learns from the local losses"
    );
    // The global loss does reach every backbone parameter with a gradient path.
    let grads = g.grad(t.global_loss, &backbone).unwrap();
    assert!(grads.iter().filter(|g| g.is_some()).count() > backbone.len() / 2);
}

#[test]
fn planned_memory_is_what_the_executables_allocate() {
    let Some(gpu) = test_gpu() else { return };
    let cfg = TrainConfig {
        accumulate: 2,
        ..config(3)
    };
    let rows: HashMap<&str, u64> = planned_memory(&gpu, &cfg).unwrap().into_iter().collect();
    let step = build_step(&cfg).unwrap();
    let store = upload_state(&gpu, &step, &random_weights(&step.specs, 1), &cfg).unwrap();
    let (micro, update) = step.executables(&gpu, &store).unwrap();
    assert_eq!(
        rows["activations and gradients (planned)"],
        micro.memory.total_bytes()
    );
    assert_eq!(
        rows["clipping and SGD (planned)"],
        update.memory.total_bytes()
    );
    let stored = |prefix: &str| -> u64 {
        store
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| t.shape.bytes())
            .sum()
    };
    assert_eq!(rows["gradient sums"], stored(GRAD_SUM));
    assert_eq!(rows["SGD velocities"], stored("optimizer.velocity."));
    let all: u64 = store.tensors.values().map(|t| t.shape.bytes()).sum();
    assert_eq!(
        rows["weights and batch-norm statistics"],
        all - stored(GRAD_SUM) - stored("optimizer.velocity.")
    );
    let bigger = planned_memory(&gpu, &TrainConfig { batch: 8, ..cfg }).unwrap();
    assert!(bigger[4].1 > rows["activations and gradients (planned)"]);
}

#[test]
fn declared_scratch_is_what_a_fresh_device_allocates() {
    // A fresh device per matmul variant, so that no other test's plans share
    // its scratch: after a whole training step (validation included), the
    // device holds exactly the scratch `planned_memory` declared.
    if test_gpu().is_none() {
        return;
    }
    let cfg = TrainConfig {
        accumulate: 2,
        ..config(3)
    };
    for gpu in Gpu::every_variant(&GpuOptions::default()).unwrap() {
        let rows: HashMap<&str, u64> = planned_memory(&gpu, &cfg).unwrap().into_iter().collect();
        let declared = rows["kernel scratch (declared by the ops)"];
        assert_eq!(gpu.scratch_bytes(), 0);
        let step = build_step(&cfg).unwrap();
        let store = upload_state(&gpu, &step, &random_weights(&step.specs, 1), &cfg).unwrap();
        let (micro, update) = step.executables(&gpu, &store).unwrap();
        micro.run().unwrap();
        update.run().unwrap();
        let held = gpu.scratch_bytes();
        assert!(held > 0 && held <= declared, "{held} > {declared}");
        let (validation, ..) = validation_executable(&gpu, &cfg, &step, &store, cfg.batch).unwrap();
        validation.run().unwrap();
        assert_eq!(gpu.scratch_bytes(), declared, "{}", gpu.tuning.describe());
    }
}
