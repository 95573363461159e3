//! The converters in tools/ (convert_torch.py, convert_delg_tf2.py) against
//! their source frameworks: tools/test_converters.py built a small random
//! model in PyTorch and in Keras (the official DELG TF2 classes' names),
//! converted it, and ran it in that framework on one image. Here the
//! converted files load through the extractor and their extraction graph
//! reproduces the framework's outputs (fixtures in tests/fixtures/convert).

mod common;

use std::path::PathBuf;

use common::{close_tensors, cosine, run_delg};
use delg_gpu::io::npy;
use delg_gpu::jobs::extract::ExtractConfig;
use delg_gpu::jobs::extract::Extractor;
use delg_gpu::tensor::{HostTensor, Tensor};
use delg_gpu::testing::test_gpu;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/convert")
        .join(name)
}

fn load(name: &str) -> HostTensor {
    let (shape, data) = npy::read::<f32>(&fixture(name)).unwrap();
    Tensor::new(shape, data).unwrap()
}

fn check(source: &str) {
    let Some(gpu) = test_gpu() else { return };
    let path = fixture(&format!("{source}_weights.safetensors"));
    // The file is complete for extraction: metadata, names and shapes.
    let extract = ExtractConfig {
        score_threshold: Some(0.0),
        ..Default::default()
    };
    let extractor = Extractor::load(&gpu, &path, extract).unwrap();
    let file = delg_gpu::io::weights::WeightFile::load(&path).unwrap();
    let image = load("image.npy");
    let delg_gpu::model::ModelConfig::Delg(model) = &extractor.model else {
        panic!("{source}: the converter wrote a non-DELG model");
    };
    let [global, attention, local] = run_delg(&gpu, &path, &file, model, &image);
    let want = |name: &str| load(&format!("{source}_{name}.npy"));
    let g = cosine(&global.data, &want("global").data);
    assert!(g >= 0.99999, "{source}: global descriptor cosine {g}");
    close_tensors(&format!("{source} global"), &global, &want("global"), 1e-4);
    close_tensors(
        &format!("{source} attention"),
        &attention,
        &want("attention"),
        1e-4,
    );
    close_tensors(&format!("{source} local"), &local, &want("local"), 1e-4);
}

#[test]
fn pytorch_checkpoint_converts_to_the_same_model() {
    check("torch");
}

#[test]
fn official_tf2_checkpoint_converts_to_the_same_model() {
    check("tf2");
}
