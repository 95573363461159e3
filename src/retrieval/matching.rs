//! Putative local-feature matches between a query image and one database
//! image, as DELG's re-ranking forms them (docs/recipe.md §5): for every query
//! descriptor the single nearest database descriptor, kept if it passes a
//! distance threshold (or, optionally, Lowe's ratio test). There is no
//! mutual check, so several query features may match one database feature.
//!
//! The search is exact brute force, split in two stages so that a GPU
//! distance-matrix path can replace the first one: [`nearest_two`] /
//! [`nearest_two_hamming`] find the nearest and second-nearest neighbour of
//! every query row, and [`select_matches`] applies the acceptance rule.

use rayon::prelude::*;

use crate::{Error, Result};

/// DELG's descriptor-distance threshold (Euclidean, strict `<`).
pub const DEFAULT_DISTANCE_THRESHOLD: f32 = 1.0;

/// Query rows handled per rayon task and database rows per inner block: the
/// block (256 × 128 f32 = 128 KiB) stays in L2 while a task sweeps its rows.
const QUERY_BLOCK: usize = 64;
const DB_BLOCK: usize = 256;

/// Nearest and second-nearest database row of one query row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbours {
    /// Index of the nearest database row; `None` when the database is empty.
    pub nearest: Option<usize>,
    /// Distance to the nearest row (`f32::INFINITY` if none).
    pub distance: f32,
    /// Index of the second-nearest database row.
    pub second: Option<usize>,
    /// Distance to the second-nearest row (`f32::INFINITY` if fewer than two).
    pub second_distance: f32,
}

impl Neighbours {
    pub const NONE: Neighbours = Neighbours {
        nearest: None,
        distance: f32::INFINITY,
        second: None,
        second_distance: f32::INFINITY,
    };

    /// Ties keep the lower index (strict `<`): a fixed rule that a GPU
    /// path can reproduce exactly.
    pub fn offer(&mut self, index: usize, distance: f32) {
        if distance < self.distance {
            self.second = self.nearest;
            self.second_distance = self.distance;
            self.nearest = Some(index);
            self.distance = distance;
        } else if distance < self.second_distance {
            self.second = Some(index);
            self.second_distance = distance;
        }
    }
}

/// How a nearest neighbour is accepted as a putative match.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchParams {
    /// Euclidean (or Hamming) distance threshold; with `ratio_test` it is
    /// the ratio threshold instead, as in DELF's `use_ratio_test`.
    pub threshold: f32,
    /// Accept when `nearest < threshold · second` (no absolute distance
    /// check), instead of `nearest < threshold`.
    pub ratio_test: bool,
}

impl Default for MatchParams {
    fn default() -> Self {
        MatchParams {
            threshold: DEFAULT_DISTANCE_THRESHOLD,
            ratio_test: false,
        }
    }
}

/// One putative correspondence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    pub query: usize,
    pub db: usize,
    pub distance: f32,
}

fn check_rows(op: &str, name: &str, len: usize, width: usize) -> Result<usize> {
    if width == 0 {
        return Err(Error::shape(op, "descriptor width must be positive"));
    }
    if !len.is_multiple_of(width) {
        return Err(Error::shape(
            op,
            format!("{name} has {len} values, not a multiple of the descriptor width {width}"),
        ));
    }
    Ok(len / width)
}

/// Squared norm of every `dim`-wide row, the |x|² terms of the ranking
/// proxy (shared by the CPU and GPU paths so both rank alike).
pub fn row_norms(rows: &[f32], dim: usize) -> Vec<f32> {
    rows.chunks_exact(dim).map(|r| dot(r, r)).collect()
}

/// Replaces the proxy distances of `slot` (ranked for query row `q`) by
/// exact f64 Euclidean distances to its rows of `db`, reordering the two
/// if the proxy had swapped nearly equidistant rows.
pub fn settle(slot: &mut Neighbours, q: &[f32], db: &[f32], dim: usize) {
    let exact =
        |j: Option<usize>| j.map_or(f32::INFINITY, |j| exact_distance(q, &db[j * dim..][..dim]));
    slot.distance = exact(slot.nearest);
    slot.second_distance = exact(slot.second);
    if slot.second_distance < slot.distance {
        std::mem::swap(&mut slot.nearest, &mut slot.second);
        std::mem::swap(&mut slot.distance, &mut slot.second_distance);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

fn exact_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum::<f64>()
        .sqrt() as f32
}

/// Nearest and second-nearest Euclidean neighbour in `db` of every row of
/// `query` (both row-major with `dim` columns).
///
/// Candidates are ranked with dist² = |q|² + |d|² − 2·q·d (which is
/// 2 − 2·q·d for unit vectors) over cache blocks; the two reported
/// distances are then recomputed directly in f64, so they are the true
/// Euclidean distances whatever the input norms.
pub fn nearest_two(query: &[f32], db: &[f32], dim: usize) -> Result<Vec<Neighbours>> {
    const OP: &str = "nearest_two";
    let nq = check_rows(OP, "query", query.len(), dim)?;
    let nd = check_rows(OP, "database", db.len(), dim)?;
    let db_norms = row_norms(db, dim);
    let mut out = vec![Neighbours::NONE; nq];
    out.par_chunks_mut(QUERY_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let q0 = block * QUERY_BLOCK;
            let rows = &query[q0 * dim..(q0 + out.len()) * dim];
            // Slots first rank by the squared-distance proxy.
            let q_norms = row_norms(rows, dim);
            for d0 in (0..nd).step_by(DB_BLOCK) {
                let d1 = (d0 + DB_BLOCK).min(nd);
                for ((q, q_norm), slot) in rows.chunks_exact(dim).zip(&q_norms).zip(out.iter_mut())
                {
                    for j in d0..d1 {
                        let d = &db[j * dim..][..dim];
                        slot.offer(j, q_norm + db_norms[j] - 2.0 * dot(q, d));
                    }
                }
            }
            for (q, slot) in rows.chunks_exact(dim).zip(out.iter_mut()) {
                settle(slot, q, db, dim);
            }
        });
    Ok(out)
}

/// Sign-binarises each row (bit = 1 iff value > 0) and packs it like
/// `np.packbits` along the descriptor axis: dimension 0 is the MSB of byte
/// 0, and the last byte is zero-padded when `dim` is not a multiple of 8.
pub fn binarize(descriptors: &[f32], dim: usize) -> Result<Vec<u8>> {
    check_rows("binarize", "descriptors", descriptors.len(), dim)?;
    let bytes = dim.div_ceil(8);
    let mut out = Vec::with_capacity(descriptors.len() / dim * bytes);
    for row in descriptors.chunks_exact(dim) {
        for chunk in row.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |b, (k, &v)| b | (u8::from(v > 0.0) << (7 - k)));
            out.push(byte);
        }
    }
    Ok(out)
}

fn hamming(a: &[u8], b: &[u8]) -> u32 {
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    let mut n = 0;
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_ne_bytes(x.try_into().expect("chunk of 8"));
        let y = u64::from_ne_bytes(y.try_into().expect("chunk of 8"));
        n += (x ^ y).count_ones();
    }
    n + ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum::<u32>()
}

/// Nearest and second-nearest Hamming neighbour for packed binary
/// descriptors of `bytes` bytes each (16 for DELG's 128-d features).
/// Distances are bit counts, reported as f32 so [`select_matches`] applies.
pub fn nearest_two_hamming(query: &[u8], db: &[u8], bytes: usize) -> Result<Vec<Neighbours>> {
    const OP: &str = "nearest_two_hamming";
    let nq = check_rows(OP, "query", query.len(), bytes)?;
    check_rows(OP, "database", db.len(), bytes)?;
    let mut out = vec![Neighbours::NONE; nq];
    out.par_chunks_mut(QUERY_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let q0 = block * QUERY_BLOCK;
            for (i, slot) in out.iter_mut().enumerate() {
                let q = &query[(q0 + i) * bytes..][..bytes];
                for (j, d) in db.chunks_exact(bytes).enumerate() {
                    slot.offer(j, hamming(q, d) as f32);
                }
            }
        });
    Ok(out)
}

/// Applies the acceptance rule to per-query neighbours (index = query row).
pub fn select_matches(neighbours: &[Neighbours], params: &MatchParams) -> Vec<Match> {
    neighbours
        .iter()
        .enumerate()
        .filter_map(|(query, n)| {
            let db = n.nearest?;
            let accept = if params.ratio_test {
                n.distance < params.threshold * n.second_distance
            } else {
                n.distance < params.threshold
            };
            accept.then_some(Match {
                query,
                db,
                distance: n.distance,
            })
        })
        .collect()
}

/// Putative matches between real-valued descriptors (row-major, `dim` wide).
pub fn match_descriptors(
    query: &[f32],
    db: &[f32],
    dim: usize,
    params: &MatchParams,
) -> Result<Vec<Match>> {
    check_threshold(params)?;
    Ok(select_matches(&nearest_two(query, db, dim)?, params))
}

/// Putative matches between packed binary descriptors (`bytes` each);
/// `params.threshold` is then a Hamming distance in bits (or a ratio).
pub fn match_binary(
    query: &[u8],
    db: &[u8],
    bytes: usize,
    params: &MatchParams,
) -> Result<Vec<Match>> {
    check_threshold(params)?;
    Ok(select_matches(
        &nearest_two_hamming(query, db, bytes)?,
        params,
    ))
}

/// Rejects a negative or NaN threshold (one message for every matching path).
pub fn check_threshold(params: &MatchParams) -> Result<()> {
    if params.threshold.is_nan() || params.threshold < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "match threshold must be a non-negative number, got {}",
            params.threshold
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    /// DELG's local descriptor size.
    const LOCAL_DIM: usize = 128;

    fn random_rows(rng: &mut Rng, rows: usize, dim: usize, unit: bool) -> Vec<f32> {
        let mut v: Vec<f32> = (0..rows * dim).map(|_| rng.normal() as f32).collect();
        if unit {
            for r in v.chunks_exact_mut(dim) {
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter_mut().for_each(|x| *x /= n);
            }
        }
        v
    }

    /// Plain f64 scan: the reference the blocked search must reproduce.
    fn reference(query: &[f32], db: &[f32], dim: usize) -> Vec<Neighbours> {
        query
            .chunks_exact(dim)
            .map(|q| {
                let mut n = Neighbours::NONE;
                for (j, d) in db.chunks_exact(dim).enumerate() {
                    n.offer(j, exact_distance(q, d));
                }
                n
            })
            .collect()
    }

    #[test]
    fn nearest_two_matches_reference_on_awkward_sizes() {
        let mut rng = Rng::new(7);
        for &(nq, nd, dim, unit) in &[
            (1, 1, LOCAL_DIM, true),
            (65, 257, LOCAL_DIM, true),
            (130, 300, LOCAL_DIM, false),
            (3, 2, 13, false),
        ] {
            let q = random_rows(&mut rng, nq, dim, unit);
            let d = random_rows(&mut rng, nd, dim, unit);
            let got = nearest_two(&q, &d, dim).unwrap();
            let want = reference(&q, &d, dim);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.nearest, w.nearest);
                assert!((g.distance - w.distance).abs() <= 1e-6 * w.distance.max(1.0));
                if w.second_distance.is_finite() {
                    assert!((g.second_distance - w.second_distance).abs() <= 1e-5);
                } else {
                    assert_eq!(g.second_distance, f32::INFINITY);
                }
            }
        }
    }

    #[test]
    fn threshold_ratio_and_no_mutual_check() {
        // db: e0 and e1; queries near e0 (two of them), one far from both.
        let dim = 4;
        let db = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let query = [
            0.99, 0.141, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0,
        ];
        let m = match_descriptors(&query, &db, dim, &MatchParams::default()).unwrap();
        let pairs: Vec<_> = m.iter().map(|m| (m.query, m.db)).collect();
        // Query 2 is orthogonal to both: distance √2 ≥ 1, rejected.
        assert_eq!(pairs, vec![(0, 0), (1, 0)]);
        assert!(m[1].distance.abs() < 1e-7);

        // Ratio 0.5: query 0 (d ≈ 0.14 vs 1.29) passes, query 2 (tie) fails.
        let ratio = MatchParams {
            threshold: 0.5,
            ratio_test: true,
        };
        let m = match_descriptors(&query, &db, dim, &ratio).unwrap();
        assert_eq!(m.iter().map(|m| m.query).collect::<Vec<_>>(), vec![0, 1]);

        // A threshold equal to the distance rejects (strict <).
        let exact = MatchParams {
            threshold: 2f32.sqrt(),
            ratio_test: false,
        };
        let n = nearest_two(&query[8..], &db, dim).unwrap();
        assert_eq!(select_matches(&n, &exact).len(), 0);
    }

    #[test]
    fn empty_inputs_and_bad_shapes() {
        let q = [1.0f32; 8];
        assert!(match_descriptors(&q, &[], 4, &MatchParams::default())
            .unwrap()
            .is_empty());
        assert!(match_descriptors(&[], &q, 4, &MatchParams::default())
            .unwrap()
            .is_empty());
        assert!(matches!(
            match_descriptors(&q, &q[..7], 4, &MatchParams::default()),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(nearest_two(&q, &q, 0), Err(Error::Shape { .. })));
        let bad = MatchParams {
            threshold: f32::NAN,
            ratio_test: false,
        };
        assert!(matches!(
            match_descriptors(&q, &q, 4, &bad),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn binarize_follows_packbits_order() {
        // dims 0, 9 and 15 positive; dim 16 (of 17) positive → third byte MSB.
        let mut v = vec![-1.0f32; 17];
        for k in [0, 9, 15, 16] {
            v[k] = 0.5;
        }
        v[3] = 0.0; // zero is not > 0
        assert_eq!(binarize(&v, 17).unwrap(), vec![0x80, 0x41, 0x80]);
        let mut rng = Rng::new(3);
        let rows = random_rows(&mut rng, 5, LOCAL_DIM, true);
        assert_eq!(binarize(&rows, LOCAL_DIM).unwrap().len(), 5 * 16);
    }

    #[test]
    fn hamming_matching_matches_bitwise_reference() {
        let mut rng = Rng::new(11);
        let q = binarize(&random_rows(&mut rng, 37, LOCAL_DIM, true), LOCAL_DIM).unwrap();
        let mut d = binarize(&random_rows(&mut rng, 70, LOCAL_DIM, true), LOCAL_DIM).unwrap();
        // Plant query 5 in the database with 3 flipped bits.
        d[16 * 40..16 * 41].copy_from_slice(&q[16 * 5..16 * 6]);
        d[16 * 40] ^= 0b1010_0000;
        d[16 * 40 + 15] ^= 1;
        let bits = |a: &[u8], b: &[u8]| -> u32 {
            (0..128)
                .map(|k| u32::from((a[k / 8] >> (7 - k % 8)) & 1 != (b[k / 8] >> (7 - k % 8)) & 1))
                .sum()
        };
        let got = nearest_two_hamming(&q, &d, 16).unwrap();
        for (i, g) in got.iter().enumerate() {
            let dists: Vec<u32> = d
                .chunks_exact(16)
                .map(|r| bits(&q[16 * i..][..16], r))
                .collect();
            let best = *dists.iter().min().unwrap();
            assert_eq!(g.distance, best as f32);
            assert_eq!(g.nearest, dists.iter().position(|&x| x == best));
        }
        assert_eq!(got[5].nearest, Some(40));
        assert_eq!(got[5].distance, 3.0);
        let params = MatchParams {
            threshold: 10.0,
            ratio_test: false,
        };
        let m = match_binary(&q, &d, 16, &params).unwrap();
        assert_eq!(m.len(), 1, "random 128-bit codes sit ~64 bits apart");
        assert_eq!((m[0].query, m[0].db), (5, 40));
    }
}
