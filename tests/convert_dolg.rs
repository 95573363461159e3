//! The official DOLG checkpoint converter (tools/convert_dolg_pyth.py), checked
//! end to end on a small random model with the official module structure
//! (fixture written by tools/test_convert_dolg.py): the converted weights,
//! run by delg-gpu's extractor on RGB pixels, give the descriptor the source
//! model gives on the BGR image the official code feeds it.

mod common;

use common::{close, cosine, fixture};
use delg_gpu::jobs::extract::Extractor;
use delg_gpu::jobs::extract::{l2_normalize, prepare_image, ExtractConfig};
use delg_gpu::testing::test_gpu;

#[test]
fn converted_official_checkpoint_matches_its_source_model() {
    let Some(gpu) = test_gpu() else { return };
    let dir = "convert_dolg";
    let cfg = ExtractConfig {
        scales: vec![1.0],
        global_scales: vec![0],
        ..ExtractConfig::for_arch("dolg")
    };
    let mut extractor =
        Extractor::load(&gpu, &fixture(dir, "weights.safetensors"), cfg.clone()).unwrap();
    let image = prepare_image(&fixture(dir, "image.png"), &cfg, None).unwrap();
    let got = extractor.extract(&image).unwrap().global;
    let mut want = common::load(dir, "descriptor.npy").data;
    l2_normalize(&mut want);
    close("descriptor", &got, &want, 1e-4);
    let c = cosine(&got, &want);
    assert!(c >= 0.99999, "cosine {c}");
}
