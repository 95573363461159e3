//! Whole-model parity with the independent PyTorch re-statement of DELG in
//! tools/torch_delg_reference.py (fixtures in tests/fixtures/delg_tiny): the
//! extraction outputs, the three losses and every parameter gradient of a
//! training step, and the losses of 20 SGD steps, in both backbone layouts.

mod common;

use std::collections::HashMap;

use common::{
    check_gradients, check_sgd_steps, close_tensors, cosine, gradients_of, reference_train_config,
    run_delg, upload_unfolded,
};
use delg_gpu::graph::exec::Executable;
use delg_gpu::io::npy;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::extract::{select_local, ExtractConfig, LevelOutput};
use delg_gpu::jobs::train::{TrainConfig, TrainModel};
use delg_gpu::model::delg::{training_graph, DelgConfig, DelgLossConfig};
use delg_gpu::model::META_CONFIG;
use delg_gpu::tensor::{HostTensor, Tensor};
use delg_gpu::testing::test_gpu;

const DIR: &str = "delg_tiny";

fn fixture(name: &str) -> std::path::PathBuf {
    common::fixture(DIR, name)
}

fn load(name: &str) -> HostTensor {
    common::load(DIR, name)
}

fn model(layout: &str) -> (WeightFile, DelgConfig) {
    let w = WeightFile::load(&fixture(&format!("weights_{layout}.safetensors"))).unwrap();
    let cfg: DelgConfig = serde_json::from_str(&w.metadata[META_CONFIG]).unwrap();
    (w, cfg)
}

#[test]
fn extraction_outputs_match_pytorch() {
    let Some(gpu) = test_gpu() else { return };
    for layout in ["delg", "torchvision"] {
        let (file, cfg) = model(layout);
        let image = load(&format!("infer_{layout}_image.npy"));
        let outputs = run_delg(&gpu, &fixture("w"), &file, &cfg, &image);
        let mut maps = HashMap::new();
        for (got, name) in outputs.into_iter().zip(["global", "attention", "local"]) {
            let want = load(&format!("infer_{layout}_{name}.npy"));
            close_tensors(&format!("{layout} {name}"), &got, &want, 1e-4);
            maps.insert(name, (got, want));
        }
        // The global descriptor points the same way.
        let (g, w) = &maps["global"];
        let cosine = cosine(&g.data, &w.data);
        assert!(cosine >= 0.99999, "{layout}: global cosine {cosine}");
        // The same keypoints are selected from both attention maps (τ = their median).
        let (a, aw) = &maps["attention"];
        let (l, lw) = &maps["local"];
        let [_, mh, mw, _] = a.shape.nhwc("attention").unwrap();
        let mut sorted = aw.data.clone();
        sorted.sort_by(f32::total_cmp);
        let tau = sorted[sorted.len() / 2];
        let sel = ExtractConfig {
            max_features: 4,
            ..Default::default()
        };
        let level = |att: &HostTensor, loc: &HostTensor| LevelOutput {
            scale: 1.0,
            height: mh,
            width: mw,
            global: vec![],
            attention: att.data.clone(),
            descriptors: loc.data.clone(),
        };
        let ours = select_local(&[level(a, l)], tau, &sel, 32.0, (1.0, 1.0), cfg.local_dim);
        let theirs = select_local(&[level(aw, lw)], tau, &sel, 32.0, (1.0, 1.0), cfg.local_dim);
        assert!(!theirs.locations.is_empty());
        assert_eq!(
            ours.locations, theirs.locations,
            "{layout}: different keypoints"
        );
    }
}

/// The reference's losses: γ = √(global size) = 16 for the tiny model, not
/// the official 45.25 of a 2048-d descriptor.
fn reference_loss(cfg: &DelgConfig) -> DelgLossConfig {
    DelgLossConfig {
        arcface_scale: (cfg.global_dim as f32).sqrt(),
        ..DelgLossConfig::paper(5)
    }
}

fn train_config(cfg: DelgConfig) -> TrainConfig {
    let loss = reference_loss(&cfg);
    reference_train_config(TrainModel::Delg { model: cfg, loss }, 64)
}

#[test]
fn training_losses_and_gradients_match_pytorch() {
    let Some(gpu) = test_gpu() else { return };
    for layout in ["delg", "torchvision"] {
        let (file, cfg) = model(layout);
        let loss = reference_loss(&cfg);
        let (mut g, t, params) = training_graph(&cfg, &loss, 2, 64, 0.1).unwrap();
        let grads_file =
            WeightFile::load(&fixture(&format!("train_{layout}_grads.safetensors"))).unwrap();
        let grads = gradients_of(&mut g, t.total_loss, &grads_file);
        let mut store = upload_unfolded(&gpu, &params.specs, &file);
        store
            .insert(&gpu, "gem.p", &Tensor::new([1], vec![3.0]).unwrap())
            .unwrap();
        let mut targets = vec![
            t.total_loss,
            t.global_loss,
            t.attention_loss,
            t.reconstruction_loss,
        ];
        targets.extend(grads.iter().flatten());
        let exe = Executable::new(&gpu, &g, &targets, &store).unwrap();
        exe.set_input(t.images, &load(&format!("train_{layout}_images.npy")))
            .unwrap();
        exe.set_input(t.labels, &load(&format!("train_{layout}_labels.npy")))
            .unwrap();
        exe.run().unwrap();
        let (_, want_losses) =
            npy::read::<f64>(&fixture(&format!("train_{layout}_losses.npy"))).unwrap();
        for (i, lt) in targets[..4].iter().enumerate() {
            let got = exe.read(*lt).unwrap().data[0] as f64;
            let rel = (got - want_losses[i]).abs() / want_losses[i].abs().max(1e-12);
            assert!(
                rel <= 1e-3,
                "{layout} loss {i}: {got} vs {} (rel {rel:.2e})",
                want_losses[i]
            );
        }
        check_gradients(layout, &exe, &params.specs, &grads_file, &grads);
    }
}

#[test]
fn twenty_sgd_steps_track_pytorch() {
    let Some(gpu) = test_gpu() else { return };
    for layout in ["delg", "torchvision"] {
        let (file, cfg) = model(layout);
        check_sgd_steps(
            &gpu,
            layout,
            &train_config(cfg),
            &file,
            DIR,
            &format!("train_{layout}"),
            &format!("train_{layout}_sgd"),
        );
    }
}
