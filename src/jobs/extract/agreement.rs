//! How far two extractions of one image agree: f16 against f32 (`bench
//! precision`, and the tests of `--precision f16`).

use super::Extracted;

/// The agreement of an extraction with a reference extraction of the same image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// Cosine of the two global descriptors (NaN when either holds a NaN).
    pub global_cosine: f64,
    /// Keypoints of the reference.
    pub keypoints: usize,
    /// Of those, how many have a keypoint of the other at the same scale
    /// within `radius` pixels.
    pub found_again: usize,
    /// Over the keypoints found again: the largest and the mean L2 distance
    /// between the two (unit) descriptors; 0 when none was found.
    pub descriptor_max: f64,
    pub descriptor_mean: f64,
}

impl Agreement {
    /// Share of the reference's keypoints found again (1 when it has none).
    pub fn found_share(&self) -> f64 {
        if self.keypoints == 0 {
            1.0
        } else {
            self.found_again as f64 / self.keypoints as f64
        }
    }

    /// The agreement over the images of both: the worse global cosine, every
    /// keypoint, the largest descriptor error and the mean over every
    /// keypoint found again. A NaN in either stays NaN.
    pub fn combined(&self, other: &Agreement) -> Agreement {
        let found_again = self.found_again + other.found_again;
        let sum = self.descriptor_mean * self.found_again as f64
            + other.descriptor_mean * other.found_again as f64;
        Agreement {
            global_cosine: nan_or(self.global_cosine, other.global_cosine, f64::min),
            keypoints: self.keypoints + other.keypoints,
            found_again,
            descriptor_max: nan_or(self.descriptor_max, other.descriptor_max, f64::max),
            descriptor_mean: mean(sum, found_again),
        }
    }
}

/// `pick(a, b)`, or NaN when either is (`f64::min` and `max` drop a NaN,
/// and a NaN anywhere must fail the checks).
fn nan_or(a: f64, b: f64, pick: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        pick(a, b)
    }
}

/// `sum / count`, 0 for no values.
fn mean(sum: f64, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// Compares `other` with `reference`: each reference keypoint is matched to
/// the nearest keypoint of `other` at the same scale, if one lies within
/// `radius` pixels.
pub fn agreement(reference: &Extracted, other: &Extracted, radius: f64) -> Agreement {
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum() };
    let (g, h) = (&reference.global, &other.global);
    let global_cosine = dot(g, h) / (dot(g, g) * dot(h, h)).sqrt();
    let (r, o) = (&reference.local, &other.local);
    let dim = if r.scales.is_empty() {
        0
    } else {
        r.descriptors.len() / r.scales.len()
    };
    let mut found_again = 0;
    let (mut worst, mut sum) = (0f64, 0f64);
    for i in 0..r.scales.len() {
        let (y, x) = (r.locations[2 * i] as f64, r.locations[2 * i + 1] as f64);
        let nearest = (0..o.scales.len())
            .filter(|&j| o.scales[j] == r.scales[i])
            .map(|j| {
                let (dy, dx) = (
                    o.locations[2 * j] as f64 - y,
                    o.locations[2 * j + 1] as f64 - x,
                );
                (j, (dy * dy + dx * dx).sqrt())
            })
            .filter(|(_, d)| *d <= radius)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, _)) = nearest {
            found_again += 1;
            let a = &r.descriptors[i * dim..(i + 1) * dim];
            let b = &o.descriptors[j * dim..(j + 1) * dim];
            let d = a
                .iter()
                .zip(b)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            worst = nan_or(worst, d, f64::max);
            sum += d;
        }
    }
    Agreement {
        global_cosine,
        keypoints: r.scales.len(),
        found_again,
        descriptor_max: worst,
        descriptor_mean: mean(sum, found_again),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::extract::LocalFeatures;

    fn extracted(global: Vec<f32>, points: &[(f32, f32, f32)], desc: &[[f32; 2]]) -> Extracted {
        Extracted {
            global,
            local: LocalFeatures {
                descriptors: desc.iter().flatten().copied().collect(),
                locations: points.iter().flat_map(|p| [p.0, p.1]).collect(),
                scales: points.iter().map(|p| p.2).collect(),
                attention: vec![1.0; points.len()],
            },
        }
    }

    #[test]
    fn keypoints_match_at_the_same_scale_within_the_radius_only() {
        let a = extracted(
            vec![1.0, 0.0],
            &[(10.0, 10.0, 1.0), (50.0, 50.0, 2.0), (90.0, 90.0, 1.0)],
            &[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        );
        let b = extracted(
            vec![1.0, 1.0],
            // 0.6 px away; same place but another scale; 3 px away.
            &[(10.6, 10.0, 1.0), (50.0, 50.0, 1.0), (93.0, 90.0, 1.0)],
            &[[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]],
        );
        let m = agreement(&a, &b, 1.0);
        assert!((m.global_cosine - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!((m.keypoints, m.found_again), (3, 1));
        let d = (0.4f64 * 0.4 + 0.8 * 0.8).sqrt();
        assert!((m.descriptor_max - d).abs() < 1e-6 && (m.descriptor_mean - d).abs() < 1e-6);
        let nan = extracted(vec![f32::NAN, 0.0], &[], &[]);
        assert!(agreement(&a, &nan, 1.0).global_cosine.is_nan());
    }

    #[test]
    fn agreements_combine_over_images_and_keep_a_nan() {
        let a = extracted(
            vec![1.0, 0.0],
            &[(10.0, 10.0, 1.0), (20.0, 20.0, 1.0)],
            &[[1.0, 0.0], [0.0, 1.0]],
        );
        let b = extracted(
            vec![1.0, 1.0],
            &[(10.0, 10.0, 1.0), (20.0, 20.0, 1.0)],
            &[[0.6, 0.8], [0.0, 1.0]],
        );
        let one = agreement(&a, &b, 1.0);
        let same = agreement(&a, &a, 1.0);
        let both = one.combined(&same);
        assert_eq!((both.keypoints, both.found_again), (4, 4));
        assert_eq!(both.global_cosine, one.global_cosine);
        assert_eq!(both.descriptor_max, one.descriptor_max);
        assert!((both.descriptor_mean - one.descriptor_mean / 2.0).abs() < 1e-12);
        // A NaN descriptor, then a finite one: the worst stays NaN.
        let broken = extracted(
            vec![1.0, 0.0],
            &[(10.0, 10.0, 1.0), (20.0, 20.0, 1.0)],
            &[[f32::NAN, 0.0], [0.0, 1.0]],
        );
        assert!(agreement(&a, &broken, 1.0).descriptor_max.is_nan());
        assert!(same
            .combined(&agreement(&a, &broken, 1.0))
            .descriptor_max
            .is_nan());
        let nan = extracted(vec![f32::NAN, 0.0], &[], &[]);
        assert!(same
            .combined(&agreement(&a, &nan, 1.0))
            .global_cosine
            .is_nan());
    }
}
