//! The library API (`delg_gpu::{Model, Extractor, ...}`) against the command
//! line: the same weights and images give the same arrays through both, an
//! image in memory the same features as its file, and bad inputs one error.

use std::path::{Path, PathBuf};
use std::process::Command;

use delg_gpu::testing::test_gpu;
use delg_gpu::{write_features, Extractor, FeatureSet, Model};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_library_extracts_what_the_command_line_extracts() {
    let Some(gpu) = test_gpu() else { return };
    let dir = temp("vs-cli");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for scene in 0..3 {
        delg_gpu::jobs::demo::render_scene(scene, 0, 112)
            .save(images.join(format!("s{scene}.png")))
            .unwrap();
    }
    let weights = dir.join("tiny.safetensors");
    Model::tiny_random(11).unwrap().save(&weights).unwrap();
    let cli_out = dir.join("cli");
    let out = Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(["extract", images.to_str().unwrap(), "--weights"])
        .arg(&weights)
        .arg("--out")
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = FeatureSet::load(&cli_out).unwrap();

    let model = Model::load(&weights).unwrap();
    let mut extractor = Extractor::new(&gpu, &model).unwrap();
    for (i, id) in cli.ids.iter().enumerate() {
        let mut f = extractor.extract_file(&images.join(id)).unwrap();
        f.id = id.clone();
        assert_eq!(f, cli.image(i), "{id}: library and CLI differ");
        assert!(f.num_local() > 0, "{id} has keypoints to compare");
    }
}

#[test]
fn an_image_in_memory_gives_the_features_of_its_png_file() {
    let Some(gpu) = test_gpu() else { return };
    let dir = temp("memory");
    let image = delg_gpu::jobs::demo::render_scene(8, 2, 100);
    let path = dir.join("scene.png");
    image.save(&path).unwrap();
    let mut extractor = Extractor::new(&gpu, &Model::tiny_random(2).unwrap()).unwrap();
    let from_file = extractor.extract_file(&path).unwrap();
    let from_memory = extractor.extract(&image).unwrap();
    assert_eq!(from_memory.id, "");
    assert_eq!(
        delg_gpu::Features {
            id: from_file.id.clone(),
            ..from_memory
        },
        from_file
    );
}

#[test]
fn bad_inputs_are_one_error_each() {
    let Some(gpu) = test_gpu() else { return };
    let mut extractor = Extractor::new(&gpu, &Model::tiny_random(2).unwrap()).unwrap();
    let empty = delg_gpu::RgbImage::new(0, 0);
    let err = extractor.extract(&empty).unwrap_err().to_string();
    assert!(err.contains("0×0"), "{err}");
    let err = extractor
        .extract_file(Path::new("/no/such/image.png"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/image.png"), "{err}");

    let empty_set = FeatureSet::default();
    let err = delg_gpu::search(&gpu, &empty_set, &empty_set, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images"), "{err}");

    let dir = temp("bad-writes");
    let err = write_features(&dir.join("none"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images"), "{err}");
    let ragged = delg_gpu::Features {
        id: "ragged".into(),
        global: vec![1.0],
        descriptors: vec![0.0; 5],
        locations: vec![0.0; 4],
        scales: vec![1.0; 2],
        attention: vec![1.0; 2],
    };
    let err = write_features(&dir.join("ragged"), &[ragged])
        .unwrap_err()
        .to_string();
    assert!(err.contains("'ragged'"), "{err}");
}
