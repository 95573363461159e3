//! A collection of hostile files, generated here, extracted with the tiny
//! model: the run finishes, every valid image is extracted exactly once,
//! every bad entry is in errors.txt with its specific reason. Then the
//! outputs cannot go stale: a replaced image is re-extracted, the same
//! weights by another path resume, and `merge` refuses shard sets that do
//! not belong together.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::tiny_weights_seeded;
use delg_gpu::io::features::FeatureSet;
use delg_gpu::jobs::collection::Shard;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::jobs::extract::{run_extract, ExtractConfig, ExtractJob};
use delg_gpu::jobs::merge::merge_shards;
use delg_gpu::testing::test_gpu;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn job(input: &Path, out: &Path, weights: &Path) -> ExtractJob {
    ExtractJob {
        input: input.to_path_buf(),
        out: out.to_path_buf(),
        weights: weights.to_path_buf(),
        config: ExtractConfig {
            max_image_size: Some(96),
            scales: vec![0.5, 1.0],
            global_scales: vec![1],
            max_features: 20,
            // Small enough for the test's own decompression bomb.
            max_pixels: 4_000_000,
            ..Default::default()
        },
        shard: None,
        only: None,
        crops: Default::default(),
        quiet: true,
        batch: None,
    }
}

/// `root/imgs` with `n` rendered scenes `0.png`..., and tiny weights `root/w.safetensors`.
fn scenes_and_weights(root: &Path, n: u64) -> (PathBuf, PathBuf) {
    let imgs = root.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..n {
        render_scene(i, 0, 80)
            .save(imgs.join(format!("{i}.png")))
            .unwrap();
    }
    let weights = root.join("w.safetensors");
    tiny_weights_seeded(&weights, 5);
    (imgs, weights)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A valid PNG signature and IHDR claiming `width`×`height` 8-bit RGB,
/// followed by `idat` (already zlib-compressed) and IEND.
fn png_with_header(width: u32, height: u32, color_type: u8, idat: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A grayscale PNG of `side`² black pixels that compresses ~1000:1 (a
/// decompression bomb in miniature), encoded by the image crate.
fn png_bomb(side: u32) -> Vec<u8> {
    let img = image::GrayImage::new(side, side);
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn encoded(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// Replaces the first occurrence of `from` (which must exist) with `to`.
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
}

/// The corpus: (relative path, bytes) of valid images, and of hostile
/// entries with a piece of the reason errors.txt must give.
fn write_corpus(dir: &Path) -> (Vec<&'static str>, Vec<(String, &'static str)>) {
    use image::ImageFormat::{Gif, Jpeg, Png, Tiff};
    let write = |rel: &str, bytes: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let scene = |seed| render_scene(seed, 0, 80);
    let valid = vec!["a.jpg", "b.png", "sub/c.tif", "sub/deeper/d.gif"];
    write("a.jpg", &encoded(&scene(1), Jpeg));
    write("b.png", &encoded(&scene(2), Png));
    write("sub/c.tif", &encoded(&scene(3), Tiff));
    write("sub/deeper/d.gif", &encoded(&scene(4), Gif));

    let mut bad: Vec<(String, &'static str)> = Vec::new();
    let mut add = |rel: &str, bytes: &[u8], reason: &'static str| {
        write(rel, bytes);
        bad.push((rel.to_string(), reason));
    };
    // A 76-byte file whose header claims 100 000 × 100 000 pixels.
    add(
        "forged_header.png",
        &png_with_header(
            100_000,
            100_000,
            2,
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        "(10000.0 megapixels), over the 4.0 megapixel limit",
    );
    add(
        "bomb.png",
        &png_bomb(3000),
        "(9.0 megapixels), over the 4.0 megapixel limit",
    );
    let png = encoded(&scene(5), Png);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    add(
        "truncated_idat.png",
        &png[..idat + 200],
        "cannot decode: unexpected end of file",
    );
    // Header, logical screen descriptor, trailer: no frame at all.
    add(
        "zero_frames.gif",
        b"GIF89a\x10\x00\x10\x00\x00\x00\x00\x3b",
        "cannot decode: Format error decoding Gif",
    );
    // Compression (tag 259, SHORT, count 1) patched from 1 (none) to 99.
    let mut tiff = encoded(&scene(6), Tiff);
    patch(
        &mut tiff,
        &[3, 1, 3, 0, 1, 0, 0, 0, 1, 0],
        &[3, 1, 3, 0, 1, 0, 0, 0, 99, 0],
    );
    add(
        "unsupported_compression.tif",
        &tiff,
        "compression method Unknown(99) is unsupported",
    );
    // Every code-length count of the Huffman tables set to 255.
    let mut jpeg = encoded(&scene(7), Jpeg);
    let dht = jpeg.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    jpeg[dht + 5..dht + 21].fill(0xFF);
    add("corrupt_huffman.jpg", &jpeg, "Huffman table");
    add(
        "strip.png",
        &encoded(&image::RgbImage::new(1, 65_535), Png),
        "below the 10 px minimum",
    );
    add("empty.jpg", b"", "empty file");
    add(
        "notes.png",
        b"plain text, not an image",
        "not a recognised image format",
    );
    let whole = encoded(&scene(8), Jpeg);
    add("cut.jpg", &whole[..whole.len() / 2], "truncated JPEG");

    // Names ids.txt cannot hold, and links.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
        std::fs::write(dir.join(latin1), encoded(&scene(9), Jpeg)).unwrap();
        bad.push(("caf\u{fffd}.jpg".into(), "not valid UTF-8"));
        std::fs::write(dir.join("two\nlines.jpg"), encoded(&scene(10), Jpeg)).unwrap();
        bad.push(("two\\nlines.jpg".into(), "line break"));
        std::os::unix::fs::symlink(".", dir.join("self")).unwrap();
        bad.push(("self".into(), "symbolic link loop back to '.'"));
        std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
        bad.push(("sub/up".into(), "symbolic link loop back to '.'"));
        // A second route to a valid image: listed once.
        std::os::unix::fs::symlink("sub/deeper", dir.join("alias")).unwrap();
    }
    (valid, bad)
}

/// errors.txt as path → reason.
fn error_lines(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("errors.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let (p, r) = l.split_once('\t').expect("path<TAB>reason");
            (p.to_string(), r.to_string())
        })
        .collect()
}

#[test]
fn a_hostile_collection_is_extracted_and_every_bad_entry_reported() {
    let Some(gpu) = test_gpu() else { return };
    let root = temp("corpus");
    let imgs = root.join("imgs");
    let (mut valid, mut bad) = write_corpus(&imgs);
    let weights = root.join("w.safetensors");
    tiny_weights_seeded(&weights, 5);

    let out = root.join("out");
    let mut j = job(&imgs, &out, &weights);
    let s = run_extract(&gpu, &j).unwrap();
    let errors = error_lines(&out);
    for (rel, reason) in &bad {
        let got = errors
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} missing from errors.txt: {errors:#?}"));
        assert!(got.contains(reason), "{rel}: '{got}' lacks '{reason}'");
    }
    assert_eq!(errors.len(), bad.len(), "{errors:#?}");
    let set = FeatureSet::load(&out).unwrap();
    valid.sort();
    assert_eq!(set.ids, valid, "each valid image exactly once");
    assert_eq!((s.extracted_now, s.failed), (valid.len(), bad.len()));

    // A file that vanishes between listing and decoding, and a name with a
    // line break from a list: reported, the rest extracted.
    let listed = root.join("listed");
    j.out = listed.clone();
    j.only = Some(vec!["a.jpg".into(), "gone.jpg".into(), "x\ny.jpg".into()]);
    let s = run_extract(&gpu, &j).unwrap();
    let errors = error_lines(&listed);
    assert!(errors["gone.jpg"].contains("No such file"), "{errors:?}");
    assert!(errors["x\\ny.jpg"].contains("line break"), "{errors:?}");
    assert_eq!((s.extracted_now, s.failed), (1, 2));

    // Nothing extractable: an error that points at errors.txt.
    j.out = root.join("none");
    j.only = Some(vec!["empty.jpg".into(), "forged_header.png".into()]);
    let e = run_extract(&gpu, &j).unwrap_err().to_string();
    assert!(
        e.contains("none of its 2 images") && e.contains("errors.txt"),
        "{e}"
    );
    assert_eq!(
        FeatureSet::load(&root.join("none")).unwrap().global_dim,
        256,
        "an empty set keeps the descriptor width"
    );

    // An unreadable folder (only meaningful when permissions bind us).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = imgs.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(
            locked.join("e.jpg"),
            encoded(&render_scene(11, 0, 80), image::ImageFormat::Jpeg),
        )
        .unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read_dir(&locked).is_err() {
            bad.push(("locked".into(), "cannot list this folder"));
        } else {
            valid.push("locked/e.jpg"); // running as root
            valid.sort();
        }
        let out = root.join("locked-run");
        j.out = out.clone();
        j.only = None;
        run_extract(&gpu, &j).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        let errors = error_lines(&out);
        for (rel, reason) in &bad {
            assert!(
                errors.get(rel).is_some_and(|r| r.contains(reason)),
                "{rel}: {errors:?}"
            );
        }
        assert_eq!(FeatureSet::load(&out).unwrap().ids, valid);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn outputs_do_not_go_stale() {
    let Some(gpu) = test_gpu() else { return };
    let root = temp("stale");
    let (imgs, weights) = scenes_and_weights(&root, 3);
    let out = root.join("out");
    run_extract(&gpu, &job(&imgs, &out, &weights)).unwrap();
    let before = FeatureSet::load(&out).unwrap();

    // The same weights by another path (a byte-identical copy) resume.
    let copy = root.join("copy.safetensors");
    std::fs::copy(&weights, &copy).unwrap();
    let s = run_extract(&gpu, &job(&imgs, &out, &copy)).unwrap();
    assert_eq!((s.resumed, s.extracted_now), (3, 0), "{s:?}");

    // An image replaced under the same name is extracted again.
    render_scene(7, 0, 90).save(imgs.join("1.png")).unwrap();
    let s = run_extract(&gpu, &job(&imgs, &out, &weights)).unwrap();
    assert_eq!((s.resumed, s.extracted_now), (2, 1), "{s:?}");
    let after = FeatureSet::load(&out).unwrap();
    assert_eq!(after.image(0), before.image(0));
    assert_ne!(
        after.image(1).global,
        before.image(1).global,
        "1.png is stale"
    );

    // Other weights are refused, naming the model.
    let other = root.join("other.safetensors");
    tiny_weights_seeded(&other, 6);
    let e = run_extract(&gpu, &job(&imgs, &out, &other))
        .unwrap_err()
        .to_string();
    assert!(e.contains("different model"), "{e}");

    // --out naming a file.
    let e = run_extract(&gpu, &job(&imgs, &weights, &weights))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--out takes a folder"), "{e}");

    // Weights holding NaN are refused at load, naming the tensor.
    let mut file = delg_gpu::io::weights::WeightFile::load(&weights).unwrap();
    let (name, t) = file.tensors.iter_mut().next().unwrap();
    let name = name.clone();
    t.data[0] = f32::NAN;
    let nan = root.join("nan.safetensors");
    file.save(&nan).unwrap();
    let e = run_extract(&gpu, &job(&imgs, &root.join("nan"), &nan))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("tensor '{name}' holds NaN")), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn merge_takes_only_complete_consistent_shard_sets() {
    let Some(gpu) = test_gpu() else { return };
    let root = temp("merge");
    let (imgs, weights) = scenes_and_weights(&root, 6);
    std::fs::write(imgs.join("empty.jpg"), b"").unwrap();
    let shard = |i: usize, input: &Path, name: &str| {
        let out = root.join(name);
        let mut j = job(input, &out, &weights);
        j.shard = Some(Shard { index: i, count: 2 });
        run_extract(&gpu, &j).unwrap();
        out
    };
    let s0 = shard(0, &imgs, "s0");
    let s1 = shard(1, &imgs, "s1");

    let merged = root.join("merged");
    let m = merge_shards(&[s1.clone(), s0.clone()], &merged).unwrap();
    assert_eq!((m.images, m.failed), (6, 1));
    let whole = root.join("whole");
    run_extract(&gpu, &job(&imgs, &whole, &weights)).unwrap();
    for f in [
        "global.npy",
        "ids.txt",
        "local_descriptors.npy",
        "errors.txt",
    ] {
        assert_eq!(
            std::fs::read(merged.join(f)).unwrap(),
            std::fs::read(whole.join(f)).unwrap(),
            "{f}: merged shards differ from one run"
        );
    }

    let err = |inputs: &[PathBuf], out: &Path| merge_shards(inputs, out).unwrap_err().to_string();
    let e = err(std::slice::from_ref(&s0), &root.join("m1"));
    assert!(e.contains("shard 1/2 missing"), "{e}");
    let e = err(&[s0.clone(), s0.clone()], &root.join("m2"));
    assert!(e.contains("give each shard once"), "{e}");
    let e = err(&[s0.clone(), s1.clone()], &s0);
    assert!(e.contains("is also one of the inputs"), "{e}");
    // A shard of a folder with one more image belongs to another collection.
    std::fs::copy(imgs.join("0.png"), imgs.join("extra.png")).unwrap();
    let other = shard(1, &imgs, "s1-other");
    let e = err(&[s0.clone(), other], &root.join("m3"));
    assert!(e.contains("another collection"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
