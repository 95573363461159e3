//! The persisted pipeline cache, through the CLI: written where
//! DELG_GPU_CACHE_DIR says, replaced when corrupt, skipped on request, and
//! never a reason for different features.

use std::path::{Path, PathBuf};
use std::process::Command;

use delg_gpu::testing::test_gpu;

fn run(cache: &Path, args: &[&Path]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .env("DELG_GPU_CACHE_DIR", cache)
        .args(args)
        .output()
        .expect("run delg-gpu");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "delg-gpu {args:?} failed: {stderr}");
    stderr
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_corrupt_or_absent_cache_changes_nothing_but_speed() {
    if test_gpu().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("delg-plc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (images, cache, unused) = (dir.join("images"), dir.join("cache"), dir.join("unused"));
    std::fs::create_dir_all(&images).unwrap();
    let p = Path::new;
    run(
        &unused,
        &[
            p("demo"),
            p("--pair"),
            p("--out"),
            &dir,
            p("--size"),
            p("96"),
        ],
    );
    std::fs::rename(dir.join("scene.png"), images.join("scene.png")).unwrap();
    let weights = dir.join("tiny.safetensors");
    run(
        &unused,
        &[
            p("init-weights"),
            p("--depth"),
            p("tiny"),
            p("--out"),
            &weights,
        ],
    );
    let extract = |cache: &Path, out: &str, extra: &[&Path]| {
        let out = dir.join(out);
        let mut args = extra.to_vec();
        args.extend([
            p("extract"),
            &images,
            p("--weights"),
            &weights,
            p("--out"),
            &out,
        ]);
        run(cache, &args);
        std::fs::read(out.join("global.npy")).expect("global descriptors written")
    };

    let fresh = extract(&cache, "first", &[]);
    let files = cache_files(&cache);
    if test_gpu().unwrap().facts.backend != wgpu::Backend::Vulkan {
        // wgpu keeps pipeline caches on Vulkan only.
        assert!(files.is_empty(), "{files:?}");
        return;
    }
    assert_eq!(files.len(), 1, "one cache file per adapter: {files:?}");
    let file = &files[0];
    let intact = std::fs::read(file).unwrap();
    assert!(
        intact.starts_with(b"DELGPLC1"),
        "{} is not a cache file",
        file.display()
    );

    // Damaged payload, then garbage: both are ignored and replaced by a valid file.
    let mut damaged = intact.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    for bad in [damaged, b"not a pipeline cache".to_vec()] {
        std::fs::write(file, &bad).unwrap();
        assert_eq!(extract(&cache, "again", &[]), fresh);
        let rewritten = std::fs::read(file).unwrap();
        assert!(rewritten.starts_with(b"DELGPLC1") && rewritten != bad);
        std::fs::remove_dir_all(dir.join("again")).unwrap();
    }

    let skipped = dir.join("skipped-cache");
    assert_eq!(
        extract(&skipped, "uncached", &[p("--no-pipeline-cache")]),
        fresh
    );
    assert!(
        cache_files(&skipped).is_empty(),
        "--no-pipeline-cache wrote a cache"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
