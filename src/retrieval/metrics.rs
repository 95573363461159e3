//! Retrieval and recognition metrics (docs/recipe.md §7).
//!
//! * Revisited Oxford/Paris: exactly revisitop's `compute_map` (trapezoidal
//!   AP, junk removed by shifting ranks, mP@k with its `kq` rule) plus the
//!   delf mR@k, for the Easy/Medium/Hard protocols.
//! * UKBench: N-S score and recall@4 from groups, and group mAP.
//! * GLDv2: recognition μAP (GAP) and top-1 accuracy, retrieval mAP@100,
//!   as in delf's `google_landmarks_dataset/metrics.py`.
//!
//! Rankings are lists of database indices, best first. A ranking may be
//! truncated (e.g. a shortlist): positives it does not contain count as
//! missed. They add nothing to AP (the value is then a lower bound of the
//! full-ranking AP) and count as ranked after the end of the list for mP@k
//! and mR@k, which therefore equal the full-ranking values whenever the
//! truncated list, junk removed, is at least k long.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};

/// The ranks at which revisitop reports precision and recall.
pub const REVISITOP_KS: [usize; 3] = [1, 5, 10];

/// The ranks at which group benchmarks (UKBench) report precision and recall.
pub const GROUP_KS: [usize; 2] = [1, 4];

/// One query's ground truth as lists of database indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryGt {
    pub easy: Vec<usize>,
    pub hard: Vec<usize>,
    pub junk: Vec<usize>,
}

/// Revisited Oxford/Paris evaluation protocol (docs/recipe.md §7.1 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Easy,
    Medium,
    Hard,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Easy, Protocol::Medium, Protocol::Hard];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Easy => "easy",
            Protocol::Medium => "medium",
            Protocol::Hard => "hard",
        }
    }
}

/// Positives and ignored images of one query under one protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relevance {
    pub positives: Vec<usize>,
    pub junk: Vec<usize>,
}

impl QueryGt {
    pub fn relevance(&self, protocol: Protocol) -> Relevance {
        let cat = |a: &[usize], b: &[usize]| [a, b].concat();
        let (positives, junk) = match protocol {
            Protocol::Easy => (self.easy.clone(), cat(&self.junk, &self.hard)),
            Protocol::Medium => (cat(&self.easy, &self.hard), self.junk.clone()),
            Protocol::Hard => (self.hard.clone(), cat(&self.junk, &self.easy)),
        };
        Relevance { positives, junk }
    }
}

/// Metrics of one query that has at least one positive.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryMetrics {
    pub ap: f64,
    /// Precision at each `ks` entry, with revisitop's `kq` rule.
    pub precision: Vec<f64>,
    /// Recall at each `ks` entry: ranked positives within k / all positives.
    pub recall: Vec<f64>,
}

/// Metrics of a set of queries. Queries without positives have `None` in
/// `per_query`, are listed in `excluded` and left out of every mean (the
/// means are `None` when no query has a positive).
#[derive(Clone, Debug, PartialEq)]
pub struct RankingMetrics {
    pub ks: Vec<usize>,
    pub per_query: Vec<Option<QueryMetrics>>,
    pub excluded: Vec<usize>,
    pub map: Option<f64>,
    pub mean_precision: Option<Vec<f64>>,
    pub mean_recall: Option<Vec<f64>>,
}

impl RankingMetrics {
    pub fn n_valid(&self) -> usize {
        self.per_query.len() - self.excluded.len()
    }

    /// Per-query AP with `None` for excluded queries.
    pub fn aps(&self) -> Vec<Option<f64>> {
        self.per_query
            .iter()
            .map(|m| m.as_ref().map(|m| m.ap))
            .collect()
    }
}

/// Easy, Medium and Hard metrics of one set of rankings.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisitedMetrics {
    pub easy: RankingMetrics,
    pub medium: RankingMetrics,
    pub hard: RankingMetrics,
}

impl RevisitedMetrics {
    pub fn get(&self, protocol: Protocol) -> &RankingMetrics {
        match protocol {
            Protocol::Easy => &self.easy,
            Protocol::Medium => &self.medium,
            Protocol::Hard => &self.hard,
        }
    }
}

/// Revisited Oxford/Paris evaluation of `rankings[q]` against `gt[q]` under
/// the three protocols, at ranks [`REVISITOP_KS`].
pub fn evaluate_revisited(
    rankings: &[Vec<usize>],
    gt: &[QueryGt],
    n_db: usize,
) -> Result<RevisitedMetrics> {
    let run = |p: Protocol| {
        let rel: Vec<Relevance> = gt.iter().map(|g| g.relevance(p)).collect();
        evaluate_rankings(rankings, &rel, n_db, &REVISITOP_KS)
    };
    Ok(RevisitedMetrics {
        easy: run(Protocol::Easy)?,
        medium: run(Protocol::Medium)?,
        hard: run(Protocol::Hard)?,
    })
}

/// revisitop's `compute_map` for arbitrary positive/junk sets, with
/// precision and recall at `ks`.
pub fn evaluate_rankings(
    rankings: &[Vec<usize>],
    relevance: &[Relevance],
    n_db: usize,
    ks: &[usize],
) -> Result<RankingMetrics> {
    if rankings.len() != relevance.len() {
        return Err(Error::InvalidArgument(format!(
            "{} rankings for {} queries",
            rankings.len(),
            relevance.len()
        )));
    }
    if let Some(k) = ks.iter().find(|&&k| k == 0) {
        return Err(Error::InvalidArgument(format!(
            "precision rank k = {k}: ranks start at 1"
        )));
    }
    let mut per_query = Vec::with_capacity(rankings.len());
    let mut excluded = Vec::new();
    for (q, (ranking, rel)) in rankings.iter().zip(relevance).enumerate() {
        check_ranking(q, ranking, n_db)?;
        check_indices(q, "positive", &rel.positives, n_db)?;
        check_indices(q, "junk", &rel.junk, n_db)?;
        let positives: HashSet<usize> = rel.positives.iter().copied().collect();
        if positives.is_empty() {
            excluded.push(q);
            per_query.push(None);
            continue;
        }
        let junk: HashSet<usize> = rel.junk.iter().copied().collect();
        let ranks = adjusted_positive_ranks(ranking, &positives, &junk);
        per_query.push(Some(query_metrics(&ranks, positives.len(), ks)));
    }
    let valid: Vec<&QueryMetrics> = per_query.iter().flatten().collect();
    let mean = |f: &dyn Fn(&QueryMetrics) -> f64| -> Option<f64> {
        (!valid.is_empty()).then(|| valid.iter().map(|m| f(m)).sum::<f64>() / valid.len() as f64)
    };
    let mean_at = |f: &dyn Fn(&QueryMetrics) -> &[f64]| -> Option<Vec<f64>> {
        (0..ks.len())
            .map(|i| mean(&|m: &QueryMetrics| f(m)[i]))
            .collect()
    };
    Ok(RankingMetrics {
        ks: ks.to_vec(),
        map: mean(&|m| m.ap),
        mean_precision: mean_at(&|m| &m.precision),
        mean_recall: mean_at(&|m| &m.recall),
        per_query,
        excluded,
    })
}

fn check_ranking(q: usize, ranking: &[usize], n_db: usize) -> Result<()> {
    check_indices(q, "ranked", ranking, n_db)?;
    let mut seen = vec![false; n_db];
    for (pos, &i) in ranking.iter().enumerate() {
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::InvalidArgument(format!(
                "query {q}: database image {i} is ranked twice (again at position {pos})"
            )));
        }
    }
    Ok(())
}

fn check_indices(q: usize, what: &str, indices: &[usize], n_db: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= n_db) {
        Some(i) => Err(Error::InvalidArgument(format!(
            "query {q}: {what} image index {i} is outside the database of {n_db} images"
        ))),
        None => Ok(()),
    }
}

/// 0-based ranks of the ranked positives after removing the junk ranked
/// before each of them. An image that is both positive and junk counts as a
/// positive at its own place and as removed junk for later positives, as in
/// revisitop.
fn adjusted_positive_ranks(
    ranking: &[usize],
    positives: &HashSet<usize>,
    junk: &HashSet<usize>,
) -> Vec<usize> {
    let mut junk_before = 0;
    let mut ranks = Vec::new();
    for (pos, i) in ranking.iter().enumerate() {
        if positives.contains(i) {
            ranks.push(pos - junk_before);
        }
        if junk.contains(i) {
            junk_before += 1;
        }
    }
    ranks
}

/// Trapezoidal AP, mP@k and mR@k from sorted adjusted ranks of the ranked
/// positives (`ranks.len() <= n_pos`).
fn query_metrics(ranks: &[usize], n_pos: usize, ks: &[usize]) -> QueryMetrics {
    let ap = ranks
        .iter()
        .enumerate()
        .map(|(j, &r)| {
            let left = if r == 0 { 1.0 } else { j as f64 / r as f64 };
            let right = (j + 1) as f64 / (r + 1) as f64;
            (left + right) / 2.0
        })
        .sum::<f64>()
        / n_pos as f64;
    let within = |k: usize| ranks.iter().filter(|&&r| r < k).count();
    // revisitop measures precision at the last positive when every positive
    // lies before k; a positive missing from a truncated list lies beyond k.
    let last = match ranks.last() {
        Some(&r) if ranks.len() == n_pos => r + 1,
        _ => usize::MAX,
    };
    let precision = ks
        .iter()
        .map(|&k| {
            let kq = last.min(k);
            within(kq) as f64 / kq as f64
        })
        .collect();
    let recall = ks
        .iter()
        .map(|&k| within(k) as f64 / n_pos as f64)
        .collect();
    QueryMetrics {
        ap,
        precision,
        recall,
    }
}

/// UKBench-style metrics where every query has a group of relevant images
/// (including the query itself when it is in the database, which stays in
/// the ranking).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupMetrics {
    /// N-S score: mean number of group members in the top 4 (0 to 4 for
    /// UKBench's groups of 4).
    pub ns_score: f64,
    /// Mean of (members in the top 4) / min(group size, 4).
    pub recall_at_4: f64,
    /// AP, P@k and R@k with the whole group as positives and no junk, at
    /// ranks 1 and 4.
    pub ranking: RankingMetrics,
}

pub fn evaluate_groups(
    rankings: &[Vec<usize>],
    groups: &[Vec<usize>],
    n_db: usize,
) -> Result<GroupMetrics> {
    if let Some(q) = groups.iter().position(|g| g.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "query {q} has an empty group: every query needs at least one relevant image"
        )));
    }
    let relevance: Vec<Relevance> = groups
        .iter()
        .map(|g| Relevance {
            positives: g.clone(),
            junk: Vec::new(),
        })
        .collect();
    let ranking = evaluate_rankings(rankings, &relevance, n_db, &GROUP_KS)?;
    let nq = groups.len().max(1) as f64;
    let (mut ns, mut recall) = (0.0, 0.0);
    for (ranking, group) in rankings.iter().zip(groups) {
        let members: HashSet<usize> = group.iter().copied().collect();
        let hits = ranking
            .iter()
            .take(4)
            .filter(|i| members.contains(i))
            .count() as f64;
        ns += hits;
        recall += hits / members.len().min(4) as f64;
    }
    Ok(GroupMetrics {
        ns_score: ns / nq,
        recall_at_4: recall / nq,
        ranking,
    })
}

/// One GLDv2 recognition prediction: the query's landmark class and score.
#[derive(Clone, Debug, PartialEq)]
pub struct RecognitionPrediction {
    pub id: String,
    pub class: i64,
    pub score: f64,
}

/// Ground truth of GLDv2 recognition: landmark ids per query id; an empty
/// list marks an out-of-domain (non-landmark) query.
pub type RecognitionSolution = HashMap<String, Vec<i64>>;
/// Ground truth of GLDv2 retrieval: index image ids per query id.
pub type RetrievalSolution = HashMap<String, Vec<String>>;

/// Recognition μAP (Kaggle GAP). Predictions are sorted by score
/// descending, ties by id then class; the sum of precisions at each correct
/// prediction is divided by the number of queries with at least one
/// ground-truth landmark. Predictions for out-of-domain queries count as
/// wrong predictions unless `ignore_non_landmark_queries` drops them.
pub fn recognition_gap<'a>(
    predictions: impl IntoIterator<Item = &'a RecognitionPrediction>,
    solution: &RecognitionSolution,
    ignore_non_landmark_queries: bool,
) -> Result<f64> {
    let n_landmark_queries = solution.values().filter(|v| !v.is_empty()).count();
    if n_landmark_queries == 0 {
        return Err(Error::InvalidArgument(
            "GAP: the solution has no query with a ground-truth landmark".into(),
        ));
    }
    let mut sorted: Vec<&RecognitionPrediction> = predictions.into_iter().collect();
    if let Some(p) = sorted.iter().find(|p| p.score.is_nan()) {
        return Err(Error::InvalidArgument(format!(
            "GAP: prediction for '{}' has a NaN score",
            p.id
        )));
    }
    sorted.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.class.cmp(&b.class))
    });
    let (mut total, mut correct, mut gap) = (0usize, 0usize, 0.0);
    for p in sorted {
        let truth = solution.get(&p.id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "GAP: prediction for '{}', which is not in the solution",
                p.id
            ))
        })?;
        if ignore_non_landmark_queries && truth.is_empty() {
            continue;
        }
        total += 1;
        if truth.contains(&p.class) {
            correct += 1;
            gap += correct as f64 / total as f64;
        }
    }
    Ok(gap / n_landmark_queries as f64)
}

/// Fraction of the queries with a ground-truth landmark whose prediction is
/// correct (queries without a prediction count as wrong).
pub fn recognition_top1_accuracy(
    predictions: &HashMap<String, RecognitionPrediction>,
    solution: &RecognitionSolution,
) -> Result<f64> {
    let landmark: Vec<(&String, &Vec<i64>)> =
        solution.iter().filter(|(_, v)| !v.is_empty()).collect();
    if landmark.is_empty() {
        return Err(Error::InvalidArgument(
            "top-1 accuracy: the solution has no query with a ground-truth landmark".into(),
        ));
    }
    let correct = landmark
        .iter()
        .filter(|(id, truth)| {
            predictions
                .get(*id)
                .is_some_and(|p| truth.contains(&p.class))
        })
        .count();
    Ok(correct as f64 / landmark.len() as f64)
}

/// Retrieval mAP@`max_predictions` (GLDv2 uses 100). Within each query's
/// first `max_predictions` entries, repeated ids are skipped but still take
/// up their position; AP_q = Σ P(k)·rel(k) / min(|GT_q|, max_predictions),
/// averaged over every query of the solution (queries without predictions
/// score 0).
pub fn retrieval_map_at(
    predictions: &HashMap<String, Vec<String>>,
    solution: &RetrievalSolution,
    max_predictions: usize,
) -> Result<f64> {
    if solution.is_empty() {
        return Err(Error::InvalidArgument(
            "retrieval mAP: the solution has no query".into(),
        ));
    }
    if max_predictions == 0 {
        return Err(Error::InvalidArgument(
            "retrieval mAP: max_predictions must be at least 1".into(),
        ));
    }
    let mut total = 0.0;
    for (id, predicted) in predictions {
        let truth = solution.get(id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "retrieval mAP: prediction for '{id}', which is not in the solution"
            ))
        })?;
        if truth.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "retrieval mAP: query '{id}' has no ground-truth image"
            )));
        }
        let truth: HashSet<&str> = truth.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let (mut correct, mut ap) = (0usize, 0.0);
        for (i, image) in predicted.iter().take(max_predictions).enumerate() {
            if seen.insert(image.as_str()) && truth.contains(image.as_str()) {
                correct += 1;
                ap += correct as f64 / (i + 1) as f64;
            }
        }
        total += ap / truth.len().min(max_predictions) as f64;
    }
    Ok(total / solution.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn rel(positives: &[usize], junk: &[usize]) -> Relevance {
        Relevance {
            positives: positives.to_vec(),
            junk: junk.to_vec(),
        }
    }

    #[test]
    fn ap_by_hand_with_junk() {
        // Ranking 5 3 9 1 0 7: positives {3, 0}, junk {9}. Positions 1 and
        // 4, junk at 2 → adjusted ranks 1 and 3.
        // AP = ((0/1 + 1/2)/2 + (1/3 + 2/4)/2) / 2.
        let m = evaluate_rankings(
            &[vec![5, 3, 9, 1, 0, 7]],
            &[rel(&[3, 0], &[9])],
            10,
            &[1, 2, 5],
        )
        .unwrap();
        let q = m.per_query[0].as_ref().unwrap();
        close(q.ap, ((0.0 + 0.5) / 2.0 + (1.0 / 3.0 + 0.5) / 2.0) / 2.0);
        // kq = min(4, k): P@1 = 0/1, P@2 = 1/2, P@5 → kq = 4: 2/4.
        assert_eq!(q.precision, vec![0.0, 0.5, 0.5]);
        assert_eq!(q.recall, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn truncated_ranking_counts_missing_positives_as_missed() {
        // Positive 4 is not in the shortlist: it adds nothing to AP and P@5
        // is taken at k = 5, not at the last ranked positive.
        let m = evaluate_rankings(&[vec![1, 2, 3]], &[rel(&[1, 4], &[])], 6, &[1, 5]).unwrap();
        let q = m.per_query[0].as_ref().unwrap();
        close(q.ap, 0.5);
        assert_eq!(q.precision, vec![1.0, 0.2]);
        assert_eq!(q.recall, vec![0.5, 0.5]);
        // No positive ranked at all.
        let m = evaluate_rankings(&[vec![1, 2]], &[rel(&[4], &[])], 6, &[1]).unwrap();
        assert_eq!(m.map, Some(0.0));
        assert_eq!(m.mean_precision, Some(vec![0.0]));
    }

    #[test]
    fn queries_without_positives_are_excluded() {
        let m = evaluate_rankings(
            &[vec![0, 1], vec![1, 0]],
            &[rel(&[], &[1]), rel(&[0], &[])],
            2,
            &[1],
        )
        .unwrap();
        assert_eq!(m.excluded, vec![0]);
        assert_eq!(m.n_valid(), 1);
        assert_eq!(m.aps(), vec![None, Some(0.25)]);
        close(m.map.unwrap(), 0.25);
        let none = evaluate_rankings(&[vec![0]], &[rel(&[], &[])], 1, &[1]).unwrap();
        assert_eq!(none.map, None);
        assert_eq!(none.mean_precision, None);
    }

    #[test]
    fn bad_rankings_are_typed_errors() {
        let r = [rel(&[0], &[])];
        for ranking in [vec![0, 7], vec![1, 1]] {
            assert!(matches!(
                evaluate_rankings(&[ranking], &r, 3, &[1]),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(evaluate_rankings(&[vec![0]], &r, 3, &[0]).is_err());
        assert!(evaluate_rankings(&[], &r, 3, &[1]).is_err());
        assert!(evaluate_rankings(&[vec![0]], &[rel(&[5], &[])], 3, &[1]).is_err());
    }

    #[test]
    fn protocols_split_easy_hard_junk() {
        let g = QueryGt {
            easy: vec![1],
            hard: vec![2],
            junk: vec![3],
        };
        assert_eq!(g.relevance(Protocol::Easy), rel(&[1], &[3, 2]));
        assert_eq!(g.relevance(Protocol::Medium), rel(&[1, 2], &[3]));
        assert_eq!(g.relevance(Protocol::Hard), rel(&[2], &[3, 1]));
    }

    #[test]
    fn ukbench_group_scores() {
        // Group {0, 1, 2, 3}; query 0 finds 3 members in its top 4, query 1
        // finds all 4.
        let groups = vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3]];
        let rankings = vec![vec![0, 1, 5, 2, 3, 4], vec![1, 3, 0, 2, 4, 5]];
        let m = evaluate_groups(&rankings, &groups, 6).unwrap();
        close(m.ns_score, 3.5);
        close(m.recall_at_4, 3.5 / 4.0);
        close(m.ranking.aps()[1].unwrap(), 1.0);
        assert_eq!(m.ranking.mean_recall, Some(vec![0.25, 3.5 / 4.0]));
        assert!(evaluate_groups(&rankings, &[vec![], vec![0]], 6).is_err());
    }

    fn pred(id: &str, class: i64, score: f64) -> RecognitionPrediction {
        RecognitionPrediction {
            id: id.into(),
            class,
            score,
        }
    }

    fn recognition_solution() -> RecognitionSolution {
        [
            ("a", vec![1]),
            ("b", vec![2, 3]),
            ("c", vec![]),
            ("d", vec![4]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn gap_by_hand() {
        let s = recognition_solution();
        // Sorted: c (0.9, out of domain, wrong), b (0.8, correct),
        // a (0.5, correct), d (0.1, wrong). M = 3 landmark queries.
        // GAP = (1/2 + 2/3) / 3.
        let p = vec![
            pred("a", 1, 0.5),
            pred("b", 3, 0.8),
            pred("c", 7, 0.9),
            pred("d", 5, 0.1),
        ];
        close(
            recognition_gap(&p, &s, false).unwrap(),
            (0.5 + 2.0 / 3.0) / 3.0,
        );
        // Without the out-of-domain prediction: (1/1 + 2/2) / 3.
        close(recognition_gap(&p, &s, true).unwrap(), 2.0 / 3.0);
        let by_id: HashMap<String, RecognitionPrediction> =
            p.iter().map(|p| (p.id.clone(), p.clone())).collect();
        close(recognition_top1_accuracy(&by_id, &s).unwrap(), 2.0 / 3.0);
    }

    #[test]
    fn gap_ties_break_by_id_then_class() {
        let s = recognition_solution();
        // Equal scores: order a (wrong), b (correct) → 1/2 / 3; if b came
        // first it would be 1/1 / 3.
        let p = vec![pred("b", 2, 0.5), pred("a", 9, 0.5)];
        close(recognition_gap(&p, &s, false).unwrap(), 0.5 / 3.0);
        // Same id and score: class 2 (correct) before class 5.
        let p = vec![pred("b", 5, 0.5), pred("b", 2, 0.5)];
        close(recognition_gap(&p, &s, false).unwrap(), 1.0 / 3.0);
        assert!(recognition_gap(&[pred("zz", 1, 1.0)], &s, false).is_err());
        assert!(recognition_gap(&[pred("a", 1, f64::NAN)], &s, false).is_err());
    }

    #[test]
    fn retrieval_map_by_hand() {
        let s: RetrievalSolution = [("q1", vec!["x", "y"]), ("q2", vec!["z"]), ("q3", vec!["w"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // q1: x at 1, duplicate x at 2 skipped, y at 3 → (1/1 + 2/3) / 2.
        // q2: z at 2 → (1/2) / 1. q3: no prediction → 0. Mean over 3.
        let p: HashMap<String, Vec<String>> = [
            ("q1".to_string(), owned(&["x", "x", "y"])),
            ("q2".to_string(), owned(&["a", "z"])),
        ]
        .into_iter()
        .collect();
        let want = ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 3.0;
        close(retrieval_map_at(&p, &s, 100).unwrap(), want);
        // Cut at 1 prediction: q1 → 1 / min(2, 1); q2 → 0.
        close(retrieval_map_at(&p, &s, 1).unwrap(), 1.0 / 3.0);
        let bad: HashMap<String, Vec<String>> = [("nope".to_string(), vec![])].into();
        assert!(retrieval_map_at(&bad, &s, 100).is_err());
    }
}
