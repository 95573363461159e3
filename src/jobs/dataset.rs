//! Training data (docs/recipe.md §3): a folder with one sub-folder per class or a
//! GLDv2-style CSV, a seeded per-class stratified train/validation split, the
//! random-resized-crop augmentation, and batches assembled on CPU threads.
//!
//! Every random choice is derived from (seed, epoch) or (seed, step, slot), so
//! a resumed run draws exactly the batches an uninterrupted one would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::images::load_rgb;
use crate::tensor::{HostTensor, Rng, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// Class names by label id.
    pub classes: Vec<String>,
}

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Dataset {
    /// `root/<class>/<images>`: classes sorted by name get ids 0, 1, ...
    pub fn from_folders(root: &Path) -> Result<Dataset> {
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| file_err(root, e))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let found = crate::jobs::collection::discover(
                &root.join(class),
                &indicatif::ProgressBar::hidden(),
            )?;
            for (path, reason) in &found.problems {
                eprintln!("skipped {class}/{path}: {reason}");
            }
            for rel in found.images {
                samples.push(Sample {
                    path: root.join(class).join(rel),
                    label,
                });
            }
        }
        if samples.is_empty() {
            return Err(file_err(
                root,
                "holds no class folders with images (expected root/<class>/<image>)",
            ));
        }
        Ok(Dataset { samples, classes })
    }

    /// The labelled database images of a ground truth in the `gnd.json` form
    /// (its `labels` map; an image's first label is its class).
    pub fn from_gnd(gnd: &Path) -> Result<Dataset> {
        let gt = crate::io::groundtruth::GroundTruth::load(gnd)?;
        let root = gnd.parent().unwrap_or(Path::new("."));
        let mut classes: Vec<String> = gt
            .labels
            .values()
            .filter_map(|l| l.first().cloned())
            .collect();
        classes.sort();
        classes.dedup();
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut samples: Vec<Sample> = gt
            .labels
            .iter()
            .filter_map(|(name, l)| {
                l.first().map(|c| Sample {
                    path: gt.image_path(root, name),
                    label: index[c.as_str()],
                })
            })
            .collect();
        samples.sort_by(|a, b| a.path.cmp(&b.path));
        if samples.is_empty() {
            return Err(file_err(
                gnd,
                "has no labelled images (its \"labels\" map is empty)",
            ));
        }
        Ok(Dataset { samples, classes })
    }

    /// A CSV with a header naming `id` and `landmark_id` columns (GLDv2's
    /// train.csv); images are `root/a/b/c/<id>.jpg` (GLDv2's layout) or
    /// `root/<id>.jpg`. Landmark ids are remapped to 0..classes in sorted order.
    pub fn from_csv(csv: &Path, root: &Path) -> Result<Dataset> {
        let text = std::fs::read_to_string(csv).map_err(|e| file_err(csv, e))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| file_err(csv, format!("no '{name}' column in the header")))
        };
        let (id_col, label_col) = (col("id")?, col("landmark_id")?);
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let (Some(id), Some(label)) = (fields.get(id_col), fields.get(label_col)) else {
                return Err(file_err(csv, format!("line {} has too few columns", n + 2)));
            };
            rows.push((id.to_string(), label.to_string()));
        }
        let mut ids: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        ids.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        });
        ids.dedup();
        let index: BTreeMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let path_of = |id: &str| {
            let nested = (id.len() >= 3).then(|| {
                root.join(&id[0..1])
                    .join(&id[1..2])
                    .join(&id[2..3])
                    .join(format!("{id}.jpg"))
            });
            match nested {
                Some(p) if p.exists() => p,
                _ => root.join(format!("{id}.jpg")),
            }
        };
        let samples = rows
            .iter()
            .map(|(id, l)| Sample {
                path: path_of(id),
                label: index[l.as_str()],
            })
            .collect();
        Ok(Dataset {
            samples,
            classes: ids,
        })
    }

    /// Per class, after a seeded shuffle, the first max(1, ⌊fraction·n⌋)
    /// images go to validation and the rest to training (docs/recipe.md §3).
    pub fn split(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let mut by_class: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            by_class.entry(s.label).or_default().push(s);
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (label, mut group) in by_class {
            let mut rng = Rng::new(seed ^ (label as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            shuffle(&mut group, &mut rng);
            let n_val = if fraction > 0.0 {
                ((fraction * group.len() as f64).floor() as usize).max(1)
            } else {
                0
            };
            for (i, s) in group.into_iter().enumerate() {
                if i < n_val {
                    val.push(s.clone())
                } else {
                    train.push(s.clone())
                }
            }
        }
        (
            Dataset {
                samples: train,
                classes: self.classes.clone(),
            },
            Dataset {
                samples: val,
                classes: self.classes.clone(),
            },
        )
    }
}

pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// A crop window in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// Inception-style random crop with TF's `sample_distorted_bounding_box`
/// ranges: area fraction in [0.08, 1], aspect ratio in [3/4, 4/3], at least
/// 10 % of the image, 100 attempts, then the whole image.
pub fn random_crop(width: u32, height: u32, rng: &mut Rng) -> Crop {
    let area = (width * height) as f64;
    for _ in 0..100 {
        let target = rng.range(0.08, 1.0) * area;
        let aspect = rng.range(0.75, 4.0 / 3.0);
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if w >= 1 && h >= 1 && w <= width && h <= height && (w * h) as f64 >= 0.1 * area {
            let x = rng.below((width - w + 1) as usize) as u32;
            let y = rng.below((height - h + 1) as usize) as u32;
            return Crop { x, y, w, h };
        }
    }
    Crop {
        x: 0,
        y: 0,
        w: width,
        h: height,
    }
}

/// TF's "area" resize of a crop to `size`×`size`: each output pixel averages
/// the input area it covers, with fractional weights at the borders.
pub fn resize_area(img: &RgbImage, crop: Crop, size: usize) -> Vec<f32> {
    let sy = crop.h as f64 / size as f64;
    let sx = crop.w as f64 / size as f64;
    let spans = |scale: f64, origin: u32| -> Vec<Vec<(u32, f64)>> {
        (0..size)
            .map(|o| {
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut v = Vec::new();
                let mut p = a.floor();
                while p < b {
                    let w = (p + 1.0).min(b) - p.max(a);
                    if w > 0.0 {
                        v.push((origin + p as u32, w / scale));
                    }
                    p += 1.0;
                }
                v
            })
            .collect()
    };
    let (ys, xs) = (spans(sy, crop.y), spans(sx, crop.x));
    let mut out = vec![0f32; size * size * 3];
    for (oy, yspan) in ys.iter().enumerate() {
        for (ox, xspan) in xs.iter().enumerate() {
            let mut acc = [0f64; 3];
            for &(y, wy) in yspan {
                for &(x, wx) in xspan {
                    let p = img
                        .get_pixel(x.min(img.width() - 1), y.min(img.height() - 1))
                        .0;
                    for c in 0..3 {
                        acc[c] += p[c] as f64 * wy * wx;
                    }
                }
            }
            for c in 0..3 {
                out[(oy * size + ox) * 3 + c] = acc[c] as f32;
            }
        }
    }
    out
}

/// Inception random-sized crop as pycls, which DOLG's code runs on (spec
/// §8.6): area fraction in [0.08, 1], aspect ratio in [3/4, 4/3], sides
/// swapped half the time, 10 tries; None when every try misses (the caller
/// then takes the centre crop).
pub fn inception_crop(width: u32, height: u32, rng: &mut Rng) -> Option<Crop> {
    let area = (width * height) as f64;
    for _ in 0..10 {
        let target = rng.range(0.08, 1.0) * area;
        let aspect = rng.range(0.75, 4.0 / 3.0);
        let mut w = (target * aspect).sqrt().round() as u32;
        let mut h = (target / aspect).sqrt().round() as u32;
        if rng.uniform() < 0.5 {
            (w, h) = (h, w);
        }
        if w >= 1 && h >= 1 && w <= width && h <= height {
            // numpy's randint(0, n) excludes n; a full side starts at 0.
            let start = |side: u32, full: u32, rng: &mut Rng| {
                if side == full {
                    0
                } else {
                    rng.below((full - side) as usize) as u32
                }
            };
            let y = start(h, height, rng);
            let x = start(w, width, rng);
            return Some(Crop { x, y, w, h });
        }
    }
    None
}

/// The centred square of side min(width, height): where pycls's fallback
/// (short side scaled to the size, then a centre crop) takes its pixels from.
pub fn centre_square(width: u32, height: u32) -> Crop {
    let side = width.min(height);
    Crop {
        x: (width - side).div_ceil(2),
        y: (height - side).div_ceil(2),
        w: side,
        h: side,
    }
}

/// Half-pixel bilinear resize of a crop to `size`×`size` without
/// antialiasing, as OpenCV's INTER_LINEAR and TF's bilinear resize sample
/// (values kept as floats, not rounded to bytes).
pub fn resize_bilinear(img: &RgbImage, crop: Crop, size: usize) -> Vec<f32> {
    // Per output index: the two source rows (columns) and the second's weight.
    let taps = |n: u32, origin: u32| -> Vec<(u32, u32, f32)> {
        let scale = n as f64 / size as f64;
        (0..size)
            .map(|o| {
                let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n - 1) as f64);
                let i = s.floor() as u32;
                (
                    origin + i,
                    origin + (i + 1).min(n - 1),
                    (s - i as f64) as f32,
                )
            })
            .collect()
    };
    let (ys, xs) = (taps(crop.h, crop.y), taps(crop.w, crop.x));
    let mut out = vec![0f32; size * size * 3];
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            let p = |x, y| img.get_pixel(x, y).0.map(f32::from);
            let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
            for k in 0..3 {
                let top = a[k] + (b[k] - a[k]) * fx;
                let bottom = c[k] + (d[k] - c[k]) * fx;
                out[(oy * size + ox) * 3 + k] = top + (bottom - top) * fy;
            }
        }
    }
    out
}

/// AlexNet's PCA lighting noise as pycls adds it (σ = 0.1, docs/recipe.md §8.6): one
/// random colour shift along the ImageNet RGB eigenvectors, on [0, 255] values.
pub fn pca_lighting(px: &mut [f32], sigma: f64, rng: &mut Rng) {
    const EIGVAL: [f64; 3] = [0.2175, 0.0188, 0.0045];
    const EIGVEC: [[f64; 3]; 3] = [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ];
    let alpha: [f64; 3] = std::array::from_fn(|_| rng.normal() * sigma);
    let shift: [f32; 3] = std::array::from_fn(|c| {
        (0..3)
            .map(|k| EIGVEC[c][k] * alpha[k] * EIGVAL[k])
            .sum::<f64>() as f32
            * 255.0
    });
    px.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += shift[i % 3]);
}

// An architecture names its augmentation; this file implements each.
pub use crate::model::contract::AugmentRecipe;

/// How training images become tensors.
#[derive(Clone, Copy, Debug)]
pub struct Augment {
    pub size: usize,
    /// Training augmentation (random crop, lighting) or validation's plain resize.
    pub training: bool,
    pub flip: bool,
    pub recipe: AugmentRecipe,
    /// The model's pixel normalisation.
    pub norm: crate::jobs::extract::PixelNorm,
    /// Larger images fail before decoding (see `load_rgb`).
    pub max_pixels: u64,
}

/// One image as the network sees it: cropped, resized, normalised.
pub fn load_sample(path: &Path, aug: Augment, rng: &mut Rng) -> Result<Vec<f32>> {
    let img = load_rgb(path, aug.max_pixels)?;
    let (w, h) = img.dimensions();
    let whole = Crop { x: 0, y: 0, w, h };
    let mut px = match (aug.recipe, aug.training) {
        (AugmentRecipe::Delg, true) => resize_area(&img, random_crop(w, h, rng), aug.size),
        (AugmentRecipe::Delg, false) => resize_bilinear(&img, whole, aug.size),
        (AugmentRecipe::Dolg, true) => {
            let crop = inception_crop(w, h, rng).unwrap_or_else(|| centre_square(w, h));
            resize_bilinear(&img, crop, aug.size)
        }
        (AugmentRecipe::Dolg, false) => resize_bilinear(&img, centre_square(w, h), aug.size),
    };
    if aug.flip && rng.uniform() < 0.5 {
        for row in px.chunks_mut(aug.size * 3) {
            for x in 0..aug.size / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (aug.size - 1 - x) * 3 + c);
                }
            }
        }
    }
    if aug.training && aug.recipe == AugmentRecipe::Dolg {
        pca_lighting(&mut px, 0.1, rng);
    }
    aug.norm.normalize(&mut px);
    Ok(px)
}

/// A batch ready for the device.
pub struct Batch {
    pub step: u64,
    pub images: HostTensor,
    pub labels: HostTensor,
    /// Images that could not be read, with the reason; their slots were refilled.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The sample indices of training step `step`: epochs are seeded
/// permutations, batches are consecutive slices of them.
pub fn batch_indices(n: usize, batch: usize, seed: u64, step: u64) -> Vec<usize> {
    let per_epoch = (n / batch).max(1) as u64;
    let epoch = step / per_epoch;
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(
        &mut order,
        &mut Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)),
    );
    let start = ((step % per_epoch) as usize * batch) % n.max(1);
    (0..batch).map(|i| order[(start + i) % n]).collect()
}

/// Assembles the batch of `step`, decoding on rayon's threads. An unreadable
/// image is reported in `skipped` and its slot filled by the next readable
/// sample of the permutation, so one bad file never stops training.
pub fn make_batch(
    data: &Dataset,
    batch: usize,
    aug: Augment,
    seed: u64,
    step: u64,
) -> Result<Batch> {
    if data.samples.is_empty() {
        return Err(Error::InvalidArgument("the training set is empty".into()));
    }
    let picks = batch_indices(data.samples.len(), batch, seed, step);
    let loaded: Vec<(usize, Result<Vec<f32>>)> = picks
        .par_iter()
        .enumerate()
        .map(|(slot, &i)| {
            let mut rng = Rng::new(
                seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (slot as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            );
            (i, load_sample(&data.samples[i].path, aug, &mut rng))
        })
        .collect();
    let mut images = Vec::with_capacity(batch * aug.size * aug.size * 3);
    let mut labels = Vec::with_capacity(batch);
    let mut skipped = Vec::new();
    for (slot, (i, px)) in loaded.into_iter().enumerate() {
        let (mut i, mut px) = (i, px);
        let mut tries = 0;
        while let Err(e) = &px {
            skipped.push((data.samples[i].path.clone(), e.to_string()));
            tries += 1;
            if tries > data.samples.len().min(64) {
                return Err(Error::InvalidArgument(format!(
                    "no readable training image found near sample {i}: last error {e}"
                )));
            }
            i = (i + 1) % data.samples.len();
            let mut rng = Rng::new(seed ^ step ^ ((slot * 1000 + tries) as u64));
            px = load_sample(&data.samples[i].path, aug, &mut rng);
        }
        images.extend(px?);
        labels.push(data.samples[i].label as f32);
    }
    Ok(Batch {
        step,
        images: Tensor::new([batch, aug.size, aug.size, 3], images)?,
        labels: Tensor::new([batch], labels)?,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_split_is_seeded_and_per_class() {
        let samples: Vec<Sample> = (0..23)
            .map(|i| Sample {
                path: PathBuf::from(format!("{i}.jpg")),
                label: i % 3,
            })
            .collect();
        let d = Dataset {
            samples,
            classes: vec!["a".into(), "b".into(), "c".into()],
        };
        let (t1, v1) = d.split(0.2, 7);
        let (t2, v2) = d.split(0.2, 7);
        assert_eq!(
            (t1.samples.clone(), v1.samples.clone()),
            (t2.samples, v2.samples)
        );
        // Classes of 8, 8 and 7 images: ⌊1.6⌋ = 1 and ⌊1.4⌋ = 1 → max(1, ·) = 1 each.
        assert_eq!(v1.samples.len(), 3);
        assert_eq!(t1.samples.len() + v1.samples.len(), 23);
        for c in 0..3 {
            assert_eq!(v1.samples.iter().filter(|s| s.label == c).count(), 1);
        }
        assert_ne!(
            d.split(0.2, 8).1.samples,
            v1.samples,
            "another seed, another split"
        );
    }

    #[test]
    fn crops_respect_the_ranges() {
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            let c = random_crop(640, 480, &mut rng);
            let frac = (c.w * c.h) as f64 / (640.0 * 480.0);
            assert!(c.x + c.w <= 640 && c.y + c.h <= 480);
            assert!((0.07..=1.0).contains(&frac), "{c:?}");
            let aspect = c.w as f64 / c.h as f64;
            assert!(
                c.w == 640 && c.h == 480 || (0.7..1.4).contains(&aspect),
                "{c:?}"
            );
        }
    }

    #[test]
    fn inception_crops_respect_pycls_ranges_and_give_up_after_ten_tries() {
        let mut rng = Rng::new(3);
        let mut swapped = 0;
        for _ in 0..500 {
            let c = inception_crop(640, 480, &mut rng).expect("a 640×480 image always fits soon");
            let area = (c.w * c.h) as f64 / (640.0 * 480.0);
            assert!((0.07..=1.01).contains(&area), "{c:?}");
            assert!(c.x + c.w <= 640 && c.y + c.h <= 480, "{c:?}");
            swapped += usize::from(c.h > c.w);
        }
        assert!(swapped > 100, "sides are swapped half the time: {swapped}");
        // A 1-px column fits no crop of ≥ 8 % area with aspect ≤ 4/3.
        assert_eq!(inception_crop(1, 100, &mut rng), None);
        assert_eq!(
            centre_square(10, 7),
            Crop {
                x: 2,
                y: 0,
                w: 7,
                h: 7
            }
        );
    }

    #[test]
    fn bilinear_resize_samples_at_half_pixel_centres() {
        // 2 px wide: 0 and 100. Doubling puts outputs at source x = -0.25
        // (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1).
        let mut img = RgbImage::new(2, 2);
        for (x, _, p) in img.enumerate_pixels_mut() {
            p.0 = [(x * 100) as u8; 3];
        }
        let whole = Crop {
            x: 0,
            y: 0,
            w: 2,
            h: 2,
        };
        let out = resize_bilinear(&img, whole, 4);
        let row: Vec<f32> = out[..12].iter().step_by(3).copied().collect();
        assert_eq!(row, vec![0.0, 25.0, 75.0, 100.0]);
    }

    #[test]
    fn pca_lighting_shifts_every_pixel_by_one_colour() {
        let mut px = vec![100f32; 12];
        pca_lighting(&mut px, 0.1, &mut Rng::new(1));
        assert!(px[0..3] != [100.0; 3], "σ 0.1 moves the colour");
        assert_eq!(px[0..3], px[9..12], "the same shift everywhere");
        let mut still = vec![100f32; 12];
        pca_lighting(&mut still, 0.0, &mut Rng::new(1));
        assert_eq!(still, vec![100f32; 12]);
    }

    #[test]
    fn validation_resizes_the_whole_image_bilinearly() {
        let path = std::env::temp_dir().join(format!("delg-val-{}.png", std::process::id()));
        let img = RgbImage::from_fn(9, 5, |x, y| image::Rgb([(x * 25) as u8, (y * 50) as u8, 7]));
        img.save(&path).unwrap();
        for recipe in [AugmentRecipe::Delg, AugmentRecipe::Dolg] {
            let aug = Augment {
                size: 4,
                training: false,
                flip: true,
                recipe,
                norm: crate::jobs::extract::PixelNorm::Delg,
                max_pixels: u64::MAX,
            };
            let got = load_sample(&path, aug, &mut Rng::new(0)).unwrap();
            let crop = match recipe {
                AugmentRecipe::Delg => Crop {
                    x: 0,
                    y: 0,
                    w: 9,
                    h: 5,
                },
                AugmentRecipe::Dolg => centre_square(9, 5),
            };
            let mut want = resize_bilinear(&img, crop, 4);
            aug.norm.normalize(&mut want);
            assert_eq!(got, want, "{recipe:?}: no crop, flip or lighting");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn area_resize_averages_blocks() {
        // 4×4 image of 2×2 blocks shrunk to 2×2 gives each block's mean.
        let mut img = RgbImage::new(4, 4);
        for (x, y, p) in img.enumerate_pixels_mut() {
            p.0 = [(x * 10 + y) as u8; 3];
        }
        let out = resize_area(
            &img,
            Crop {
                x: 0,
                y: 0,
                w: 4,
                h: 4,
            },
            2,
        );
        assert_eq!(out[0], (0.0 + 1.0 + 10.0 + 11.0) / 4.0);
        let out3 = resize_area(
            &img,
            Crop {
                x: 0,
                y: 0,
                w: 4,
                h: 4,
            },
            3,
        );
        // Fractional coverage: the centre pixel averages the 4 central pixels' neighbourhood.
        let want = (0..4)
            .flat_map(|y| (0..4).map(move |x| (x * 10 + y) as f64))
            .sum::<f64>()
            / 16.0;
        let mean: f64 = out3.iter().step_by(3).map(|&v| v as f64).sum::<f64>() / 9.0;
        assert!((mean - want).abs() < 1e-4);
    }

    #[test]
    fn batches_are_reproducible_per_step() {
        let a = batch_indices(10, 4, 3, 5);
        assert_eq!(a, batch_indices(10, 4, 3, 5));
        let epoch: Vec<usize> = (0..2).flat_map(|s| batch_indices(10, 4, 3, s)).collect();
        let mut sorted = epoch.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "no repeats within an epoch");
    }
}
