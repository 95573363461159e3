//! `delg-gpu match A B`: extracts both images with the DELG recipe, matches
//! B's local descriptors to A's (DELG's rule: nearest neighbour below the
//! distance threshold), verifies with RANSAC, and explains the result as a
//! picture (the images side by side, inlier correspondences as coloured
//! lines, the inlier count and fitted transform written below) or as JSON.
//!
//! B plays DELG's query and A the database image, so the fitted model maps
//! A onto B, as ground-truth homographies "H1to2" do. Everything reported
//! is in (x, y) pixels of the original files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use serde_json::json;

use crate::api::{match_features, Features};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::draw;
use crate::io::images::{load_rgb, resize_pil_bilinear};
use crate::jobs::extract::Extractor;
use crate::jobs::extract::{prepare_image, ExtractConfig};
use crate::retrieval::matching::MatchParams;
use crate::retrieval::ransac::{Model, RansacParams, Transform};

/// What `delg-gpu match` was asked to do.
pub struct PairJob {
    pub a: PathBuf,
    pub b: PathBuf,
    pub weights: PathBuf,
    pub extract: ExtractConfig,
    pub matching: MatchParams,
    pub ransac: RansacParams,
}

/// One image's keypoints.
#[derive(Clone, Debug)]
pub struct Side {
    pub path: PathBuf,
    /// Original file size in pixels.
    pub width: u32,
    pub height: u32,
    /// Keypoint locations, (x, y) in original pixels.
    pub points: Vec<[f64; 2]>,
}

/// One putative correspondence: keypoint indices into A and B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairMatch {
    pub a: usize,
    pub b: usize,
    pub distance: f32,
    pub inlier: bool,
}

#[derive(Clone, Debug)]
pub struct PairResult {
    pub a: Side,
    pub b: Side,
    pub matches: Vec<PairMatch>,
    /// DELG's score: 0 below 4 putative matches or without a model.
    pub inliers: usize,
    pub ransac: RansacParams,
    /// Maps A's (x, y) onto B's; `None` when verification fitted nothing.
    pub transform: Option<Transform>,
}

impl PairResult {
    /// Mean corner error (px) of the fitted transform against a true A→B
    /// homography, over A's four corners.
    pub fn corner_error(&self, truth: &Transform) -> Option<f64> {
        self.transform
            .map(|t| truth.corner_error(&t, self.a.width as f64, self.a.height as f64))
    }
}

/// Extracts, matches and verifies the pair.
pub fn match_pair(gpu: &Arc<Gpu>, job: &PairJob) -> Result<PairResult> {
    let mut extractor = Extractor::load(gpu, &job.weights, job.extract.clone())?;
    let dim = extractor.local_dim();
    if dim == 0 {
        return Err(Error::File {
            path: job.weights.clone(),
            reason:
                "holds a global-only model (DOLG): matching needs a DELG model's local features"
                    .into(),
        });
    }
    let mut side = |path: &Path| -> Result<(Side, Features)> {
        let img = prepare_image(path, &job.extract, None)?;
        let [_, h, w, _] = img.pixels.shape.nhwc("image")?;
        // prepare_image resized by new/original per axis; undo it exactly.
        let original = |n: usize, f: f64| (n as f64 / f).round() as u32;
        let local = extractor.extract(&img)?.local;
        let points = local
            .locations
            .chunks_exact(2)
            .map(|p| [f64::from(p[1]), f64::from(p[0])])
            .collect();
        let side = Side {
            path: path.to_path_buf(),
            width: original(w, img.resize_factor.1),
            height: original(h, img.resize_factor.0),
            points,
        };
        let features = Features {
            id: path.display().to_string(),
            descriptors: local.descriptors,
            locations: local.locations,
            ..Features::default()
        };
        Ok((side, features))
    };
    let (a, a_features) = side(&job.a)?;
    let (b, b_features) = side(&job.b)?;
    let verified = match_features(&a_features, &b_features, &job.matching, &job.ransac)?;
    Ok(PairResult {
        a,
        b,
        matches: verified.matches,
        inliers: verified.inliers,
        ransac: job.ransac,
        transform: verified.transform,
    })
}

/// Reads a 3×3 homography written as nine whitespace-separated numbers
/// (the Oxford affine-covariant "H1to2p" form), mapping (x, y) of A to B.
pub fn read_homography(path: &Path) -> Result<Transform> {
    let bad = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|t| {
            t.parse()
                .map_err(|_| bad(format!("'{t}' is not a number; expected a 3×3 homography")))
        })
        .collect::<Result<_>>()?;
    if v.len() != 9 {
        return Err(bad(format!(
            "holds {} numbers; a homography file has 9 (three rows of three)",
            v.len()
        )));
    }
    Ok(Transform(std::array::from_fn(|i| {
        std::array::from_fn(|k| v[3 * i + k])
    })))
}

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Affine => "affine",
        Model::Homography => "homography",
    }
}

/// The result as JSON: every match with both locations and its inlier flag,
/// and the transform.
pub fn to_json(r: &PairResult, truth: Option<&Transform>) -> serde_json::Value {
    let side = |s: &Side| json!({"path": s.path.display().to_string(), "width": s.width, "height": s.height, "keypoints": s.points.len()});
    let matches: Vec<_> = r
        .matches
        .iter()
        .map(|m| {
            json!({"a": r.a.points[m.a], "b": r.b.points[m.b], "distance": m.distance, "inlier": m.inlier})
        })
        .collect();
    json!({
        "a": side(&r.a),
        "b": side(&r.b),
        "coordinates": "(x, y) pixels of the original images",
        "model": model_name(r.ransac.model),
        "putative": r.matches.len(),
        "inliers": r.inliers,
        "transform_a_to_b": r.transform.map(|t| t.0),
        "corner_error_px": truth.and_then(|t| r.corner_error(t)),
        "matches": matches,
    })
}

/// Compact number for the picture: 4 decimals, or scientific when tiny or huge.
fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The text written under the images.
pub fn caption(r: &PairResult, truth: Option<&Transform>) -> Vec<String> {
    let mut lines = vec![format!(
        "{} inliers / {} putative matches  ({} RANSAC, {} px)  keypoints A {}  B {}",
        r.inliers,
        r.matches.len(),
        model_name(r.ransac.model),
        r.ransac.residual_threshold,
        r.a.points.len(),
        r.b.points.len()
    )];
    match &r.transform {
        Some(t) => {
            let cells: Vec<Vec<String>> = t.0.iter().map(|row| row.map(number).to_vec()).collect();
            let width = cells.iter().flatten().map(String::len).max().unwrap_or(0);
            for (i, row) in cells.iter().enumerate() {
                let label = if i == 1 { "A -> B (x, y) = " } else { "" };
                let row: Vec<String> = row.iter().map(|c| format!("{c:>width$}")).collect();
                lines.push(format!("{label:>16}[ {} ]", row.join("  ")));
            }
        }
        None => lines.push("no transform: too few matches for RANSAC".into()),
    }
    if let Some(e) = truth.and_then(|t| r.corner_error(t)) {
        lines.push(format!("corner error vs ground truth: {e:.2} px"));
    }
    lines
}

/// Drawing options of [`render`].
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    /// Also draw outliers, as faint grey lines.
    pub dim_outliers: bool,
    /// Draw lines for at most this many inliers (evenly spread over them;
    /// every inlier still gets its dots), for readable pictures of dense
    /// matches.
    pub max_lines: Option<usize>,
    /// Height both images are scaled to (clamped to this range from the
    /// taller image's height).
    pub min_height: u32,
    pub max_height: u32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            dim_outliers: false,
            max_lines: None,
            min_height: 320,
            max_height: 720,
        }
    }
}

/// A and B (decoded like extraction decodes them, so keypoints are in their
/// pixels) side by side at the same height, correspondences drawn on top,
/// `caption` lines in a panel below.
pub fn render(
    a: &RgbImage,
    b: &RgbImage,
    r: &PairResult,
    caption: &[String],
    opts: &RenderOptions,
) -> RgbImage {
    const GAP: u32 = 8;
    const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);
    let height = a
        .height()
        .max(b.height())
        .clamp(opts.min_height, opts.max_height);
    let scaled = |img: &RgbImage| {
        let s = height as f64 / img.height() as f64;
        let w = ((img.width() as f64 * s).round() as u32).max(1);
        (resize_pil_bilinear(img, w, height), s)
    };
    let ((a_img, sa), (b_img, sb)) = (scaled(a), scaled(b));
    let b_x0 = (a_img.width() + GAP) as f64;
    let width = a_img.width() + GAP + b_img.width();
    let longest = caption
        .iter()
        .map(|l| draw::text_width(l, 2))
        .max()
        .unwrap_or(0);
    let scale = if longest + 16 <= width { 2 } else { 1 };
    let line_h = draw::GLYPH_H * scale;
    let panel = caption.len() as u32 * line_h + 16;
    let mut canvas = RgbImage::from_pixel(width, height + panel, BACKGROUND);
    image::imageops::replace(&mut canvas, &a_img, 0, 0);
    image::imageops::replace(&mut canvas, &b_img, b_x0 as i64, 0);

    let at_a = |i: usize| [r.a.points[i][0] * sa, r.a.points[i][1] * sa];
    let at_b = |i: usize| [b_x0 + r.b.points[i][0] * sb, r.b.points[i][1] * sb];
    let pen = if height >= 480 { 2 } else { 1 };
    let radius = if height >= 480 { 3.5 } else { 2.5 };
    if opts.dim_outliers {
        for m in r.matches.iter().filter(|m| !m.inlier) {
            draw::line(
                &mut canvas,
                at_a(m.a),
                at_b(m.b),
                1,
                Rgb([200, 200, 200]),
                0.3,
            );
            for p in [at_a(m.a), at_b(m.b)] {
                draw::dot(&mut canvas, p, 1.5, Rgb([200, 200, 200]), 0.5);
            }
        }
    }
    let inliers: Vec<&PairMatch> = r.matches.iter().filter(|m| m.inlier).collect();
    let lines = opts.max_lines.unwrap_or(usize::MAX);
    let every = inliers.len().div_ceil(lines.max(1)).max(1);
    for (k, m) in inliers
        .iter()
        .enumerate()
        .filter(|(k, _)| k % every == 0 && k / every < lines)
    {
        draw::line(
            &mut canvas,
            at_a(m.a),
            at_b(m.b),
            pen,
            draw::palette(k),
            0.85,
        );
    }
    for (k, m) in inliers.iter().enumerate() {
        for p in [at_a(m.a), at_b(m.b)] {
            draw::dot(&mut canvas, p, radius, draw::palette(k), 1.0);
        }
    }
    for (label, x) in [("A", 0.0), ("B", b_x0)] {
        let s = scale + 1;
        draw::fill_rect(
            &mut canvas,
            x as i64,
            0,
            draw::GLYPH_W * s + 6,
            draw::GLYPH_H * s + 2,
            BACKGROUND,
            0.8,
        );
        draw::text(&mut canvas, x as i64 + 4, 4, label, s, Rgb([255, 255, 255]));
    }
    for (i, l) in caption.iter().enumerate() {
        let y = (height + 8 + i as u32 * line_h) as i64;
        draw::text(&mut canvas, 8, y, l, scale, Rgb([235, 235, 235]));
    }
    canvas
}

/// Decodes A and B again (the extractor keeps only the resized pixels),
/// under the same pixel limit, and writes the picture as PNG.
pub fn write_picture(
    r: &PairResult,
    caption: &[String],
    opts: &RenderOptions,
    max_pixels: u64,
    out: &Path,
) -> Result<()> {
    let picture = render(
        &load_rgb(&r.a.path, max_pixels)?,
        &load_rgb(&r.b.path, max_pixels)?,
        r,
        caption,
        opts,
    );
    picture.save(out).map_err(|e| Error::File {
        path: out.to_path_buf(),
        reason: format!("cannot write the picture: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(inlier: bool) -> PairResult {
        let side = |w, h| Side {
            path: PathBuf::from("x.png"),
            width: w,
            height: h,
            points: vec![[10.0, 20.0], [30.0, 5.0]],
        };
        PairResult {
            a: side(100, 50),
            b: side(40, 100),
            matches: vec![PairMatch {
                a: 0,
                b: 1,
                distance: 0.5,
                inlier,
            }],
            inliers: usize::from(inlier),
            ransac: RansacParams::default(),
            transform: inlier.then_some(Transform([
                [1.0, 0.0, 5.0],
                [0.0, 1.0, -2.0],
                [0.0, 0.0, 1.0],
            ])),
        }
    }

    #[test]
    fn picture_puts_both_images_at_one_height_with_a_caption_panel() {
        let r = result(true);
        let (a, b) = (
            RgbImage::from_pixel(100, 50, Rgb([0, 0, 255])),
            RgbImage::from_pixel(40, 100, Rgb([0, 255, 0])),
        );
        let cap = caption(&r, None);
        let opts = RenderOptions {
            min_height: 100,
            max_height: 100,
            ..Default::default()
        };
        let pic = render(&a, &b, &r, &cap, &opts);
        // A doubled to 200×100, the gap, B kept at 40×100.
        assert_eq!(pic.width(), 200 + 8 + 40);
        assert_eq!(pic.height(), 100 + cap.len() as u32 * draw::GLYPH_H + 16);
        assert_eq!(*pic.get_pixel(150, 90), Rgb([0, 0, 255]));
        assert_eq!(*pic.get_pixel(230, 90), Rgb([0, 255, 0]));
        // The inlier's dot sits at A's keypoint (10, 20) scaled by 2.
        assert_eq!(*pic.get_pixel(20, 40), draw::palette(0));
        // Outliers are drawn only when asked.
        let out = result(false);
        let plain = render(&a, &b, &out, &cap, &opts);
        let dimmed = render(
            &a,
            &b,
            &out,
            &cap,
            &RenderOptions {
                dim_outliers: true,
                ..opts
            },
        );
        assert_eq!(*plain.get_pixel(20, 40), Rgb([0, 0, 255]));
        // The inlier's line passes mid-way unless lines are capped at zero.
        let mid = |p: &RgbImage| *p.get_pixel(114, 25);
        assert_ne!(mid(&pic), Rgb([0, 0, 255]));
        let no_lines = RenderOptions {
            max_lines: Some(0),
            ..opts
        };
        let bare = render(&a, &b, &r, &cap, &no_lines);
        assert_eq!(mid(&bare), Rgb([0, 0, 255]));
        assert_eq!(*bare.get_pixel(20, 40), draw::palette(0), "dots stay");
        assert_ne!(*dimmed.get_pixel(20, 40), Rgb([0, 0, 255]));
    }

    #[test]
    fn caption_and_json_report_counts_and_transform() {
        let r = result(true);
        let truth = Transform([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let cap = caption(&r, Some(&truth));
        assert!(cap[0].starts_with("1 inliers / 1 putative"), "{cap:?}");
        assert!(cap[2].contains("A -> B") && cap[2].contains("-2.0000"));
        assert_eq!(cap.last().unwrap(), "corner error vs ground truth: 2.00 px");
        let j = to_json(&r, Some(&truth));
        assert_eq!(j["matches"][0]["a"], json!([10.0, 20.0]));
        assert_eq!(j["matches"][0]["b"], json!([30.0, 5.0]));
        assert_eq!(j["transform_a_to_b"][0][2], json!(5.0));
        assert_eq!(j["corner_error_px"], json!(2.0));
        let none = caption(&result(false), None);
        assert_eq!(none.len(), 2);
        assert_eq!(number(2.5e-4), "2.500e-4");
    }

    #[test]
    fn homography_files_are_read_or_rejected_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("delg-pair-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("H");
        std::fs::write(&good, "1 0 2\n0 1 3\n0 0 1\n").unwrap();
        assert_eq!(read_homography(&good).unwrap().0[1][2], 3.0);
        std::fs::write(&good, "1 0 2\n0 1 3\n").unwrap();
        let e = read_homography(&good).unwrap_err().to_string();
        assert!(e.contains("holds 6 numbers"), "{e}");
        assert!(read_homography(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
