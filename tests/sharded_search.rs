//! A parent folder of shard folders searched in place (issue 15 item 2):
//! `search` and `search --rerank` over the shards write the very files they
//! write over the merged folder, and a set that is not every finished shard
//! of one extraction is refused, naming the folder.

mod common;

use std::path::{Path, PathBuf};

use delg_gpu::jobs::collection::Shard;
use delg_gpu::jobs::demo::render_scene;
use delg_gpu::jobs::extract::{run_extract, ExtractConfig, ExtractJob};
use delg_gpu::jobs::merge::merge_shards;
use delg_gpu::jobs::search::{rerank_and_write, run_search, Database, RerankParams, SearchInputs};
use delg_gpu::jobs::shortlist::read_shortlist;
use delg_gpu::testing::test_gpu;

const SHARDS: usize = 3;

fn job(input: &Path, out: &Path, weights: &Path, shard: Option<Shard>) -> ExtractJob {
    ExtractJob {
        input: input.to_path_buf(),
        out: out.to_path_buf(),
        weights: weights.to_path_buf(),
        config: ExtractConfig {
            max_image_size: Some(96),
            scales: vec![0.5, 1.0, 1.5],
            global_scales: vec![1],
            max_features: 50,
            ..Default::default()
        },
        shard,
        only: None,
        crops: Default::default(),
        quiet: true,
        batch: None,
    }
}

fn error_of(dir: &Path) -> String {
    match Database::load(dir) {
        Ok(_) => panic!("{} was accepted as a feature set", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn search_over_shard_folders_equals_search_over_the_merged_folder() {
    let Some(gpu) = test_gpu() else { return };
    let root = std::env::temp_dir().join(format!("delg-sharded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // Two views of each scene, so re-ranking has true matches to find.
    for i in 0..18u64 {
        render_scene(i / 2, (i % 2) as u32, 96)
            .save(images.join(format!("scene{i:02}.png")))
            .unwrap();
    }
    let weights = root.join("tiny.safetensors");
    common::tiny_weights_seeded(&weights, 5);

    let parent = root.join("shards");
    let folders: Vec<PathBuf> = (0..SHARDS)
        .map(|index| {
            let out = parent.join(format!("shard-{index}"));
            let shard = Shard {
                index,
                count: SHARDS,
            };
            run_extract(&gpu, &job(&images, &out, &weights, Some(shard))).unwrap();
            out
        })
        .collect();
    // A merged copy inside the parent is not one of its shards.
    let merged = parent.join("merged");
    merge_shards(&folders, &merged).unwrap();
    let queries = root.join("queries");
    run_extract(&gpu, &job(&images, &queries, &weights, None)).unwrap();

    let rerank = RerankParams {
        shortlist: 8,
        ..Default::default()
    };
    for (name, params) in [("global", None), ("reranked", Some(rerank))] {
        let search = |db: &Path| {
            let out = root.join(format!(
                "{name}-{}",
                db.file_name().unwrap().to_string_lossy()
            ));
            let inputs = SearchInputs::load(&queries, db, &out).unwrap();
            run_search(&gpu, &inputs, 10, params, &out).unwrap();
            out
        };
        let (sharded, whole) = (search(&parent), search(&merged));
        for f in ["ranking.csv", "ranks.npy", "scores.npy", "inliers.npy"] {
            assert!(
                std::fs::read(sharded.join(f)).unwrap() == std::fs::read(whole.join(f)).unwrap(),
                "{name} search: {f} over the shards differs from over the merged folder"
            );
        }
        if params.is_some() {
            let csv = std::fs::read_to_string(sharded.join("ranking.csv")).unwrap();
            assert!(
                csv.lines().skip(1).any(|l| !l.ends_with(",0")),
                "re-ranking verified no image:\n{csv}"
            );
        }
    }
    // The global search's ranking.csv read back as a shortlist from
    // elsewhere and re-ranked: the very files `search --rerank` wrote.
    for db in [&parent, &merged] {
        let name = db.file_name().unwrap().to_string_lossy().into_owned();
        let out = root.join(format!("from-shortlist-{name}"));
        let inputs = SearchInputs::load(&queries, db, &out).unwrap();
        let file = root.join(format!("global-{name}")).join("ranking.csv");
        let hits = read_shortlist(&file, &inputs.queries.ids, inputs.db.ids()).unwrap();
        rerank_and_write(&gpu, &inputs, hits, Some(rerank), &out).unwrap();
        for f in ["ranking.csv", "ranks.npy", "scores.npy", "inliers.npy"] {
            assert!(
                std::fs::read(out.join(f)).unwrap()
                    == std::fs::read(root.join(format!("reranked-{name}")).join(f)).unwrap(),
                "{name}: {f} re-ranked from the shortlist file differs from search --rerank"
            );
        }
    }
    match Database::load(&parent).unwrap() {
        Database::Shards(s) => assert_eq!(s.len(), 18),
        Database::Folder(_) => panic!("the parent was read as one folder"),
    }

    // An unfinished shard (its task was killed before the end): refused.
    let ids = folders[1].join("ids.txt");
    std::fs::rename(&ids, root.join("ids.txt")).unwrap();
    let e = error_of(&parent);
    assert!(
        e.contains("shard-1") && e.contains("has not finished"),
        "{e}"
    );
    std::fs::rename(root.join("ids.txt"), &ids).unwrap();
    // A missing shard.
    std::fs::rename(&folders[2], root.join("away")).unwrap();
    let e = error_of(&parent);
    assert!(e.contains("shard 2/3 missing"), "{e}");
    // A shard of another listing (one more image) in its place.
    std::fs::copy(images.join("scene00.png"), images.join("extra.png")).unwrap();
    let shard = Shard {
        index: 2,
        count: SHARDS,
    };
    run_extract(&gpu, &job(&images, &folders[2], &weights, Some(shard))).unwrap();
    let e = error_of(&parent);
    assert!(e.contains("another collection"), "{e}");
    // A folder without shards.
    let e = error_of(&images);
    assert!(e.contains("ids.txt"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn eval_over_shard_folders_scores_what_it_scores_over_one_folder() {
    use delg_gpu::jobs::eval::{run_eval, EvalJob};
    let Some(gpu) = test_gpu() else { return };
    let root = std::env::temp_dir().join(format!("delg-sharded-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    delg_gpu::jobs::demo::write_dataset(&data, 3, 96).unwrap();
    let weights = root.join("tiny.safetensors");
    common::tiny_weights_seeded(&weights, 9);
    let parent = root.join("shards");
    for index in 0..2 {
        let shard = Shard { index, count: 2 };
        let out = parent.join(format!("shard-{index}"));
        run_extract(&gpu, &job(&data, &out, &weights, Some(shard))).unwrap();
    }
    let folder = root.join("folder");
    run_extract(&gpu, &job(&data, &folder, &weights, None)).unwrap();
    let eval = |db: &Path| {
        let job = EvalJob {
            gnd: data.join("gnd.json"),
            weights: None,
            db_features: Some(db.to_path_buf()),
            query_features: None,
            work: root.join("work"),
            extract: Default::default(),
            rerank: Some(RerankParams {
                shortlist: 4,
                ..Default::default()
            }),
        };
        let report = run_eval(&gpu, &job).unwrap();
        serde_json::to_value(&report.rows).unwrap()
    };
    let (sharded, whole) = (eval(&parent), eval(&folder));
    assert_eq!(
        sharded, whole,
        "eval over the shards differs from eval over one folder"
    );
    let ns = whole[0]["global_ns"]
        .as_f64()
        .expect("a UKBench-style N-S score");
    assert!(ns.is_finite() && ns > 0.0, "{whole}");
    let _ = std::fs::remove_dir_all(&root);
}
