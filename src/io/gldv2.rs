//! Google Landmarks v2 challenge files (docs/recipe.md §7.2), read as delf's
//! `dataset_file_io.py` reads them:
//!
//! * solution CSV: `id,landmarks,Usage` (recognition: space-separated
//!   landmark ids, possibly empty for non-landmark images) or
//!   `id,images,Usage` (retrieval: space-separated index image ids), with
//!   Usage `Public`, `Private` or `Ignored`;
//! * recognition predictions: `id,landmarks` with landmarks `"<class> <score>"`
//!   (empty: no prediction);
//! * retrieval predictions: `id,images` with space-separated index image ids.
//!
//! Every file starts with a header line, which is skipped. Predictions for
//! ignored images are dropped; predictions for unknown or repeated ids are
//! errors.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::retrieval::metrics::RecognitionPrediction;

/// Ground truth split by the solution's Usage column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Solution<T> {
    pub public: HashMap<String, Vec<T>>,
    pub private: HashMap<String, Vec<T>>,
    pub ignored: HashSet<String>,
}

/// Predictions split like the solution they were read against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions<T> {
    pub public: HashMap<String, T>,
    pub private: HashMap<String, T>,
}

impl<T> Solution<T> {
    /// The Public and Private splits: name, ground truth and `predictions`.
    #[allow(clippy::type_complexity)]
    pub fn splits<'a, P>(
        &'a self,
        predictions: &'a Predictions<P>,
    ) -> [(
        &'static str,
        &'a HashMap<String, Vec<T>>,
        &'a HashMap<String, P>,
    ); 2] {
        [
            ("Public", &self.public, &predictions.public),
            ("Private", &self.private, &predictions.private),
        ]
    }
}

/// Recognition solution: landmark ids per query.
pub fn read_recognition_solution(path: &Path) -> Result<Solution<i64>> {
    read_solution(path)
}

/// Retrieval solution: index image ids per query.
pub fn read_retrieval_solution(path: &Path) -> Result<Solution<String>> {
    read_solution(path)
}

pub fn read_recognition_predictions<T>(
    path: &Path,
    solution: &Solution<T>,
) -> Result<Predictions<RecognitionPrediction>> {
    read_predictions(path, solution, |id, field| {
        let parts: Vec<&str> = field.split_whitespace().collect();
        let [class, score] = parts[..] else {
            return Err(format!(
                "prediction for '{id}' must be \"<class> <score>\", found {} items",
                parts.len()
            ));
        };
        Ok(RecognitionPrediction {
            id: id.to_string(),
            class: parse(class, "landmark id")?,
            score: parse(score, "score")?,
        })
    })
}

pub fn read_retrieval_predictions<T>(
    path: &Path,
    solution: &Solution<T>,
) -> Result<Predictions<Vec<String>>> {
    read_predictions(path, solution, |_, field| {
        Ok(field.split_whitespace().map(String::from).collect())
    })
}

fn parse<T: FromStr>(s: &str, what: &str) -> std::result::Result<T, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not a valid {what}"))
}

fn file_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A CSV record and the 1-based line it starts on.
type CsvRow = (usize, Vec<String>);

/// Data rows, header skipped.
fn read_rows(path: &Path) -> Result<Vec<CsvRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    let rows = parse_csv(&text)
        .map_err(|(line, reason)| file_err(path, format!("line {line}: {reason}")))?;
    Ok(rows.into_iter().skip(1).collect())
}

fn read_solution<T: FromStr>(path: &Path) -> Result<Solution<T>> {
    let mut solution = Solution {
        public: HashMap::new(),
        private: HashMap::new(),
        ignored: HashSet::new(),
    };
    for (line, row) in read_rows(path)? {
        let err = |reason: String| file_err(path, format!("line {line}: {reason}"));
        let [id, truth, usage] = &row[..] else {
            return Err(err(format!(
                "expected 3 columns (id, ground truth, Usage), found {}",
                row.len()
            )));
        };
        let split = match usage.as_str() {
            "Ignored" => {
                solution.ignored.insert(id.clone());
                continue;
            }
            "Public" => &mut solution.public,
            "Private" => &mut solution.private,
            other => {
                return Err(err(format!(
                    "Usage of '{id}' is '{other}', not Public, Private or Ignored"
                )))
            }
        };
        let truth = truth
            .split_whitespace()
            .map(|t| parse(t, "ground-truth id"))
            .collect::<std::result::Result<Vec<T>, String>>()
            .map_err(err)?;
        if split.insert(id.clone(), truth).is_some() {
            return Err(err(format!("'{id}' is listed twice")));
        }
    }
    Ok(solution)
}

fn read_predictions<S, T>(
    path: &Path,
    solution: &Solution<S>,
    parse_field: impl Fn(&str, &str) -> std::result::Result<T, String>,
) -> Result<Predictions<T>> {
    let mut out = Predictions {
        public: HashMap::new(),
        private: HashMap::new(),
    };
    let mut seen = HashSet::new();
    for (line, row) in read_rows(path)? {
        let err = |reason: String| file_err(path, format!("line {line}: {reason}"));
        let [id, field, ..] = &row[..] else {
            return Err(err(format!(
                "expected at least 2 columns (id, prediction), found {}",
                row.len()
            )));
        };
        if !seen.insert(id.clone()) {
            return Err(err(format!("'{id}' is predicted twice")));
        }
        if solution.ignored.contains(id) || field.trim().is_empty() {
            continue;
        }
        let split = if solution.public.contains_key(id) {
            &mut out.public
        } else if solution.private.contains_key(id) {
            &mut out.private
        } else {
            return Err(err(format!("'{id}' is not an image of the solution")));
        };
        split.insert(id.clone(), parse_field(id, field).map_err(err)?);
    }
    Ok(out)
}

/// RFC 4180 records: comma-separated fields, double-quoted fields may hold
/// commas, newlines and doubled quotes; blank lines are skipped. Errors
/// carry the 1-based line number.
fn parse_csv(text: &str) -> std::result::Result<Vec<CsvRow>, (usize, String)> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let (mut line, mut row_line) = (1, 1);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                line += usize::from(c == '\n');
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((row_line, std::mem::take(&mut row)));
                }
                row.clear();
                line += 1;
                row_line = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err((row_line, "unterminated quoted field".into()));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::metrics::{recognition_gap, retrieval_map_at};

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("delg-gldv2-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn csv_quotes_blank_lines_and_crlf() {
        let rows =
            parse_csv("a,b\r\n\"x,1\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",\nlast").unwrap();
        let want: Vec<CsvRow> = vec![
            (1, vec!["a".into(), "b".into()]),
            (2, vec!["x,1".into(), "say \"hi\"".into()]),
            (4, vec!["multi\nline".into(), "".into()]),
            (6, vec!["last".into()]),
        ];
        assert_eq!(rows, want);
        assert!(parse_csv("a,\"open\n").is_err());
    }

    #[test]
    fn recognition_files_end_to_end() {
        let sol = TempFile::new(
            "rec-sol.csv",
            "id,landmarks,Usage\na,1,Public\nb,2 3,Private\nc,,Public\nd,4,Public\ne,9,Ignored\n",
        );
        let pred = TempFile::new(
            "rec-pred.csv",
            "id,landmarks\na,1 0.5\nb,3 0.8\nc,7 0.9\nd,\ne,9 1.0\n",
        );
        let s = read_recognition_solution(&sol.0).unwrap();
        assert_eq!(s.public.len(), 3);
        assert_eq!(s.private["b"], vec![2, 3]);
        assert!(s.public["c"].is_empty() && s.ignored.contains("e"));
        let p = read_recognition_predictions(&pred.0, &s).unwrap();
        assert_eq!(p.public.len(), 2, "d has no prediction, e is ignored");
        // Public: c (0.9, non-landmark, wrong), a (0.5, correct); M = 2.
        let gap = recognition_gap(p.public.values(), &s.public, false).unwrap();
        assert!((gap - 0.25).abs() < 1e-12, "{gap}");
        let gap = recognition_gap(p.private.values(), &s.private, false).unwrap();
        assert!((gap - 1.0).abs() < 1e-12, "{gap}");
    }

    #[test]
    fn retrieval_files_end_to_end() {
        let sol = TempFile::new(
            "ret-sol.csv",
            "id,images,Usage\nq1,x y,Public\nq2,z,Public\nq3,w,Ignored\n",
        );
        let pred = TempFile::new("ret-pred.csv", "id,images\nq1,x x y\nq2,a z\nq3,w\n");
        let s = read_retrieval_solution(&sol.0).unwrap();
        let p = read_retrieval_predictions(&pred.0, &s).unwrap();
        let map = retrieval_map_at(&p.public, &s.public, 100).unwrap();
        let want = ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 2.0;
        assert!((map - want).abs() < 1e-12, "{map}");
    }

    #[test]
    fn malformed_files_are_file_errors() {
        let sol = TempFile::new("bad-sol.csv", "id,landmarks,Usage\na,1,Public\n");
        let s = read_recognition_solution(&sol.0).unwrap();
        let cases = [
            ("id,landmarks,Usage\na,1,Secret\n", true, "Secret"),
            (
                "id,landmarks,Usage\na,x,Public\n",
                true,
                "'x' is not a valid",
            ),
            ("id,landmarks,Usage\na,1\n", true, "3 columns"),
            (
                "id,landmarks\na,1 0.5\na,1 0.5\n",
                false,
                "line 3: 'a' is predicted twice",
            ),
            ("id,landmarks\nzz,1 0.5\n", false, "'zz' is not an image"),
            ("id,landmarks\na,1 0.5 2\n", false, "found 3 items"),
            (
                "id,landmarks\na,1 high\n",
                false,
                "'high' is not a valid score",
            ),
        ];
        for (i, (text, is_solution, want)) in cases.into_iter().enumerate() {
            let f = TempFile::new(&format!("bad-{i}.csv"), text);
            let err = if is_solution {
                read_recognition_solution(&f.0).map(|_| ()).unwrap_err()
            } else {
                read_recognition_predictions(&f.0, &s)
                    .map(|_| ())
                    .unwrap_err()
            };
            match &err {
                Error::File { path, reason } => {
                    assert_eq!(path, &f.0);
                    assert!(reason.contains(want), "{reason:?} should mention {want:?}");
                }
                other => panic!("expected a file error, got {other:?}"),
            }
        }
        assert!(read_retrieval_solution(Path::new("/nonexistent.csv")).is_err());
    }
}
