//! Memory planning by liveness. Each computed tensor's storage lives from the
//! step that writes it to the last step that reads it; storages whose lives
//! do not overlap share a device buffer, chosen best-fit. Pure logic, tested
//! without a device.

use std::collections::HashMap;

use super::{Graph, TensorId, TensorKind};

/// The life of one storage: written at step `first`, last read at step `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub bytes: u64,
    pub first: usize,
    pub last: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Buffer slot of each lifetime, in input order.
    pub slot_of: Vec<usize>,
    /// Size of each slot in bytes.
    pub slot_bytes: Vec<u64>,
}

impl MemoryPlan {
    pub fn total_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Assigns slots so that no two overlapping lifetimes share one. A freed slot
/// is reused best-fit: the smallest free slot that is large enough, else the
/// largest free slot (grown), else a new one.
pub fn plan_memory(lives: &[Lifetime]) -> MemoryPlan {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    order.sort_by_key(|&i| (lives[i].first, std::cmp::Reverse(lives[i].bytes)));
    let mut plan = MemoryPlan {
        slot_of: vec![0; lives.len()],
        slot_bytes: Vec::new(),
    };
    // Per slot: the step after which it is free again.
    let mut busy_until: Vec<usize> = Vec::new();
    for i in order {
        let life = lives[i];
        let free: Vec<usize> = (0..plan.slot_bytes.len())
            .filter(|&s| busy_until[s] < life.first)
            .collect();
        let fitting = free
            .iter()
            .copied()
            .filter(|&s| plan.slot_bytes[s] >= life.bytes)
            .min_by_key(|&s| plan.slot_bytes[s]);
        let slot =
            match fitting.or_else(|| free.iter().copied().max_by_key(|&s| plan.slot_bytes[s])) {
                Some(s) => s,
                None => {
                    plan.slot_bytes.push(0);
                    busy_until.push(0);
                    plan.slot_bytes.len() - 1
                }
            };
        plan.slot_bytes[slot] = plan.slot_bytes[slot].max(life.bytes);
        busy_until[slot] = life.last;
        plan.slot_of[i] = slot;
    }
    plan
}

/// Where the computed tensors of a graph live, decided without a device.
pub struct StoragePlan {
    /// Nodes to run, in order.
    pub schedule: Vec<usize>,
    /// Computed storages (views excluded), in the order of `memory.slot_of`.
    pub storages: Vec<TensorId>,
    pub lifetimes: Vec<Lifetime>,
    pub memory: MemoryPlan,
}

/// Plans the computed tensors needed for `targets`: each storage lives from
/// the step that writes it to the last step that reads it (targets to the
/// end), and storages with disjoint lives share a slot.
pub fn plan_storages(graph: &Graph, targets: &[TensorId]) -> StoragePlan {
    let schedule = graph.schedule(targets);
    let mut lives: HashMap<TensorId, Lifetime> = HashMap::new();
    for (step, &n) in schedule.iter().enumerate() {
        let node = &graph.nodes[n];
        for o in &node.outputs {
            let st = graph.info(*o).storage;
            if graph.info(st).kind == TensorKind::Computed {
                lives.entry(st).or_insert(Lifetime {
                    bytes: graph.shape(st).bytes_as(graph.precision(st)),
                    first: step,
                    last: step,
                });
            }
        }
        for i in &node.inputs {
            if let Some(l) = lives.get_mut(&graph.info(*i).storage) {
                l.last = step;
            }
        }
    }
    for t in targets {
        if let Some(l) = lives.get_mut(&graph.info(*t).storage) {
            l.last = usize::MAX;
        }
    }
    let mut storages: Vec<TensorId> = lives.keys().copied().collect();
    storages.sort();
    let lifetimes: Vec<Lifetime> = storages.iter().map(|s| lives[s]).collect();
    let memory = plan_memory(&lifetimes);
    StoragePlan {
        schedule,
        storages,
        lifetimes,
        memory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    fn overlaps(a: Lifetime, b: Lifetime) -> bool {
        a.first <= b.last && b.first <= a.last
    }

    #[test]
    fn chain_reuses_two_buffers() {
        // x0 -> x1 -> x2 -> x3: each tensor is read only by the next step.
        let lives: Vec<Lifetime> = (0..4)
            .map(|i| Lifetime {
                bytes: 100,
                first: i,
                last: i + 1,
            })
            .collect();
        let plan = plan_memory(&lives);
        assert_eq!(plan.slot_bytes.len(), 2);
        assert_eq!(plan.total_bytes(), 200);
    }

    #[test]
    fn best_fit_prefers_the_smallest_sufficient_slot() {
        let lives = [
            Lifetime {
                bytes: 1000,
                first: 0,
                last: 1,
            },
            Lifetime {
                bytes: 10,
                first: 0,
                last: 1,
            },
            Lifetime {
                bytes: 8,
                first: 2,
                last: 3,
            },
        ];
        let plan = plan_memory(&lives);
        assert_eq!(plan.slot_of[2], plan.slot_of[1]);
        assert_eq!(plan.total_bytes(), 1010);
    }

    #[test]
    fn random_lifetimes_never_share_a_live_slot() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let n = 1 + rng.below(40);
            let lives: Vec<Lifetime> = (0..n)
                .map(|_| {
                    let first = rng.below(30);
                    Lifetime {
                        bytes: 1 + rng.below(1000) as u64,
                        first,
                        last: first + rng.below(10),
                    }
                })
                .collect();
            let plan = plan_memory(&lives);
            for a in 0..n {
                assert!(plan.slot_bytes[plan.slot_of[a]] >= lives[a].bytes);
                for b in a + 1..n {
                    if plan.slot_of[a] == plan.slot_of[b] {
                        assert!(
                            !overlaps(lives[a], lives[b]),
                            "{:?} and {:?} share a slot",
                            lives[a],
                            lives[b]
                        );
                    }
                }
            }
            let naive: u64 = lives.iter().map(|l| l.bytes).sum();
            assert!(plan.total_bytes() <= naive);
        }
    }
}
