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
use delg_gpu::model::delg::{inference_graph, DelgConfig};
use delg_gpu::model::params::{load_params, oihw_to_hwio};
use delg_gpu::model::resnet::ParamSpec;
use delg_gpu::tensor::{HostTensor, Tensor};
use delg_gpu::testing::{normalized_max_error, scaled_max_error};

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
    let (g, input, out, params) = inference_graph(cfg, h, w).unwrap();
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
