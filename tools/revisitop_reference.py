#!/usr/bin/env python3
"""Regenerates tests/fixtures/revisitop/fixture.json: random rankings and
easy/hard/junk ground truth with the Revisited Oxford/Paris metrics computed
by an independent numpy re-statement of revisitop's compute_ap/compute_map
(docs/recipe.md §7.1). The Rust test tests/metrics.rs compares
retrieval::metrics against it to 1e-6. Needs numpy only.

Rankings are full permutations of the database, as revisitop expects
(`ranks` is a db x queries matrix there); metrics that do not exist for a
query (no positives under a protocol) are written as null.
"""
import json
import pathlib

import numpy as np

KAPPAS = [1, 5, 10]


def compute_ap(pos, n_pos):
    """Trapezoidal AP from the 0-based, junk-adjusted ranks of the ranked
    positives, with recall steps of 1/n_pos."""
    ap = 0.0
    for j, r in enumerate(pos):
        left = 1.0 if r == 0 else j / r
        right = (j + 1) / (r + 1)
        ap += (left + right) / 2.0 / n_pos
    return ap


def adjusted_positive_ranks(ranking, ok, junk):
    """0-based ranks of the positives once every junk image ranked before a
    positive has been removed from the list."""
    in_ok = np.isin(ranking, ok)
    in_junk = np.isin(ranking, junk)
    pos = np.flatnonzero(in_ok)
    junk_pos = np.flatnonzero(in_junk)
    # Number of junk entries strictly before each positive.
    shift = np.searchsorted(junk_pos, pos, side="left")
    return pos - shift


def compute_map(rankings, sets):
    """rankings: list of 1-D arrays; sets: list of (ok, junk) per query.
    Returns mAP, per-query AP, mean P@k, per-query P@k and R@k."""
    nq = len(rankings)
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(KAPPAS)), np.nan)
    rcs = np.full((nq, len(KAPPAS)), np.nan)
    for i, (ranking, (ok, junk)) in enumerate(zip(rankings, sets)):
        if len(ok) == 0:
            continue
        pos = adjusted_positive_ranks(ranking, ok, junk)
        aps[i] = compute_ap(pos, len(ok))
        pos1 = pos + 1
        for j, k in enumerate(KAPPAS):
            kq = min(pos1.max(), k)
            prs[i, j] = (pos1 <= kq).sum() / kq
            rcs[i, j] = (pos1 <= k).sum() / len(ok)
    valid = ~np.isnan(aps)
    return {
        "map": float(aps[valid].mean()),
        "mp": prs[valid].mean(axis=0).tolist(),
        "mr": rcs[valid].mean(axis=0).tolist(),
        "aps": [None if np.isnan(a) else float(a) for a in aps],
        "prs": [None if np.isnan(p[0]) else p.tolist() for p in prs],
        "rcs": [None if np.isnan(r[0]) else r.tolist() for r in rcs],
        "excluded": np.flatnonzero(~valid).tolist(),
    }


def protocol_sets(q, protocol):
    easy, hard, junk = q["easy"], q["hard"], q["junk"]
    if protocol == "easy":
        return easy, junk + hard
    if protocol == "medium":
        return easy + hard, junk
    return hard, junk + easy


def main():
    rng = np.random.default_rng(7)
    n_db, n_q = 60, 10
    queries = []
    for i in range(n_q):
        labelled = rng.permutation(n_db)
        n_easy, n_hard, n_junk = rng.integers(1, 7), rng.integers(1, 5), rng.integers(0, 6)
        if i == 3:
            n_easy = 0  # no positives under Easy
        if i == 6:
            n_hard = 0  # no positives under Hard
        if i == 8:
            n_junk = 0
        easy = labelled[:n_easy]
        hard = labelled[n_easy : n_easy + n_hard]
        junk = labelled[n_easy + n_hard : n_easy + n_hard + n_junk]
        queries.append({"easy": easy.tolist(), "hard": hard.tolist(), "junk": junk.tolist()})
    rankings = []
    for i, q in enumerate(queries):
        r = rng.permutation(n_db)
        if i == 0:
            # Positives first: the precision_left = 1 branch at rank 0, and
            # kq = max positive rank < k for P@5/P@10.
            top = q["easy"] + q["hard"]
            r = np.array(top + [x for x in r.tolist() if x not in top])
        if i == 1:
            # Junk before every positive: every rank is shifted.
            top = q["junk"] + q["easy"] + q["hard"]
            r = np.array(top + [x for x in r.tolist() if x not in top])
        rankings.append(r)
    out = {
        "n_db": n_db,
        "kappas": KAPPAS,
        "queries": queries,
        "rankings": [r.tolist() for r in rankings],
    }
    for protocol in ["easy", "medium", "hard"]:
        sets = [protocol_sets(q, protocol) for q in queries]
        out[protocol] = compute_map(rankings, sets)
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "revisitop"
    path.mkdir(parents=True, exist_ok=True)
    (path / "fixture.json").write_text(json.dumps(out, indent=1) + "\n")
    for protocol in ["easy", "medium", "hard"]:
        r = out[protocol]
        print(protocol, "mAP", r["map"], "mP", r["mp"], "excluded", r["excluded"])


if __name__ == "__main__":
    main()
