//! Recording without a device. Every device profile (`gpu::profile`) opens
//! on wgpu's no-op backend on any machine, GPU or not; the tiny DELG and DOLG
//! extraction and training plans are planned and recorded there, and wgpu
//! validates each shader, pipeline, bind group and dispatch against the
//! profile's limits and features. No test here needs an adapter.

use std::path::Path;
use std::sync::Arc;

use delg_gpu::gpu::{
    DeviceProfile, Gpu, MatmulVariant, TILED_APPLE, TILED_COMPACT, TILED_WAVE64, TILED_WIDE,
};
use delg_gpu::graph::exec::Executable;
use delg_gpu::jobs::extract::{ExtractConfig, Extractor};
use delg_gpu::jobs::train::{build_step, upload_state, Schedule, TrainConfig, TrainModel};
use delg_gpu::model::delg::{DelgConfig, DelgLossConfig};
use delg_gpu::model::dolg::{DolgConfig, DolgLossConfig, MultiAtrous};
use delg_gpu::model::params::random_weights;
use delg_gpu::model::resnet::{Layout, ResNetConfig};
use delg_gpu::model::ModelConfig;
use delg_gpu::tensor::Precision;

fn devices() -> Vec<(DeviceProfile, Arc<Gpu>)> {
    DeviceProfile::all()
        .into_iter()
        .map(|p| {
            let gpu = Gpu::without_device(&p)
                .unwrap_or_else(|e| panic!("profile {} did not open: {e}", p.name));
            (p, gpu)
        })
        .collect()
}

fn backbone() -> ResNetConfig {
    ResNetConfig {
        blocks: [1, 1, 1, 1],
        width: 8,
        ..ResNetConfig::resnet50(Layout::Delg)
    }
}

fn tiny_delg() -> DelgConfig {
    let mut m = DelgConfig::new(backbone());
    m.attention_dim = 8;
    m.local_dim = 8;
    m
}

fn tiny_dolg() -> DolgConfig {
    let mut m = DolgConfig::new(backbone());
    m.output_dim = 16;
    m.multi_atrous = Some(MultiAtrous {
        dilations: vec![1, 2, 3],
        branch_dim: 8,
    });
    m
}

/// The matrix-multiply kernels (convolutions and GEMMs) among `kernels`.
fn matmul_kernels(kernels: &[String]) -> Vec<&String> {
    kernels
        .iter()
        .filter(|k| {
            [
                "conv2d::conv_sgb[",
                "conv2d::conv_tiled[",
                "gemm::gemm_sgb[",
                "gemm::gemm_tiled[",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .collect()
}

/// Every matrix product in a recording is the profile's variant, in the
/// tiled config the table chose for it; a tiled recording stages some
/// tiles with vec4 loads (the tiny models' 8-channel layers allow it).
fn assert_variant(profile: &DeviceProfile, gpu: &Gpu, kernels: &[String]) {
    let products = matmul_kernels(kernels);
    assert!(
        !products.is_empty(),
        "{}: no convolution or GEMM recorded",
        profile.name
    );
    for k in products {
        let ok = match gpu.tuning.matmul {
            MatmulVariant::Tiled(c) => {
                k.contains("_tiled[")
                    && [
                        ("TILE_M", c.tile_m),
                        ("TILE_N", c.tile_n),
                        ("TILE_K", c.tile_k),
                        ("MICRO_M", c.micro_m),
                        ("MICRO_N", c.micro_n),
                    ]
                    .iter()
                    .all(|(def, v)| k.contains(&format!("{def}={v},")))
            }
            MatmulVariant::SubgroupBroadcast { lanes } => {
                k.contains("_sgb[") && k.contains(&format!("LANES={lanes},"))
            }
        };
        assert!(
            ok,
            "{}: {k} is not {}",
            profile.name,
            gpu.tuning.matmul.name()
        );
    }
    if let MatmulVariant::Tiled(_) = gpu.tuning.matmul {
        assert!(
            matmul_kernels(kernels).iter().any(|k| k.contains("VEC4=1")),
            "{}: no tiled product staged with vec4 loads",
            profile.name
        );
    }
}

#[test]
fn the_tuning_table_chooses_by_profile() {
    let sgb = |lanes| MatmulVariant::SubgroupBroadcast { lanes };
    for (profile, gpu) in devices() {
        let expected = match profile.name {
            "lavapipe-256" => (sgb(8), 1),
            "lavapipe-512" | "small-bindings" => (sgb(16), 1),
            // Vendor and subgroup width pick the tiled config.
            "discrete-gpu" => (MatmulVariant::Tiled(TILED_WIDE), 4),
            "wave32-64-gpu" => (MatmulVariant::Tiled(TILED_WAVE64), 4),
            "apple-gpu" => (MatmulVariant::Tiled(TILED_APPLE), 2),
            "intel-igpu" | "webgpu-baseline" => (MatmulVariant::Tiled(TILED_COMPACT), 2),
            other => panic!("a new profile, {other}: add its expected tuning here"),
        };
        let chosen = (gpu.tuning.matmul, gpu.tuning.extract_batch);
        assert_eq!(chosen, expected, "{}", profile.name);
        assert!(!gpu.executes(), "{}", profile.name);
        assert!(gpu.facts.name.contains(profile.name));
    }
    let err = DeviceProfile::named("gtx-9000").unwrap_err().to_string();
    assert!(
        err.contains("lavapipe-512") && err.contains("discrete-gpu"),
        "{err}"
    );
}

/// Records `model`'s extraction graph for `batch` images of `h`×`w` on `gpu`.
fn record_extraction(
    gpu: &Arc<Gpu>,
    model: &ModelConfig,
    batch: usize,
    h: usize,
    w: usize,
) -> Executable {
    record_extraction_at(gpu, model, batch, h, w, Precision::F32)
}

/// `record_extraction` with the backbone stored at `precision`.
fn record_extraction_at(
    gpu: &Arc<Gpu>,
    model: &ModelConfig,
    batch: usize,
    h: usize,
    w: usize,
    precision: Precision,
) -> Executable {
    let file = model.random_weights(7, 0.0).unwrap();
    let specs = model.parameters_at(precision).unwrap();
    let params = model
        .load_params(gpu, Path::new("random"), &file, &specs)
        .unwrap();
    let net = model.inference_graph_at(batch, h, w, precision).unwrap();
    let mut targets = vec![net.global];
    targets.extend(net.local.iter().flat_map(|l| [l.attention, l.descriptors]));
    Executable::new(gpu, &net.graph, &targets, &params)
        .unwrap_or_else(|e| panic!("{}: {} did not record: {e}", gpu.facts.name, model.arch()))
}

/// An f16 extraction casts the image before the stem (its first kernel):
/// the stem's convolution (unfolded on the broadcast kernels) and its
/// max-pool are the f16 forms.
fn assert_f16_stem(profile: &DeviceProfile, gpu: &Gpu, kernels: &[String]) {
    let name = profile.name;
    let of = |prefix: &str| -> Vec<&String> {
        kernels.iter().filter(|k| k.starts_with(prefix)).collect()
    };
    let stem_conv = matmul_kernels(kernels)
        .into_iter()
        .find(|k| k.starts_with("conv2d::"))
        .unwrap_or_else(|| panic!("{name}: no convolution"));
    assert!(
        stem_conv.contains("F16=1"),
        "{name}: the stem is {stem_conv}"
    );
    // The stem's max-pool comes first (DELG's subsample of conv4, later,
    // shares its kernel and reads f32).
    let pools = of("pool::max_pool[");
    assert!(
        pools.first().is_some_and(|k| k.contains("F16=1")),
        "{name}: {pools:?}"
    );
    // The broadcast kernels unfold the RGB stem first (in f16; later f16
    // convolutions whose channels do not fill subgroup steps too, and f32
    // head convolutions in f32); the tiled kernel unfolds nothing.
    let unfolds = of("conv2d::unfold[");
    if gpu.tuning.matmul.broadcast_lanes().is_some() {
        assert!(
            unfolds.first().is_some_and(|k| k.contains("F16=1")),
            "{name}: {unfolds:?}"
        );
    } else {
        assert!(unfolds.is_empty(), "{name}: {unfolds:?}");
    }
    assert!(
        kernels[0].starts_with("cast::") && kernels[0].contains("TO_F16=1"),
        "{name}: the first kernel is {}",
        kernels[0]
    );
}

#[test]
fn extraction_records_and_validates_on_every_profile() {
    for (profile, gpu) in devices() {
        for model in [
            ModelConfig::Delg(tiny_delg()),
            ModelConfig::Dolg(tiny_dolg()),
        ] {
            // Odd sizes, as most pyramid levels are; one image and a batch.
            for batch in [1, 3] {
                let exe = record_extraction(&gpu, &model, batch, 75, 93);
                assert_variant(&profile, &gpu, exe.kernels());
                assert_eq!(exe.stats().dispatches, exe.kernels().len());
                gpu.check("recording").unwrap();
            }
            if gpu.features.contains(wgpu::Features::SHADER_F16) {
                let exe = record_extraction_at(&gpu, &model, 2, 75, 93, Precision::F16);
                assert_variant(&profile, &gpu, exe.kernels());
                assert_f16_stem(&profile, &gpu, exe.kernels());
                gpu.check("recording").unwrap();
            } else {
                let config = ExtractConfig {
                    precision: Precision::F16,
                    ..ExtractConfig::for_arch(model.arch())
                };
                let file = model.random_weights(7, 0.0).unwrap();
                let refused = Extractor::from_weights(&gpu, &file, Path::new("w"), config);
                let err = refused.err().expect("f16 without SHADER_F16").to_string();
                assert!(err.contains("--precision f32"), "{}: {err}", profile.name);
            }
        }
    }
}

fn train_config(net: TrainModel) -> TrainConfig {
    TrainConfig {
        net,
        batch: 2,
        accumulate: 1,
        image_size: 48,
        steps: 1,
        lr: 0.01,
        schedule: Schedule::Cosine { warmup: 0 },
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
        clip_norm: 10.0,
        bn_momentum: 0.1,
        seed: 1,
        checkpoint_every: 0,
        val_fraction: 0.0,
        flip: false,
    }
}

#[test]
fn training_steps_record_and_validate_on_every_profile() {
    for (profile, gpu) in devices() {
        for net in [
            TrainModel::Delg {
                model: tiny_delg(),
                loss: DelgLossConfig::paper(3),
            },
            TrainModel::Dolg {
                model: tiny_dolg(),
                loss: DolgLossConfig::official(3),
            },
        ] {
            let cfg = train_config(net);
            let step = build_step(&cfg).unwrap();
            let store = upload_state(&gpu, &step, &random_weights(&step.specs, 1), &cfg).unwrap();
            let (micro, update) = step
                .executables(&gpu, &store)
                .unwrap_or_else(|e| panic!("{}: the step did not record: {e}", profile.name));
            assert_variant(&profile, &gpu, micro.kernels());
            assert!(update.stats().dispatches > 0);
            gpu.check("recording").unwrap();
        }
    }
}

#[test]
fn small_bindings_split_large_operands_into_validated_windows() {
    let open = |name| Gpu::without_device(&DeviceProfile::named(name).unwrap()).unwrap();
    let (whole, windowed) = (open("lavapipe-512"), open("small-bindings"));
    let model = ModelConfig::Delg(tiny_delg());
    // 1.4 MiB of input pixels and larger activations: far above 256 KiB.
    let a = record_extraction(&whole, &model, 1, 352, 336);
    let b = record_extraction(&windowed, &model, 1, 352, 336);
    assert!(
        b.stats().dispatches > a.stats().dispatches,
        "windows: {} dispatches against {} unsplit",
        b.stats().dispatches,
        a.stats().dispatches
    );
    windowed.check("recording").unwrap();
}

#[test]
fn a_device_profile_refuses_to_read_results() {
    let gpu = Gpu::without_device(&DeviceProfile::named("discrete-gpu").unwrap()).unwrap();
    let exe = record_extraction(&gpu, &ModelConfig::Delg(tiny_delg()), 1, 64, 64);
    exe.run().unwrap();
    let err = exe
        .read(delg_gpu::graph::TensorId(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device profile") && err.contains("real adapter"),
        "{err}"
    );
}

fn delg_gpu(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn train_plans_memory_for_a_profile_without_a_device() {
    let root = std::env::temp_dir().join(format!("delg-profile-plan-{}", std::process::id()));
    for class in 0..2u64 {
        let dir = root.join(format!("data/class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for view in 0..2 {
            delg_gpu::render_scene(class, view, 64)
                .save(dir.join(format!("{view}.png")))
                .unwrap();
        }
    }
    let data = root.join("data");
    let run = root.join("run");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--run",
        run.to_str().unwrap(),
        "--depth",
        "tiny",
        "--size",
        "64",
        "--batch",
        "2",
        "--plan-only",
    ];
    args.extend(["--device-profile", "discrete-gpu"]);
    let out = delg_gpu(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("on discrete-gpu (device profile, no device)"),
        "{stdout}"
    );
    assert!(!run.exists(), "planning wrote a run folder");

    // Only with --plan-only, and only a known profile.
    let without = delg_gpu(
        &args
            .iter()
            .copied()
            .filter(|a| *a != "--plan-only")
            .collect::<Vec<_>>(),
    );
    assert_eq!(without.status.code(), Some(2));
    args.pop();
    args.push("gtx-9000");
    let unknown = delg_gpu(&args);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("unknown device profile 'gtx-9000'"),
        "{stderr}"
    );

    // The help names every profile.
    let help = String::from_utf8_lossy(&delg_gpu(&["train", "--help"]).stdout).to_string();
    for p in DeviceProfile::all() {
        assert!(
            help.contains(p.name),
            "train --help does not name {}",
            p.name
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
