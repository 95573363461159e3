//! RANSAC geometric verification as DELG runs it through scikit-image's
//! `measure.ransac` (docs/recipe.md §5): an affine model (or, optionally, a homography)
//! maps database-image locations to query locations, both (y, x) pixels;
//! min_samples 3, residual threshold 20 px, 1000 trials, no early stop, and
//! the score is the inlier count of the best trial.
//!
//! Faithful to skimage where it matters for scores:
//! - models are fitted like skimage's `estimate`: both point sets are
//!   centred and scaled to RMS distance √2, and the coefficients are the
//!   smallest right singular vector of the linear system (here: the smallest
//!   eigenvector of its 7×7 or 9×9 normal matrix), de-normalised after;
//! - inlier = residual < threshold; the best trial has the most inliers, ties
//!   broken by the smaller sum of squared residuals over all points;
//! - the returned model is refitted on the best trial's inliers, while the
//!   returned inlier mask (and so the score) is the best trial's own;
//! - `stop_probability = 1` never stops early (skimage up to 0.18, the DELG
//!   era; skimage ≥ 0.19 clamps 1 − p to machine epsilon and may stop).
//!
//! Not bit-identical: samples come from the crate's SplitMix64 [`Rng`], not
//! NumPy's generator, and degenerate samples (collinear points, or for a
//! homography three collinear of four) are rejected explicitly, where skimage
//! may fit a meaningless model to them.

use super::matching::Match;
use crate::tensor::Rng;
use crate::{Error, Result};

/// Minimum number of putative matches for verification; fewer score 0
/// (DELG returns 0 when there are ≤ 3 matches).
pub const MIN_PUTATIVE_MATCHES: usize = 4;

/// Eigenvalue ratio (second-smallest / largest of the normal matrix) below
/// which the fit is underdetermined: a singular-value ratio of 1e-6.
const DEGENERACY_TOL: f64 = 1e-12;

/// Geometric model fitted by RANSAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// 6 degrees of freedom (skimage `AffineTransform`), 3 points minimum.
    Affine,
    /// 8 degrees of freedom (skimage `ProjectiveTransform`), 4 points minimum.
    Homography,
}

impl Model {
    pub fn min_samples(self) -> usize {
        match self {
            Model::Affine => 3,
            Model::Homography => 4,
        }
    }

    /// Which of the nine homography coefficients (row-major, the last being
    /// h22) the model estimates.
    fn columns(self) -> &'static [usize] {
        match self {
            Model::Affine => &[0, 1, 2, 3, 4, 5, 8],
            Model::Homography => &[0, 1, 2, 3, 4, 5, 6, 7, 8],
        }
    }
}

/// A 2-D projective transform in homogeneous coordinates, mapping `src`
/// points to `dst` points (affine ones have last row [0, 0, 1]). The
/// coordinate order is whatever the fitted points used ((y, x) in DELG).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform(pub [[f64; 3]; 3]);

impl Transform {
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let m = &self.0;
        let mut z = m[2][0] * p[0] + m[2][1] * p[1] + m[2][2];
        // skimage replaces a zero depth by machine epsilon rather than
        // producing infinities.
        if z == 0.0 {
            z = f64::EPSILON;
        }
        [
            (m[0][0] * p[0] + m[0][1] * p[1] + m[0][2]) / z,
            (m[1][0] * p[0] + m[1][1] * p[1] + m[1][2]) / z,
        ]
    }

    /// The same map on points with their two coordinates swapped ((y, x)
    /// instead of (x, y) or back): rows and columns 0 and 1 exchanged.
    pub fn swap_axes(&self) -> Transform {
        let p = [1, 0, 2];
        Transform(std::array::from_fn(|i| {
            std::array::from_fn(|k| self.0[p[i]][p[k]])
        }))
    }

    /// The inverse map, `None` when singular.
    pub fn inverse(&self) -> Option<Transform> {
        let m = &self.0;
        // Adjugate (transposed cofactors) over the determinant.
        let c = |r0: usize, r1: usize, c0: usize, c1: usize| {
            m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]
        };
        let adj = [
            [c(1, 2, 1, 2), -c(0, 2, 1, 2), c(0, 1, 1, 2)],
            [-c(1, 2, 0, 2), c(0, 2, 0, 2), -c(0, 1, 0, 2)],
            [c(1, 2, 0, 1), -c(0, 2, 0, 1), c(0, 1, 0, 1)],
        ];
        let det = m[0][0] * adj[0][0] + m[0][1] * adj[1][0] + m[0][2] * adj[2][0];
        (det.abs() > f64::EPSILON * m.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max))
            .then(|| Transform(adj.map(|row| row.map(|v| v / det))))
    }

    /// Mean distance between where `self` and `other` send the four
    /// corners of a `width`×`height` image (both in (x, y) order): the
    /// usual accuracy measure of a fitted homography against the truth.
    pub fn corner_error(&self, other: &Transform, width: f64, height: f64) -> f64 {
        [[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]]
            .iter()
            .map(|&c| {
                let (a, b) = (self.apply(c), other.apply(c));
                (a[0] - b[0]).hypot(a[1] - b[1])
            })
            .sum::<f64>()
            / 4.0
    }

    /// Euclidean distance between the mapped `src` and `dst`.
    pub fn residual(&self, src: [f64; 2], dst: [f64; 2]) -> f64 {
        let q = self.apply(src);
        (q[0] - dst[0]).hypot(q[1] - dst[1])
    }

    /// Least-squares fit (skimage's normalised algebraic estimate) of
    /// `model` to all pairs; `None` if the points are degenerate.
    pub fn estimate(model: Model, src: &[[f64; 2]], dst: &[[f64; 2]]) -> Result<Option<Self>> {
        if src.len() != dst.len() {
            return Err(Error::shape(
                "Transform::estimate",
                format!(
                    "{} source points but {} destination points",
                    src.len(),
                    dst.len()
                ),
            ));
        }
        if src.len() < model.min_samples() {
            return Ok(None);
        }
        Ok(fit(model, src, dst, 0..src.len()))
    }
}

/// Similarity that centres points and scales their RMS distance to √2, as
/// skimage's `_center_and_normalize_points`: (scale, centre).
fn normalization<I: Iterator<Item = usize> + Clone>(
    pts: &[[f64; 2]],
    idx: I,
) -> Option<(f64, [f64; 2])> {
    let n = idx.clone().count() as f64;
    let mut c = [0.0; 2];
    for i in idx.clone() {
        c[0] += pts[i][0];
        c[1] += pts[i][1];
    }
    c = [c[0] / n, c[1] / n];
    let ms = idx
        .map(|i| (pts[i][0] - c[0]).powi(2) + (pts[i][1] - c[1]).powi(2))
        .sum::<f64>()
        / n;
    let scale = std::f64::consts::SQRT_2 / ms.sqrt();
    (scale.is_finite() && ms > 0.0).then_some((scale, c))
}

fn fit<I: Iterator<Item = usize> + Clone>(
    model: Model,
    src: &[[f64; 2]],
    dst: &[[f64; 2]],
    idx: I,
) -> Option<Transform> {
    let (ss, sc) = normalization(src, idx.clone())?;
    let (ds, dc) = normalization(dst, idx.clone())?;
    let cols = model.columns();
    let k = cols.len();
    // Normal matrix of the homogeneous system; each pair gives the rows
    // [x, y, 1, 0, 0, 0, −ux, −uy, −u] and [0, 0, 0, x, y, 1, −vx, −vy, −v].
    let mut ata = [[0.0f64; 9]; 9];
    for i in idx {
        let (x, y) = ((src[i][0] - sc[0]) * ss, (src[i][1] - sc[1]) * ss);
        let (u, v) = ((dst[i][0] - dc[0]) * ds, (dst[i][1] - dc[1]) * ds);
        let rows = [
            [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, -u],
            [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, -v],
        ];
        for row in &rows {
            for (ata_row, &ca) in ata.iter_mut().zip(cols) {
                for (x, &cb) in ata_row.iter_mut().zip(cols) {
                    *x += row[ca] * row[cb];
                }
            }
        }
    }
    let (values, vectors) = symmetric_eigen(ata, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let largest = values[order[k - 1]];
    if largest.is_nan() || largest <= 0.0 || values[order[1]] <= DEGENERACY_TOL * largest {
        return None;
    }
    let p: Vec<f64> = (0..k).map(|r| vectors[r][order[0]]).collect();
    // skimage's `np.isclose(V[-1, -1], 0)` test on the unit solution vector.
    if p[k - 1].abs() <= 1e-8 {
        return None;
    }
    let mut hn = [[0.0f64; 3]; 3];
    for (&c, &v) in cols.iter().zip(&p) {
        hn[c / 3][c % 3] = v / p[k - 1];
    }
    // H = T_dst⁻¹ · Hn · T_src.
    let t_src = [
        [ss, 0.0, -ss * sc[0]],
        [0.0, ss, -ss * sc[1]],
        [0.0, 0.0, 1.0],
    ];
    let t_dst_inv = [
        [1.0 / ds, 0.0, dc[0]],
        [0.0, 1.0 / ds, dc[1]],
        [0.0, 0.0, 1.0],
    ];
    let mut h = matmul3(&matmul3(&t_dst_inv, &hn), &t_src);
    let h22 = h[2][2];
    if h22 == 0.0 {
        return None;
    }
    h.iter_mut().flatten().for_each(|x| *x /= h22);
    h.iter()
        .flatten()
        .all(|x| x.is_finite())
        .then_some(Transform(h))
}

fn matmul3(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|t| a[i][t] * b[t][j]).sum();
        }
    }
    c
}

/// Cyclic Jacobi eigen-decomposition of the leading k×k block of a
/// symmetric matrix: (eigenvalues, eigenvectors as columns). Jacobi keeps
/// small eigenvalues accurate to about ε·‖A‖, enough to rank the null space.
fn symmetric_eigen(mut a: [[f64; 9]; 9], k: usize) -> ([f64; 9], [[f64; 9]; 9]) {
    let mut v = [[0.0f64; 9]; 9];
    for (i, row) in v.iter_mut().enumerate().take(k) {
        row[i] = 1.0;
    }
    for _sweep in 0..64 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..k).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-32 * diag || off == 0.0 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut().take(k) {
                    let (arp, arq) = (row[p], row[q]);
                    row[p] = c * arp - s * arq;
                    row[q] = s * arp + c * arq;
                }
                let (upper, lower) = a.split_at_mut(q);
                for (xp, xq) in upper[p].iter_mut().zip(lower[0].iter_mut()).take(k) {
                    let (apr, aqr) = (*xp, *xq);
                    *xp = c * apr - s * aqr;
                    *xq = s * apr + c * aqr;
                }
                for row in v.iter_mut().take(k) {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    let mut values = [0.0; 9];
    for (i, value) in values.iter_mut().enumerate().take(k) {
        *value = a[i][i];
    }
    (values, v)
}

/// RANSAC settings; the default is DELG's (docs/recipe.md §5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RansacParams {
    pub model: Model,
    pub min_samples: usize,
    /// Pixels; a pair is an inlier if its residual is strictly below.
    pub residual_threshold: f64,
    pub max_trials: usize,
    /// 1 disables the adaptive trial count.
    pub stop_probability: f64,
    pub seed: u64,
}

impl Default for RansacParams {
    fn default() -> Self {
        RansacParams {
            model: Model::Affine,
            min_samples: 3,
            residual_threshold: 20.0,
            max_trials: 1000,
            stop_probability: 1.0,
            seed: 0,
        }
    }
}

impl RansacParams {
    /// DELG's settings with a homography (4-point samples) instead.
    pub fn homography() -> Self {
        RansacParams {
            model: Model::Homography,
            min_samples: 4,
            ..Self::default()
        }
    }

    fn validate(&self, n: usize) -> Result<()> {
        let bad = |detail: String| Err(Error::InvalidArgument(format!("ransac: {detail}")));
        if self.min_samples < self.model.min_samples() {
            return bad(format!(
                "min_samples {} is below the {:?} minimum of {}",
                self.min_samples,
                self.model,
                self.model.min_samples()
            ));
        }
        if n < self.min_samples {
            return bad(format!(
                "{n} point pairs, fewer than min_samples {}",
                self.min_samples
            ));
        }
        if self.residual_threshold.is_nan() || self.residual_threshold < 0.0 {
            return bad(format!(
                "residual_threshold must be >= 0, got {}",
                self.residual_threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.stop_probability) {
            return bad(format!(
                "stop_probability must be in [0, 1], got {}",
                self.stop_probability
            ));
        }
        Ok(())
    }
}

/// The outcome of [`ransac`].
#[derive(Clone, Debug, PartialEq)]
pub struct RansacResult {
    /// Refitted on the best trial's inliers (or that trial's model if the
    /// refit was degenerate).
    pub model: Transform,
    /// The best trial's inlier mask, one flag per point pair.
    pub inliers: Vec<bool>,
    pub num_inliers: usize,
    /// Trials run (below `max_trials` only with `stop_probability` < 1).
    pub trials: usize,
}

/// Trials needed to draw an all-inlier sample with the given probability;
/// `None` means unbounded.
fn dynamic_max_trials(inliers: usize, n: usize, k: usize, probability: f64) -> Option<usize> {
    if probability == 0.0 {
        return Some(0);
    }
    if inliers == 0 || probability >= 1.0 {
        return None;
    }
    let ratio = inliers as f64 / n as f64;
    let nom = (1.0 - probability).max(f64::EPSILON);
    let denom = (1.0 - ratio.powi(k as i32)).max(f64::EPSILON);
    Some((nom.ln() / denom.ln()).ceil() as usize)
}

/// `k` distinct indices below `n` (k ≪ n in practice, so rejection is
/// cheaper than a shuffle).
fn sample_distinct(rng: &mut Rng, n: usize, out: &mut [usize]) {
    for i in 0..out.len() {
        out[i] = loop {
            let c = rng.below(n);
            if !out[..i].contains(&c) {
                break c;
            }
        };
    }
}

/// Robustly fits `params.model` mapping `src[i]` to `dst[i]`. Returns `None`
/// when no trial produced an inlier (skimage returns no model then).
pub fn ransac(
    src: &[[f64; 2]],
    dst: &[[f64; 2]],
    params: &RansacParams,
) -> Result<Option<RansacResult>> {
    if src.len() != dst.len() {
        return Err(Error::shape(
            "ransac",
            format!(
                "{} source points but {} destination points",
                src.len(),
                dst.len()
            ),
        ));
    }
    let n = src.len();
    params.validate(n)?;
    let mut rng = Rng::new(params.seed);
    let mut sample = vec![0usize; params.min_samples];
    let mut best: Option<Transform> = None;
    let (mut best_count, mut best_sum) = (0usize, f64::INFINITY);
    let mut max_trials = params.max_trials;
    let mut trials = 0;
    while trials < max_trials {
        trials += 1;
        sample_distinct(&mut rng, n, &mut sample);
        let Some(model) = fit(params.model, src, dst, sample.iter().copied()) else {
            continue;
        };
        let (mut count, mut sum) = (0usize, 0.0f64);
        for (s, d) in src.iter().zip(dst) {
            let r = model.residual(*s, *d);
            count += usize::from(r < params.residual_threshold);
            sum += r * r;
        }
        if count > best_count || (count == best_count && sum < best_sum) {
            best = Some(model);
            (best_count, best_sum) = (count, sum);
            if let Some(limit) =
                dynamic_max_trials(count, n, params.min_samples, params.stop_probability)
            {
                max_trials = max_trials.min(limit);
            }
        }
    }
    let Some(trial_model) = best.filter(|_| best_count > 0) else {
        return Ok(None);
    };
    let inliers: Vec<bool> = src
        .iter()
        .zip(dst)
        .map(|(s, d)| trial_model.residual(*s, *d) < params.residual_threshold)
        .collect();
    let model = fit(params.model, src, dst, (0..n).filter(|&i| inliers[i])).unwrap_or(trial_model);
    Ok(Some(RansacResult {
        model,
        inliers,
        num_inliers: best_count,
        trials,
    }))
}

/// DELG's geometric score of one query/database pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// Inlier count, 0 below [`MIN_PUTATIVE_MATCHES`] or without a model.
    pub score: usize,
    pub ransac: Option<RansacResult>,
}

/// Verifies putative `matches` between the query's and a database image's
/// keypoints (`locations`: N×2 row-major (y, x) pixels, as extraction
/// stores them). The model maps database locations onto query locations.
pub fn verify(
    query_locations: &[f32],
    db_locations: &[f32],
    matches: &[Match],
    params: &RansacParams,
) -> Result<Verification> {
    const OP: &str = "verify";
    for (name, locs) in [("query", query_locations), ("database", db_locations)] {
        if locs.len() % 2 != 0 {
            return Err(Error::shape(
                OP,
                format!("{name} locations have {} values, not N×2", locs.len()),
            ));
        }
    }
    let point = |locs: &[f32], i: usize, name: &str| -> Result<[f64; 2]> {
        locs.get(2 * i..2 * i + 2)
            .map(|p| [f64::from(p[0]), f64::from(p[1])])
            .ok_or_else(|| {
                Error::shape(
                    OP,
                    format!("match refers to {name} keypoint {i} of {}", locs.len() / 2),
                )
            })
    };
    let mut src = Vec::with_capacity(matches.len());
    let mut dst = Vec::with_capacity(matches.len());
    for m in matches {
        src.push(point(db_locations, m.db, "database")?);
        dst.push(point(query_locations, m.query, "query")?);
    }
    if matches.len() < MIN_PUTATIVE_MATCHES.max(params.min_samples) {
        return Ok(Verification {
            score: 0,
            ransac: None,
        });
    }
    let ransac = ransac(&src, &dst, params)?;
    Ok(Verification {
        score: ransac.as_ref().map_or(0, |r| r.num_inliers),
        ransac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFFINE: Transform = Transform([[0.9, -0.3, 40.0], [0.25, 1.1, -15.0], [0.0, 0.0, 1.0]]);
    const HOMOGRAPHY: Transform = Transform([
        [0.88, 0.31, -31.5],
        [-0.18, 0.94, 122.5],
        [2.5e-4, -2.0e-5, 1.0],
    ]);

    #[test]
    fn inverse_swap_and_corner_error() {
        let inv = HOMOGRAPHY.inverse().unwrap();
        for p in [[0.0, 0.0], [120.0, -40.0], [300.0, 500.0]] {
            let q = inv.apply(HOMOGRAPHY.apply(p));
            assert!((q[0] - p[0]).abs() < 1e-9 && (q[1] - p[1]).abs() < 1e-9);
            let s = AFFINE.swap_axes().apply([p[1], p[0]]);
            let t = AFFINE.apply(p);
            assert_eq!([s[1], s[0]], t);
        }
        assert!(
            Transform([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
                .inverse()
                .is_none()
        );
        let shifted = Transform([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]]);
        let id = Transform([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        assert_eq!(id.corner_error(&shifted, 10.0, 20.0), 5.0);
    }

    fn assert_close(a: &Transform, b: &Transform, tol: f64) {
        for (x, y) in a.0.iter().flatten().zip(b.0.iter().flatten()) {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }

    /// `n_in` noisy correspondences of `t` and `n_out` (≤ `n_in`) random
    /// pairs, outliers at the first odd positions; returns (src, dst, is_inlier).
    fn scene(
        t: &Transform,
        n_in: usize,
        n_out: usize,
        noise: f64,
        seed: u64,
    ) -> (Vec<[f64; 2]>, Vec<[f64; 2]>, Vec<bool>) {
        let mut rng = Rng::new(seed);
        let (mut src, mut dst, mut truth) = (vec![], vec![], vec![]);
        for i in 0..n_in + n_out {
            let inlier = !(i % 2 == 1 && i / 2 < n_out);
            let s = [rng.range(0.0, 500.0), rng.range(0.0, 400.0)];
            let d = if inlier {
                let p = t.apply(s);
                [p[0] + noise * rng.normal(), p[1] + noise * rng.normal()]
            } else {
                [rng.range(-100.0, 600.0), rng.range(-100.0, 500.0)]
            };
            src.push(s);
            dst.push(d);
            truth.push(inlier);
        }
        (src, dst, truth)
    }

    #[test]
    fn minimal_and_overdetermined_fits_are_exact() {
        let (src, dst, _) = scene(&AFFINE, 40, 0, 0.0, 1);
        let three = Transform::estimate(Model::Affine, &src[..3], &dst[..3]).unwrap();
        assert_close(&three.unwrap(), &AFFINE, 1e-9);
        let all = Transform::estimate(Model::Affine, &src, &dst).unwrap();
        assert_close(&all.unwrap(), &AFFINE, 1e-9);
        let (src, dst, _) = scene(&HOMOGRAPHY, 40, 0, 0.0, 2);
        let four = Transform::estimate(Model::Homography, &src[..4], &dst[..4]).unwrap();
        assert_close(&four.unwrap(), &HOMOGRAPHY, 1e-7);
        let all = Transform::estimate(Model::Homography, &src, &dst).unwrap();
        assert_close(&all.unwrap(), &HOMOGRAPHY, 1e-7);
        // Too few points is "no model", not an error.
        assert_eq!(
            Transform::estimate(Model::Homography, &src[..3], &dst[..3]).unwrap(),
            None
        );
    }

    #[test]
    fn recovers_affine_with_half_outliers() {
        let (src, dst, truth) = scene(&AFFINE, 150, 150, 1.0, 3);
        let r = ransac(&src, &dst, &RansacParams::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.trials, 1000);
        // Random outliers can land within 20 px of the model by chance.
        let wrong = r.inliers.iter().zip(&truth).filter(|(a, b)| a != b).count();
        assert!(wrong <= 5, "{wrong} misclassified");
        assert!(r.inliers.iter().zip(&truth).all(|(&got, &t)| !t || got));
        assert_eq!(r.num_inliers, r.inliers.iter().filter(|&&x| x).count());
        for c in [[0.0, 0.0], [500.0, 0.0], [0.0, 400.0], [500.0, 400.0]] {
            assert!(r.model.residual(c, AFFINE.apply(c)) < 2.0);
        }
    }

    #[test]
    fn recovers_homography_with_outliers() {
        let (src, dst, _) = scene(&HOMOGRAPHY, 120, 120, 0.5, 4);
        let params = RansacParams {
            residual_threshold: 5.0,
            ..RansacParams::homography()
        };
        let r = ransac(&src, &dst, &params).unwrap().unwrap();
        assert!(r.num_inliers >= 120);
        for c in [[0.0, 0.0], [500.0, 0.0], [0.0, 400.0], [500.0, 400.0]] {
            assert!(r.model.residual(c, HOMOGRAPHY.apply(c)) < 1.5);
        }
    }

    #[test]
    fn collinear_samples_are_skipped() {
        let line: Vec<[f64; 2]> = (0..12)
            .map(|i| [3.0 * i as f64, 2.0 * i as f64 + 1.0])
            .collect();
        let mapped: Vec<[f64; 2]> = line.iter().map(|&p| AFFINE.apply(p)).collect();
        assert_eq!(
            Transform::estimate(Model::Affine, &line[..3], &mapped[..3]).unwrap(),
            None
        );
        assert_eq!(
            Transform::estimate(Model::Affine, &line, &mapped).unwrap(),
            None
        );
        // Three collinear of four points make the homography DLT degenerate.
        let mut quad = line[..3].to_vec();
        quad.push([50.0, -20.0]);
        let quad_dst: Vec<[f64; 2]> = quad.iter().map(|&p| HOMOGRAPHY.apply(p)).collect();
        assert_eq!(
            Transform::estimate(Model::Homography, &quad, &quad_dst).unwrap(),
            None
        );
        // All points collinear: every trial is degenerate, so no model.
        assert_eq!(
            ransac(&line, &mapped, &RansacParams::default()).unwrap(),
            None
        );
        // Coincident points too.
        let same = vec![[5.0, 5.0]; 6];
        assert_eq!(
            ransac(&same, &same, &RansacParams::default()).unwrap(),
            None
        );
        // A line of matches plus a few general ones: degenerate draws are
        // skipped and the transform is still found.
        let (mut src, mut dst, _) = scene(&AFFINE, 8, 0, 0.0, 5);
        src.extend(&line);
        dst.extend(&mapped);
        let r = ransac(&src, &dst, &RansacParams::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.num_inliers, 20);
        assert_close(&r.model, &AFFINE, 1e-8);
    }

    #[test]
    fn score_rule_and_determinism() {
        let (src, dst, _) = scene(&AFFINE, 30, 30, 1.0, 6);
        let flat = |p: &[[f64; 2]]| {
            p.iter()
                .flat_map(|q| [q[0] as f32, q[1] as f32])
                .collect::<Vec<_>>()
        };
        let (db, query) = (flat(&src), flat(&dst));
        let matches: Vec<Match> = (0..src.len())
            .map(|i| Match {
                query: i,
                db: i,
                distance: 0.5,
            })
            .collect();
        let params = RansacParams::default();
        // Three matches are always consistent with an affine map, yet score 0.
        let v = verify(&query, &db, &matches[..3], &params).unwrap();
        assert_eq!((v.score, v.ransac), (0, None));
        let a = verify(&query, &db, &matches, &params).unwrap();
        assert!(a.score >= 30);
        assert_eq!(a, verify(&query, &db, &matches, &params).unwrap());
        let other = RansacParams { seed: 99, ..params };
        assert_eq!(
            a.score,
            verify(&query, &db, &matches, &other).unwrap().score
        );
        // A bad match index is a typed error.
        let bad = [Match {
            query: 0,
            db: 999,
            distance: 0.0,
        }; 4];
        assert!(matches!(
            verify(&query, &db, &bad, &params),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn early_stop_and_parameter_errors() {
        let (src, dst, _) = scene(&AFFINE, 80, 20, 1.0, 7);
        let params = RansacParams {
            stop_probability: 0.99,
            ..RansacParams::default()
        };
        let r = ransac(&src, &dst, &params).unwrap().unwrap();
        // 80% inliers: ceil(ln 0.01 / ln(1 − 0.8³)) = 7 trials at most.
        assert!(r.trials <= 7, "{} trials", r.trials);
        assert!(r.num_inliers >= 80);
        let p = RansacParams::default();
        for bad in [
            RansacParams {
                min_samples: 2,
                ..p
            },
            RansacParams {
                stop_probability: 1.5,
                ..p
            },
            RansacParams {
                residual_threshold: f64::NAN,
                ..p
            },
            RansacParams {
                min_samples: 3,
                ..RansacParams::homography()
            },
        ] {
            assert!(matches!(
                ransac(&src, &dst, &bad),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            ransac(&src[..2], &dst[..2], &p),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ransac(&src, &dst[..5], &p),
            Err(Error::Shape { .. })
        ));
        let none = RansacParams { max_trials: 0, ..p };
        assert_eq!(ransac(&src, &dst, &none).unwrap(), None);
    }
}
