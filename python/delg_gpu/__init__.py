"""DELG and DOLG image retrieval on any GPU, with numpy arrays.

Every computation runs in the delg-gpu engine (the compiled ``_native``
module); this file only names things and opens feature folders with
``numpy.load(mmap_mode="r")``. See docs/python.md.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np

from ._native import Error, Extractor, __version__, write_tiny_weights
from . import _native

__all__ = [
    "Error",
    "Extractor",
    "FeatureSet",
    "match",
    "search",
    "search_reranked",
    "write_tiny_weights",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


class FeatureSet:
    """A feature folder written by ``Extractor.extract_folder`` or
    ``delg-gpu extract``, its arrays memory-mapped (read-only, nothing is
    read until used).

    ``global_descriptors`` [N, D], ``local_descriptors`` [M, d],
    ``locations`` [M, 2] (y, x in original-image pixels), ``scales`` [M] and
    ``attention`` [M] are float32; ``offsets`` [N+1] int64 says that image
    i owns local rows ``offsets[i]:offsets[i+1]``; ``ids`` holds the image
    paths relative to the extracted folder. ``fs[i]`` gives image i as the
    dict ``Extractor.extract`` returns (views, not copies).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        # The engine checks the folder first (sizes agree, offsets ordered),
        # so a bad folder raises delg_gpu.Error naming it and the fix.
        ids, offsets, global_dim, local_dim = _native.open_feature_folder(self.path)
        self.ids = ids
        self.offsets = offsets
        self.global_dim = global_dim
        self.local_dim = local_dim
        self.global_descriptors = self._map("global.npy")
        self.local_descriptors = self._map("local_descriptors.npy")
        self.locations = self._map("local_locations.npy")
        self.scales = self._map("local_scales.npy")
        self.attention = self._map("local_attention.npy")

    def _map(self, name: str) -> np.ndarray:
        mapped: np.ndarray = np.load(os.path.join(self.path, name), mmap_mode="r")
        return mapped

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"image {i} of a feature set of {n} images")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "global": self.global_descriptors[i],
            "descriptors": self.local_descriptors[a:b],
            "locations": self.locations[a:b],
            "scales": self.scales[a:b],
            "attention": self.attention[a:b],
        }

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return (
            f"FeatureSet({self.path!r}: {len(self)} images, {self.global_dim}-d global, "
            f"{len(self.scales)} local features of {self.local_dim}-d)"
        )


def search(
    queries: Union[FeatureSet, np.ndarray],
    database: Union[FeatureSet, np.ndarray],
    k: int = 100,
    *,
    backend: Optional[str] = None,
    adapter: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """For each query, the ``k`` database images with the most similar
    global descriptors (cosine similarity, best first), scored on the GPU.

    ``queries`` and ``database`` are FeatureSets or float32 arrays [n, D] of
    L2-normalised global descriptors. Returns ``(indices, scores)``: int64
    and float32 arrays [n_queries, min(k, n_database)].
    """
    return _native.search_global(
        _global_of(queries), _global_of(database), k, backend, adapter
    )


def search_reranked(
    queries: FeatureSet,
    database: FeatureSet,
    k: int = 100,
    *,
    shortlist: int = 100,
    backend: Optional[str] = None,
    adapter: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``search``, then DELG's re-ranking: each query's first ``shortlist``
    hits are verified by local matching and RANSAC (as ``delg-gpu search
    --rerank``), and the ranking is ordered by (inliers, global score).

    Both sets must be feature folders of a model with local features
    (DELG). Returns ``(indices, scores, inliers)``: int64, float32 and int64
    arrays [n_queries, min(k, n_database)], best first; ``inliers`` is 0 for
    hits beyond the shortlist.
    """
    for what, s in (("queries", queries), ("database", database)):
        if not isinstance(s, FeatureSet):
            raise TypeError(
                f"search_reranked needs FeatureSets (feature folders), got {type(s).__name__} "
                f"for {what}: open the folder with delg_gpu.FeatureSet(path)"
            )
        if s.local_dim == 0:
            raise ValueError(
                f"{s.path} holds no local features (a global-only model such as DOLG): "
                "re-ranking needs DELG features; use search() instead"
            )
    return _native.search_reranked(
        queries.path, database.path, k, shortlist, backend, adapter
    )


def _global_of(x: Union[FeatureSet, np.ndarray]) -> np.ndarray:
    return x.global_descriptors if isinstance(x, FeatureSet) else x


def match(
    a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]
) -> Tuple[int, Optional[np.ndarray]]:
    """Matches two images' local features (dicts from ``Extractor.extract``
    or ``FeatureSet[i]``) with DELG's rule and verifies the matches with
    RANSAC. Returns ``(inliers, transform)``: the number of verified
    matches (DELG's re-ranking score; 0 below 4 matches) and the 3x3 float64
    affine matrix mapping A's (x, y) pixels onto B's, or None when RANSAC
    fitted nothing.
    """
    return _native.match_images(a, b)
