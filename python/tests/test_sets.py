"""Feature sets, search, matching, and errors through the package."""

import shutil
import subprocess

import numpy as np
import pytest

import delg_gpu
from conftest import IMAGES, generated_image


@pytest.fixture(scope="module")
def feature_set(cli_features):
    return delg_gpu.FeatureSet(cli_features[0])


def test_feature_set_maps_its_files_read_only(feature_set):
    fs = feature_set
    assert len(fs) == IMAGES and len(fs.ids) == IMAGES
    assert isinstance(fs.global_descriptors, np.memmap)
    assert isinstance(fs.local_descriptors, np.memmap)
    assert not fs.local_descriptors.flags.writeable
    assert fs.global_descriptors.shape == (IMAGES, fs.global_dim)
    m = int(fs.offsets[-1])
    assert fs.offsets.dtype == np.int64 and fs.offsets.shape == (IMAGES + 1,)
    assert fs.local_descriptors.shape == (m, fs.local_dim)
    assert fs.locations.shape == (m, 2)
    assert fs.scales.shape == fs.attention.shape == (m,)
    for a in [fs.global_descriptors, fs.local_descriptors, fs.locations, fs.scales, fs.attention]:
        assert a.dtype == np.float32 and np.isfinite(a).all()
    image = fs[-1]
    assert image["descriptors"].shape == (fs.offsets[-1] - fs.offsets[-2], fs.local_dim)
    assert len(list(fs)) == IMAGES
    with pytest.raises(IndexError):
        fs[IMAGES]


def test_search_finds_each_image_first(feature_set):
    indices, scores = delg_gpu.search(feature_set, feature_set, k=3)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert indices.shape == scores.shape == (IMAGES, 3)
    assert (indices[:, 0] == np.arange(IMAGES)).all()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-3)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores are best first"
    # Arrays work too, and k above the database size keeps every image.
    q = np.ascontiguousarray(feature_set.global_descriptors[:2])
    indices, _ = delg_gpu.search(q, feature_set, k=IMAGES + 5)
    assert indices.shape == (2, IMAGES)


def test_search_refuses_bad_arrays(feature_set):
    with pytest.raises(TypeError, match="float64"):
        delg_gpu.search(np.zeros((2, feature_set.global_dim)), feature_set, k=2)
    with pytest.raises(delg_gpu.Error, match="same model"):
        delg_gpu.search(np.zeros((2, 3), np.float32), feature_set, k=2)
    with pytest.raises(delg_gpu.Error, match="no images"):
        delg_gpu.search(np.zeros((0, feature_set.global_dim), np.float32), feature_set, k=2)


def test_reranked_search_equals_the_cli(feature_set, cli, workdir):
    indices, scores, inliers = delg_gpu.search_reranked(feature_set, feature_set, k=6, shortlist=4)
    assert indices.dtype == inliers.dtype == np.int64 and scores.dtype == np.float32
    assert indices.shape == scores.shape == inliers.shape == (IMAGES, 6)
    # Each image verifies against itself first; beyond the shortlist nothing is verified.
    assert (indices[:, 0] == np.arange(IMAGES)).all()
    assert (inliers[:, 0] > 0).all() and (inliers[:, 4:] == 0).all()
    assert (np.diff(inliers[:, :4], axis=1) <= 0).all(), "ordered by inliers first"
    out = workdir / "cli_reranked"
    run = subprocess.run(
        [cli, "search", "--queries", feature_set.path, "--db", feature_set.path, "--out", str(out),
         "--k", "6", "--rerank", "--shortlist", "4"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"delg-gpu search failed: {run.stderr}"
    assert (np.load(out / "ranks.npy") == indices).all()
    assert (np.load(out / "inliers.npy") == inliers).all()
    assert (np.load(out / "scores.npy") == scores).all()


def test_reranked_search_refuses_arrays(feature_set):
    with pytest.raises(TypeError, match="FeatureSet"):
        delg_gpu.search_reranked(feature_set.global_descriptors, feature_set)
    with pytest.raises(ValueError, match="at least 1"):
        delg_gpu.search_reranked(feature_set, feature_set, k=0)


def test_match_of_an_image_with_itself_is_the_identity(extractor):
    f = extractor.extract(generated_image(4))
    n = len(f["scales"])
    assert n >= 4
    inliers, transform = delg_gpu.match(f, f)
    # Nearly every keypoint pairs with its twin (a keypoint found at two
    # scales at one place may pair with the other copy).
    assert 0.9 * n <= inliers <= n
    assert transform.dtype == np.float64 and transform.shape == (3, 3)
    assert np.array_equal(transform[2], [0.0, 0.0, 1.0]), "an affine map"
    # It maps the keypoints (x, y) onto themselves.
    xy = f["locations"][:, ::-1].astype(np.float64)
    moved = xy @ transform[:2, :2].T + transform[:2, 2]
    assert np.median(np.linalg.norm(moved - xy, axis=1)) < 1.0


def test_match_of_feature_set_images(feature_set):
    inliers, transform = delg_gpu.match(feature_set[0], feature_set[1])
    assert isinstance(inliers, int) and inliers >= 0
    assert transform is None or transform.shape == (3, 3)
    with pytest.raises(TypeError, match="has no 'locations'"):
        delg_gpu.match({"descriptors": feature_set[0]["descriptors"]}, feature_set[1])
    a = dict(feature_set[0])
    a["locations"] = a["locations"][:-1]
    with pytest.raises(ValueError, match="locations"):
        delg_gpu.match(a, feature_set[1])


def test_errors_name_the_file(extractor, workdir, cli_features):
    missing = workdir / "missing.safetensors"
    with pytest.raises(delg_gpu.Error, match="missing.safetensors"):
        delg_gpu.Extractor(missing)
    with pytest.raises(delg_gpu.Error, match="nope.png"):
        extractor.extract(workdir / "nope.png")
    with pytest.raises(delg_gpu.Error, match="not_features"):
        delg_gpu.FeatureSet(workdir / "not_features")
    # A truncated array is named with the fix, not read as garbage.
    broken = workdir / "truncated_set"
    shutil.copytree(cli_features[0], broken)
    data = (broken / "local_scales.npy").read_bytes()
    (broken / "local_scales.npy").write_bytes(data[:-4])
    with pytest.raises(delg_gpu.Error, match="local_scales.npy.*truncated"):
        delg_gpu.FeatureSet(broken)
    assert issubclass(delg_gpu.Error, RuntimeError)


def test_arrays_of_the_wrong_kind_are_refused(extractor):
    image = generated_image(1)
    with pytest.raises(TypeError, match="uint8 RGB array"):
        extractor.extract(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
        extractor.extract(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(delg_gpu.Error, match="no pixels"):
        extractor.extract(np.zeros((0, 8, 3), np.uint8))
