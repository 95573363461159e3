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
            // NaN propagates into the worst distance: a check on it fails.
            worst = if d.is_nan() { f64::NAN } else { worst.max(d) };
            sum += d;
        }
    }
    Agreement {
        global_cosine,
        keypoints: r.scales.len(),
        found_again,
        descriptor_max: worst,
        descriptor_mean: if found_again == 0 {
            0.0
        } else {
            sum / found_again as f64
        },
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
}
