//! `extract --shard auto`: the shard a batch scheduler gave this process.
//!
//! - Slurm job array: the tasks of `--array=MIN-MAX[:STEP]` are numbered in
//!   order, shard `(SLURM_ARRAY_TASK_ID - MIN) / STEP` of
//!   `SLURM_ARRAY_TASK_COUNT`, so `--array=1-4` works like `--array=0-3`. An
//!   array with irregular gaps (`--array=1,2,7`) has no such numbering and is
//!   refused, unless `--shards N` is given: then the task ids are the shard
//!   indices themselves (0..N-1), which also reruns a subset of the shards
//!   (`--array=2,5 --shards 8`).
//! - Kubernetes Indexed Job: shard `JOB_COMPLETION_INDEX` of `--shards N`
//!   (the Job's `completions`, which the pod's environment does not carry).
//!
//! Which images a shard holds is `Shard::contains` (a hash of the relative
//! path), so every task agrees without talking to the others.

use crate::error::{Error, Result};
use crate::jobs::collection::Shard;

/// A shard and the environment it came from, for the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledShard {
    pub shard: Shard,
    pub source: String,
}

/// The shard of this process from the scheduler's variables; `var` reads
/// one (`std::env::var(..).ok()` in the program, a table in tests).
pub fn shard_from_env(
    shards: Option<usize>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<ScheduledShard> {
    if shards == Some(0) {
        return Err(Error::InvalidArgument(
            "--shards 0: the shard count must be at least 1".into(),
        ));
    }
    if let Some(id) = var("SLURM_ARRAY_TASK_ID") {
        let id = number("SLURM_ARRAY_TASK_ID", &id)?;
        return match shards {
            Some(n) => indexed(
                "SLURM_ARRAY_TASK_ID",
                id,
                n,
                "submit --array=0-{last} or a subset of it",
            ),
            None => slurm_array(id, &var),
        };
    }
    if let Some(index) = var("JOB_COMPLETION_INDEX") {
        let index = number("JOB_COMPLETION_INDEX", &index)?;
        let n = shards.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) gives no shard count: pass --shards N with N the Job's completions"
            ))
        })?;
        return indexed(
            "JOB_COMPLETION_INDEX",
            index,
            n,
            "set the Job's completions to {count}",
        );
    }
    let hint = if var("SLURM_JOB_ID").is_some() {
        "this Slurm job is not an array job: submit it with sbatch --array=0-3 (for 4 shards)"
    } else {
        "run it in a Slurm job array (sbatch --array=0-3) or a Kubernetes Indexed Job (with --shards N), or pass --shard i/N"
    };
    Err(Error::InvalidArgument(format!(
        "--shard auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; {hint}"
    )))
}

fn number(name: &str, value: &str) -> Result<usize> {
    value.trim().parse().map_err(|_| {
        Error::InvalidArgument(format!(
            "--shard auto: {name}='{value}' is not a non-negative whole number"
        ))
    })
}

/// Shard `index` of `count`, the index taken as it is from `name`; `fix`
/// says how to submit (`{last}` and `{count}` are filled in).
fn indexed(name: &str, index: usize, count: usize, fix: &str) -> Result<ScheduledShard> {
    if index >= count {
        let fix = fix
            .replace("{last}", &(count - 1).to_string())
            .replace("{count}", &count.to_string());
        return Err(Error::InvalidArgument(format!(
            "--shard auto: {name}={index} is not a shard of --shards {count} (indices 0..{}); {fix}",
            count - 1
        )));
    }
    Ok(ScheduledShard {
        shard: Shard { index, count },
        source: format!("{name}={index} of --shards {count}"),
    })
}

/// The task's place among the tasks of a regular array `MIN-MAX:STEP`.
fn slurm_array(id: usize, var: &impl Fn(&str) -> Option<String>) -> Result<ScheduledShard> {
    let read = |name: &str| -> Result<usize> {
        let value = var(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but {name} is not (Slurm sets both in an array job); pass --shards N to use the task id as the shard index"
            ))
        })?;
        number(name, &value)
    };
    let (min, max, count) = (
        read("SLURM_ARRAY_TASK_MIN")?,
        read("SLURM_ARRAY_TASK_MAX")?,
        read("SLURM_ARRAY_TASK_COUNT")?,
    );
    let step = match var("SLURM_ARRAY_TASK_STEP") {
        Some(s) => number("SLURM_ARRAY_TASK_STEP", &s)?.max(1),
        None => 1,
    };
    let regular = count >= 1 && min <= max && max - min == (count - 1) * step;
    if !regular {
        return Err(Error::InvalidArgument(format!(
            "--shard auto: this Slurm array has {count} tasks between {min} and {max} with gaps (like --array=1,2,7), so its task ids cannot be numbered as shards; submit a range (--array=0-{}) or pass --shards N to use the task ids themselves as shard indices 0..N-1",
            count.max(1) - 1
        )));
    }
    if id < min || id > max || !(id - min).is_multiple_of(step) {
        return Err(Error::InvalidArgument(format!(
            "--shard auto: SLURM_ARRAY_TASK_ID={id} is not a task of the array {min}-{max}:{step}"
        )));
    }
    Ok(ScheduledShard {
        shard: Shard {
            index: (id - min) / step,
            count,
        },
        source: format!("Slurm array task {id} of {min}-{max}:{step}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)], shards: Option<usize>) -> Result<Shard> {
        let table: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        shard_from_env(shards, |k| table.get(k).cloned()).map(|s| s.shard)
    }

    fn slurm(
        id: &str,
        min: &str,
        max: &str,
        count: &str,
        step: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("SLURM_ARRAY_TASK_ID", id.into()),
            ("SLURM_ARRAY_TASK_MIN", min.into()),
            ("SLURM_ARRAY_TASK_MAX", max.into()),
            ("SLURM_ARRAY_TASK_COUNT", count.into()),
            ("SLURM_ARRAY_TASK_STEP", step.into()),
        ]
    }

    fn array(id: &str, min: &str, max: &str, count: &str, step: &str) -> Result<Shard> {
        let vars = slurm(id, min, max, count, step);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        with(&pairs, None)
    }

    fn message(r: Result<Shard>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn slurm_arrays_number_their_tasks_from_zero() {
        let s = |index, count| Shard { index, count };
        assert_eq!(array("2", "0", "3", "4", "1").unwrap(), s(2, 4));
        assert_eq!(array("1", "1", "4", "4", "1").unwrap(), s(0, 4));
        assert_eq!(array("4", "1", "4", "4", "1").unwrap(), s(3, 4));
        // --array=2-14:4 is the tasks 2, 6, 10, 14.
        assert_eq!(array("10", "2", "14", "4", "4").unwrap(), s(2, 4));
        // Every task of a regular array gets its own shard.
        let got: Vec<usize> = (5..=12)
            .map(|id| array(&id.to_string(), "5", "12", "8", "1").unwrap().index)
            .collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn slurm_arrays_with_gaps_are_refused_unless_ids_are_shard_indices() {
        // --array=1,3,5: Slurm reports step 1 and 3 tasks between 1 and 5.
        let e = message(array("3", "1", "5", "3", "1"));
        assert!(e.contains("gaps") && e.contains("--shards N"), "{e}");
        assert!(message(array("7", "2", "14", "4", "4")).contains("not a task"));
        let rerun = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "2")];
        assert_eq!(with(&rerun, Some(8)).unwrap(), Shard { index: 5, count: 8 });
        let e = message(with(&rerun, Some(4)));
        assert!(e.contains("--array=0-3"), "{e}");
        let e = message(with(&[("SLURM_ARRAY_TASK_ID", "x1")], None));
        assert!(e.contains("SLURM_ARRAY_TASK_ID='x1'"), "{e}");
        let e = message(with(&[("SLURM_ARRAY_TASK_ID", "1")], None));
        assert!(e.contains("SLURM_ARRAY_TASK_MIN is not"), "{e}");
    }

    #[test]
    fn kubernetes_indexed_jobs_need_the_shard_count() {
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(with(&k8s, Some(4)).unwrap(), Shard { index: 3, count: 4 });
        assert!(message(with(&k8s, None)).contains("pass --shards N"));
        assert!(message(with(&k8s, Some(3))).contains("completions to 3"));
        assert!(message(with(&k8s, Some(0))).contains("at least 1"));
    }

    #[test]
    fn no_scheduler_is_a_clear_error() {
        let e = message(with(&[], None));
        assert!(
            e.contains("neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
            "{e}"
        );
        let e = message(with(&[("SLURM_JOB_ID", "12")], None));
        assert!(e.contains("not an array job"), "{e}");
    }
}
