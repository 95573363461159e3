//! Threshold selection (`shaders/select.wgsl`): per row of a score matrix, the
//! columns whose score is not below that row's threshold, as (score, column)
//! pairs in column order, and how many there were. Global search runs it on
//! each database chunk with every query's current k-th best score, so only
//! the candidates that can still enter a query's top k cross back to the host
//! (docs/recipe.md §5).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::rows_per_window;
use crate::gpu::{chunks, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::Op;
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 64;

/// Columns are stored as f32, exact below 2^24.
const MAX_COLUMNS: usize = 1 << 24;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        rows: u32,
        c: u32,
        capacity: u32,
        shift_scores: u32,
        shift_thresholds: u32,
        shift_found: u32,
        shift_counts: u32,
        _pad: u32,
    }
}

fn spec() -> ShaderSpec {
    ShaderSpec::new("select", "threshold_candidates")
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![spec()]
}

/// Inputs scores [R, C] and thresholds [R, 1]; outputs the first `capacity`
/// passing (score, column) pairs of each row [R, capacity, 2] (empty slots
/// (0, −1)) and each row's count of passing columns [R, 1], which exceeds
/// `capacity` when some were not stored. A score passes when it is ≥ the
/// threshold or NaN; a NaN threshold passes every score.
#[derive(Clone, Copy, Debug)]
pub struct ThresholdCandidates {
    pub capacity: usize,
}

impl Op for ThresholdCandidates {
    fn name(&self) -> &'static str {
        "threshold_candidates"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (scores, thresholds) = (inputs[0].dims(), inputs[1].dims());
        let [rows, c] = scores[..] else {
            return Err(Error::shape(
                self.name(),
                format!("scores must be [rows, columns], got {scores:?}"),
            ));
        };
        if thresholds != [rows, 1] {
            return Err(Error::shape(
                self.name(),
                format!("thresholds must be [{rows}, 1], got {thresholds:?}"),
            ));
        }
        if self.capacity == 0 || c > MAX_COLUMNS {
            return Err(Error::unsupported(
                self.name(),
                format!(
                    "needs a capacity ≥ 1 (got {}) and at most {MAX_COLUMNS} columns (got {c})",
                    self.capacity
                ),
            ));
        }
        Ok(vec![
            Shape::new(&[rows, self.capacity, 2]),
            Shape::new(&[rows, 1]),
        ])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (scores, thresholds) = (inputs[0], inputs[1]);
        let [rows, c] = scores.shape.dims()[..] else {
            return Err(Error::Internal("scores are not a matrix".into()));
        };
        let mut found = Vec::with_capacity(rows * self.capacity * 2);
        let mut counts = Vec::with_capacity(rows);
        for (row, &t) in scores
            .data
            .chunks(c.max(1))
            .take(rows)
            .zip(&thresholds.data)
        {
            let passing: Vec<(f64, f64)> = row
                .iter()
                .enumerate()
                .filter(|&(_, &v)| t.is_nan() || v.is_nan() || v >= t)
                .map(|(j, &v)| (v, j as f64))
                .collect();
            counts.push(passing.len() as f64);
            let stored = passing.len().min(self.capacity);
            found.extend(passing[..stored].iter().flat_map(|&(v, j)| [v, j]));
            found.extend((stored..self.capacity).flat_map(|_| [0.0, -1.0]));
        }
        Ok(vec![
            Tensor::new([rows, self.capacity, 2], found)?,
            Tensor::new([rows, 1], counts)?,
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let [rows, c] = inputs[0].shape.dims()[..] else {
            return Err(Error::Internal("scores are not a matrix".into()));
        };
        let (c, capacity) = (c as u64, self.capacity as u64);
        let widest = c.max(2 * capacity);
        for range in chunks(
            rows as u64,
            rows_per_window(widest, gpu.max_window_elems())?,
        ) {
            let n = range.end - range.start;
            let scores = inputs[0].window(gpu, range.start * c, n * c)?;
            let thresholds = inputs[1].window(gpu, range.start, n)?;
            let found = outputs[0].window(gpu, range.start * 2 * capacity, n * 2 * capacity)?;
            let counts = outputs[1].window(gpu, range.start, n)?;
            let p = Params {
                rows: n as u32,
                c: c as u32,
                capacity: capacity as u32,
                shift_scores: scores.shift,
                shift_thresholds: thresholds.shift,
                shift_found: found.shift,
                shift_counts: counts.shift,
                _pad: 0,
            };
            rec.dispatch_groups(
                &spec(),
                bytemuck::bytes_of(&p),
                vec![
                    (&scores).into(),
                    (&thresholds).into(),
                    (&found).into(),
                    (&counts).into(),
                ],
                n.div_ceil(WG),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::exec::run_op;
    use crate::tensor::Rng;
    use crate::testing::{check_op, test_gpus, OpCase};

    fn thresholds(rows: usize, seed: u64) -> crate::tensor::HostTensor {
        Rng::new(seed).tensor([rows, 1], -0.5, 0.9)
    }

    #[test]
    fn threshold_candidates_match_reference() {
        // Capacities below, at and above a row's passing count; one column;
        // a row longer than the workgroup; rows not a multiple of 64.
        for (rows, c, capacity) in [
            (1, 1, 1),
            (3, 7, 2),
            (65, 33, 40),
            (130, 515, 16),
            (5, 4097, 700),
        ] {
            check_op(
                &OpCase::new(ThresholdCandidates { capacity })
                    .input([rows, c], -1.0, 1.0)
                    .tensor(thresholds(rows, c as u64)),
            );
        }
    }

    #[test]
    fn threshold_candidates_over_many_windows() {
        check_op(
            &OpCase::new(ThresholdCandidates { capacity: 9 })
                .input([301, 37], -1.0, 1.0)
                .tensor(thresholds(301, 3))
                .windows(1000),
        );
    }

    #[test]
    fn ties_nan_and_infinities_pass_as_the_host_orders_them() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let scores = Tensor::new(
            [4, 5],
            vec![
                0.5, 0.25, 0.5, -inf, nan, // threshold 0.5: the ties and the NaN
                1.0, 2.0, 3.0, 4.0, 5.0, // threshold NaN: every column
                -inf, -1.0, inf, 0.0, -0.0, // threshold −∞: every column
                -2.0, -3.0, -0.0, 0.0, 1.0, // threshold 0: both zeros and 1
            ],
        )
        .unwrap();
        let thresholds = Tensor::new([4, 1], vec![0.5, nan, -inf, 0.0]).unwrap();
        let want_columns: [&[usize]; 4] =
            [&[0, 2, 4], &[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], &[2, 3, 4]];
        for gpu in test_gpus() {
            let out = run_op(
                gpu,
                std::sync::Arc::new(ThresholdCandidates { capacity: 5 }),
                &[&scores, &thresholds],
            )
            .unwrap();
            for (r, want) in want_columns.iter().enumerate() {
                assert_eq!(out[1].data[r], want.len() as f32, "row {r} count");
                let slots = &out[0].data[r * 10..(r + 1) * 10];
                for (s, pair) in slots.chunks(2).enumerate() {
                    match want.get(s) {
                        Some(&j) => {
                            assert_eq!(pair[1], j as f32, "row {r} slot {s}");
                            let v = scores.data[r * 5 + j];
                            assert!(
                                pair[0] == v || (pair[0].is_nan() && v.is_nan()),
                                "row {r} slot {s}: {} for {v}",
                                pair[0]
                            );
                        }
                        None => assert_eq!(pair, [0.0, -1.0], "row {r} empty slot {s}"),
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_and_limits_are_checked() {
        let op = ThresholdCandidates { capacity: 4 };
        assert!(op
            .infer(&[&Shape::new(&[3, 5]), &Shape::new(&[3, 1])])
            .is_ok());
        assert!(op
            .infer(&[&Shape::new(&[3, 5]), &Shape::new(&[2, 1])])
            .is_err());
        assert!(op
            .infer(&[&Shape::new(&[3, 5, 1]), &Shape::new(&[3, 1])])
            .is_err());
        assert!(ThresholdCandidates { capacity: 0 }
            .infer(&[&Shape::new(&[3, 5]), &Shape::new(&[3, 1])])
            .is_err());
        assert!(op
            .infer(&[&Shape::new(&[1, MAX_COLUMNS + 1]), &Shape::new(&[1, 1])])
            .is_err());
    }
}
