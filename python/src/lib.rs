//! `delg_gpu._native`: the Python face of the delg-gpu library. Every
//! computation runs in the engine (src/api.rs); this layer only converts
//! between numpy arrays and the engine's types, releases the GIL while the
//! device works, and turns engine errors and panics into `delg_gpu.Error`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use delg_gpu::{
    FeatureSet, Features, Gpu, GpuOptions, Hit, MatchParams, Model, RansacParams, RerankParams,
    RgbImage,
};
use numpy::ndarray::{Array1, Array2};
use numpy::{
    IntoPyArray, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

create_exception!(
    delg_gpu,
    Error,
    PyRuntimeError,
    "An error of the delg-gpu engine: a bad file, setting or device; the message names it and the fix."
);

/// Runs `work` without the GIL (other Python threads go on while the device
/// works); an engine error becomes `delg_gpu.Error` with the engine's
/// message, and a panic becomes one too instead of crossing into Python.
fn engine<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> delg_gpu::Result<T> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(work))) {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Err(Error::new_err(format!(
                "internal error (please report it): {what}"
            )))
        }
    }
}

fn to_py(e: delg_gpu::Error) -> PyErr {
    Error::new_err(e.to_string())
}

/// One device per (backend, adapter), opened on first use and shared by
/// every extractor and search of the process: opening one is slow, and
/// devices are meant to be shared.
fn device(py: Python<'_>, backend: Option<String>, adapter: Option<String>) -> PyResult<Arc<Gpu>> {
    type Devices = Mutex<HashMap<(Option<String>, Option<String>), Arc<Gpu>>>;
    static DEVICES: OnceLock<Devices> = OnceLock::new();
    let key = (backend, adapter);
    let cached = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
        .cloned();
    if let Some(gpu) = cached {
        return Ok(gpu);
    }
    let options = GpuOptions {
        backend: key.0.clone(),
        adapter: key.1.clone(),
        ..Default::default()
    }
    .with_user_pipeline_cache();
    let gpu = engine(py, || Gpu::new(&options))?;
    DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key, gpu.clone());
    Ok(gpu)
}

/// Runs a model on the device; see delg_gpu.Extractor.
#[pyclass(module = "delg_gpu._native", name = "Extractor")]
struct PyExtractor {
    inner: delg_gpu::Extractor,
    arch: &'static str,
    local_dim: usize,
}

impl PyExtractor {
    fn with_model(
        py: Python<'_>,
        model: impl FnOnce() -> delg_gpu::Result<Model> + Send,
        backend: Option<String>,
        adapter: Option<String>,
    ) -> PyResult<PyExtractor> {
        let gpu = device(py, backend, adapter)?;
        let (inner, arch, local_dim) = engine(py, || {
            let model = model()?;
            Ok((
                delg_gpu::Extractor::new(&gpu, &model)?,
                model.arch(),
                model.local_dim(),
            ))
        })?;
        Ok(PyExtractor {
            inner,
            arch,
            local_dim,
        })
    }
}

#[pymethods]
impl PyExtractor {
    #[new]
    #[pyo3(signature = (weights, backend=None, adapter=None))]
    fn new(
        py: Python<'_>,
        weights: PathBuf,
        backend: Option<String>,
        adapter: Option<String>,
    ) -> PyResult<Self> {
        Self::with_model(py, || Model::load(&weights), backend, adapter)
    }

    /// A tiny DELG model with seeded random weights (meaningless features,
    /// for tests and trying the API).
    #[staticmethod]
    #[pyo3(signature = (seed=0, backend=None, adapter=None))]
    fn tiny_random(
        py: Python<'_>,
        seed: u64,
        backend: Option<String>,
        adapter: Option<String>,
    ) -> PyResult<Self> {
        Self::with_model(py, || Model::tiny_random(seed), backend, adapter)
    }

    #[getter]
    fn arch(&self) -> &'static str {
        self.arch
    }

    #[getter]
    fn local_dim(&self) -> usize {
        self.local_dim
    }

    fn extract<'py>(
        &mut self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inner = &mut self.inner;
        let features = if let Ok(array) = image.cast::<PyArray3<u8>>() {
            let rgb = rgb_image(&array.readonly())?;
            engine(py, || inner.extract(&rgb))?
        } else if let Ok(path) = image.extract::<PathBuf>() {
            engine(py, || inner.extract_file(&path))?
        } else {
            return Err(PyTypeError::new_err(format!(
                "extract takes an image file path or a uint8 RGB array [height, width, 3], not {}",
                describe(image)
            )));
        };
        features_dict(py, features, self.local_dim)
    }

    #[pyo3(signature = (input, out, progress=None))]
    fn extract_folder<'py>(
        &mut self,
        py: Python<'py>,
        input: PathBuf,
        out: PathBuf,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let callback = progress
            .filter(|p| p.is_callable())
            .map(|p| p.clone().unbind());
        let bar = match progress {
            None => true,
            Some(p) => !p.is_callable() && p.is_truthy()?,
        };
        // What stopped the run from Python (the callback raised, or Ctrl-C),
        // re-raised as itself rather than as an engine error.
        let mut raised: Option<PyErr> = None;
        let inner = &mut self.inner;
        let result = engine(py, || {
            inner.extract_folder(&input, &out, bar, &mut |processed, pending| {
                Python::attach(|py| {
                    let outcome = py.check_signals().and_then(|()| match &callback {
                        Some(f) => f.call1(py, (processed, pending)).map(drop),
                        None => Ok(()),
                    });
                    outcome.map_err(|e| {
                        raised = Some(e);
                        delg_gpu::Error::InvalidArgument(
                            "extraction stopped from Python; rerun to resume".into(),
                        )
                    })
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let s = result?;
        let summary = PyDict::new(py);
        summary.set_item("images", s.images)?;
        summary.set_item("extracted", s.extracted_now)?;
        summary.set_item("resumed", s.resumed)?;
        summary.set_item("failed", s.failed)?;
        summary.set_item("local_features", s.local_features)?;
        summary.set_item("seconds", s.seconds)?;
        Ok(summary)
    }
}

/// The RGB image in a [height, width, 3] uint8 array (any strides).
fn rgb_image(array: &numpy::PyReadonlyArray3<'_, u8>) -> PyResult<RgbImage> {
    let shape = array.shape();
    let (h, w) = (shape[0], shape[1]);
    if shape[2] != 3 {
        return Err(PyValueError::new_err(format!(
            "the image array has shape {shape:?}: pass RGB as [height, width, 3] (drop alpha with array[..., :3])"
        )));
    }
    let too_big = || PyValueError::new_err(format!("the image array {shape:?} is too large"));
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| too_big())?,
        u32::try_from(h).map_err(|_| too_big())?,
    );
    let pixels = match array.as_slice() {
        Ok(contiguous) => contiguous.to_vec(),
        Err(_) => array.as_array().iter().copied().collect(),
    };
    RgbImage::from_raw(w32, h32, pixels).ok_or_else(too_big)
}

/// A Python object's type, and dtype and shape for arrays, for messages.
fn describe(value: &Bound<'_, PyAny>) -> String {
    let type_name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".into());
    match (value.getattr("dtype"), value.getattr("shape")) {
        (Ok(dtype), Ok(shape)) => format!("a {type_name} of dtype {dtype} and shape {shape}"),
        _ => format!("a {type_name}"),
    }
}

/// The arrays of one image: global [D], descriptors [n, d], locations
/// [n, 2] (y, x), scales [n], attention [n]; the vectors are moved, not
/// copied.
fn features_dict(py: Python<'_>, f: Features, local_dim: usize) -> PyResult<Bound<'_, PyDict>> {
    let n = f.num_local();
    let rows = |values: Vec<f32>, cols: usize, what: &str| {
        Array2::from_shape_vec((n, cols), values).map_err(|_| {
            Error::new_err(format!(
                "internal error (please report it): {what} do not hold {n} rows of {cols}"
            ))
        })
    };
    let dict = PyDict::new(py);
    dict.set_item("global", Array1::from(f.global).into_pyarray(py))?;
    dict.set_item(
        "descriptors",
        rows(f.descriptors, local_dim, "descriptors")?.into_pyarray(py),
    )?;
    dict.set_item(
        "locations",
        rows(f.locations, 2, "locations")?.into_pyarray(py),
    )?;
    dict.set_item("scales", Array1::from(f.scales).into_pyarray(py))?;
    dict.set_item("attention", Array1::from(f.attention).into_pyarray(py))?;
    Ok(dict)
}

/// The values of a float32 array [n, d] (borrowed when C-contiguous, as
/// memory-mapped .npy files are).
fn rows_of<'a>(array: &'a PyReadonlyArray2<'_, f32>) -> Cow<'a, [f32]> {
    match array.as_slice() {
        Ok(contiguous) => Cow::Borrowed(contiguous),
        Err(_) => Cow::Owned(array.as_array().iter().copied().collect()),
    }
}

fn float_rows<'py>(what: &str, value: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray2<'py, f32>> {
    match value.cast::<PyArray2<f32>>() {
        Ok(array) => Ok(array.readonly()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be a float32 array [n, d], not {}",
            describe(value)
        ))),
    }
}

/// Each query's database rows, best first, and their scores.
type Rankings<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// Rankings with each hit's RANSAC inliers.
type VerifiedRankings<'py> = (
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray2<i64>>,
);

/// Global search on the device; see delg_gpu.search.
#[pyfunction]
#[pyo3(signature = (queries, database, k, backend=None, adapter=None))]
fn search_global<'py>(
    py: Python<'py>,
    queries: &Bound<'py, PyAny>,
    database: &Bound<'py, PyAny>,
    k: usize,
    backend: Option<String>,
    adapter: Option<String>,
) -> PyResult<Rankings<'py>> {
    let (q, db) = (
        float_rows("queries", queries)?,
        float_rows("database", database)?,
    );
    let (dq, ddb) = (q.shape()[1], db.shape()[1]);
    if dq != ddb {
        return Err(Error::new_err(format!(
            "the queries hold {dq}-d global descriptors but the database {ddb}-d: extract both with the same model"
        )));
    }
    let gpu = device(py, backend, adapter)?;
    let (qv, dbv) = (rows_of(&q), rows_of(&db));
    let rankings = engine(py, || delg_gpu::search_global(&gpu, &qv, &dbv, dq, k))?;
    let (indices, scores, _) = ranking_arrays(py, &rankings)?;
    Ok((indices, scores))
}

/// Each query's database rows, scores and RANSAC inliers as [queries, kept]
/// arrays (every query keeps as many hits: min(k, database size)).
fn ranking_arrays<'py>(py: Python<'py>, rankings: &[Vec<Hit>]) -> PyResult<VerifiedRankings<'py>> {
    let kept = rankings.first().map_or(0, Vec::len);
    let mut indices = Array2::<i64>::zeros((rankings.len(), kept));
    let mut scores = Array2::<f32>::zeros((rankings.len(), kept));
    let mut inliers = Array2::<i64>::zeros((rankings.len(), kept));
    for (q, ranking) in rankings.iter().enumerate() {
        if ranking.len() != kept {
            return Err(Error::new_err(
                "internal error (please report it): rankings of different lengths",
            ));
        }
        for (r, hit) in ranking.iter().enumerate() {
            indices[(q, r)] = hit.db as i64;
            scores[(q, r)] = hit.score;
            inliers[(q, r)] = hit.inliers as i64;
        }
    }
    Ok((
        indices.into_pyarray(py),
        scores.into_pyarray(py),
        inliers.into_pyarray(py),
    ))
}

/// Global search, then DELG's re-ranking of each query's first `shortlist`
/// hits by local matching and RANSAC, between two feature folders; see
/// delg_gpu.search_reranked.
#[pyfunction]
#[pyo3(signature = (queries, database, k, shortlist, backend=None, adapter=None))]
fn search_reranked<'py>(
    py: Python<'py>,
    queries: PathBuf,
    database: PathBuf,
    k: usize,
    shortlist: usize,
    backend: Option<String>,
    adapter: Option<String>,
) -> PyResult<VerifiedRankings<'py>> {
    if k == 0 || shortlist == 0 {
        return Err(PyValueError::new_err(format!(
            "k and shortlist must be at least 1 (got k={k}, shortlist={shortlist})"
        )));
    }
    let gpu = device(py, backend, adapter)?;
    let rankings = engine(py, || {
        let (q, db) = (FeatureSet::load(&queries)?, FeatureSet::load(&database)?);
        let params = RerankParams {
            shortlist,
            ..RerankParams::default()
        };
        delg_gpu::search_reranked(&gpu, &q, &db, k, &params)
    })?;
    ranking_arrays(py, &rankings)
}

/// An image's local features from a dict of extract() or FeatureSet[i].
fn local_features(what: &str, image: &Bound<'_, PyAny>) -> PyResult<Features> {
    let field = |key: &str| -> PyResult<(usize, Vec<f32>)> {
        let value = image.get_item(key).map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} has no '{key}': pass a dict from Extractor.extract or FeatureSet[i]"
            ))
        })?;
        let array = float_rows(&format!("{what}['{key}']"), &value)?;
        Ok((array.shape()[0], rows_of(&array).into_owned()))
    };
    let ((n, descriptors), (located, locations)) = (field("descriptors")?, field("locations")?);
    if n != located || locations.len() != 2 * n {
        return Err(PyValueError::new_err(format!(
            "{what} has {n} descriptors but {} locations values: expected locations [{n}, 2] (y, x)",
            locations.len()
        )));
    }
    Ok(Features {
        id: what.to_string(),
        descriptors,
        locations,
        // Matching reads descriptors and locations only; the scales carry
        // the keypoint count that the engine checks the arrays against.
        scales: vec![0.0; n],
        ..Default::default()
    })
}

/// Matches B's local features to A's and verifies them with RANSAC; see
/// delg_gpu.match.
#[pyfunction]
fn match_images<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<(usize, Option<Bound<'py, PyArray2<f64>>>)> {
    let (fa, fb) = (local_features("a", a)?, local_features("b", b)?);
    let verified = engine(py, || {
        delg_gpu::match_features(&fa, &fb, &MatchParams::default(), &RansacParams::default())
    })?;
    let transform = verified
        .transform
        .map(|t| Array2::from_shape_fn((3, 3), |(r, c)| t.0[r][c]).into_pyarray(py));
    Ok((verified.inliers, transform))
}

/// A feature folder's ids, local offsets, and global and local sizes.
type FolderLayout<'py> = (
    Bound<'py, PyList>,
    Bound<'py, numpy::PyArray1<i64>>,
    usize,
    usize,
);

/// A feature folder checked (sizes agree, offsets ordered) without reading
/// its arrays: its ids, local offsets, and the global and local sizes.
#[pyfunction]
fn open_feature_folder<'py>(py: Python<'py>, path: PathBuf) -> PyResult<FolderLayout<'py>> {
    let files = engine(py, || delg_gpu::FeatureFiles::open(&path))?;
    let (global_dim, local_dim) = (files.global_dim(), files.local_dim());
    Ok((
        PyList::new(py, &files.ids)?,
        Array1::from(files.offsets).into_pyarray(py),
        global_dim,
        local_dim,
    ))
}

/// Writes the weights of `Extractor.tiny_random(seed)` as a safetensors
/// file that `Extractor(path)` and `delg-gpu --weights` read.
#[pyfunction]
#[pyo3(signature = (path, seed=0))]
fn write_tiny_weights(py: Python<'_>, path: PathBuf, seed: u64) -> PyResult<()> {
    engine(py, || Model::tiny_random(seed)?.save(&path))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyExtractor>()?;
    m.add_function(wrap_pyfunction!(search_global, m)?)?;
    m.add_function(wrap_pyfunction!(search_reranked, m)?)?;
    m.add_function(wrap_pyfunction!(match_images, m)?)?;
    m.add_function(wrap_pyfunction!(open_feature_folder, m)?)?;
    m.add_function(wrap_pyfunction!(write_tiny_weights, m)?)?;
    Ok(())
}
