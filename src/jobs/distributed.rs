//! The processes of a data-parallel run: one rank per adapter, started by
//! `mpirun` or `srun`. Built with the cargo feature `mpi`, this wraps the MPI
//! world; without it (or when no launcher started the process) it is a world
//! of one rank whose collectives do nothing, so training code never branches
//! on the feature. This file is the only place with `cfg(feature = "mpi")`.

use crate::error::{Error, Result};

/// Variables through which launchers give a process its place in the world.
const WORLD_SIZE_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "SLURM_NTASKS",
];
const LOCAL_RANK_VARS: [&str; 3] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
    "MPI_LOCALRANKID",
];

fn env_number(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

/// The world size a launcher announced, when this process was started by one.
/// SLURM_NTASKS alone does not count: a plain `sbatch` script sets it too.
fn launched_world_size() -> Option<usize> {
    env_number(&WORLD_SIZE_VARS[..3])
}

pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    /// Keeps MPI initialised for the life of the world (finalised on drop).
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
}

impl World {
    /// A world of one rank: collectives are no-ops.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            universe: None,
        }
    }

    /// The world this process was launched into: MPI's when a launcher
    /// (`mpirun`, `srun --mpi=…`) started it, else a single rank. A launch of
    /// several ranks of a binary built without the `mpi` feature is refused:
    /// each rank would train alone and overwrite the others' run folder.
    pub fn from_launcher() -> Result<World> {
        let announced = launched_world_size().unwrap_or(1);
        if announced <= 1 {
            return Ok(World::single());
        }
        Self::join(announced, env_number(&LOCAL_RANK_VARS))
    }

    #[cfg(feature = "mpi")]
    fn join(_announced: usize, local_rank: Option<usize>) -> Result<World> {
        use mpi::traits::Communicator;
        // Funneled: other threads (the data loader, the device worker of
        // `jobs::allreduce`) run beside MPI, but only this one calls it.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Internal("MPI was initialised twice in one process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(World {
            rank,
            size,
            local_rank: local_rank.unwrap_or(rank),
            universe: Some(universe),
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn join(announced: usize, _local_rank: Option<usize>) -> Result<World> {
        Err(Error::InvalidArgument(format!(
            "started as one of {announced} MPI ranks, but this delg-gpu was built without MPI: \
             rebuild with `cargo build --release --features mpi` (needs openmpi-bin, \
             libopenmpi-dev and libclang-dev) or run it without mpirun/srun"
        )))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// The rank's index among the ranks of its machine: which adapter it takes.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// Rank 0 writes files and prints progress; the others only compute.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    #[cfg(feature = "mpi")]
    fn comm(&self) -> Option<mpi::topology::SimpleCommunicator> {
        self.universe.as_ref().map(|u| u.world())
    }

    /// Replaces `values` on every rank by their element-wise sum over all ranks.
    pub fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(comm) = self.comm() {
            use mpi::collective::SystemOperation;
            use mpi::traits::CommunicatorCollectives;
            // MPI's in-place form is not exposed by the crate: reduce from a copy.
            let mine = values.to_vec();
            comm.all_reduce_into(&mine[..], values, SystemOperation::sum());
        }
        let _ = values;
    }

    /// Gives every rank rank 0's `value`.
    pub fn broadcast_u64(&self, value: &mut u64) {
        #[cfg(feature = "mpi")]
        if let Some(comm) = self.comm() {
            use mpi::traits::{Communicator, Root};
            comm.process_at_rank(0).broadcast_into(value);
        }
        let _ = value;
    }

    /// Gives every rank rank 0's bytes (the lengths must already agree).
    pub fn broadcast_bytes(&self, bytes: &mut [u8]) {
        #[cfg(feature = "mpi")]
        if let Some(comm) = self.comm() {
            use mpi::traits::{Communicator, Root};
            comm.process_at_rank(0).broadcast_into(bytes);
        }
        let _ = bytes;
    }

    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(comm) = self.comm() {
            use mpi::traits::CommunicatorCollectives;
            comm.barrier();
        }
    }

    /// Ends every rank: one rank's error would otherwise leave the others
    /// waiting forever in their next collective. Returns on a single rank.
    pub fn abort_others(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(comm) = self.comm() {
            use mpi::traits::Communicator;
            comm.abort(code);
        }
        let _ = code;
    }

    /// Whether every rank's flag is false; a collective (all ranks call it).
    pub fn all_false(&self, flag: bool) -> bool {
        let mut v = [flag as u8 as f32];
        self.all_reduce_sum_f32(&mut v);
        v[0] == 0.0
    }
}

/// The data index of micro-batch `micro` (counted over the whole run) on
/// `rank` of `size`: consecutive indices go to consecutive ranks, so the
/// ranks' parts of every step are disjoint, cover the same indices as one
/// process with `accumulate × size` micro-batches, and need no communication.
pub fn data_index(micro: u64, rank: usize, size: usize) -> u64 {
    micro * size as u64 + rank as u64
}

/// An order-sensitive 64-bit FNV-1a of f32 bit patterns: equal on two ranks
/// exactly when they hold bit-identical values (up to hash collisions).
pub fn checksum(values: impl IntoIterator<Item = f32>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_parts_of_a_step_are_disjoint_and_cover_one_process_order() {
        // 2 ranks × 3 micro-batches per step must see what 1 rank × 6 sees.
        let (ranks, accumulate) = (2usize, 3u64);
        for step in 0..4u64 {
            let mut seen: Vec<u64> = (0..ranks)
                .flat_map(|r| {
                    (0..accumulate).map(move |k| data_index(step * accumulate + k, r, ranks))
                })
                .collect();
            seen.sort();
            let single: Vec<u64> = (0..accumulate * ranks as u64)
                .map(|k| data_index(step * accumulate * ranks as u64 + k, 0, 1))
                .collect();
            assert_eq!(seen, single);
        }
    }

    #[test]
    fn a_single_rank_world_keeps_values_and_the_checksum_sees_every_bit() {
        let world = World::single();
        let mut v = [1.5f32, -2.0];
        world.all_reduce_sum_f32(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert!(world.all_false(false) && !world.all_false(true));
        let a = checksum([1.0f32, 2.0]);
        assert_ne!(a, checksum([2.0f32, 1.0]));
        assert_ne!(a, checksum([1.0f32, f32::from_bits(2.0f32.to_bits() + 1)]));
        assert_eq!(a, checksum([1.0f32, 2.0]));
    }
}
