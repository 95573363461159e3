//! The extraction recipe of DELG (spec §4): image sizes, the pyramid, global
//! descriptor aggregation over scales, and attention-based keypoint selection
//! with receptive-field locations. The device work (the network at each
//! scale) is the model's; this file turns its per-scale outputs into the
//! features that are stored.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every parameter of extraction; defaults are the paper's (spec §4), and the
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
    pub feature_stride: f64,
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
}

fn default_max_pixels() -> u64 {
    crate::io::images::DEFAULT_MAX_PIXELS
}

/// Pixel normalisation a model was trained with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelNorm {
    /// DELG: (v − 128) / 128.
    #[default]
    Delg,
    /// ImageNet mean and standard deviation on [0, 1] RGB. DOLG's official
    /// code feeds BGR with the statistics reversed; its converter flips the
    /// first convolution's input channels instead, so every model reads RGB.
    Imagenet,
}

impl PixelNorm {
    /// Normalises interleaved RGB values in [0, 255] in place.
    pub fn normalize(self, rgb: &mut [f32]) {
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        match self {
            PixelNorm::Delg => rgb.iter_mut().for_each(|v| *v = (*v - 128.0) / 128.0),
            PixelNorm::Imagenet => rgb
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (*v / 255.0 - MEAN[i % 3]) / STD[i % 3]),
        }
    }

    pub fn apply(self, rgb: &[u8]) -> Vec<f32> {
        let mut px: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
        self.normalize(&mut px);
        px
    }
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            max_image_size: Some(1024),
            // The reference's f32 constants: 2^(k/2) for k = -4..2, rounded to f32.
            scales: (-4..=2)
                .map(|k| 2f64.powf(k as f64 / 2.0) as f32 as f64)
                .collect(),
            global_scales: vec![3, 4, 5],
            score_threshold: None,
            max_features: 1000,
            binarize: false,
            min_image_side: 10,
            // DELG's export hardcodes rf 291, stride 32, padding 145: centre = 32·i.
            feature_stride: 32.0,
            center_offset: 0.0,
            pixel_norm: PixelNorm::Delg,
            truncate_boxes: false,
            max_pixels: default_max_pixels(),
        }
    }
}

/// DOLG's five scales of the original image (spec §8.7), the official
/// code's four-digit literals rather than exact powers of √2.
#[allow(clippy::approx_constant)]
pub const DOLG_SCALES: [f64; 5] = [0.3535, 0.5, 0.7071, 1.0, 1.4142];

impl ExtractConfig {
    /// The paper's settings for a model architecture ("delg" or "dolg").
    pub fn for_arch(arch: &str) -> ExtractConfig {
        match arch {
            "dolg" => ExtractConfig {
                // No size cap: scales apply to the original image.
                max_image_size: None,
                scales: DOLG_SCALES.to_vec(),
                global_scales: (0..DOLG_SCALES.len()).collect(),
                max_features: 0,
                pixel_norm: PixelNorm::Imagenet,
                truncate_boxes: true,
                ..Default::default()
            },
            _ => ExtractConfig::default(),
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
        .ok_or_else(|| Error::Graph("no global descriptor level".into()))?;
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
/// concatenated list). Locations are receptive-field centres divided by the
/// level scale and by the per-axis resize factors (new/original), so they are
/// (y, x) in original-image pixels; the stored scale is 1/s; descriptors are
/// L2-normalised.
pub fn select_local(
    levels: &[LevelOutput],
    tau: f32,
    cfg: &ExtractConfig,
    resize_factor: (f64, f64),
    dim: usize,
) -> LocalFeatures {
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
        let y = (cfg.feature_stride * i as f64 + cfg.center_offset) / out.scale / resize_factor.0;
        let x = (cfg.feature_stride * j as f64 + cfg.center_offset) / out.scale / resize_factor.1;
        let mut d = out.descriptors[c.cell * dim..(c.cell + 1) * dim].to_vec();
        l2_normalize(&mut d);
        f.descriptors.extend_from_slice(&d);
        f.locations.extend_from_slice(&[y as f32, x as f32]);
        f.scales.push((1.0 / out.scale) as f32);
        f.attention.push(c.score);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_boxes_are_rounded_for_delg_and_truncated_for_dolg() {
        let path = std::env::temp_dir().join(format!("delg-box-{}.png", std::process::id()));
        image::RgbImage::from_pixel(40, 30, image::Rgb([9, 99, 199]))
            .save(&path)
            .unwrap();
        let box_ = Some([1.4, 2.6, 20.6, 18.4]);
        let size = |cfg: &ExtractConfig| {
            let p = prepare_image(&path, cfg, box_).unwrap();
            let [_, h, w, _] = p.pixels.shape.nhwc("image").unwrap();
            (w, h)
        };
        assert_eq!(size(&ExtractConfig::default()), (20, 15)); // x 1..21, y 3..18
        assert_eq!(size(&ExtractConfig::for_arch("dolg")), (19, 16)); // x 1..20, y 2..18
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
        let f = select_local(&levels, 2.0, &cfg, (0.5, 0.5), 2);
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
        let none = select_local(&levels, 100.0, &cfg, (1.0, 1.0), 2);
        assert!(none.attention.is_empty());
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

/// A query crop [x1, y1, x2, y2] in original-image pixels.
pub type CropBox = [f64; 4];

/// Decodes, crops and resizes one image as the reference extractor does, and
/// normalises it for DELG ((x − 128)/128, RGB, NHWC).
pub fn prepare_image(
    path: &std::path::Path,
    cfg: &ExtractConfig,
    crop: Option<CropBox>,
) -> Result<super::PreparedImage> {
    use crate::io::images::{capped_size, load_rgb, resize_pil_bilinear};
    let mut img = load_rgb(path, cfg.max_pixels)?;
    let (ow, oh) = img.dimensions();
    let mut max_side = cfg.max_image_size;
    if let Some([x1, y1, x2, y2]) = crop {
        // An integer box (rounded as DELG's PIL crop, or truncated as DOLG's
        // int()); the crop keeps the scale it has inside the capped full
        // image (spec §4.1 step 2).
        let int = |v: f64| {
            if cfg.truncate_boxes {
                v.trunc()
            } else {
                v.round()
            }
        };
        let (x1, y1) = (int(x1).max(0.0) as u32, int(y1).max(0.0) as u32);
        let (x2, y2) = (
            int(x2).min(ow as f64).max(0.0) as u32,
            int(y2).min(oh as f64).max(0.0) as u32,
        );
        if x2 <= x1 || y2 <= y1 {
            return Err(Error::File {
                path: path.to_path_buf(),
                reason: format!("crop box {:?} is empty inside {ow}×{oh}", crop),
            });
        }
        let factor = (x2 - x1).max(y2 - y1) as f64 / ow.max(oh) as f64;
        max_side = max_side.map(|m| ((m as f64 * factor).round() as u32).max(1));
        img = image::imageops::crop_imm(&img, x1, y1, x2 - x1, y2 - y1).to_image();
    }
    let (cw, ch) = img.dimensions();
    let (nw, nh) = capped_size(cw, ch, max_side);
    let img = resize_pil_bilinear(&img, nw, nh);
    if nw.min(nh) < cfg.min_image_side {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!(
                "image is {nw}×{nh} after resizing, below the {} px minimum",
                cfg.min_image_side
            ),
        });
    }
    let data = cfg.pixel_norm.apply(img.as_raw());
    let pixels = crate::tensor::Tensor::new([1, nh as usize, nw as usize, 3], data)?;
    Ok(super::PreparedImage {
        pixels,
        resize_factor: (nh as f64 / ch as f64, nw as f64 / cw as f64),
    })
}
