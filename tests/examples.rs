//! The programs in examples/ run as a newcomer would run them (no
//! arguments: generated images, a tiny random model) and print what their
//! docs promise. `cargo test` builds the examples next to this test.

use std::path::PathBuf;
use std::process::Command;

use delg_gpu::testing::test_gpu;

/// target/<profile>/examples/<name>, next to this test's
/// target/<profile>/deps/examples-<hash>.
fn example_exe(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    let profile_dir = test_exe.parent().and_then(|d| d.parent()).unwrap();
    let exe = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.exists(), "{} was not built", exe.display());
    exe
}

/// Runs an example and returns its stdout.
fn run_example(name: &str, args: &[&str]) -> String {
    let exe = example_exe(name);
    let started = std::time::Instant::now();
    let out = Command::new(&exe).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
    stdout
}

#[test]
fn extract_folder_writes_a_feature_folder() {
    if test_gpu().is_none() {
        return;
    }
    let out = run_example("extract_folder", &[]);
    for scene in 0..4 {
        assert!(out.contains(&format!("scene{scene}.png: ")), "{out}");
    }
    let summary = out.lines().last().unwrap();
    assert!(summary.starts_with("wrote 4 images ("), "{out}");
    // The folder it names loads back with four rows.
    let dir = summary.rsplit(" to ").next().unwrap();
    let set = delg_gpu::FeatureSet::load(std::path::Path::new(dir)).unwrap();
    assert_eq!(
        set.ids,
        ["scene0.png", "scene1.png", "scene2.png", "scene3.png"]
    );
}

#[test]
fn near_duplicates_ranks_the_exact_copy_first() {
    if test_gpu().is_none() {
        return;
    }
    let out = run_example("near_duplicates", &[]);
    let mut rows = out
        .lines()
        .skip_while(|l| !l.starts_with("inliers"))
        .skip(1);
    let best = rows.next().expect("at least one pair");
    assert!(best.contains("scene0.png ~ scene0_copy.png"), "{out}");
    assert!(best.ends_with("duplicate"), "{out}");
    let similarity: f32 = best.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((similarity - 1.0).abs() < 1e-3, "{out}");
}

#[test]
fn match_pair_prints_inliers_and_a_transform_or_says_why_not() {
    if test_gpu().is_none() {
        return;
    }
    let out = run_example("match_pair", &[]);
    let counts = out
        .lines()
        .find(|l| l.starts_with("putative matches: "))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<usize> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let [putative, inliers] = numbers[..] else {
        panic!("{out}")
    };
    assert!(inliers <= putative, "{out}");
    assert!(
        out.contains("transform A -> B") || out.contains("no transform"),
        "{out}"
    );
}

#[test]
fn an_example_given_a_missing_folder_fails_with_one_message() {
    let out = Command::new(example_exe("near_duplicates"))
        .arg("/no/such/folder")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/no/such/folder"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
