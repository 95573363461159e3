//! The per-adapter tuning table. Kernels that only pay off on one kind of
//! device are variants chosen here, never hard-wired, and every variant runs on
//! lavapipe in the tests.

use super::device::AdapterFacts;

/// How the matrix-multiply family (GEMM, convolutions as implicit GEMM) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Classic shared-memory block tiling with a register micro-tile: the
    /// standard route on GPUs whose workgroup memory is on-chip.
    Tiled,
    /// Subgroup-broadcast outer product with 8-lane subgroups and no shared
    /// memory: on llvmpipe, where each lane-varying load is scalarised and
    /// workgroup memory is plain RAM, sharing one operand through register
    /// shuffles is what makes the kernel fast (see shared/spec/lavapipe.md).
    SubgroupBroadcast,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 2] = [MatmulVariant::Tiled, MatmulVariant::SubgroupBroadcast];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::SubgroupBroadcast => "subgroup-broadcast",
        }
    }

    /// Whether the adapter can run this variant at all.
    pub fn supported(self, features: wgpu::Features, facts: &AdapterFacts) -> bool {
        match self {
            MatmulVariant::Tiled => true,
            MatmulVariant::SubgroupBroadcast => {
                features.contains(wgpu::Features::SUBGROUP)
                    && facts.subgroup_min_size == 8
                    && facts.subgroup_max_size == 8
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    pub matmul: MatmulVariant,
}

impl Tuning {
    /// The table: CPU rasterisers with fixed 8-wide subgroups (lavapipe/llvmpipe)
    /// get the subgroup-broadcast kernels; everything else the shared-memory ones.
    pub fn for_adapter(facts: &AdapterFacts, features: wgpu::Features) -> Tuning {
        let sgb = MatmulVariant::SubgroupBroadcast;
        let matmul = if facts.device_type == wgpu::DeviceType::Cpu && sgb.supported(features, facts)
        {
            sgb
        } else {
            MatmulVariant::Tiled
        };
        Tuning { matmul }
    }

    pub fn describe(&self) -> String {
        format!("matmul={}", self.matmul.name())
    }
}
