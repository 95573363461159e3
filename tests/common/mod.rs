//! What the model-parity tests share: running a DELG weight file's extraction
//! graph on one image, and comparing its outputs with a reference's.

use std::path::Path;
use std::sync::Arc;

use delg_gpu::gpu::Gpu;
use delg_gpu::graph::exec::Executable;
use delg_gpu::io::weights::WeightFile;
use delg_gpu::model::delg::{inference_graph, DelgConfig};
use delg_gpu::model::params::load_params;
use delg_gpu::ops::check::normalized_max_error;
use delg_gpu::tensor::{HostTensor, Tensor};

/// Global descriptor [1, G], attention [1, h, w, 1] and local descriptors
/// [1, h, w, L] of `image` [1, H, W, 3] (`path` names the weights in errors).
pub fn run_delg(
    gpu: &Arc<Gpu>,
    path: &Path,
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

/// Asserts the largest error is at most `tol` of the reference's largest magnitude.
pub fn close(what: &str, got: &HostTensor, want: &HostTensor, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what} shape");
    let want64: Vec<f64> = want.data.iter().map(|&v| v as f64).collect();
    let err = normalized_max_error(&got.data, &want64);
    assert!(
        err <= tol,
        "{what}: normalized max error {err:.2e} > {tol:.0e}"
    );
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / norm(a) / norm(b)
}
