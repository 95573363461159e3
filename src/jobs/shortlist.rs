//! Shortlists that came from anywhere (issue 15 item 4): the ranking.csv that
//! `search` writes, read back for `search --rerank --shortlist-file`, whether
//! `search` itself or another engine (tools/faiss_search.py) wrote it.
//!
//! Format: a header line `query,db,rank,global_score,inliers`, then one row
//! per (query, database image): ids as in the feature folders' ids.txt,
//! ranks 1, 2, 3, ... in order within each query, a finite global score and
//! a whole number of inliers (re-computed by re-ranking). Every query of
//! `--queries` has the same number of rows.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};
use crate::jobs::search::Hit;

pub const HEADER: &str = "query,db,rank,global_score,inliers";

/// Longest row accepted: far above two ids and three numbers, low enough that
/// a file without line breaks cannot exhaust memory.
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// Most rows per query, the bound `search --k` has.
const MAX_ROWS_PER_QUERY: usize = 100_000;

/// Reads the shortlist at `path` into each query's hits, best first, in the
/// order of `query_ids`; `db_ids` numbers the database images.
pub fn read_shortlist(
    path: &Path,
    query_ids: &[String],
    db_ids: &[String],
) -> Result<Vec<Vec<Hit>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let index = |ids: &[String]| -> HashMap<String, usize> {
        ids.iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect()
    };
    let (queries, db) = (index(query_ids), index(db_ids));
    let mut hits: Vec<Vec<Hit>> = vec![Vec::new(); query_ids.len()];
    let mut listed: Vec<HashSet<usize>> = vec![HashSet::new(); query_ids.len()];
    let mut buf = Vec::new();
    let mut number = 0usize;
    loop {
        buf.clear();
        let read = reader
            .by_ref()
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        number += 1;
        let bad = |reason: String| Error::file(path, format!("line {number}: {reason}"));
        if buf.len() as u64 > MAX_LINE_BYTES {
            return Err(bad(format!(
                "longer than {MAX_LINE_BYTES} bytes: not a shortlist row ({HEADER})"
            )));
        }
        let line = std::str::from_utf8(&buf)
            .map_err(|_| bad("is not UTF-8 text".into()))?
            .trim_end_matches(['\n', '\r']);
        if number == 1 {
            if line != HEADER {
                return Err(bad(format!(
                    "the header is '{line}', a shortlist starts with '{HEADER}' (the ranking.csv `delg-gpu search` writes)"
                )));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let [query, image, rank, score, inliers] = fields[..] else {
            return Err(bad(format!(
                "{} columns, a shortlist row has 5: {HEADER}",
                fields.len()
            )));
        };
        let qi = *queries.get(query).ok_or_else(|| {
            bad(format!(
                "query '{query}' is not one of the --queries images"
            ))
        })?;
        let di = *db.get(image).ok_or_else(|| {
            bad(format!(
                "database image '{image}' is not in the --db feature set"
            ))
        })?;
        let rank: usize = rank
            .parse()
            .map_err(|_| bad(format!("rank '{rank}' is not a whole number")))?;
        let expected = hits[qi].len() + 1;
        if rank != expected {
            return Err(bad(format!(
                "rank {rank} for query '{query}' where rank {expected} comes next: a query's rows are ranks 1, 2, 3, ... in order"
            )));
        }
        if rank > MAX_ROWS_PER_QUERY {
            return Err(bad(format!(
                "query '{query}' has more than {MAX_ROWS_PER_QUERY} rows, the most a search keeps"
            )));
        }
        let score: f32 = score
            .parse()
            .ok()
            .filter(|s: &f32| s.is_finite())
            .ok_or_else(|| bad(format!("global_score '{score}' is not a finite number")))?;
        inliers
            .parse::<usize>()
            .map_err(|_| bad(format!("inliers '{inliers}' is not a whole number")))?;
        if !listed[qi].insert(di) {
            return Err(bad(format!(
                "database image '{image}' is listed twice for query '{query}'"
            )));
        }
        hits[qi].push(Hit {
            db: di,
            score,
            inliers: 0,
        });
    }
    if number == 0 {
        return Err(Error::file(
            path,
            format!("is empty: a shortlist starts with the header '{HEADER}'"),
        ));
    }
    let first = hits.first().map_or(0, Vec::len);
    for (id, h) in query_ids.iter().zip(&hits) {
        if h.is_empty() {
            return Err(Error::file(
                path,
                format!("query '{id}' has no rows: a shortlist ranks every --queries image"),
            ));
        }
        if h.len() != first {
            return Err(Error::file(
                path,
                format!(
                    "query '{id}' has {} rows but query '{}' has {first}: every query needs the same number",
                    h.len(),
                    query_ids[0]
                ),
            ));
        }
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn read(text: &[u8]) -> Result<Vec<Vec<Hit>>> {
        let path = std::env::temp_dir().join(format!(
            "delg-shortlist-{}-{:x}.csv",
            std::process::id(),
            text.iter()
                .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64))
        ));
        std::fs::write(&path, text).unwrap();
        let r = read_shortlist(&path, &ids(&["q0", "q1"]), &ids(&["a", "b", "c"]));
        std::fs::remove_file(&path).unwrap();
        r
    }

    fn error(text: &str) -> String {
        match read(text.as_bytes()) {
            Ok(h) => panic!("accepted {text:?} as {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = "query,db,rank,global_score,inliers\n\
        q1,c,1,0.5,0\nq0,b,1,0.75,3\nq1,a,2,-0.25,0\r\nq0,a,2,0.125,0\n";

    #[test]
    fn reads_each_querys_rows_in_rank_order() {
        let h = read(GOOD.as_bytes()).unwrap();
        let got: Vec<Vec<(usize, f32, usize)>> = h
            .iter()
            .map(|q| q.iter().map(|x| (x.db, x.score, x.inliers)).collect())
            .collect();
        assert_eq!(
            got,
            vec![
                vec![(1, 0.75, 0), (0, 0.125, 0)],
                vec![(2, 0.5, 0), (0, -0.25, 0)]
            ]
        );
    }

    #[test]
    fn malformed_shortlists_name_the_line_and_the_fault() {
        let h = "query,db,rank,global_score,inliers\n";
        for (text, want) in [
            (String::new(), "is empty".to_string()),
            (
                "query,db,rank\nq0,a,1\n".into(),
                "line 1: the header is".into(),
            ),
            (format!("{h}q0,a,1,0.5\n"), "line 2: 4 columns".into()),
            (format!("{h}q0,a,1,0.5,0,9\n"), "line 2: 6 columns".into()),
            (format!("{h}qx,a,1,0.5,0\n"), "line 2: query 'qx'".into()),
            (
                format!("{h}q0,zz,1,0.5,0\n"),
                "line 2: database image 'zz'".into(),
            ),
            (format!("{h}q0,a,one,0.5,0\n"), "line 2: rank 'one'".into()),
            (
                format!("{h}q0,a,2,0.5,0\n"),
                "line 2: rank 2 for query 'q0' where rank 1".into(),
            ),
            (
                format!("{h}q0,a,1,0.5,0\nq0,b,3,0.5,0\n"),
                "line 3: rank 3".into(),
            ),
            (
                format!("{h}q0,a,1,NaN,0\n"),
                "line 2: global_score 'NaN'".into(),
            ),
            (
                format!("{h}q0,a,1,inf,0\n"),
                "line 2: global_score 'inf'".into(),
            ),
            (format!("{h}q0,a,1,0.5,-1\n"), "line 2: inliers '-1'".into()),
            (
                format!("{h}q0,a,1,0.5,0\nq0,a,2,0.4,0\n"),
                "line 3: database image 'a' is listed twice".into(),
            ),
            (
                format!("{h}q0,a,1,0.5,0\n"),
                "query 'q1' has no rows".into(),
            ),
            (
                format!("{h}q0,a,1,0.5,0\nq0,b,2,0.4,0\nq1,a,1,0.5,0\n"),
                "query 'q1' has 1 rows but query 'q0' has 2".into(),
            ),
            (
                format!("{h}{}\n", "x".repeat(70_000)),
                "line 2: longer than".into(),
            ),
        ] {
            let e = error(&text);
            assert!(
                e.contains(&want) && e.contains("delg-shortlist-"),
                "{want:?} not in {e}"
            );
        }
        let e = read(b"query,db,rank,global_score,inliers\nq0,\xff,1,0.5,0\n").unwrap_err();
        assert!(e.to_string().contains("line 2: is not UTF-8"), "{e}");
    }
}
