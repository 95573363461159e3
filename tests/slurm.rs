//! Extraction as a real Slurm job array (issue 15): a 4-task array with
//! `--shard auto --requeue` over generated images, one task killed with
//! SIGKILL in the middle of its work and requeued, must give, once merged,
//! the same features as one process over the whole folder, and `search`
//! (with and without `--rerank`) over the shard folders must rank like
//! `search` over the merged folder.
//!
//! Needs a running cluster (`.ci/run` starts one with
//! `.ci/slurm-cluster.sh`). Skipped with a printed reason where Slurm is
//! absent, unless DELG_REQUIRE_SLURM=1 (set by `.ci/run`) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use delg_gpu::jobs::collection::Shard;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::jobs::extract::ExtractConfig;

const TASKS: usize = 4;
const IMAGES: u64 = 24;
/// Every wait of the test (the whole run takes well under a minute here).
const TIME_LIMIT: Duration = Duration::from_secs(150);

/// The reason Slurm cannot be used here, if any.
fn slurm_missing() -> Option<String> {
    let sinfo = match Command::new("sinfo").args(["-h", "-o", "%T"]).output() {
        Err(e) => return Some(format!("sinfo cannot run ({e}): Slurm is not installed")),
        Ok(o) => o,
    };
    let states = String::from_utf8_lossy(&sinfo.stdout).to_string();
    if !sinfo.status.success() || !states.lines().any(|s| s == "idle" || s == "mixed") {
        return Some(format!(
            "no Slurm node is up (sinfo: {} {}); start one with `source .ci/slurm-cluster.sh && start_slurm_cluster`",
            states.trim(),
            String::from_utf8_lossy(&sinfo.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    Command::new("sbatch")
        .arg("--version")
        .output()
        .err()
        .map(|e| format!("sbatch cannot run ({e})"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `done` every 20 ms until it holds, failing after TIME_LIMIT.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < TIME_LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state of one array task (RUNNING, PENDING, FAILED, ...), finished ones included.
fn task_state(task: &str) -> String {
    run(Command::new("squeue").args(["-h", "-t", "all", "-j", task, "-o", "%T"]))
        .trim()
        .to_string()
}

/// Whether a task state is final (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...).
fn ended(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "PREEMPTED"
    )
}

/// Cancels the array when the test ends, passed or not.
struct CancelOnDrop(String);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.0).output();
    }
}

fn feature_files() -> [&'static str; 7] {
    [
        "ids.txt",
        "global.npy",
        "local_offsets.npy",
        "local_descriptors.npy",
        "local_locations.npy",
        "local_scales.npy",
        "local_attention.npy",
    ]
}

#[test]
fn a_slurm_array_with_a_killed_and_requeued_task_extracts_like_one_process() {
    if let Some(reason) = slurm_missing() {
        assert!(
            std::env::var("DELG_REQUIRE_SLURM").as_deref() != Ok("1"),
            "DELG_REQUIRE_SLURM=1 but {reason}"
        );
        eprintln!("skipped: {reason}");
        return;
    }
    if delg_gpu::testing::test_gpu().is_none() {
        return;
    }
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("delg-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let names: Vec<String> = (0..IMAGES).map(|i| format!("scene{i:02}.png")).collect();
    for (i, name) in names.iter().enumerate() {
        render_scene(i as u64 / 2, i as u32 % 2, 96)
            .save(images.join(name))
            .unwrap();
    }
    let weights = root.join("tiny.safetensors");
    common::tiny_weights_seeded(&weights, 5);
    let settings = root.join("settings.json");
    let config = ExtractConfig {
        max_image_size: Some(96),
        scales: vec![0.5, 1.0, 1.5],
        global_scales: vec![1],
        max_features: 50,
        ..Default::default()
    };
    std::fs::write(&settings, serde_json::to_string(&config).unwrap()).unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_delg-gpu"));
    // Everything but --out.
    let extract_args = || -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        [
            "extract".into(),
            path(&images),
            "--weights".into(),
            path(&weights),
            "--config".into(),
            path(&settings),
            "--quiet".into(),
        ]
        .into()
    };
    let single = root.join("single");
    run(Command::new(&exe)
        .args(extract_args())
        .arg("--out")
        .arg(&single));

    // An array from 1 (not 0): tasks 1..=4 are shards 0..3. The largest
    // shard's task is killed, so it is still at work when the kill comes.
    let shard_size = |index| {
        let shard = Shard {
            index,
            count: TASKS,
        };
        names.iter().filter(|n| shard.contains(n)).count()
    };
    let victim_shard = (0..TASKS).max_by_key(|&i| shard_size(i)).unwrap();
    let victim_task = victim_shard + 1;
    let script = root.join("extract.sh");
    let shards = root.join("shards");
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let mut line = vec![quote(&exe.display().to_string())];
    // The shell expands the task id in the output folder.
    let out = format!("{}/task-", shards.display());
    line.extend(extract_args().iter().map(|a| quote(a)));
    line.push(format!("--out {}\"$SLURM_ARRAY_TASK_ID\"", quote(&out)));
    line.push("--shard auto".into());
    std::fs::write(&script, format!("#!/bin/sh\nexec {}\n", line.join(" "))).unwrap();
    let submitted = run(Command::new("sbatch")
        .args([
            "--parsable",
            "--array=1-4",
            "--requeue",
            "--open-mode=append",
        ])
        .arg("--cpus-per-task=1")
        .arg(format!("--output={}/log-%a.txt", root.display()))
        .arg(&script));
    let job = submitted.trim().split(';').next().unwrap().to_string();
    let _cancel = CancelOnDrop(job.clone());
    let victim = format!("{job}_{victim_task}");
    let victim_dir = shards.join(format!("task-{victim_task}"));

    // Killed once it has journaled an image, before it writes the feature set.
    wait_for("the victim task to journal its first image", || {
        std::fs::metadata(victim_dir.join("journal.bin")).is_ok_and(|m| m.len() > 0)
    });
    run(Command::new("scancel").args(["--signal=KILL", &victim]));
    wait_for("the killed task to end", || ended(&task_state(&victim)));
    assert!(
        !victim_dir.join("global.npy").exists(),
        "task {victim_task} finished its {} images before the kill: the test did not interrupt it",
        shard_size(victim_shard)
    );
    // slurmd refuses a launch whose credential is from the same second as
    // the kill's revocation ("Job credential revoked"): let a second pass.
    std::thread::sleep(Duration::from_millis(1500));
    let killed_state = task_state(&victim);
    run(Command::new("scontrol").args(["requeue", &victim]));
    // A requeued job waits about two minutes (BeginTime) unless told otherwise.
    run(Command::new("scontrol").args(["update", &format!("jobid={victim}"), "StartTime=now"]));
    // squeue may show the killed state for a moment after the requeue.
    wait_for("the requeued task to leave its killed state", || {
        task_state(&victim) != killed_state
    });
    let tasks: Vec<String> = (1..=TASKS).map(|t| format!("{job}_{t}")).collect();
    wait_for("every task of the array to end", || {
        tasks.iter().all(|t| ended(&task_state(t)))
    });

    for task in 1..=TASKS {
        let log = std::fs::read_to_string(root.join(format!("log-{task}.txt"))).unwrap();
        let state = task_state(&tasks[task - 1]);
        assert_eq!(state, "COMPLETED", "task {task}:\n{log}");
        assert!(
            log.contains(&format!(
                "shard {}/{TASKS} (Slurm array task {task} of 1-4:1)",
                task - 1
            )),
            "task {task}:\n{log}"
        );
        let summary = log
            .lines()
            .filter(|l| l.contains(" images: "))
            .collect::<Vec<_>>();
        assert_eq!(summary.len(), 1, "one finished run per task:\n{log}");
        assert!(
            summary[0].contains(" 0 failed"),
            "task {task}: {}",
            summary[0]
        );
        if task == victim_task {
            // The rerun kept what the killed run had journaled.
            assert!(
                !summary[0].contains(" 0 resumed"),
                "the requeued task resumed nothing: {}",
                summary[0]
            );
        }
    }

    let merged = root.join("merged");
    let mut merge = Command::new(&exe);
    merge.arg("merge");
    for task in 1..=TASKS {
        merge.arg(shards.join(format!("task-{task}")));
    }
    run(merge.arg("--out").arg(&merged));
    for f in feature_files() {
        assert!(
            std::fs::read(single.join(f)).unwrap() == std::fs::read(merged.join(f)).unwrap(),
            "{f} of the merged shards differs from one process's"
        );
    }
    // The shards searched in place rank like the merged folder, re-ranked or not.
    for rerank in [false, true] {
        let search = |db: &Path, name: &str| {
            let out = root.join(format!("search-{name}-{rerank}"));
            let mut c = Command::new(&exe);
            c.arg("search")
                .arg("--queries")
                .arg(&single)
                .arg("--db")
                .arg(db);
            c.args(["--k", "10"]).arg("--out").arg(&out);
            if rerank {
                c.args(["--rerank", "--shortlist", "8"]);
            }
            run(&mut c);
            out
        };
        let (sharded, whole) = (search(&shards, "shards"), search(&merged, "merged"));
        for f in ["ranking.csv", "ranks.npy", "scores.npy", "inliers.npy"] {
            assert!(
                std::fs::read(sharded.join(f)).unwrap() == std::fs::read(whole.join(f)).unwrap(),
                "search (rerank: {rerank}): {f} over the shards differs from over the merged folder"
            );
        }
    }
    eprintln!("slurm array test: {:.1} s", started.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&root).unwrap();
}
