//! `delg-gpu match` end to end through the binary: a generated scene and its
//! warped copy (`demo --pair`), a tiny random model (`init-weights`), the
//! picture's size and the JSON's shape; and the one-line errors for an
//! unreadable image or weight file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use delg_gpu::testing::test_gpu;

fn delg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(args)
        .output()
        .expect("run delg-gpu")
}

fn ok(args: &[&str]) -> String {
    let out = delg(args);
    assert!(
        out.status.success(),
        "delg-gpu {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-match-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn match_draws_the_pair_and_prints_matches_as_json() {
    if test_gpu().is_none() {
        return;
    }
    let dir = temp("pair");
    ok(&["demo", "--pair", "--out", s(&dir), "--size", "96"]);
    let weights = dir.join("tiny.safetensors");
    ok(&["init-weights", "--depth", "tiny", "--out", s(&weights)]);
    let png = dir.join("pair.png");
    let (scene, warped, h) = (
        dir.join("scene.png"),
        dir.join("warped.png"),
        dir.join("scene_to_warped.txt"),
    );
    let json = ok(&[
        "match",
        s(&scene),
        s(&warped),
        "--weights",
        s(&weights),
        "--out",
        s(&png),
        "--json",
        "--dim-outliers",
        "--model",
        "homography",
        "--gt-homography",
        s(&h),
        "--scales",
        "0.5,1",
    ]);
    let j: serde_json::Value = serde_json::from_str(&json).expect("stdout is one JSON document");
    assert_eq!(
        (j["a"]["width"].as_u64(), j["a"]["height"].as_u64()),
        (Some(96), Some(96))
    );
    assert_eq!(j["model"], "homography");
    let matches = j["matches"].as_array().unwrap();
    assert_eq!(j["putative"].as_u64(), Some(matches.len() as u64));
    let inliers = matches.iter().filter(|m| m["inlier"] == true).count();
    assert_eq!(j["inliers"].as_u64(), Some(inliers as u64));
    for m in matches {
        for side in ["a", "b"] {
            let p = m[side].as_array().unwrap();
            let xy: Vec<f64> = p.iter().map(|v| v.as_f64().unwrap()).collect();
            assert!(
                xy.len() == 2 && xy.iter().all(|v| (0.0..=96.0).contains(v)),
                "{m}"
            );
        }
    }
    // A transform comes with its corner error against the true homography.
    assert_eq!(
        j["transform_a_to_b"].is_null(),
        j["corner_error_px"].is_null()
    );
    // 96-px images are drawn at the minimum height of 320, side by side with
    // an 8-px gap, the caption panel below.
    let (w, h) = image::image_dimensions(&png).unwrap();
    assert_eq!(w, 320 + 8 + 320);
    assert!(h > 320 + 16, "{h}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_inputs_are_named_in_one_line_errors() {
    let dir = temp("errors");
    let img = dir.join("a.png");
    image::RgbImage::new(32, 32).save(&img).unwrap();
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a weight file").unwrap();
    let weights = dir.join("tiny.safetensors");
    ok(&["init-weights", "--depth", "tiny", "--out", s(&weights)]);
    let missing = dir.join("missing.jpg");
    let mut cases = vec![(s(&junk), s(&img), s(&junk))];
    if test_gpu().is_some() {
        cases.push((s(&weights), s(&missing), s(&missing)));
    }
    for (w, b, named) in cases {
        let out = delg(&["match", s(&img), b, "--weights", w, "--json"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named) && err.lines().count() == 1, "{err}");
    }
    let out = delg(&["match", s(&img), s(&img), "--weights", s(&weights)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    let _ = std::fs::remove_dir_all(&dir);
}
