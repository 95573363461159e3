//! Evaluation metrics against independent references: the revisitop
//! re-statement in tools/revisitop_reference.py (committed fixture) and the
//! developer ground-truth files.

use std::path::{Path, PathBuf};

use delg_gpu::io::groundtruth::{GroundTruth, QueryKind};
use delg_gpu::retrieval::metrics::{
    evaluate_groups, evaluate_revisited, Protocol, QueryGt, RankingMetrics,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/revisitop")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-6,
        "{what}: got {got}, reference {want}"
    );
}

fn compare(protocol: &str, got: &RankingMetrics, want: &Value) {
    assert_close(
        &format!("{protocol} mAP"),
        got.map.unwrap(),
        want["map"].as_f64().unwrap(),
    );
    for (name, got, want) in [
        ("mP", &got.mean_precision, &want["mp"]),
        ("mR", &got.mean_recall, &want["mr"]),
    ] {
        let got = got.as_ref().unwrap();
        for ((g, w), k) in got.iter().zip(floats(want)).zip(&[1, 5, 10]) {
            assert_close(&format!("{protocol} {name}@{k}"), *g, w);
        }
    }
    assert_eq!(
        got.excluded,
        indices(&want["excluded"]),
        "{protocol} excluded queries"
    );
    for (q, m) in got.per_query.iter().enumerate() {
        match m {
            None => assert!(
                want["aps"][q].is_null(),
                "{protocol} query {q} has positives"
            ),
            Some(m) => {
                assert_close(
                    &format!("{protocol} AP of query {q}"),
                    m.ap,
                    want["aps"][q].as_f64().unwrap(),
                );
                for (i, (p, r)) in m.precision.iter().zip(&m.recall).enumerate() {
                    assert_close(
                        &format!("{protocol} P of query {q}"),
                        *p,
                        want["prs"][q][i].as_f64().unwrap(),
                    );
                    assert_close(
                        &format!("{protocol} R of query {q}"),
                        *r,
                        want["rcs"][q][i].as_f64().unwrap(),
                    );
                }
            }
        }
    }
}

#[test]
fn revisited_metrics_match_the_revisitop_reference() {
    let f = read_json(&fixture("fixture.json"));
    let n_db = f["n_db"].as_u64().unwrap() as usize;
    let gt: Vec<QueryGt> = f["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| QueryGt {
            easy: indices(&q["easy"]),
            hard: indices(&q["hard"]),
            junk: indices(&q["junk"]),
        })
        .collect();
    let rankings: Vec<Vec<usize>> = f["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .map(indices)
        .collect();
    let m = evaluate_revisited(&rankings, &gt, n_db).unwrap();
    for p in Protocol::ALL {
        compare(p.name(), m.get(p), &f[p.name()]);
    }
    // The fixture must exercise exclusion for Easy and Hard.
    assert!(!m.easy.excluded.is_empty() && !m.hard.excluded.is_empty());
}

/// The developer set (instance_retrieval_dev), overridable by
/// DELG_DEV_DATA; `None` with a printed note when it is absent.
fn dev_data(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("DELG_DEV_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/instance_retrieval_dev"));
    let path = root.join(sub).join("gnd.json");
    if path.is_file() {
        Some(path)
    } else {
        println!("skipped: {} is absent (set DELG_DEV_DATA)", path.display());
        None
    }
}

/// Each query's positives (easy, then hard) first, then the rest in
/// database order: every query with a positive scores AP 1 under Medium.
fn ideal_rankings(g: &GroundTruth) -> Vec<Vec<usize>> {
    g.queries
        .iter()
        .map(|q| {
            let top: Vec<usize> = q.gt.easy.iter().chain(&q.gt.hard).copied().collect();
            let rest = (0..g.db.len()).filter(|i| !top.contains(i));
            top.iter().copied().chain(rest).collect()
        })
        .collect()
}

#[test]
fn dev_oxford_ground_truth_parses_and_evaluates() {
    let Some(path) = dev_data("oxford") else {
        return;
    };
    let g = GroundTruth::load(&path).unwrap();
    assert_eq!((g.db.len(), g.queries.len()), (171, 9));
    let official: Vec<_> = g
        .queries
        .iter()
        .filter(|q| q.kind == QueryKind::Official)
        .collect();
    assert_eq!(official.len(), 1);
    let q = official[0];
    assert_eq!(q.image, "cornmarket_000131");
    assert!(q.bbox.is_some() && q.image_db_index.is_none());
    assert_eq!(
        (q.gt.easy.len(), q.gt.hard.len(), q.gt.junk.len()),
        (2, 1, 3)
    );
    assert!(g.image_path(path.parent().unwrap(), &q.image).is_file());
    let m = evaluate_revisited(&ideal_rankings(&g), &g.query_gt(), g.db.len()).unwrap();
    assert_eq!(m.medium.map, Some(1.0));
    assert!(m.medium.excluded.is_empty());
    // Reversed rankings put every positive last.
    let worst: Vec<Vec<usize>> = ideal_rankings(&g)
        .into_iter()
        .map(|mut r| {
            r.reverse();
            r
        })
        .collect();
    let m = evaluate_revisited(&worst, &g.query_gt(), g.db.len()).unwrap();
    assert!(m.medium.map.unwrap() < 0.1);
}

#[test]
fn dev_ukbench_ground_truth_parses_and_scores_groups() {
    let Some(path) = dev_data("ukbench") else {
        return;
    };
    let g = GroundTruth::load(&path).unwrap();
    assert_eq!((g.db.len(), g.queries.len()), (300, 300));
    let groups = g.groups();
    assert!(groups.iter().all(|m| m.len() == 4));
    // The query itself first, then its 3 group mates: a perfect N-S score.
    let rankings: Vec<Vec<usize>> = g
        .queries
        .iter()
        .zip(&groups)
        .map(|(q, grp)| {
            let mut r = vec![q.image_db_index.unwrap()];
            r.extend(grp.iter().filter(|&&i| Some(i) != q.image_db_index));
            r.extend((0..g.db.len()).filter(|i| !grp.contains(i)));
            r
        })
        .collect();
    let m = evaluate_groups(&rankings, &groups, g.db.len()).unwrap();
    assert_eq!((m.ns_score, m.recall_at_4), (4.0, 1.0));
    assert_eq!(m.ranking.map, Some(1.0));
    // The query kept in the ranking is junk under the revisited protocol.
    let r = evaluate_revisited(&rankings, &g.query_gt(), g.db.len()).unwrap();
    assert_eq!(r.easy.map, Some(1.0));
    assert_eq!(r.hard.excluded.len(), 300);
}

/// tools/gnd_pkl_to_json.py --self-test output from a tiny revisitop-style
/// pickle (committed beside it).
#[test]
fn converted_revisitop_pickle_parses() {
    let g = GroundTruth::load(&fixture("gnd_tiny.json")).unwrap();
    assert_eq!(g.name, "tiny");
    assert_eq!(g.db.len(), 5);
    assert_eq!(g.query_images_not_in_db.len(), 2);
    let q = &g.queries[0];
    assert_eq!(
        (q.id.as_str(), q.kind),
        ("official_all_souls_000013", QueryKind::Official)
    );
    assert_eq!(q.bbox, Some([10.5, 20.0, 300.0, 400.25]));
    assert_eq!(
        q.gt,
        QueryGt {
            easy: vec![0, 1],
            hard: vec![3],
            junk: vec![4]
        }
    );
    assert_eq!(g.queries[1].gt.hard, vec![2, 1]);
    assert_eq!(
        g.labels["oxford_000002"],
        vec!["all_souls", "radcliffe_camera"]
    );
    let rankings = vec![vec![4, 0, 1, 2, 3], vec![1, 0, 2, 3, 4]];
    let m = evaluate_revisited(&rankings, &g.query_gt(), g.db.len()).unwrap();
    assert_eq!(m.easy.excluded, vec![1]);
    // Query 0, Easy: junk 4 (and hard 3) removed → positives at ranks 0, 1.
    assert_eq!(m.easy.aps()[0], Some(1.0));
}

/// `delg-gpu score-gldv2 --json` on small challenge files; the expected
/// values are worked out by hand in the comments.
fn score_gldv2(task: &str, solution: &str, predictions: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("delg-gldv2-{task}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s, p) = (dir.join("solution.csv"), dir.join("predictions.csv"));
    std::fs::write(&s, solution).unwrap();
    std::fs::write(&p, predictions).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(["score-gldv2", "--task", task, "--json", "--solution"])
        .arg(&s)
        .arg("--predictions")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close_to(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or(f64::NAN);
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

#[test]
fn gldv2_recognition_and_retrieval_scores_from_the_command_line() {
    // Public, by score: q3 (no landmark, counted wrong), q1 right, q2 wrong:
    // GAP = (1/2) / 2 landmark queries; without q3: (1/1) / 2; top-1 1 of 2.
    // Private: q4 right. q5 is Ignored and its prediction dropped.
    let v = score_gldv2(
        "recognition",
        "id,landmarks,Usage\nq1,10,Public\nq2,20,Public\nq3,,Public\nq4,30 31,Private\nq5,40,Ignored\n",
        "id,landmarks\nq1,10 0.9\nq2,21 0.8\nq3,10 0.95\nq4,31 0.5\nq5,40 0.1\n",
    );
    let (public, private) = (&v[0], &v[1]);
    assert_eq!(public["split"], "Public");
    assert_eq!(public["predictions"], 3);
    close_to(&public["gap"], 0.25);
    close_to(&public["gap_landmark_queries_only"], 0.5);
    close_to(&public["top1_accuracy"], 0.5);
    close_to(&private["gap"], 1.0);
    close_to(&private["top1_accuracy"], 1.0);

    // r1: a and b relevant at ranks 2 and 3: (1/2 + 2/3) / 2. r2: c first.
    let v = score_gldv2(
        "retrieval",
        "id,images,Usage\nr1,a b,Public\nr2,c,Private\n",
        "id,images\nr1,x a b\nr2,c\n",
    );
    close_to(&v[0]["map_at_100"], 7.0 / 12.0);
    close_to(&v[1]["map_at_100"], 1.0);
    assert!(v[0]["gap"].is_null());
}
