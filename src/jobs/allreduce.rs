//! The all-reduce of a data-parallel step's gradient sums, in buckets that
//! overlap the backward pass. The last micro-batch of a step is submitted in
//! segments: a segment ends where the sums of the next bucket are final (the
//! step graph's schedule folds each gradient into its sum as soon as the
//! backward pass produces it, last layers first: `Graph::schedule`). A worker
//! thread submits the segments and reads each finished bucket back; this
//! thread, the only one that calls MPI, sums each bucket across the ranks
//! while the device runs the rest of the backward pass. The sums are the same
//! values as one all-reduce of everything: MPI sums every element across the
//! ranks whatever the bucket it travels in.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::buffer::Readback;
use crate::gpu::{DeviceTensor, Gpu};
use crate::graph::exec::Executable;
use crate::graph::{Graph, TensorId};
use crate::jobs::distributed::World;
use crate::jobs::train::upload_split;

/// The default bucket size in MiB of `--allreduce-bucket-mb` (as PyTorch DDP's
/// 25 MB): a ResNet-50 DELG's ~100 MB of gradients travel in about four.
pub const DEFAULT_BUCKET_MIB: u64 = 25;

/// Sums whose gradients are final by the same point of the schedule,
/// summed across the ranks together.
struct Bucket {
    sums: Vec<DeviceTensor>,
    readback: Readback,
    /// The schedule position after which all of them are final.
    ready_after: usize,
}

/// The gradient sums of a step graph's executable, grouped into buckets.
pub struct Buckets {
    buckets: Vec<Bucket>,
    schedule_len: usize,
}

/// Where one rank's step spent its time, in seconds (in a run's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepTimes {
    /// The forward and backward passes on the device, with the readbacks.
    pub compute_s: f64,
    /// Inside MPI's all-reduce calls, overlapped or not.
    pub allreduce_s: f64,
    /// The part of the last micro-batch's all-reduce after the device
    /// finished its backward pass: what the overlap did not hide.
    pub allreduce_exposed_s: f64,
    /// Uploading the reduced sums, clipping and the SGD update.
    pub update_s: f64,
}

/// Groups sums into buckets of at least `bucket_bytes` (the last may be
/// smaller) in the order they become final. `sums` holds each sum's
/// schedule position (where it becomes final) and bytes; returns per bucket
/// the indexes of its sums and its last position. `bucket_bytes` 0 makes one
/// bucket of everything, final at the end.
fn group(sums: &[(usize, u64)], bucket_bytes: u64) -> Vec<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..sums.len()).collect();
    order.sort_by_key(|&i| (sums[i].0, i));
    let mut buckets: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut filled = u64::MAX;
    for i in order {
        let (position, bytes) = sums[i];
        if bucket_bytes > 0 && filled >= bucket_bytes {
            buckets.push((Vec::new(), position));
            filled = 0;
        } else if buckets.is_empty() {
            buckets.push((Vec::new(), position));
        }
        let last = buckets.last_mut().expect("a bucket was just pushed");
        last.0.push(i);
        last.1 = last.1.max(position);
        filled = filled.saturating_add(bytes);
    }
    buckets
}

impl Buckets {
    /// Buckets of about `bucket_bytes` (0: one bucket) over the sums
    /// `sums` of `graph`, which `exe` (planned from `graph`) mutates.
    pub fn new(
        gpu: &Gpu,
        graph: &Graph,
        exe: &Executable,
        sums: &[(TensorId, &DeviceTensor)],
        bucket_bytes: u64,
    ) -> Result<Buckets> {
        let final_at = |sum: TensorId| {
            exe.schedule
                .iter()
                .rposition(|&n| graph.nodes[n].inputs.contains(&sum))
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "no node of the step updates '{}'",
                        graph.info(sum).name
                    ))
                })
        };
        let placed: Vec<(usize, u64)> = sums
            .iter()
            .map(|(id, t)| Ok((final_at(*id)?, t.shape.bytes())))
            .collect::<Result<_>>()?;
        let buckets = group(&placed, bucket_bytes)
            .into_iter()
            .map(|(members, last)| {
                let sums: Vec<DeviceTensor> = members.iter().map(|&i| sums[i].1.clone()).collect();
                Ok(Bucket {
                    readback: Readback::new(gpu, &sums.iter().collect::<Vec<_>>())?,
                    sums,
                    ready_after: last,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Buckets {
            buckets,
            schedule_len: exe.schedule.len(),
        })
    }

    /// The share of the run's FLOPs done when each bucket is final, in
    /// order: 1 minus it is the work a bucket's all-reduce can hide behind.
    pub fn ready_shares(&self, graph: &Graph, exe: &Executable) -> Vec<f64> {
        let total = exe.flops.max(1) as f64;
        self.buckets
            .iter()
            .map(|b| graph.flops(&exe.schedule[..=b.ready_after]) as f64 / total)
            .collect()
    }

    /// Each bucket's bytes, in order.
    pub fn bytes(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.sums.iter().map(|t| t.shape.bytes()).sum())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Runs `exe` once (its inputs already set) and replaces its gradient
    /// sums on the device by their sums across `world`'s ranks, each bucket
    /// reduced while the device computes the next ones. A collective: every
    /// rank calls it with the same buckets.
    pub fn run_and_reduce(&self, gpu: &Gpu, exe: &Executable, world: &World) -> Result<StepTimes> {
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut times = StepTimes::default();
        let mut reduced: Vec<Vec<f32>> = Vec::with_capacity(self.buckets.len());
        let device_done = std::thread::scope(|scope| {
            let worker = scope.spawn(move || -> Result<Instant> {
                let mut from = 0;
                for bucket in &self.buckets {
                    let mut enc = gpu.device.create_command_encoder(&Default::default());
                    exe.encode_part(&mut enc, from..bucket.ready_after + 1);
                    bucket.readback.encode(&mut enc);
                    let mut parts = gpu.submit_and_read(enc, &[&bucket.readback])?;
                    if tx.send(parts.swap_remove(0).concat()).is_err() {
                        return Err(Error::Internal("the all-reduce stopped".into()));
                    }
                    from = bucket.ready_after + 1;
                }
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                exe.encode_part(&mut enc, from..self.schedule_len);
                gpu.queue.submit([enc.finish()]);
                gpu.wait()?;
                Ok(Instant::now())
            });
            // The worker hangs up early only on an error, which join returns.
            for bytes in rx.iter() {
                let mut values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
                let t = Instant::now();
                world.all_reduce_sum_f32(&mut values);
                times.allreduce_s += t.elapsed().as_secs_f64();
                reduced.push(values);
            }
            worker
                .join()
                .map_err(|_| Error::Internal("the device worker panicked".into()))?
        })?;
        let finished = Instant::now();
        if reduced.len() != self.buckets.len() {
            return Err(Error::Internal("a bucket was not reduced".into()));
        }
        times.compute_s = (device_done - started).as_secs_f64();
        times.allreduce_exposed_s = finished
            .saturating_duration_since(device_done)
            .as_secs_f64();
        for (bucket, values) in self.buckets.iter().zip(&reduced) {
            upload_split(gpu, &bucket.sums.iter().collect::<Vec<_>>(), values)?;
        }
        Ok(times)
    }
}

#[cfg(test)]
mod tests {
    use super::group;

    #[test]
    fn buckets_fill_in_the_order_sums_become_final() {
        // (position where final, bytes); the last layers' sums come first.
        let sums = [(90, 40), (10, 30), (50, 30), (11, 10), (60, 5)];
        assert_eq!(
            group(&sums, 35),
            [(vec![1, 3], 11), (vec![2, 4], 60), (vec![0], 90)]
        );
        assert_eq!(group(&sums, 0), [(vec![1, 3, 2, 4, 0], 90)]);
        assert_eq!(group(&sums, 1000), group(&sums, 0));
        assert!(group(&[], 35).is_empty());
    }
}
