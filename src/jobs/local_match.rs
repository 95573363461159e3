//! Nearest-neighbour search of local descriptors for re-ranking on the
//! device: the query's descriptors against a whole shortlist's, as matrix
//! products over column chunks of the concatenated shortlist (one cached
//! executable per padded shape), then the nearest two per (query row,
//! shortlist image) on the host over the read-back products.
//!
//! Candidates are ranked with the same proxy as the CPU path
//! ([`nearest_two`](crate::retrieval::matching::nearest_two)), |q|² + |d|²
//! − 2·q·d with the same f32 norms, and the two survivors' distances are
//! recomputed exactly the same way ([`settle`]), so both paths give the same
//! matches; only q·d is summed in another order.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, TensorId};
use crate::ops::gemm::Matmul;
use crate::retrieval::matching::{nearest_two, row_norms, settle, Neighbours};
use crate::tensor::Tensor;

/// Query rows are padded to a multiple of this, so queries of similar size
/// share an executable.
const ROW_STEP: usize = 128;
/// Columns per product block: 1024 query rows × 16384 columns is a 64 MiB
/// block, within one storage binding everywhere.
const MAX_COLUMNS: usize = 16384;

/// Where re-ranking computes descriptor neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatchOn {
    /// The measured faster one for the adapter (see BENCHMARKS.md).
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl MatchOn {
    pub fn parse(s: &str) -> Result<MatchOn> {
        match s {
            "auto" => Ok(MatchOn::Auto),
            "cpu" => Ok(MatchOn::Cpu),
            "gpu" => Ok(MatchOn::Gpu),
            other => Err(Error::InvalidArgument(format!(
                "--match-on '{other}': use auto, cpu or gpu"
            ))),
        }
    }
}

struct Plan {
    exe: Executable,
    query: TensorId,
    db: TensorId,
    products: TensorId,
}

/// Float-descriptor neighbour search for one query against many images.
pub enum LocalMatcher {
    Cpu,
    Gpu(GpuNeighbours),
}

impl LocalMatcher {
    pub fn new(gpu: &Arc<Gpu>, on: MatchOn) -> LocalMatcher {
        let use_gpu = match on {
            MatchOn::Cpu => false,
            MatchOn::Gpu => true,
            // Measured (BENCHMARKS.md, "Local matching"): on a CPU adapter
            // (lavapipe) the products run on the same cores at about the CPU
            // path's speed and the read-back comes on top, so the CPU path
            // wins; a real GPU does the products in milliseconds.
            MatchOn::Auto => gpu.facts.device_type != wgpu::DeviceType::Cpu,
        };
        if use_gpu {
            LocalMatcher::Gpu(GpuNeighbours::new(gpu))
        } else {
            LocalMatcher::Cpu
        }
    }

    /// Nearest two rows of every `dbs[k]` for each query row: one vector
    /// per database image, indexed by query row.
    pub fn nearest_two(
        &mut self,
        query: &[f32],
        dbs: &[&[f32]],
        dim: usize,
    ) -> Result<Vec<Vec<Neighbours>>> {
        match self {
            LocalMatcher::Cpu => dbs.par_iter().map(|d| nearest_two(query, d, dim)).collect(),
            LocalMatcher::Gpu(g) => g.nearest_two(query, dbs, dim),
        }
    }
}

/// The device path of [`LocalMatcher`].
pub struct GpuNeighbours {
    gpu: Arc<Gpu>,
    plans: HashMap<(usize, usize, usize), Plan>,
}

fn rows_of(op: &str, name: &str, len: usize, dim: usize) -> Result<usize> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(Error::shape(
            op,
            format!("{name} has {len} values, not rows of {dim}"),
        ));
    }
    Ok(len / dim)
}

impl GpuNeighbours {
    pub fn new(gpu: &Arc<Gpu>) -> GpuNeighbours {
        GpuNeighbours {
            gpu: gpu.clone(),
            plans: HashMap::new(),
        }
    }

    fn plan(&mut self, rows: usize, cols: usize, dim: usize) -> Result<&Plan> {
        if !self.plans.contains_key(&(rows, cols, dim)) {
            let mut g = Graph::new();
            let query = g.input("query", [rows, dim]);
            let db = g.input("database", [cols, dim]);
            let products = g.apply1(Matmul::new(false, true), &[query, db])?;
            let exe = Executable::new(&self.gpu, &g, &[products], &ParamStore::default())?;
            self.plans.insert(
                (rows, cols, dim),
                Plan {
                    exe,
                    query,
                    db,
                    products,
                },
            );
        }
        self.plans
            .get(&(rows, cols, dim))
            .ok_or_else(|| Error::Internal("local matching plan cache".into()))
    }

    /// See [`LocalMatcher::nearest_two`].
    pub fn nearest_two(
        &mut self,
        query: &[f32],
        dbs: &[&[f32]],
        dim: usize,
    ) -> Result<Vec<Vec<Neighbours>>> {
        const OP: &str = "local matching";
        let nq = rows_of(OP, "query", query.len(), dim)?;
        let mut starts = Vec::with_capacity(dbs.len() + 1);
        starts.push(0);
        for (k, d) in dbs.iter().enumerate() {
            let n = rows_of(OP, &format!("database image {k}"), d.len(), dim)?;
            starts.push(starts[k] + n);
        }
        let total = starts[dbs.len()];
        let images = dbs.len();
        // slots[i * images + k]: query row i against image k.
        let mut slots = vec![Neighbours::NONE; nq * images];
        if nq > 0 && total > 0 {
            let rows = nq.next_multiple_of(ROW_STEP);
            let budget = (self.gpu.max_window_elems() / 2) as usize;
            let cols = (budget / rows)
                .min(budget / dim)
                .min(MAX_COLUMNS)
                .min(total.next_multiple_of(1024))
                .max(1);
            let all: Vec<f32> = dbs.concat();
            let db_norms = row_norms(&all, dim);
            let q_norms = row_norms(query, dim);
            let mut padded = query.to_vec();
            padded.resize(rows * dim, 0.0);
            let padded = Tensor::new([rows, dim], padded)?;
            let plan = self.plan(rows, cols, dim)?;
            plan.exe.set_input(plan.query, &padded)?;
            for c0 in (0..total).step_by(cols) {
                let c1 = (c0 + cols).min(total);
                let mut chunk = all[c0 * dim..c1 * dim].to_vec();
                chunk.resize(cols * dim, 0.0);
                plan.exe
                    .set_input(plan.db, &Tensor::new([cols, dim], chunk)?)?;
                plan.exe.run()?;
                let products = plan.exe.read(plan.products)?.data;
                // Images overlapping this chunk, with their column ranges.
                let spans: Vec<(usize, usize, usize)> = (0..images)
                    .filter_map(|k| {
                        let (a, b) = (starts[k].max(c0), starts[k + 1].min(c1));
                        (a < b).then_some((k, a, b))
                    })
                    .collect();
                slots
                    .par_chunks_mut(images)
                    .zip(products.par_chunks(cols))
                    .zip(&q_norms)
                    .for_each(|((row_slots, row), &qn)| {
                        for &(k, a, b) in &spans {
                            let slot = &mut row_slots[k];
                            for j in a..b {
                                slot.offer(j - starts[k], qn + db_norms[j] - 2.0 * row[j - c0]);
                            }
                        }
                    });
            }
        }
        slots
            .par_chunks_mut(images.max(1))
            .zip(query.par_chunks(dim))
            .for_each(|(row_slots, q)| {
                for (slot, d) in row_slots.iter_mut().zip(dbs) {
                    settle(slot, q, d, dim);
                }
            });
        Ok((0..images)
            .map(|k| (0..nq).map(|i| slots[i * images + k]).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::matching::{select_matches, MatchParams};
    use crate::tensor::Rng;
    use crate::testing::test_gpu;

    fn unit_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..rows * dim)
            .map(|_| rng.range(-1.0, 1.0) as f32)
            .collect();
        v.chunks_mut(dim)
            .for_each(crate::jobs::extract::l2_normalize);
        v
    }

    #[test]
    fn gpu_neighbours_equal_the_cpu_path() {
        let Some(gpu) = test_gpu() else { return };
        let dim = 128;
        let mut rng = Rng::new(3);
        let query = unit_rows(&mut rng, 150, dim);
        // Sizes that straddle chunk and padding boundaries, an empty image,
        // and near-copies of query rows so that some pairs match.
        let mut dbs: Vec<Vec<f32>> = [0, 1, 37, 700, 1300]
            .iter()
            .map(|&n| unit_rows(&mut rng, n, dim))
            .collect();
        for (i, row) in dbs[3].chunks_mut(dim).take(60).enumerate() {
            row.copy_from_slice(&query[(i * 2) * dim..(i * 2 + 1) * dim]);
            row[0] += 0.05;
        }
        let views: Vec<&[f32]> = dbs.iter().map(Vec::as_slice).collect();
        let mut cpu = LocalMatcher::new(&gpu, MatchOn::Cpu);
        let mut dev = LocalMatcher::new(&gpu, MatchOn::Gpu);
        let a = cpu.nearest_two(&query, &views, dim).unwrap();
        let b = dev.nearest_two(&query, &views, dim).unwrap();
        assert_eq!(a, b);
        // Both ways of matching agree, and the planted pairs are found.
        for params in [
            MatchParams::default(),
            MatchParams {
                threshold: 0.9,
                ratio_test: true,
            },
        ] {
            let (ma, mb) = (
                select_matches(&a[3], &params),
                select_matches(&b[3], &params),
            );
            assert_eq!(ma, mb);
            assert!(ma.len() >= 60, "{}", ma.len());
        }
        assert!(b[0].iter().all(|n| n.nearest.is_none()));
        // A second call reuses the executable.
        assert_eq!(dev.nearest_two(&query, &views, dim).unwrap(), a);
        let bad = dev.nearest_two(&query[..100], &views, dim).unwrap_err();
        assert!(bad.to_string().contains("not rows of 128"), "{bad}");
    }
}
