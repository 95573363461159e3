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
