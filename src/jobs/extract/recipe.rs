//! The extraction recipe of DELG (docs/recipe.md §4): image sizes, the pyramid, global
//! descriptor aggregation over scales, and attention-based keypoint selection
//! with receptive-field locations. The device work (the network at each
//! scale) is the model's; this file turns its per-scale outputs into the
//! features that are stored.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::contract::ExtractionDefaults;
use crate::tensor::Precision;
// Re-exported where the extraction recipe's users have always found it.
pub use crate::model::contract::PixelNorm;

/// Every parameter of extraction; defaults are the paper's (docs/recipe.md §4), and the
/// resolved values are written next to the features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// Largest image side after the initial resize (never upscaled); None keeps the size.
    pub max_image_size: Option<u32>,
    /// Pyramid scales relative to the initial image.
    pub scales: Vec<f64>,
    /// Indices into `scales` whose global descriptors are aggregated.
    pub global_scales: Vec<usize>,
    /// Attention threshold τ (inclusive); None takes the value stored with the weights.
    pub score_threshold: Option<f32>,
    /// At most this many local features per image, best attention first.
    pub max_features: usize,
    /// Also store sign-binarised local descriptors (16 bytes each).
    pub binarize: bool,
    /// Images smaller than this (either side, after resizing) get no features.
    pub min_image_side: u32,
    /// Feature-map stride in input pixels, and the offset of a cell's
    /// receptive-field centre: cell (i, j) sits at (stride·i + offset, stride·j + offset).
    /// None takes the stride of the model's S map (`ResNetConfig::keypoint_stride`).
    pub feature_stride: Option<f64>,
    pub center_offset: f64,
    /// How pixels are normalised for the network.
    pub pixel_norm: PixelNorm,
    /// Query boxes cast to integers by truncation (DOLG's `int(bbx)`) rather
    /// than rounded (DELG's PIL crop).
    pub truncate_boxes: bool,
    /// Images with more pixels are skipped before decoding. A guard on memory,
    /// not part of the recipe: not recorded, so a rerun may raise it and resume.
    #[serde(skip, default = "default_max_pixels")]
    pub max_pixels: u64,
    /// How the backbone stores its weights and activations (f16 needs an
    /// adapter with SHADER_F16). Recorded only when not f32, so f32 runs
    /// record exactly what they did before f16 existed.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_max_pixels() -> u64 {
    crate::io::images::DEFAULT_MAX_PIXELS
}

impl Default for ExtractConfig {
    /// DELG's recipe (docs/recipe.md §4).
    fn default() -> Self {
        ExtractConfig::from_defaults(crate::model::arch::default_extraction())
    }
}

impl ExtractConfig {
    /// The paper's settings for a model architecture ("delg" or "dolg").
    pub fn for_arch(arch: &str) -> ExtractConfig {
        ExtractConfig::from_defaults(crate::model::arch::extraction_defaults(arch))
    }

    /// An architecture's recipe; the settings it leaves open are shared.
    fn from_defaults(d: ExtractionDefaults) -> ExtractConfig {
        ExtractConfig {
            max_image_size: d.max_image_size,
            scales: d.scales,
            global_scales: d.global_scales,
            score_threshold: None,
            max_features: d.max_features,
            binarize: false,
            min_image_side: 10,
            // DELG's export hardcodes rf 291, padding 145 and the S stride:
            // centre = stride·i.
            feature_stride: None,
            center_offset: 0.0,
            pixel_norm: d.pixel_norm,
            truncate_boxes: d.truncate_boxes,
            max_pixels: default_max_pixels(),
            precision: Precision::F32,
        }
    }
}

impl ExtractConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        // Beyond 8 no device holds a level's activations (64× the pixels).
        if self.scales.is_empty() || self.scales.iter().any(|&s| !(s > 0.0 && s <= 8.0)) {
            return bad(format!(
                "scales must be numbers above 0 and at most 8, got {:?}",
                self.scales
            ));
        }
        if self.global_scales.is_empty()
            || self.global_scales.iter().any(|&i| i >= self.scales.len())
        {
            return bad(format!(
                "global_scales {:?} must index into the {} scales",
                self.global_scales,
                self.scales.len()
            ));
        }
        if self.max_image_size == Some(0) {
            return bad("max_image_size must be positive".into());
        }
        Ok(())
    }

    /// Pyramid level sizes (height, width) for an image of `h`×`w`:
    /// round(h·s) × round(w·s), as `tf.image.resize` is called.
    pub fn level_sizes(&self, h: u32, w: u32) -> Vec<(u32, u32)> {
        self.scales
            .iter()
            .map(|&s| {
                let r = |v: u32| crate::io::images::round_half_even(v as f64 * s).max(1.0) as u32;
                (r(h), r(w))
            })
            .collect()
    }
}

/// What the network produced at one pyramid level.
#[derive(Clone, Debug)]
pub struct LevelOutput {
    pub scale: f64,
    /// Feature-map size.
    pub height: usize,
    pub width: usize,
    /// Global descriptor before normalisation (empty when not computed at this level).
    pub global: Vec<f32>,
    /// [height·width] attention scores.
    pub attention: Vec<f32>,
    /// [height·width, dim] raw local descriptors.
    pub descriptors: Vec<f32>,
}

pub fn l2_normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
}

/// Σ over levels of the L2-normalised global descriptors, L2-normalised.
pub fn aggregate_global(levels: &[&[f32]]) -> Result<Vec<f32>> {
    let dim = levels
        .first()
        .map(|g| g.len())
        .ok_or_else(|| Error::Internal("no global descriptor level".into()))?;
    let mut sum = vec![0f64; dim];
    for g in levels {
        let mut g = g.to_vec();
        l2_normalize(&mut g);
        sum.iter_mut().zip(&g).for_each(|(s, v)| *s += *v as f64);
    }
    let mut out: Vec<f32> = sum.into_iter().map(|v| v as f32).collect();
    l2_normalize(&mut out);
    Ok(out)
}

/// Selected local features of one image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalFeatures {
    pub descriptors: Vec<f32>,
    pub locations: Vec<f32>,
    pub scales: Vec<f32>,
    pub attention: Vec<f32>,
}

/// Keeps cells with attention ≥ τ at every level, then the `max_features`
/// best by attention (ties keep pyramid order, as a stable sort of the
/// concatenated list). Locations are receptive-field centres (`stride` is the
/// model's S stride unless the configuration fixes one) divided by the level
/// scale and by the per-axis resize factors (new/original), so they are
/// (y, x) in original-image pixels; the stored scale is 1/s; descriptors are
/// L2-normalised.
pub fn select_local(
    levels: &[LevelOutput],
    tau: f32,
    cfg: &ExtractConfig,
    stride: f64,
    resize_factor: (f64, f64),
    dim: usize,
) -> LocalFeatures {
    let stride = cfg.feature_stride.unwrap_or(stride);
    struct Cand {
        level: usize,
        cell: usize,
        score: f32,
    }
    let mut cands: Vec<Cand> = Vec::new();
    for (level, out) in levels.iter().enumerate() {
        for (cell, &score) in out.attention.iter().enumerate() {
            if score >= tau {
                cands.push(Cand { level, cell, score });
            }
        }
    }
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    cands.truncate(cfg.max_features);
    let mut f = LocalFeatures::default();
    for c in cands {
        let out = &levels[c.level];
        let (i, j) = (c.cell / out.width, c.cell % out.width);
        let y = (stride * i as f64 + cfg.center_offset) / out.scale / resize_factor.0;
        let x = (stride * j as f64 + cfg.center_offset) / out.scale / resize_factor.1;
        let mut d = out.descriptors[c.cell * dim..(c.cell + 1) * dim].to_vec();
        l2_normalize(&mut d);
        f.descriptors.extend_from_slice(&d);
        f.locations.extend_from_slice(&[y as f32, x as f32]);
        f.scales.push((1.0 / out.scale) as f32);
        f.attention.push(c.score);
    }
    f
}

/// A query crop [x1, y1, x2, y2] in original-image pixels.
pub type CropBox = [f64; 4];

/// Crops `img` to the query box. DELG rounds the corners half-to-even (Python's
/// `round`) and crops with PIL, which pads the part of a box outside the image
/// with black; DOLG truncates them (`int()`) and slices, which clamps to the
/// image (docs/recipe.md §4.1, §8.7).
fn crop_query(
    path: &std::path::Path,
    img: &image::RgbImage,
    crop: CropBox,
    truncate: bool,
) -> Result<image::RgbImage> {
    use crate::io::images::round_half_even;
    let (ow, oh) = (img.width() as i64, img.height() as i64);
    let corner = |v: f64| {
        let v = if truncate {
            v.trunc()
        } else {
            round_half_even(v)
        };
        // Far outside any image; keeps the casts below exact.
        v.clamp(-1e9, 1e9) as i64
    };
    let [mut x1, mut y1, mut x2, mut y2] = crop.map(corner);
    if truncate {
        (x1, y1, x2, y2) = (x1.max(0), y1.max(0), x2.min(ow), y2.min(oh));
    }
    if crop.iter().any(|v| !v.is_finite()) || x2 <= x1 || y2 <= y1 {
        return Err(Error::file(
            path,
            format!(
                "crop box {crop:?} is empty inside the {ow}×{oh} image; give x1 < x2 and y1 < y2"
            ),
        ));
    }
    let (cw, ch) = ((x2 - x1) as u64, (y2 - y1) as u64);
    if cw * ch > 4 * (ow * oh).max(1) as u64 {
        return Err(Error::file(
            path,
            format!("crop box {crop:?} is far larger than the {ow}×{oh} image"),
        ));
    }
    let mut out = image::RgbImage::new(cw as u32, ch as u32);
    // The part of the box inside the image; the rest stays black.
    let (ix1, iy1, ix2, iy2) = (x1.max(0), y1.max(0), x2.min(ow), y2.min(oh));
    for y in iy1..iy2.max(iy1) {
        for x in ix1..ix2.max(ix1) {
            out.put_pixel(
                (x - x1) as u32,
                (y - y1) as u32,
                *img.get_pixel(x as u32, y as u32),
            );
        }
    }
    Ok(out)
}

/// Decodes, crops and resizes one image as the reference extractor does, and
/// normalises it for the network (NHWC).
pub fn prepare_image(
    path: &std::path::Path,
    cfg: &ExtractConfig,
    crop: Option<CropBox>,
) -> Result<super::PreparedImage> {
    use crate::io::images::load_rgb;
    let mut img = load_rgb(path, cfg.max_pixels)?;
    let mut cap = cfg.max_image_size.map(f64::from);
    if let Some(crop) = crop {
        let original_side = img.width().max(img.height()) as f64;
        img = crop_query(path, &img, crop, cfg.truncate_boxes)?;
        // The crop keeps the scale it has inside the capped full image: the
        // official extract_features.py scales the cap by this factor, unrounded.
        let factor = img.width().max(img.height()) as f64 / original_side;
        cap = cap.map(|m| m * factor);
    }
    prepare_decoded(path, &img, cfg, cap)
}

/// Resizes and normalises an image already in memory as `prepare_image` does
/// a file (`name` labels it in errors).
pub fn prepare_rgb(
    name: &std::path::Path,
    img: &image::RgbImage,
    cfg: &ExtractConfig,
) -> Result<super::PreparedImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::file(
            name,
            format!("image is {w}×{h}: it has no pixels"),
        ));
    }
    if u64::from(w) * u64::from(h) > cfg.max_pixels {
        return Err(Error::file(
            name,
            format!(
                "image is {w}×{h}, more than the {} pixels allowed (max_pixels); resize it first",
                cfg.max_pixels
            ),
        ));
    }
    prepare_decoded(name, img, cfg, cfg.max_image_size.map(f64::from))
}

/// Resizes to the longest side `cap` and normalises for the network.
fn prepare_decoded(
    path: &std::path::Path,
    img: &image::RgbImage,
    cfg: &ExtractConfig,
    cap: Option<f64>,
) -> Result<super::PreparedImage> {
    use crate::io::images::{capped_size, resize_pil_bilinear};
    let (cw, ch) = img.dimensions();
    let (nw, nh) = capped_size(cw, ch, cap);
    let img = resize_pil_bilinear(img, nw, nh);
    if nw.min(nh) < cfg.min_image_side {
        return Err(Error::file(
            path,
            format!(
                "image is {nw}×{nh} after resizing, below the {} px minimum",
                cfg.min_image_side
            ),
        ));
    }
    let data = cfg.pixel_norm.apply(img.as_raw());
    let pixels = crate::tensor::Tensor::new([1, nh as usize, nw as usize, 3], data)?;
    Ok(super::PreparedImage {
        pixels,
        resize_factor: (nh as f64 / ch as f64, nw as f64 / cw as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_image(name: &str, img: &image::RgbImage) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("delg-{name}-{}.png", std::process::id()));
        img.save(&path).unwrap();
        path
    }

    fn prepared_size(p: &super::super::PreparedImage) -> (usize, usize) {
        let [_, h, w, _] = p.pixels.shape.nhwc("image").unwrap();
        (w, h)
    }

    #[test]
    fn query_boxes_are_rounded_half_even_for_delg_and_truncated_for_dolg() {
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([9, 99, 199]));
        let path = temp_image("box", &img);
        // 2.5 and 18.5 round to even (2, 18) as Python's round; 1.4 → 1, 20.6 → 21.
        let box_ = Some([1.4, 2.5, 20.6, 18.5]);
        let size = |cfg: &ExtractConfig| prepared_size(&prepare_image(&path, cfg, box_).unwrap());
        assert_eq!(size(&ExtractConfig::default()), (20, 16)); // x 1..21, y 2..18
        assert_eq!(size(&ExtractConfig::for_arch("dolg")), (19, 16)); // x 1..20, y 2..18
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_box_leaving_the_image_is_padded_black_as_pil_crops() {
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([255, 255, 255]));
        let path = temp_image("pad", &img);
        let cfg = ExtractConfig {
            pixel_norm: PixelNorm::Delg,
            ..Default::default()
        };
        let p = prepare_image(&path, &cfg, Some([-5.0, 20.0, 15.0, 40.0])).unwrap();
        assert_eq!(
            prepared_size(&p),
            (20, 20),
            "the box's size, not the clamped one"
        );
        let px = |x: usize, y: usize| p.pixels.data[(y * 20 + x) * 3];
        assert_eq!(px(0, 0), -1.0, "left of the image: black, (0 − 128)/128");
        assert_eq!(px(5, 0), (255.0 - 128.0) / 128.0, "inside: white");
        assert_eq!(px(10, 10), -1.0, "below the image: black");
        // DOLG's slice clamps to the image.
        let p = prepare_image(
            &path,
            &ExtractConfig::for_arch("dolg"),
            Some([-5.0, 20.0, 15.0, 40.0]),
        );
        assert_eq!(prepared_size(&p.unwrap()), (15, 10));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_crop_cap_is_scaled_without_rounding() {
        // A 2000×1000 image capped at 1024; the 900×329 crop gets the cap
        // 1024·900/2000 = 460.8, so its height is round(329·0.512) =
        // round(168.45) = 168, where a cap rounded to 461 would give 169.
        let img = image::RgbImage::from_pixel(2000, 1000, image::Rgb([1, 2, 3]));
        let path = temp_image("cap", &img);
        let p = prepare_image(
            &path,
            &ExtractConfig::default(),
            Some([0.0, 0.0, 900.0, 329.0]),
        )
        .unwrap();
        assert_eq!(prepared_size(&p), (461, 168));
        std::fs::remove_file(&path).unwrap();
    }

    fn level(scale: f64, h: usize, w: usize, att: Vec<f32>) -> LevelOutput {
        let descriptors = (0..h * w * 2).map(|k| (k % 5) as f32 + 1.0).collect();
        LevelOutput {
            scale,
            height: h,
            width: w,
            global: vec![],
            attention: att,
            descriptors,
        }
    }

    #[test]
    fn keypoints_are_thresholded_ranked_and_located_in_original_pixels() {
        let cfg = ExtractConfig {
            max_features: 3,
            ..Default::default()
        };
        let levels = vec![
            level(0.5, 2, 2, vec![1.0, 9.0, 3.0, 5.0]),
            level(2.0, 1, 3, vec![5.0, 0.5, 7.0]),
        ];
        // Image was resized by 0.5 in both axes from the original.
        let f = select_local(&levels, 2.0, &cfg, 32.0, (0.5, 0.5), 2);
        assert_eq!(f.attention, vec![9.0, 7.0, 5.0]);
        // 9.0: level 0 cell (0,1): (32·0, 32·1) / 0.5 / 0.5.
        assert_eq!(&f.locations[0..2], &[0.0, 128.0]);
        // 7.0: level 1 cell (0,2): (0, 64) / 2 / 0.5.
        assert_eq!(&f.locations[2..4], &[0.0, 64.0]);
        // The tie at 5.0 keeps pyramid order: level 0 cell (1,1) first.
        assert_eq!(&f.locations[4..6], &[128.0, 128.0]);
        assert_eq!(f.scales, vec![2.0, 0.5, 2.0]);
        let norm: f32 = f.descriptors[0..2].iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        let none = select_local(&levels, 100.0, &cfg, 32.0, (1.0, 1.0), 2);
        assert!(none.attention.is_empty());
    }

    #[test]
    fn keypoints_sit_at_the_s_stride_unless_one_is_configured() {
        let levels = vec![level(1.0, 2, 2, vec![0.0, 0.0, 0.0, 9.0])];
        let f = select_local(&levels, 1.0, &ExtractConfig::default(), 16.0, (1.0, 1.0), 2);
        assert_eq!(f.locations, vec![16.0, 16.0]);
        let fixed = ExtractConfig {
            feature_stride: Some(8.0),
            ..Default::default()
        };
        let f = select_local(&levels, 1.0, &fixed, 16.0, (1.0, 1.0), 2);
        assert_eq!(f.locations, vec![8.0, 8.0], "a configured stride wins");
    }

    #[test]
    fn global_descriptors_are_normalised_summed_and_normalised() {
        let g = aggregate_global(&[&[3.0, 4.0], &[0.0, 10.0]]).unwrap();
        let (a, b) = (0.6f64, 0.8f64 + 1.0);
        let n = (a * a + b * b).sqrt();
        assert!((g[0] as f64 - a / n).abs() < 1e-6 && (g[1] as f64 - b / n).abs() < 1e-6);
    }

    #[test]
    fn pyramid_sizes_and_validation() {
        let cfg = ExtractConfig::default();
        let sizes = cfg.level_sizes(768, 1024);
        assert_eq!(sizes[0], (192, 256));
        assert_eq!(sizes[4], (768, 1024));
        assert_eq!(sizes[6], (1536, 2048));
        assert_eq!(sizes[3], (543, 724));
        assert!(ExtractConfig {
            global_scales: vec![9],
            ..Default::default()
        }
        .validate()
        .is_err());
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<ExtractConfig>(&json).unwrap(), cfg);
        assert!(
            serde_json::from_str::<ExtractConfig>("{\"max_featurs\": 3}").is_err(),
            "typos are rejected"
        );
    }
}
