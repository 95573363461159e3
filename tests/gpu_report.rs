//! `bench gpu --quick --json`: the report someone with a real GPU sends has
//! every section, and every figure in it is a finite number.

use std::process::Command;

use delg_gpu::jobs::gpu_report::{missing_figures, SCHEMA, SCHEMA_VERSION};
use delg_gpu::testing::test_gpu;
use serde_json::Value;

fn number(report: &Value, path: &str) -> f64 {
    let mut v = report;
    for key in path.split('.') {
        v = &v[key];
    }
    let n = v
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {v}"));
    assert!(n.is_finite(), "{path} = {n}");
    n
}

#[test]
fn the_quick_report_fills_every_section_with_finite_figures() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("delg-gpu-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .env("DELG_GPU_CACHE_DIR", dir.join("cache"))
        .args(["bench", "gpu", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run delg-gpu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench gpu failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();

    assert_eq!(report["schema"], SCHEMA);
    assert_eq!(report["schema_version"], SCHEMA_VERSION);
    assert_eq!(report["size"], "quick");
    let missing = missing_figures(&report, &[]);
    assert!(missing.is_empty(), "missing figures: {missing:?}");
    // Batches 1, 2 and 4 measured; the best is the fastest of them.
    let extraction = &report["extraction"];
    assert_eq!(extraction["batching_available"], true);
    let batches = extraction["batches"].as_array().unwrap();
    let measured: Vec<u64> = batches
        .iter()
        .map(|b| b["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(measured, [1, 2, 4]);
    let fastest = batches
        .iter()
        .max_by(|a, b| number(a, "images_per_s").total_cmp(&number(b, "images_per_s")))
        .unwrap();
    assert_eq!(extraction["best_batch"]["batch"], fastest["batch"]);
    assert_eq!(
        extraction["best_batch"]["images_per_s"],
        fastest["images_per_s"]
    );

    // f16 at batch 1 against f32 where the adapter has SHADER_F16 (lavapipe
    // does), else skipped with the reason.
    let f16 = &report["f16_extraction"];
    if gpu.features.contains(wgpu::Features::SHADER_F16) {
        assert_eq!(f16["status"], "measured", "{f16}");
        for (side, precision) in [("f32", "f32"), ("f16", "f16")] {
            assert_eq!(f16[side]["precision"], precision, "{f16}");
            assert_eq!(f16[side]["batch"], 1, "{f16}");
            for figure in ["images_per_s", "device_bytes"] {
                assert!(number(&f16[side], figure) > 0.0, "{side}.{figure}");
            }
        }
        let ratio = number(f16, "memory_vs_f32");
        let want = number(&f16["f16"], "device_bytes") / number(&f16["f32"], "device_bytes");
        assert!((ratio - want).abs() < 1e-9, "{ratio} against {want}");
        assert!(number(f16, "speed_vs_f32") > 0.0);
    } else {
        assert_eq!(f16["status"], "skipped", "{f16}");
        let reason = f16["reason"].as_str().unwrap();
        assert!(reason.contains("SHADER_F16"), "{reason}");
    }

    let adapter = &report["adapter"];
    assert_eq!(adapter["name"], gpu.facts.name.as_str());
    assert_eq!(adapter["tuning"], gpu.tuning.describe().as_str());
    assert_eq!(adapter["cpu_emulation"], gpu.facts.is_cpu_emulation());

    // Every variant the adapter supports ran every case; the table's is marked.
    let variants = report["kernels"]["variants"].as_array().unwrap();
    let supported = delg_gpu::gpu::MatmulVariant::ALL
        .iter()
        .filter(|v| v.supported(gpu.features, &gpu.facts, &gpu.limits))
        .count();
    assert_eq!(variants.len(), supported, "{variants:?}");
    let chosen: Vec<&Value> = variants.iter().filter(|v| v["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1, "{variants:?}");
    assert_eq!(chosen[0]["variant"], report["kernels"]["chosen_variant"]);
    let cases = report["kernels"]["cases"].as_array().unwrap();
    assert_eq!(cases.len() % supported, 0);
    for case in cases {
        assert!(number(case, "gflops") > 0.0, "{case}");
    }

    for path in [
        "extraction.batch_1.images_per_s",
        "extraction.batch_1.gflop_per_image",
        "extraction.best_batch.images_per_s",
        "training_step.ms_per_step",
        "training_step.gflop_per_step",
        "training_step.loss",
        "cold_start.no_cache_s",
        "cold_start.cache_first_run_s",
        "cold_start.cache_warm_s",
        "host_overhead.per_image.submissions",
        "device_memory.extraction_bytes",
        "device_memory.training_total_bytes",
    ] {
        assert!(number(&report, path) > 0.0, "{path}");
    }
    assert!(number(&report, "host_overhead.per_image.record_submit_cpu_ms") >= 0.0);
    for section in [
        "== adapter",
        "== cold start",
        "== kernels",
        "== extraction",
        "== f16 extraction",
        "== one training step",
        "== device memory",
    ] {
        assert!(
            stdout.contains(section),
            "no '{section}' in the summary:\n{stdout}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
