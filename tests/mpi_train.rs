//! Data-parallel training through MPI (issue 16): `mpirun -np 2 train --batch 4`
//! computes the same mathematics as one process with `--batch 4 --accumulate 2`
//! on the same data in the same order (per-micro-batch batch-norm statistics,
//! one summed update), so its losses and final trainable parameters must
//! agree within 1e-5; and summing the gradients in small buckets during the
//! backward pass must give bit-identical results to one all-reduce after it.
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

/// Three classes of four generated views each, under `root/data`.
fn training_data(root: &Path) -> PathBuf {
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
    data
}

/// `train` arguments for 10 steps of the tiny model on `data` into `run`.
fn train_args(data: &Path, run: &Path, accumulate: usize) -> Vec<String> {
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
        "--checkpoint-every",
        "2",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mpirun(bin: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &RANKS.to_string(),
    ])
    .arg(bin)
    .args(args);
    cmd
}

/// The mpi-enabled binary, or `None` when the tests cannot run (reported).
fn mpi_ready(root: &Path) -> Option<PathBuf> {
    match mpi_binary() {
        Ok(bin) => {
            std::fs::create_dir_all(root).unwrap();
            Some(bin)
        }
        Err(reason) => {
            unavailable(&reason);
            None
        }
    }
}

#[test]
fn two_ranks_train_like_one_process_accumulating_their_micro_batches() {
    let root = std::env::temp_dir().join(format!("delg-mpi-{}", std::process::id()));
    let Some(bin) = mpi_ready(&root) else { return };
    let data = training_data(&root);
    let train = |run: &str, accumulate: usize| train_args(&data, &root.join(run), accumulate);

    // Buckets of 10 KiB: the tiny model's gradients travel in many, most of
    // them reduced while its backward pass still runs.
    let mut bucketed = train("ranks", 1);
    bucketed.extend(["--allreduce-bucket-mb".into(), "0.01".into()]);
    let out = mpirun(&bin, &bucketed).output().unwrap();
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

    let mut one_shot = train("one-shot", 1);
    one_shot.extend(["--allreduce-bucket-mb".into(), "0".into()]);
    check(
        mpirun(&bin, &one_shot).output().unwrap(),
        "mpirun train with one all-reduce per step",
    );
    // Each element is summed across the same ranks whatever its bucket.
    let (buckets, whole) = (
        trainable(&root.join("ranks")),
        trainable(&root.join("one-shot")),
    );
    for (name, t) in &buckets.tensors {
        assert_eq!(
            t.data, whole.tensors[name].data,
            "{name}: buckets vs one all-reduce"
        );
    }
    assert_eq!(losses(&root.join("ranks")), losses(&root.join("one-shot")));
    let metrics = std::fs::read_to_string(root.join("ranks").join("metrics.jsonl")).unwrap();
    for field in [
        "compute_s",
        "allreduce_s",
        "allreduce_exposed_s",
        "update_s",
    ] {
        assert!(
            metrics.contains(&format!("\"{field}\"")),
            "no {field} in {metrics}"
        );
    }

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

/// The pid of the rank `rank` of the mpirun whose environment holds `marker`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let wanted = [marker.to_string(), format!("OMPI_COMM_WORLD_RANK={rank}")];
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
            wanted
                .iter()
                .all(|w| vars.contains(&w.as_bytes()))
                .then_some(pid)
        })
}

#[test]
fn a_run_killed_on_one_rank_resumes_to_the_parameters_of_an_uninterrupted_one() {
    let root = std::env::temp_dir().join(format!("delg-mpi-kill-{}", std::process::id()));
    let Some(bin) = mpi_ready(&root) else { return };
    let data = training_data(&root);
    let (whole, killed) = (root.join("whole"), root.join("killed"));
    check(
        mpirun(&bin, &train_args(&data, &whole, 1))
            .output()
            .unwrap(),
        "uninterrupted mpirun train",
    );

    // Kill rank 1 once rank 0 has written five steps (a checkpoint exists).
    let marker = format!("DELG_MPI_KILL_TEST={}", std::process::id());
    let (name, value) = marker.split_once('=').unwrap();
    let mut run = mpirun(&bin, &train_args(&data, &killed, 1))
        .env(name, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let steps = || {
        std::fs::read_to_string(killed.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while steps() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached step 5"
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = rank_pid(&marker, 1).expect("rank 1 is running");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let status = run.wait().unwrap();
    assert!(
        !status.success(),
        "mpirun succeeded although rank 1 was killed"
    );
    assert!(
        steps() < 10,
        "the run finished all steps before the kill took effect: nothing was resumed"
    );
    assert!(
        !killed.join("model.safetensors").exists(),
        "a killed run must not leave a final model"
    );

    check(
        mpirun(&bin, &train_args(&data, &killed, 1))
            .output()
            .unwrap(),
        "resumed mpirun train",
    );
    let (a, b) = (
        WeightFile::load(&whole.join("model.safetensors")).unwrap(),
        WeightFile::load(&killed.join("model.safetensors")).unwrap(),
    );
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert!(t.data.iter().all(|x| x.is_finite()), "{name} is not finite");
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            // Averaged across ranks at every checkpoint: equal up to rounding.
            let diff = t
                .data
                .iter()
                .zip(&u.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= TOLERANCE, "{name} differs by {diff}");
        } else {
            assert_eq!(t.data, u.data, "{name} differs after the resume");
        }
    }
    assert_eq!(
        losses(&whole),
        losses(&killed),
        "the resumed run's losses differ"
    );
    std::fs::remove_dir_all(&root).ok();
}
