"""Type stubs of the compiled part of delg_gpu (python/src/lib.rs)."""

import os
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

__version__: str

PathLike = Union[str, "os.PathLike[str]"]

class Error(RuntimeError):
    """An error of the delg-gpu engine: a bad file, setting or device; the
    message names it and the fix."""

class Extractor:
    """A DELG or DOLG model on the GPU.

    ``weights`` is a safetensors file written by ``delg-gpu init-weights``,
    ``train``, ``import-weights`` or ``weights get``; ``backend`` (vulkan,
    metal, dx12, gl) and ``adapter`` (a name substring or an index from
    ``delg-gpu info``) choose the device. The extraction recipe is the
    published one of the model's architecture (docs/recipe.md).
    """

    def __init__(
        self,
        weights: PathLike,
        backend: Optional[str] = None,
        adapter: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def tiny_random(
        seed: int = 0, backend: Optional[str] = None, adapter: Optional[str] = None
    ) -> "Extractor":
        """A tiny DELG model with seeded random weights: meaningless
        features, for tests and for trying the API."""
    @property
    def arch(self) -> str:
        """"delg" or "dolg"."""
    @property
    def local_dim(self) -> int:
        """Size of the local descriptors (0 for a global-only model)."""
    def extract(self, image: Union[PathLike, np.ndarray]) -> Dict[str, np.ndarray]:
        """Features of an image file or a uint8 RGB array [height, width, 3]:
        ``global`` [D], ``descriptors`` [n, d], ``locations`` [n, 2] (y, x
        in the image's pixels), ``scales`` [n] and ``attention`` [n], all
        float32. The GIL is released while the GPU works."""
    def extract_folder(
        self,
        input: PathLike,
        out: PathLike,
        progress: Union[bool, Callable[[int, int], object], None] = None,
    ) -> Dict[str, Union[int, float]]:
        """Extracts every image below ``input`` into the feature folder
        ``out``, as ``delg-gpu extract input --out out`` does (same files,
        resumes an interrupted run, bad images skipped and listed in
        ``out/errors.txt``). ``progress``: True or None shows a progress bar
        on stderr, False hides it, a callable is called as
        ``progress(processed, pending)`` after each image (an exception it
        raises stops the run; a rerun resumes). Returns a summary: images,
        extracted, resumed, failed, local_features, seconds."""

def search_global(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    backend: Optional[str] = None,
    adapter: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]: ...
def search_reranked(
    queries: PathLike,
    database: PathLike,
    k: int,
    shortlist: int,
    backend: Optional[str] = None,
    adapter: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def match_images(
    a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]
) -> Tuple[int, Optional[np.ndarray]]: ...
def open_feature_folder(path: PathLike) -> Tuple[List[str], np.ndarray, int, int]: ...
def write_tiny_weights(path: PathLike, seed: int = 0) -> None:
    """Writes the weights of ``Extractor.tiny_random(seed)`` as a
    safetensors file that ``Extractor(path)`` and ``delg-gpu --weights``
    read."""
