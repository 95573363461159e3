//! Helpers shared by the whole-model parity tests against reference fixtures
//! (PyTorch re-statements and converted checkpoints).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::PathBuf;

use delg_gpu::gpu::Gpu;
use delg_gpu::graph::exec::{Executable, ParamStore};
use delg_gpu::graph::{Graph, TensorId, TensorKind};
use delg_gpu::io::npy;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::train::{
    build_step, download_state, upload_state, Schedule, TrainConfig, TrainModel,
};
use delg_gpu::model::delg::{inference_graph, DelgConfig};
use delg_gpu::model::params::{load_params, oihw_to_hwio};
use delg_gpu::model::resnet::ParamSpec;
use delg_gpu::tensor::{HostTensor, Tensor};
use delg_gpu::testing::{normalized_max_error, scaled_max_error};

/// A tiny DELG model (one block per stage, width 8, 16-d local
/// descriptors, τ = 0) with random weights from `seed`, saved at `path`.
pub fn tiny_weights_seeded(path: &std::path::Path, seed: u64) {
    use delg_gpu::model::resnet::{Layout, ResNetConfig};
    use delg_gpu::model::{META_ARCH, META_CONFIG, META_SCORE_THRESHOLD};
    let mut model = DelgConfig::new(ResNetConfig {
        blocks: [1, 1, 1, 1],
        width: 8,
        ..ResNetConfig::resnet50(Layout::Delg)
    });
    model.attention_dim = 8;
    model.local_dim = 16;
    let (_, _, _, params) = inference_graph(&model, 1, 64, 64).unwrap();
    let mut w = delg_gpu::model::params::random_weights(&params.specs, seed);
    w.metadata.insert(META_ARCH.into(), "delg".into());
    w.metadata
        .insert(META_CONFIG.into(), serde_json::to_string(&model).unwrap());
    w.metadata.insert(META_SCORE_THRESHOLD.into(), "0".into());
    w.save(path).unwrap();
}

pub fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

pub fn load(dir: &str, name: &str) -> HostTensor {
    let (shape, data) = npy::read::<f32>(&fixture(dir, name)).unwrap();
    Tensor::new(shape, data).unwrap()
}

pub fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    let err = normalized_max_error(got, &want64);
    assert!(
        err <= tol,
        "{what}: normalized max error {err:.2e} > {tol:.0e}"
    );
}

/// `close` for whole tensors, shapes included.
pub fn close_tensors(what: &str, got: &HostTensor, want: &HostTensor, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what} shape");
    close(what, &got.data, &want.data, tol);
}

/// Global descriptor [1, G], attention [1, h, w, 1] and local descriptors
/// [1, h, w, L] of `image` [1, H, W, 3] through a DELG weight file's
/// extraction graph (`path` names the weights in errors).
pub fn run_delg(
    gpu: &std::sync::Arc<Gpu>,
    path: &std::path::Path,
    file: &WeightFile,
    cfg: &DelgConfig,
    image: &HostTensor,
) -> [HostTensor; 3] {
    let [_, h, w, _] = image.shape.nhwc("image").unwrap();
    let (g, input, out, params) = inference_graph(cfg, 1, h, w).unwrap();
    let constants = [(
        "gem.p".to_string(),
        Tensor::new([1], vec![cfg.gem_p]).unwrap(),
    )];
    let store = load_params(gpu, path, file, &params, cfg.backbone.bn_eps(), &constants).unwrap();
    let targets = [out.global, out.attention, out.local];
    let exe = Executable::new(gpu, &g, &targets, &store).unwrap();
    exe.set_input(input, image).unwrap();
    exe.run().unwrap();
    targets.map(|t| exe.read(t).unwrap())
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / norm(a) / norm(b)
}

/// A file tensor in the device layout its role asks for.
fn device_layout(spec: &ParamSpec, t: &HostTensor) -> HostTensor {
    if spec.role.is_conv() {
        oihw_to_hwio(t).unwrap()
    } else {
        t.clone()
    }
}

/// Uploads every parameter of `specs` from `file`, unfolded (training graphs).
pub fn upload_unfolded(gpu: &Gpu, specs: &[ParamSpec], file: &WeightFile) -> ParamStore {
    let mut store = ParamStore::default();
    for s in specs {
        store
            .insert(gpu, &s.name, &device_layout(s, &file.tensors[&s.name]))
            .unwrap();
    }
    store
}

/// Gradient tensors of `loss` with respect to every parameter named in
/// `grads_file`, in the file's order.
pub fn gradients_of(
    g: &mut Graph,
    loss: TensorId,
    grads_file: &WeightFile,
) -> Vec<Option<TensorId>> {
    let ids: HashMap<String, TensorId> = g
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == TensorKind::Param)
        .map(|(k, i)| (i.name.clone(), TensorId(k)))
        .collect();
    let wrt: Vec<TensorId> = grads_file.tensors.keys().map(|n| ids[n]).collect();
    g.grad(loss, &wrt).unwrap()
}

/// Compares the gradients an executable computed with PyTorch's. Biases in
/// front of a training-mode batch norm have an exact zero gradient that both
/// sides only approximate: errors are measured against at least 1e-3 of the
/// largest gradient of the step.
pub fn check_gradients(
    what: &str,
    exe: &Executable,
    specs: &[ParamSpec],
    grads_file: &WeightFile,
    grads: &[Option<TensorId>],
) {
    let floor = 1e-3
        * grads_file
            .tensors
            .values()
            .flat_map(|t| &t.data)
            .fold(0f32, |m, v| m.max(v.abs()));
    for (name, gr) in grads_file.tensors.keys().zip(grads) {
        let spec = specs.iter().find(|s| &s.name == name).unwrap();
        let want = device_layout(spec, &grads_file.tensors[name]);
        match gr {
            Some(gr) => {
                let got = exe.read(*gr).unwrap().data;
                let want: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
                let err = scaled_max_error(&got, &want, floor as f64);
                assert!(
                    err <= 1e-3,
                    "{what} d{name}: error {err:.2e} of the gradient scale"
                );
            }
            None => assert!(
                want.data.iter().all(|v| *v == 0.0),
                "{what} {name}: no gradient here but PyTorch has one"
            ),
        }
    }
}

/// The training configuration of the references' 20 SGD steps: batch 2 of
/// `image_size`², lr 0.01, momentum 0.9, clipping at global norm 1,
/// batch-norm momentum 0.1 (PyTorch convention).
pub fn reference_train_config(net: TrainModel, image_size: usize) -> TrainConfig {
    TrainConfig {
        net,
        batch: 2,
        accumulate: 1,
        image_size,
        steps: 20,
        lr: 0.01,
        schedule: Schedule::Linear,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        clip_norm: 1.0,
        bn_momentum: 0.1,
        seed: 0,
        checkpoint_every: 0,
        val_fraction: 0.0,
        flip: false,
    }
}

/// Runs `config`'s training step 20 times on the fixture batch
/// `{batch}_images.npy` / `{batch}_labels.npy` from `file`'s weights at a
/// constant learning rate, and compares every step's loss with
/// `{reference}_losses.npy` and the state after the last step (parameters,
/// batch-norm running statistics, training state such as DOLG's t) with
/// `{reference}_final.safetensors`, within 1e-3 of max(1, largest value).
pub fn check_sgd_steps(
    gpu: &std::sync::Arc<Gpu>,
    what: &str,
    config: &TrainConfig,
    file: &WeightFile,
    dir: &str,
    batch: &str,
    reference: &str,
) {
    let step = build_step(config).unwrap();
    let store = upload_state(gpu, &step, file, config).unwrap();
    let (exe, update) = step.executables(gpu, &store).unwrap();
    exe.set_input(step.images, &load(dir, &format!("{batch}_images.npy")))
        .unwrap();
    exe.set_input(step.labels, &load(dir, &format!("{batch}_labels.npy")))
        .unwrap();
    exe.set_input(step.keep, &Tensor::new([1], vec![0.0]).unwrap())
        .unwrap();
    update
        .set_input(step.lr, &Tensor::new([1], vec![config.lr]).unwrap())
        .unwrap();
    let (_, want) = npy::read::<f64>(&fixture(dir, &format!("{reference}_losses.npy"))).unwrap();
    assert_eq!(want.len(), 20);
    for (i, w) in want.iter().enumerate() {
        exe.run().unwrap();
        update.run().unwrap();
        let got = exe.read(step.outputs[0]).unwrap().data[0] as f64;
        let err = (got - w).abs() / w.abs().max(1.0);
        assert!(
            err <= 1e-3,
            "{what} step {i}: loss {got} vs {w} (error {err:.2e})"
        );
    }
    let state = download_state(gpu, &step, &store, false).unwrap();
    let want = WeightFile::load(&fixture(dir, &format!("{reference}_final.safetensors"))).unwrap();
    let mut running = 0;
    for (name, w) in &want.tensors {
        let got = &state.tensors[name];
        assert_eq!(got.shape, w.shape, "{what} {name}");
        let w64: Vec<f64> = w.data.iter().map(|&v| v as f64).collect();
        let err = scaled_max_error(&got.data, &w64, 1.0);
        assert!(err <= 1e-3, "{what} {name} after 20 steps: error {err:.2e}");
        running += usize::from(name.contains("running_"));
    }
    assert!(running > 0, "{what}: no running statistics compared");
}
