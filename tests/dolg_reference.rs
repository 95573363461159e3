//! Whole-model parity of DOLG with the independent PyTorch re-statement in
//! tools/torch_dolg_reference.py (fixtures in tests/fixtures/dolg_tiny),
//! without and with the multi-atrous block: the final descriptor, the loss
//! and every parameter gradient of one training step, and 20 SGD steps with
//! either head and with the multi-atrous block (tools/train_parity_reference.py).

mod common;

use common::{
    check_gradients, check_sgd_steps, close, cosine, fixture, gradients_of, load,
    reference_train_config, upload_unfolded,
};
use delg_gpu::graph::exec::Executable;
use delg_gpu::io::npy;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::train::{TrainConfig, TrainModel};
use delg_gpu::model::dolg::{inference_graph, training_graph, DolgConfig, DolgLossConfig};
use delg_gpu::model::params::load_params;
use delg_gpu::model::META_CONFIG;
use delg_gpu::tensor::Tensor;
use delg_gpu::testing::test_gpu;

const DIR: &str = "dolg_tiny";

fn model(variant: &str) -> (WeightFile, DolgConfig) {
    let w = WeightFile::load(&fixture(DIR, &format!("weights_{variant}.safetensors"))).unwrap();
    let cfg: DolgConfig = serde_json::from_str(&w.metadata[META_CONFIG]).unwrap();
    (w, cfg)
}

#[test]
fn dolg_descriptor_matches_pytorch() {
    let Some(gpu) = test_gpu() else { return };
    for variant in ["plain", "ma"] {
        let (file, cfg) = model(variant);
        assert_eq!(cfg.multi_atrous.is_some(), variant == "ma");
        let image = load(DIR, &format!("infer_{variant}_image.npy"));
        let [_, h, w, _] = image.shape.nhwc("image").unwrap();
        let (g, input, descriptor, params) = inference_graph(&cfg, 1, h, w).unwrap();
        let path = fixture(DIR, "weights");
        let store = load_params(&gpu, &path, &file, &params, cfg.backbone.bn_eps(), &[]).unwrap();
        let exe = Executable::new(&gpu, &g, &[descriptor], &store).unwrap();
        exe.set_input(input, &image).unwrap();
        exe.run().unwrap();
        let got = exe.read(descriptor).unwrap();
        let want = load(DIR, &format!("infer_{variant}_descriptor.npy"));
        assert_eq!(got.shape, want.shape);
        close(
            &format!("{variant} descriptor"),
            &got.data,
            &want.data,
            1e-4,
        );
        let c = cosine(&got.data, &want.data);
        assert!(c >= 0.99999, "{variant}: descriptor cosine {c}");
    }
}

#[test]
fn dolg_training_loss_and_gradients_match_pytorch() {
    let Some(gpu) = test_gpu() else { return };
    for (variant, head) in [("plain", ""), ("ma", ""), ("plain", "_curricular")] {
        let (mut file, cfg) = model(variant);
        let mut loss_cfg = DolgLossConfig::official(5);
        // The plain fixtures are plain ArcFace; the curricular one says so below.
        loss_cfg.curricular = false;
        let (_, record) =
            npy::read::<f64>(&fixture(DIR, &format!("train_{variant}{head}_loss.npy"))).unwrap();
        if let [_, t0, _] = record[..] {
            loss_cfg.curricular = true;
            file.tensors.insert(
                "desc_cls.t".into(),
                Tensor::new([1], vec![t0 as f32]).unwrap(),
            );
        }
        let (mut g, t, params) = training_graph(&cfg, &loss_cfg, 2, 96, 0.1).unwrap();
        let grads_file = WeightFile::load(&fixture(
            DIR,
            &format!("train_{variant}{head}_grads.safetensors"),
        ))
        .unwrap();
        let grads = gradients_of(&mut g, t.loss, &grads_file);
        let store = upload_unfolded(&gpu, &params.specs, &file);
        let mut targets = vec![t.loss];
        targets.extend(grads.iter().flatten());
        let exe = Executable::new(&gpu, &g, &targets, &store).unwrap();
        exe.set_input(t.images, &load(DIR, &format!("train_{variant}_images.npy")))
            .unwrap();
        exe.set_input(t.labels, &load(DIR, &format!("train_{variant}_labels.npy")))
            .unwrap();
        exe.run().unwrap();
        let got = exe.read(t.loss).unwrap().data[0] as f64;
        let rel = (got - record[0]).abs() / record[0].abs();
        assert!(
            rel <= 1e-3,
            "{variant}{head} loss {got} vs {} (rel {rel:.2e})",
            record[0]
        );
        check_gradients(
            &format!("{variant}{head}"),
            &exe,
            &params.specs,
            &grads_file,
            &grads,
        );
        if let [_, _, t_new] = record[..] {
            let got = store
                .get("desc_cls.t")
                .unwrap()
                .download(&gpu)
                .unwrap()
                .data[0] as f64;
            assert!(
                (got - t_new).abs() < 1e-6,
                "CurricularFace t {got} vs {t_new}"
            );
        }
    }
}

#[test]
fn twenty_sgd_steps_track_pytorch_with_either_head_and_multi_atrous() {
    let Some(gpu) = test_gpu() else { return };
    for (variant, curricular, clip_norm) in [
        ("plain", false, 1.0),
        ("plain", true, 1.0),
        ("ma", false, 0.1),
    ] {
        let (mut file, cfg) = model(variant);
        assert_eq!(cfg.multi_atrous.is_some(), variant == "ma");
        let mut loss = DolgLossConfig::official(5);
        loss.curricular = curricular;
        if curricular {
            // The official head's t starts at 0.
            file.tensors
                .insert("desc_cls.t".into(), Tensor::new([1], vec![0.0]).unwrap());
        }
        // DOLG's optimiser (Nesterov, weight decay 1e-4) with a clip at a
        // global norm that keeps 20 float32 steps on the float64 path (0.1
        // for the multi-atrous model: see tools/train_parity_reference.py).
        let config = TrainConfig {
            nesterov: true,
            weight_decay: 1e-4,
            clip_norm,
            ..reference_train_config(TrainModel::Dolg { model: cfg, loss }, 96)
        };
        let head = if curricular { "_curricular" } else { "" };
        check_sgd_steps(
            &gpu,
            &format!("dolg {variant}{head}"),
            &config,
            &file,
            DIR,
            &format!("train_{variant}"),
            &format!("train_{variant}{head}_sgd"),
        );
    }
}
