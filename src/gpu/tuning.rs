//! The per-adapter tuning table. Kernels that only pay off on one kind of
//! device are variants chosen here, never hard-wired, and every variant runs on
//! lavapipe in the tests (those of the other llvmpipe width in a child
//! process, see `tests::variants_pass_at_the_other_llvmpipe_width`).

use super::device::AdapterFacts;

/// How the matrix-multiply family (GEMM, convolutions as implicit GEMM) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Classic shared-memory block tiling with a register micro-tile: the
    /// standard route on GPUs whose workgroup memory is on-chip.
    Tiled,
    /// Subgroup-broadcast outer product with no shared memory, for subgroups
    /// of exactly `lanes` lanes: on llvmpipe, where each lane-varying load is
    /// scalarised and workgroup memory is plain RAM, sharing one operand
    /// through register shuffles is what makes the kernel fast (see
    /// shared/spec/lavapipe.md). llvmpipe's subgroup is one SIMD register:
    /// 8 lanes at its default 256 bits, 16 with LP_NATIVE_VECTOR_WIDTH=512.
    SubgroupBroadcast { lanes: u32 },
}

/// The subgroup sizes the broadcast kernels are written for.
pub const BROADCAST_LANES: [u32; 2] = [8, 16];

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 3] = [
        MatmulVariant::Tiled,
        MatmulVariant::SubgroupBroadcast { lanes: 8 },
        MatmulVariant::SubgroupBroadcast { lanes: 16 },
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::SubgroupBroadcast { lanes: 8 } => "subgroup-broadcast-8",
            MatmulVariant::SubgroupBroadcast { lanes: 16 } => "subgroup-broadcast-16",
            MatmulVariant::SubgroupBroadcast { .. } => "subgroup-broadcast-unsupported",
        }
    }

    /// The subgroup size a broadcast variant is written for.
    pub fn broadcast_lanes(self) -> Option<u32> {
        match self {
            MatmulVariant::Tiled => None,
            MatmulVariant::SubgroupBroadcast { lanes } => Some(lanes),
        }
    }

    /// Whether the adapter can run this variant at all.
    pub fn supported(self, features: wgpu::Features, facts: &AdapterFacts) -> bool {
        match self {
            MatmulVariant::Tiled => true,
            MatmulVariant::SubgroupBroadcast { lanes } => {
                BROADCAST_LANES.contains(&lanes)
                    && features.contains(wgpu::Features::SUBGROUP)
                    && facts.subgroup_min_size == lanes
                    && facts.subgroup_max_size == lanes
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    pub matmul: MatmulVariant,
    /// Images per batch that `extract` runs together when not told.
    pub extract_batch: usize,
}

impl Tuning {
    /// The table: CPU rasterisers with fixed 8- or 16-wide subgroups
    /// (lavapipe/llvmpipe at 256 or 512 bits) get the subgroup-broadcast
    /// kernels for their width; everything else the shared-memory ones.
    /// Extraction batches images on GPUs only: a CPU emulation already
    /// fills its cores with one image's dispatches.
    pub fn for_adapter(facts: &AdapterFacts, features: wgpu::Features) -> Tuning {
        let sgb = MatmulVariant::SubgroupBroadcast {
            lanes: facts.subgroup_min_size,
        };
        let matmul = if facts.device_type == wgpu::DeviceType::Cpu && sgb.supported(features, facts)
        {
            sgb
        } else {
            MatmulVariant::Tiled
        };
        let extract_batch = match facts.device_type {
            wgpu::DeviceType::Cpu => 1,
            // Unmeasured (no GPU here): 4 images of 1024 px keep a discrete
            // GPU busy at the small pyramid levels within a few GiB of
            // activations; `bench gpu` reports the best batch to revise it.
            wgpu::DeviceType::DiscreteGpu => 4,
            // Integrated and unknown GPUs share memory with the host: a
            // modest batch, unmeasured too.
            _ => 2,
        };
        Tuning {
            matmul,
            extract_batch,
        }
    }

    pub fn describe(&self) -> String {
        format!("matmul={}", self.matmul.name())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::testing::{test_gpu, EXPECT_LANES_VAR};

    /// The test modules whose cases run every matmul variant.
    const VARIANT_TESTS: [&str; 3] = ["ops::gemm::", "ops::conv2d::", "gpu::tuning::tests::table_"];

    /// llvmpipe's vector width is read once, when the Vulkan driver loads, so
    /// the kernels of the other width (16 lanes at 512 bits, 8 at 256) are
    /// tested by rerunning this test binary's variant tests in a child
    /// process with LP_NATIVE_VECTOR_WIDTH set to it (any x86 CPU can run
    /// 512: LLVM splits vectors it cannot execute natively). The child fails
    /// unless the table chose that width's variant.
    #[test]
    fn variants_pass_at_the_other_llvmpipe_width() {
        if std::env::var_os(EXPECT_LANES_VAR).is_some() {
            return; // this is the child
        }
        let Some(gpu) = test_gpu() else {
            return; // DELG_ALLOW_NO_GPU, reported by test_gpus
        };
        if gpu.facts.driver != "llvmpipe" {
            eprintln!(
                "not llvmpipe ({}): no rerun at another width",
                gpu.facts.name
            );
            return;
        }
        let (bits, lanes) = match gpu.facts.subgroup_min_size {
            16 => ("256", "8"),
            _ => ("512", "16"),
        };
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = Command::new(exe)
            .args(VARIANT_TESTS)
            .env(crate::gpu::cpu::WIDTH_VAR, bits)
            .env(EXPECT_LANES_VAR, lanes)
            .output()
            .expect("the test binary runs again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = || {
            let tail = |s: &str| {
                s.lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            format!(
                "--- child stdout (tail) ---\n{}\n--- child stderr (tail) ---\n{}",
                tail(&stdout),
                tail(&String::from_utf8_lossy(&out.stderr))
            )
        };
        assert!(
            out.status.success(),
            "the {bits}-bit run failed\n{}",
            report()
        );
        let passed: usize = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum();
        assert!(
            passed >= 10,
            "only {passed} tests ran at {bits} bits\n{}",
            report()
        );
    }

    #[test]
    fn table_picks_the_broadcast_kernels_of_the_adapter_width() {
        let Some(gpu) = test_gpu() else {
            return;
        };
        let facts = &gpu.facts;
        let expected =
            if facts.driver == "llvmpipe" && gpu.features.contains(wgpu::Features::SUBGROUP) {
                MatmulVariant::SubgroupBroadcast {
                    lanes: facts.subgroup_min_size,
                }
            } else {
                Tuning::for_adapter(facts, gpu.features).matmul
            };
        assert_eq!(gpu.tuning.matmul, expected, "{facts:?}");
        if facts.driver == "llvmpipe" {
            assert!(
                BROADCAST_LANES.contains(&facts.subgroup_min_size),
                "{facts:?}"
            );
        }
        // Extraction batches images on GPUs, not on CPU emulations.
        let batch_on = |device_type| {
            let other = AdapterFacts {
                device_type,
                ..facts.clone()
            };
            Tuning::for_adapter(&other, gpu.features).extract_batch
        };
        assert_eq!(
            [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu].map(batch_on),
            [1, 4]
        );
        // Widths the kernels are not written for, or a range of widths,
        // get the tiled kernels; so does a device without subgroups.
        for (min, max, features) in [
            (32, 32, wgpu::Features::SUBGROUP),
            (8, 16, wgpu::Features::SUBGROUP),
            (16, 16, wgpu::Features::empty()),
        ] {
            let other = AdapterFacts {
                subgroup_min_size: min,
                subgroup_max_size: max,
                ..facts.clone()
            };
            assert_eq!(
                Tuning::for_adapter(&other, features).matmul,
                MatmulVariant::Tiled,
                "{min}..{max} lanes, {features:?}"
            );
        }
    }
}
