//! Data-parallel training through MPI (issue 16): `mpirun -np 2 train --batch 4`
//! computes the same mathematics as one process with `--batch 4 --accumulate 2`
//! on the same data in the same order (per-micro-batch batch-norm statistics,
//! one summed update), so its losses and final trainable parameters must
//! agree within 1e-5.
//!
//! Needs Open MPI's `mpirun` and a delg-gpu built with `--features mpi`, whose
//! path DELG_MPI_BIN gives (`.ci/run` copies it to target/mpi). Skipped with
//! a printed reason otherwise, unless DELG_REQUIRE_MPI=1 (set by `.ci/run`)
//! makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use delg_gpu::io::weights::WeightFile;
use delg_gpu::jobs::demo::render_scene;

const RANKS: usize = 2;
const TOLERANCE: f32 = 1e-5;

/// Skips (prints why) or, under DELG_REQUIRE_MPI=1, fails.
fn unavailable(reason: &str) {
    if std::env::var("DELG_REQUIRE_MPI").as_deref() == Ok("1") {
        panic!("MPI training test cannot run: {reason}");
    }
    eprintln!("skipping the MPI training test: {reason}");
}

/// The mpi-enabled binary, or why there is none.
fn mpi_binary() -> Result<PathBuf, String> {
    if let Err(e) = Command::new("mpirun").arg("--version").output() {
        return Err(format!(
            "mpirun cannot run ({e}): apt-get install openmpi-bin libopenmpi-dev libclang-dev"
        ));
    }
    let bin = std::env::var_os("DELG_MPI_BIN").map(PathBuf::from).ok_or(
        "DELG_MPI_BIN is not set: build with `cargo build --release --features mpi`, copy \
         target/release/delg-gpu aside and point DELG_MPI_BIN at the copy (as .ci/run does)",
    )?;
    if !bin.is_file() {
        return Err(format!("DELG_MPI_BIN={} is not a file", bin.display()));
    }
    Ok(bin)
}

fn check(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The `loss` of every step line of a run's metrics.jsonl.
fn losses(run: &Path) -> Vec<f32> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .map(|l| l as f32)
        .collect()
}

/// The trainable tensors of a run's model: batch-norm running statistics are
/// per rank by design (averaged at checkpoints), so they are left out.
fn trainable(run: &Path) -> WeightFile {
    let mut model = WeightFile::load(&run.join("model.safetensors")).unwrap();
    model
        .tensors
        .retain(|name, _| !name.ends_with("running_mean") && !name.ends_with("running_var"));
    model
}

#[test]
fn two_ranks_train_like_one_process_accumulating_their_micro_batches() {
    let bin = match mpi_binary() {
        Ok(b) => b,
        Err(reason) => return unavailable(&reason),
    };
    let root = std::env::temp_dir().join(format!("delg-mpi-{}", std::process::id()));
    let data = root.join("data");
    for class in 0..3u64 {
        let dir = data.join(format!("class{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for view in 0..4 {
            render_scene(class, view, 64)
                .save(dir.join(format!("{view}.png")))
                .unwrap();
        }
    }
    let train = |run: &str, accumulate: usize| -> Vec<String> {
        let run = root.join(run);
        [
            "train",
            "--depth",
            "tiny",
            "--data",
            data.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--batch",
            "4",
            "--accumulate",
            &accumulate.to_string(),
            "--size",
            "48",
            "--steps",
            "10",
            "--seed",
            "5",
            "--val-fraction",
            "0",
            "--flip",
            "--check-every",
            "3",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let ranks = RANKS.to_string();
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks])
        .arg(&bin)
        .args(train("ranks", 1))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("built without MPI") {
        return unavailable(&format!(
            "{} was built without `--features mpi`",
            bin.display()
        ));
    }
    let log = check(out, "mpirun train");
    for rank in 0..RANKS {
        assert!(
            log.contains(&format!(
                "rank {rank} of {RANKS} (local rank {rank}): adapter"
            )),
            "rank {rank} does not say which adapter it took:\n{log}"
        );
    }
    assert!(
        log.contains("effective batch 8 = 4 per micro-batch × 1 micro-batches × 2 ranks"),
        "{log}"
    );
    check(
        Command::new(&bin)
            .args(train("single", RANKS))
            .output()
            .unwrap(),
        "single-process train",
    );

    let (ranked, single) = (losses(&root.join("ranks")), losses(&root.join("single")));
    assert_eq!(ranked.len(), 10, "only rank 0 writes one line per step");
    assert_eq!(single.len(), 10);
    let loss_diff = ranked
        .iter()
        .zip(&single)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (a, b) = (
        trainable(&root.join("ranks")),
        trainable(&root.join("single")),
    );
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    let mut param_diff = 0f32;
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!(t.shape, u.shape, "{name}");
        for (x, y) in t.data.iter().zip(&u.data) {
            assert!(x.is_finite() && y.is_finite(), "{name} is not finite");
            param_diff = param_diff.max((x - y).abs());
        }
    }
    eprintln!(
        "2 ranks vs accumulate 2: max loss diff {loss_diff:e}, max parameter diff {param_diff:e}"
    );
    assert!(
        loss_diff <= TOLERANCE,
        "losses differ by {loss_diff}: {ranked:?} vs {single:?}"
    );
    assert!(param_diff <= TOLERANCE, "parameters differ by {param_diff}");
    // The run must have moved: equal untrained weights would prove nothing.
    assert!(ranked[0] != ranked[9], "the loss never changed: {ranked:?}");
    std::fs::remove_dir_all(&root).ok();
}
