//! Evaluation metrics against independent references: the revisitop
//! re-statement in tools/revisitop_reference.py (committed fixture) and the
//! developer ground-truth files.

use std::path::{Path, PathBuf};

use delg_gpu::retrieval::metrics::{evaluate_revisited, Protocol, QueryGt, RankingMetrics};
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
