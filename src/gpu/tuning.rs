//! The per-adapter tuning table. Kernels that only pay off on one kind of
//! device are variants chosen here, never hard-wired, and every variant runs on
//! lavapipe in the tests (those of the other llvmpipe width in a child
//! process, see `tests::variants_pass_at_the_other_llvmpipe_width`).

use super::device::AdapterFacts;
use super::shader::ShaderSpec;

/// The shape of one shared-memory tiled kernel: a `tile_m` × `tile_n` block
/// of C per workgroup, K in steps of `tile_k` through double-buffered
/// workgroup tiles of A and B, and a `micro_m` × `micro_n` register block of
/// outputs per invocation. Each config is its own shader specialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TiledConfig {
    pub name: &'static str,
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub micro_m: u32,
    pub micro_n: u32,
}

impl TiledConfig {
    /// Invocations per workgroup: one per register block.
    pub const fn workgroup(&self) -> u32 {
        (self.tile_m / self.micro_m) * (self.tile_n / self.micro_n)
    }

    /// Workgroup memory: two buffers of the A and B tiles, f32.
    pub const fn workgroup_bytes(&self) -> u32 {
        2 * self.tile_k * (self.tile_m + self.tile_n) * 4
    }

    /// `spec` (a `TILED` kernel) in this shape: its sizes are WGSL
    /// constants, so each config is its own specialisation.
    pub fn specialise(&self, spec: ShaderSpec) -> ShaderSpec {
        spec.def("TILED", 1)
            .def("TILE_M", self.tile_m)
            .def("TILE_N", self.tile_n)
            .def("TILE_K", self.tile_k)
            .def("MICRO_M", self.micro_m)
            .def("MICRO_N", self.micro_n)
            .def("WORKGROUP", self.workgroup())
    }

    /// Whether an adapter with these limits can run it.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
            && self.workgroup() <= limits.max_compute_invocations_per_workgroup
            && self.workgroup() <= limits.max_compute_workgroup_size_x
    }

    /// The vendor's config if the adapter fits it, else the compact one.
    /// None of these has been measured here (no GPU): each follows a public
    /// design for that kind of hardware, and `bench gpu` is how to revise it.
    pub fn for_adapter(facts: &AdapterFacts, limits: &wgpu::Limits) -> TiledConfig {
        let preferred = match (facts.vendor, facts.subgroup_max_size) {
            (VENDOR_NVIDIA, 32) => TILED_WIDE,
            (VENDOR_AMD, 64) => TILED_WAVE64,
            (VENDOR_APPLE, 32) => TILED_APPLE,
            // Intel (8 to 32 lanes, chosen by the compiler), other vendors,
            // and widths the configs above are not laid out for.
            _ => TILED_COMPACT,
        };
        if preferred.fits(limits) {
            preferred
        } else {
            TILED_COMPACT
        }
    }
}

/// PCI vendor ids as wgpu's `AdapterInfo::vendor` reports them.
pub const VENDOR_NVIDIA: u32 = 0x10de;
pub const VENDOR_AMD: u32 = 0x1002;
pub const VENDOR_INTEL: u32 = 0x8086;
pub const VENDOR_APPLE: u32 = 0x106b;

/// 64×64 blocks, K steps of 16, 4×4 per invocation, 256 invocations: 16 KiB
/// double-buffered, what WebGPU guarantees every adapter, so it is the
/// fallback. It is Burn's 2-D tiling default (64×64 blocks, 4×4 per
/// invocation on a 16×16 grid; Burn takes K steps of 32 in one buffer, the
/// same 16 KiB), and the shape Intel's integrated GPUs get: their subgroup
/// width is the compiler's choice, so no layout can be tuned to it.
pub const TILED_COMPACT: TiledConfig = TiledConfig {
    name: "tiled-64x64",
    tile_m: 64,
    tile_n: 64,
    tile_k: 16,
    micro_m: 4,
    micro_n: 4,
};

/// 128×128 blocks, 8×8 per invocation, 256 invocations (8 warps of 32):
/// the 2-D block tiling of the well-known CUDA SGEMM worklog (siboehm, "How
/// to optimize a CUDA matmul kernel", kernels 5-6: BM = BN = 128, TM = TN = 8,
/// 256 threads), with its autotuned K step of 16; double-buffered that is
/// 32 KiB, within the 48 KiB of static shared memory every NVIDIA GPU gives
/// a block. 64 accumulators per invocation fit the 255 registers a thread
/// may hold, and each tile element read from shared memory feeds 8 FMAs.
pub const TILED_WIDE: TiledConfig = TiledConfig {
    name: "tiled-128x128",
    tile_m: 128,
    tile_n: 128,
    tile_k: 16,
    micro_m: 8,
    micro_n: 8,
};

/// 64×128 blocks, 4×8 per invocation, 256 invocations = four 64-lane
/// wavefronts: the shape of AMD's Tensile GEMM kernels (clBLAS ships one for
/// gfx906: 256 work-items as an 8×16 grid, 4×4 per work-item, DepthU 16, a
/// macro tile twice as wide as tall), with 8 columns per invocation in f32
/// where that f64 kernel had 4 (the same register bytes). 24 KiB
/// double-buffered, well within the 64 KiB of LDS a workgroup may use.
pub const TILED_WAVE64: TiledConfig = TiledConfig {
    name: "tiled-64x128",
    tile_m: 64,
    tile_n: 128,
    tile_k: 16,
    micro_m: 4,
    micro_n: 8,
};

/// 64×64 blocks, K steps of 16, 128 invocations (four 32-wide simdgroups),
/// 4×8 per invocation: MLX's Metal GEMM ("steel") for f32 uses BM = BN = 64,
/// BK = 16 with a 2×2 grid of simdgroups, i.e. 128 threads; 16 KiB
/// double-buffered of the 32 KiB of threadgroup memory Apple GPUs give.
pub const TILED_APPLE: TiledConfig = TiledConfig {
    name: "tiled-64x64-128",
    tile_m: 64,
    tile_n: 64,
    tile_k: 16,
    micro_m: 4,
    micro_n: 8,
};

/// Every tiled config; each runs in the tests on lavapipe.
pub const TILED_CONFIGS: [TiledConfig; 4] = [TILED_COMPACT, TILED_WIDE, TILED_WAVE64, TILED_APPLE];

/// How the matrix-multiply family (GEMM, convolutions as implicit GEMM) is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Classic shared-memory block tiling with a register micro-tile: the
    /// standard route on GPUs whose workgroup memory is on-chip, in the
    /// shape the vendor's hardware suits (`TiledConfig::for_adapter`).
    Tiled(TiledConfig),
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
    /// The variants every op test runs: the fallback tiled config and the
    /// broadcast kernels (the other tiled configs run in the matmul-family
    /// tests, `OpCase::every_tiled_config`).
    pub const ALL: [MatmulVariant; 3] = [
        MatmulVariant::Tiled(TILED_COMPACT),
        MatmulVariant::SubgroupBroadcast { lanes: 8 },
        MatmulVariant::SubgroupBroadcast { lanes: 16 },
    ];

    /// `ALL` and every other tiled config: what `bench kernels` measures.
    pub fn every() -> Vec<MatmulVariant> {
        let mut all = MatmulVariant::ALL.to_vec();
        for v in TILED_CONFIGS.map(MatmulVariant::Tiled) {
            if !all.contains(&v) {
                all.push(v);
            }
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled(config) => config.name,
            MatmulVariant::SubgroupBroadcast { lanes: 8 } => "subgroup-broadcast-8",
            MatmulVariant::SubgroupBroadcast { lanes: 16 } => "subgroup-broadcast-16",
            MatmulVariant::SubgroupBroadcast { .. } => "subgroup-broadcast-unsupported",
        }
    }

    /// The subgroup size a broadcast variant is written for.
    pub fn broadcast_lanes(self) -> Option<u32> {
        match self {
            MatmulVariant::Tiled(_) => None,
            MatmulVariant::SubgroupBroadcast { lanes } => Some(lanes),
        }
    }

    /// Whether the adapter can run this variant at all.
    pub fn supported(
        self,
        features: wgpu::Features,
        facts: &AdapterFacts,
        limits: &wgpu::Limits,
    ) -> bool {
        match self {
            MatmulVariant::Tiled(config) => config.fits(limits),
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
    /// kernels for their width; everything else the shared-memory ones in
    /// the shape of their vendor and subgroup width (`TiledConfig::for_adapter`).
    /// Extraction batches images on GPUs only: a CPU emulation already
    /// fills its cores with one image's dispatches.
    pub fn for_adapter(
        facts: &AdapterFacts,
        features: wgpu::Features,
        limits: &wgpu::Limits,
    ) -> Tuning {
        let sgb = MatmulVariant::SubgroupBroadcast {
            lanes: facts.subgroup_min_size,
        };
        let matmul = if facts.device_type == wgpu::DeviceType::Cpu
            && sgb.supported(features, facts, limits)
        {
            sgb
        } else {
            MatmulVariant::Tiled(TiledConfig::for_adapter(facts, limits))
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
                Tuning::for_adapter(facts, gpu.features, &gpu.limits).matmul
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
            Tuning::for_adapter(&other, gpu.features, &gpu.limits).extract_batch
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
                Tuning::for_adapter(&other, features, &gpu.limits).matmul,
                MatmulVariant::Tiled(TILED_COMPACT),
                "{min}..{max} lanes, {features:?}"
            );
        }
    }

    /// Facts of a GPU of `vendor` with subgroups of `min..=max` lanes.
    fn gpu_facts(vendor: u32, (min, max): (u32, u32)) -> AdapterFacts {
        AdapterFacts {
            name: format!("vendor {vendor:#x}"),
            backend: wgpu::Backend::Vulkan,
            device_type: wgpu::DeviceType::DiscreteGpu,
            driver: String::new(),
            driver_info: String::new(),
            vendor,
            subgroup_min_size: min,
            subgroup_max_size: max,
        }
    }

    /// Limits with `kib` KiB of workgroup memory.
    fn limits(kib: u32) -> wgpu::Limits {
        wgpu::Limits {
            max_compute_workgroup_storage_size: kib << 10,
            ..wgpu::Limits::default()
        }
    }

    #[test]
    fn table_picks_the_tiled_config_by_vendor_width_and_limits() {
        let roomy = limits(64);
        let cases = [
            (VENDOR_NVIDIA, (32, 32), &roomy, TILED_WIDE),
            (VENDOR_AMD, (64, 64), &roomy, TILED_WAVE64),
            // RDNA: 32 or 64 lanes per pipeline, laid out for 64.
            (VENDOR_AMD, (32, 64), &roomy, TILED_WAVE64),
            (VENDOR_APPLE, (32, 32), &roomy, TILED_APPLE),
            (VENDOR_INTEL, (8, 32), &roomy, TILED_COMPACT),
            // A vendor's config needs the width it is laid out for.
            (VENDOR_NVIDIA, (64, 64), &roomy, TILED_COMPACT),
            (VENDOR_AMD, (32, 32), &roomy, TILED_COMPACT),
            (0, (32, 32), &roomy, TILED_COMPACT),
        ];
        for (vendor, lanes, limits, want) in cases {
            let facts = gpu_facts(vendor, lanes);
            let got = Tuning::for_adapter(&facts, wgpu::Features::SUBGROUP, limits).matmul;
            assert_eq!(got, MatmulVariant::Tiled(want), "{vendor:#x} {lanes:?}");
        }
        // What does not fit falls back to the 16 KiB config WebGPU guarantees.
        let baseline = wgpu::Limits::default();
        assert_eq!(baseline.max_compute_workgroup_storage_size, 16 << 10);
        assert!(TILED_COMPACT.fits(&baseline));
        for (vendor, lanes) in [(VENDOR_NVIDIA, (32, 32)), (VENDOR_AMD, (64, 64))] {
            let facts = gpu_facts(vendor, lanes);
            assert_eq!(
                TiledConfig::for_adapter(&facts, &baseline),
                TILED_COMPACT,
                "{vendor:#x}"
            );
        }
        // Every config: distinct name, blocks its register tiles divide,
        // K steps of whole vec4s, and no more invocations than WebGPU
        // guarantees (256), so only workgroup memory decides the fallback.
        for c in TILED_CONFIGS {
            assert_eq!(c.tile_m % c.micro_m, 0, "{c:?}");
            assert_eq!(c.tile_n % c.micro_n, 0, "{c:?}");
            assert_eq!(c.micro_n % 4, 0, "{c:?}: conv stores column quads");
            assert_eq!(c.tile_k % 4, 0, "{c:?}");
            assert!(c.workgroup() <= 256, "{c:?}");
            assert_eq!(
                TILED_CONFIGS.iter().filter(|o| o.name == c.name).count(),
                1,
                "{c:?}"
            );
        }
        assert_eq!(TILED_WIDE.workgroup_bytes(), 32 << 10);
        assert_eq!(TILED_COMPACT.workgroup_bytes(), 16 << 10);
    }
}
