//! The C ABI of delg-gpu: open a model, extract features from image files or
//! RGB buffers, match two images, all behind opaque handles and status codes.
//! docs/c-api.md is the user's guide; include/delg_gpu.h is generated from
//! this file by cbindgen (tests/header.rs fails when it is stale).
//!
//! Every entry point runs inside [`guard`]: Rust panics are caught and NULL
//! pointers checked, so nothing unwinds into C and nothing aborts the host.

// The exported names are the C names, so the header reads like C.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;

use engine::{
    match_features, Error, Extractor, Features, Gpu, GpuOptions, MatchParams, Model, RansacParams,
    RgbImage,
};

/// What every call returns; on anything but `DELG_OK`, `delg_last_error()`
/// holds one line naming the problem and the fix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum delg_status {
    DELG_OK = 0,
    /// A required pointer argument was NULL.
    DELG_ERROR_NULL_ARGUMENT = 1,
    /// An argument is out of range or inconsistent (sizes, strides, text
    /// that is not UTF-8, features of two different models).
    DELG_ERROR_INVALID_ARGUMENT = 2,
    /// A file could not be read or holds bad content; the message names it.
    DELG_ERROR_FILE = 3,
    /// No usable GPU adapter, or the device failed (lost, out of memory).
    DELG_ERROR_GPU = 4,
    /// A broken invariant inside delg-gpu; please report the message.
    DELG_ERROR_INTERNAL = 5,
    /// A panic inside delg-gpu was caught at the boundary; please report the
    /// message, and close the extractor it happened in.
    DELG_ERROR_PANIC = 6,
}

use delg_status::*;

/// A model loaded on a GPU device, ready to extract. Opaque; made by
/// `delg_open` or `delg_open_tiny_random`, released by `delg_close`.
pub struct delg_extractor {
    extractor: Extractor,
}

/// How `delg_open` picks the device and the number of keypoints. All-zero
/// (or a NULL pointer) means the defaults.
#[repr(C)]
pub struct delg_options {
    /// "vulkan", "metal", "dx12" or "gl"; NULL lets wgpu pick the best.
    pub backend: *const c_char,
    /// An adapter name substring (case-insensitive) or an index into
    /// `delg-gpu info`'s list; NULL picks the best adapter.
    pub adapter: *const c_char,
    /// At most this many local features per image, best attention first;
    /// 0 keeps the model's published recipe (docs/recipe.md).
    pub max_features: u32,
}

/// The features of one image. Every pointer is owned by the library and
/// valid until `delg_features_free`; arrays are row-major float32.
#[repr(C)]
pub struct delg_features {
    /// Size of the global descriptor.
    pub global_dim: usize,
    /// `global_dim` values, L2-normalised: the dot product of two images'
    /// global descriptors is their cosine similarity.
    pub global: *const f32,
    /// Number of local features (keypoints); 0 for global-only models
    /// (DOLG) and images smaller than the recipe's minimum side.
    pub num_local: usize,
    /// Size of each local descriptor (0 when `num_local` is 0).
    pub local_dim: usize,
    /// `num_local * local_dim` values.
    pub descriptors: *const f32,
    /// `num_local * 2` values: (y, x) of each keypoint in the original
    /// image's pixels.
    pub locations: *const f32,
    /// `num_local` values: the pyramid scale each keypoint was found at.
    pub scales: *const f32,
    /// `num_local` values: each keypoint's attention score.
    pub attention: *const f32,
}

/// Two images' local features matched and verified by RANSAC.
#[repr(C)]
pub struct delg_match_result {
    /// Putative correspondences: B's keypoints whose nearest neighbour in A
    /// is below the matching threshold.
    pub matches: usize,
    /// DELG's score: the RANSAC inliers among `matches` (0 below 4 matches).
    pub inliers: usize,
    /// Whether RANSAC fitted a transform; when false, `transform` is the identity.
    pub has_transform: bool,
    /// Row-major 3x3 map from A's (x, y, 1) pixels to B's: affine, or
    /// projective when `delg_match_with` was asked for a homography.
    pub transform: [[f64; 3]; 3],
}

/// Matching and RANSAC settings for `delg_match_with`. A zero field (or a
/// NULL pointer for all of them) means DELG's setting, as `delg_match` uses.
#[repr(C)]
pub struct delg_match_params {
    /// B's keypoint matches when its nearest descriptor in A is closer than
    /// this (with `ratio_test`: closer than this times the second nearest);
    /// 0 means 1.0, DELG's distance for unit descriptors.
    pub match_threshold: f32,
    /// Lowe's ratio test instead of an absolute distance threshold.
    pub ratio_test: bool,
    /// Fit a homography (4-point samples) instead of DELG's affine model;
    /// `transform` is then the full 3x3 projective map.
    pub homography: bool,
    /// RANSAC inlier threshold in pixels (residual strictly below); 0 means 20.
    pub residual_threshold: f64,
    /// RANSAC trials, at most 10 000 000; 0 means 1000.
    pub ransac_trials: u32,
}

/// Most RANSAC trials a call may ask for, as `--ransac-trials` allows.
const MAX_RANSAC_TRIALS: u32 = 10_000_000;

/// The engine's settings for `params` (NULL: DELG's), checked.
fn verify_params(
    params: Option<&delg_match_params>,
) -> Result<(MatchParams, RansacParams), Failure> {
    let (matching, ransac) = (MatchParams::default(), RansacParams::default());
    let Some(p) = params else {
        return Ok((matching, ransac));
    };
    let invalid = Failure::invalid;
    if !(p.match_threshold >= 0.0 && p.match_threshold.is_finite()) {
        return Err(invalid(format!(
            "params->match_threshold must be a finite number ≥ 0 (0: the default), got {}",
            p.match_threshold
        )));
    }
    if !(p.residual_threshold >= 0.0 && p.residual_threshold.is_finite()) {
        return Err(invalid(format!(
            "params->residual_threshold must be a finite number of pixels ≥ 0 (0: the default), got {}",
            p.residual_threshold
        )));
    }
    if p.ransac_trials > MAX_RANSAC_TRIALS {
        return Err(invalid(format!(
            "params->ransac_trials is {}, above the limit of {MAX_RANSAC_TRIALS}",
            p.ransac_trials
        )));
    }
    let base = if p.homography {
        RansacParams::homography()
    } else {
        ransac
    };
    Ok((
        MatchParams {
            threshold: if p.match_threshold == 0.0 {
                matching.threshold
            } else {
                p.match_threshold
            },
            ratio_test: p.ratio_test,
        },
        RansacParams {
            residual_threshold: if p.residual_threshold == 0.0 {
                base.residual_threshold
            } else {
                p.residual_threshold
            },
            max_trials: match p.ransac_trials {
                0 => base.max_trials,
                n => n as usize,
            },
            ..base
        },
    ))
}

/// What `delg_features_free` releases: the view C reads, first so that a
/// pointer to the whole is a pointer to the view, and the arrays it points into.
#[repr(C)]
struct OwnedFeatures {
    view: delg_features,
    data: Features,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Why a call failed: the status it returns and the message it leaves.
struct Failure {
    status: delg_status,
    message: String,
}

impl Failure {
    fn invalid(message: String) -> Failure {
        Failure {
            status: DELG_ERROR_INVALID_ARGUMENT,
            message,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::File { .. } | Error::Io { .. } | Error::Download { .. } => DELG_ERROR_FILE,
            Error::InvalidArgument(_) | Error::Shape { .. } | Error::Unsupported { .. } => {
                DELG_ERROR_INVALID_ARGUMENT
            }
            Error::NoAdapter { .. }
            | Error::AdapterNotFound { .. }
            | Error::DeviceRequest { .. }
            | Error::DeviceLost(_)
            | Error::OutOfMemory { .. }
            | Error::Validation { .. }
            | Error::Shader { .. }
            | Error::LimitExceeded { .. } => DELG_ERROR_GPU,
            Error::Internal(_) | Error::Diverged { .. } => DELG_ERROR_INTERNAL,
        };
        Failure {
            status,
            message: e.to_string(),
        }
    }
}

fn set_last_error(message: &str) {
    // An interior NUL would truncate the C string; show it instead.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// Runs one entry point's body: its error or panic becomes a status code and
/// `delg_last_error()`'s message (prefixed with the function's name).
fn guard(function: &str, body: impl FnOnce() -> Result<(), Failure>) -> delg_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => DELG_OK,
        Ok(Err(failure)) => {
            set_last_error(&format!("{function}: {}", failure.message));
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(&format!(
                "{function}: internal error (please report it): panic in delg-gpu: {what}"
            ));
            DELG_ERROR_PANIC
        }
    }
}

fn null_argument(name: &str) -> Failure {
    Failure {
        status: DELG_ERROR_NULL_ARGUMENT,
        message: format!("{name} is NULL"),
    }
}

/// `ptr` as a reference, or the NULL-argument failure naming `name`.
fn required<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller promises a non-NULL pointer is valid (docs/c-api.md).
    unsafe { ptr.as_ref() }.ok_or_else(|| null_argument(name))
}

/// `ptr` as a mutable reference (the caller gives this thread sole use),
/// or the NULL-argument failure naming `name`.
fn required_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as in `required`.
    unsafe { ptr.as_mut() }.ok_or_else(|| null_argument(name))
}

/// A required output pointer, cleared first so that a failed call leaves NULL.
fn output<'a, T>(out: *mut *mut T, name: &str) -> Result<&'a mut *mut T, Failure> {
    let slot = required_mut(out, name)?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// A C string argument as text; `None` for NULL.
fn text(ptr: *const c_char, name: &str) -> Result<Option<String>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-NULL string argument is NUL-terminated (docs/c-api.md).
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
        Failure::invalid(format!(
            "{name} is not UTF-8 ({}): pass UTF-8 text",
            bytes.to_string_lossy()
        ))
    })
}

/// A path argument; on Unix any bytes, as the OS allows.
fn path(ptr: *const c_char, name: &str) -> Result<PathBuf, Failure> {
    let c = required(ptr, name)?;
    // SAFETY: `c` is a valid, NUL-terminated string (see `text`).
    let bytes = unsafe { CStr::from_ptr(c) };
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        Ok(PathBuf::from(text(ptr, name)?.unwrap_or_default()))
    }
}

/// Opens the device `options` name and puts `model` on it.
fn open(mut model: Model, options: *const delg_options) -> Result<*mut delg_extractor, Failure> {
    // SAFETY: as in `required`; NULL means the defaults.
    let options = unsafe { options.as_ref() };
    let gpu_options = GpuOptions {
        backend: options.map_or(Ok(None), |o| text(o.backend, "options->backend"))?,
        adapter: options.map_or(Ok(None), |o| text(o.adapter, "options->adapter"))?,
        ..Default::default()
    }
    .with_user_pipeline_cache();
    if let Some(max) = options.map(|o| o.max_features).filter(|&m| m > 0) {
        model.recipe.max_features = max as usize;
    }
    let gpu = Gpu::new(&gpu_options)?;
    let extractor = Extractor::new(&gpu, &model)?;
    Ok(Box::into_raw(Box::new(delg_extractor { extractor })))
}

/// Loads a safetensors weight file (from `delg-gpu weights get`,
/// `import-weights`, `train` or `init-weights`) and opens a GPU device for
/// it. `options` may be NULL. On success `*out` is the extractor; on failure
/// it is NULL.
///
/// # Safety
/// `weights_path` is a NUL-terminated string, `options` NULL or valid,
/// `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn delg_open(
    weights_path: *const c_char,
    options: *const delg_options,
    out: *mut *mut delg_extractor,
) -> delg_status {
    guard("delg_open", || {
        let slot = output(out, "out")?;
        let model = Model::load(&path(weights_path, "weights_path")?)?;
        *slot = open(model, options)?;
        Ok(())
    })
}

/// Like `delg_open`, with a tiny DELG model of random weights made from
/// `seed`: its features mean nothing, but it runs in moments, which is what
/// tests and examples need. Real retrieval needs trained weights.
///
/// # Safety
/// As `delg_open`.
#[no_mangle]
pub unsafe extern "C" fn delg_open_tiny_random(
    seed: u64,
    options: *const delg_options,
    out: *mut *mut delg_extractor,
) -> delg_status {
    guard("delg_open_tiny_random", || {
        let slot = output(out, "out")?;
        *slot = open(Model::tiny_random(seed)?, options)?;
        Ok(())
    })
}

/// Releases an extractor and its device. NULL is ignored.
///
/// # Safety
/// `extractor` comes from `delg_open*` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn delg_close(extractor: *mut delg_extractor) {
    if !extractor.is_null() {
        // SAFETY: the caller hands back a pointer from Box::into_raw.
        guard("delg_close", || {
            drop(unsafe { Box::from_raw(extractor) });
            Ok(())
        });
    }
}

/// Wraps `data` in the view C reads; the arrays stay where they are.
fn into_c(data: Features) -> *mut delg_features {
    let num_local = data.num_local();
    let view = delg_features {
        global_dim: data.global.len(),
        global: data.global.as_ptr(),
        num_local,
        local_dim: data.descriptors.len().checked_div(num_local).unwrap_or(0),
        descriptors: data.descriptors.as_ptr(),
        locations: data.locations.as_ptr(),
        scales: data.scales.as_ptr(),
        attention: data.attention.as_ptr(),
    };
    Box::into_raw(Box::new(OwnedFeatures { view, data })).cast()
}

/// Extracts the features of an image file (JPEG, PNG, WebP, BMP, TIFF or
/// GIF). On success `*out` holds them (release with `delg_features_free`);
/// on failure it is NULL.
///
/// # Safety
/// `extractor` from `delg_open*`, not used by another thread at the same
/// time; `path` a NUL-terminated string; `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn delg_extract_file(
    extractor: *mut delg_extractor,
    path: *const c_char,
    out: *mut *mut delg_features,
) -> delg_status {
    guard("delg_extract_file", || {
        let slot = output(out, "out")?;
        let handle = required_mut(extractor, "extractor")?;
        let file = self::path(path, "path")?;
        *slot = into_c(handle.extractor.extract_file(&file)?);
        Ok(())
    })
}

/// Copies a packed RGB image (3 bytes a pixel, rows `stride` bytes apart)
/// into an `RgbImage`, checking the sizes first.
fn rgb_image(rgb: *const u8, width: u32, height: u32, stride: usize) -> Result<RgbImage, Failure> {
    if width == 0 || height == 0 {
        return Err(Failure::invalid(format!(
            "the image is {width}x{height}: it has no pixels"
        )));
    }
    let row = width as usize * 3;
    if stride < row {
        return Err(Failure::invalid(format!(
            "stride {stride} is less than 3 * width = {row}: pass the distance in bytes \
             between the starts of two rows"
        )));
    }
    let span = stride
        .checked_mul(height as usize - 1)
        .and_then(|s| s.checked_add(row))
        .ok_or_else(|| {
            Failure::invalid(format!(
                "a {width}x{height} image with stride {stride} does not fit in memory"
            ))
        })?;
    let rgb = required(rgb, "rgb")?;
    // SAFETY: the caller promises `span` readable bytes (docs/c-api.md).
    let bytes = unsafe { std::slice::from_raw_parts(rgb, span) };
    let pixels: Vec<u8> = bytes
        .chunks(stride)
        .flat_map(|r| &r[..row])
        .copied()
        .collect();
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::Internal("RGB rows do not add up to the image".into()).into())
}

/// Extracts the features of an image in memory: `height` rows of `width`
/// RGB pixels (3 bytes each, R first), each row starting `stride` bytes after
/// the previous one (`stride >= 3 * width`). The pixels are copied; the
/// buffer may be reused once the call returns.
///
/// # Safety
/// `rgb` points to at least `stride * (height - 1) + 3 * width` readable
/// bytes; otherwise as `delg_extract_file`.
#[no_mangle]
pub unsafe extern "C" fn delg_extract_rgb(
    extractor: *mut delg_extractor,
    rgb: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    out: *mut *mut delg_features,
) -> delg_status {
    guard("delg_extract_rgb", || {
        let slot = output(out, "out")?;
        let handle = required_mut(extractor, "extractor")?;
        let image = rgb_image(rgb, width, height, stride)?;
        *slot = into_c(handle.extractor.extract(&image)?);
        Ok(())
    })
}

/// Releases features from `delg_extract_*`. NULL is ignored.
///
/// # Safety
/// `features` is the pointer a `delg_extract_*` call returned (not a copy
/// of the struct) and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn delg_features_free(features: *mut delg_features) {
    if !features.is_null() {
        guard("delg_features_free", || {
            // SAFETY: `into_c` made it from a Box<OwnedFeatures>, view first.
            drop(unsafe { Box::from_raw(features.cast::<OwnedFeatures>()) });
            Ok(())
        });
    }
}

/// `count` floats at `ptr` (`name` in messages); NULL is fine when empty.
fn floats(ptr: *const f32, count: usize, name: &str) -> Result<Vec<f32>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let first = required(ptr, name)?;
    // SAFETY: the struct promises `count` values (docs/c-api.md).
    Ok(unsafe { std::slice::from_raw_parts(first, count) }.to_vec())
}

/// The local features of a `delg_features` struct, read through its
/// pointers only, so a copy of the struct (or one the caller filled from
/// stored features) works as well as the library's own.
fn local_features(f: &delg_features, name: &str) -> Result<Features, Failure> {
    let values = f.num_local.checked_mul(f.local_dim).ok_or_else(|| {
        Failure::invalid(format!(
            "{name}: {} keypoints of {} values overflow",
            f.num_local, f.local_dim
        ))
    })?;
    if f.num_local > 0 && f.local_dim == 0 {
        return Err(Failure::invalid(format!(
            "{name} has {} keypoints but local_dim 0",
            f.num_local
        )));
    }
    Ok(Features {
        id: name.to_owned(),
        global: Vec::new(),
        descriptors: floats(f.descriptors, values, &format!("{name}->descriptors"))?,
        locations: floats(f.locations, 2 * f.num_local, &format!("{name}->locations"))?,
        scales: floats(f.scales, f.num_local, &format!("{name}->scales"))?,
        attention: vec![0.0; f.num_local],
    })
}

/// Matches B's local descriptors to A's (DELG's rule: nearest neighbour
/// below the distance threshold) and verifies the matches with RANSAC (an
/// affine model), as `delg-gpu match` does: `delg_match_with` with DELG's
/// settings. Runs on the CPU: no extractor needed, and safe from any thread.
///
/// # Safety
/// `a` and `b` point to features from `delg_extract_*` (or structs whose
/// pointers hold as many values as their counts say); `result` is valid.
#[no_mangle]
pub unsafe extern "C" fn delg_match(
    a: *const delg_features,
    b: *const delg_features,
    result: *mut delg_match_result,
) -> delg_status {
    guard("delg_match", || match_into(a, b, None, result))
}

/// `delg_match` with `params`' matching and RANSAC settings, as
/// `delg-gpu match --match-threshold --ratio-test --model
/// --residual-threshold --ransac-trials` take them; NULL means DELG's.
///
/// # Safety
/// As `delg_match`; `params` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn delg_match_with(
    a: *const delg_features,
    b: *const delg_features,
    params: *const delg_match_params,
    result: *mut delg_match_result,
) -> delg_status {
    // SAFETY: as in `required`; NULL means the defaults.
    guard("delg_match_with", || {
        match_into(a, b, unsafe { params.as_ref() }, result)
    })
}

fn match_into(
    a: *const delg_features,
    b: *const delg_features,
    params: Option<&delg_match_params>,
    result: *mut delg_match_result,
) -> Result<(), Failure> {
    let result = required_mut(result, "result")?;
    let a = local_features(required(a, "a")?, "a")?;
    let b = local_features(required(b, "b")?, "b")?;
    let (matching, ransac) = verify_params(params)?;
    let verified = match_features(&a, &b, &matching, &ransac)?;
    const IDENTITY: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    *result = delg_match_result {
        matches: verified.matches.len(),
        inliers: verified.inliers,
        has_transform: verified.transform.is_some(),
        transform: verified.transform.map_or(IDENTITY, |t| t.0),
    };
    Ok(())
}

/// The message of the last call on this thread that failed ("" if none).
/// Owned by the library; valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn delg_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The library's version and the commit it was built from, e.g.
/// "0.1.0 (commit 1a2b3c4d5e6f)". A static string.
#[no_mangle]
pub extern "C" fn delg_version() -> *const c_char {
    static VERSION: OnceLock<CString> = OnceLock::new();
    VERSION
        .get_or_init(|| CString::new(engine::VERSION).unwrap_or_default())
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: delg_last_error returns a valid C string.
        unsafe { CStr::from_ptr(delg_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard("delg_test", || panic!("the invariant broke"));
        assert_eq!(status, DELG_ERROR_PANIC);
        let message = last_error();
        assert!(
            message.starts_with("delg_test: internal error"),
            "{message}"
        );
        assert!(message.contains("the invariant broke"), "{message}");
    }

    #[test]
    fn null_arguments_are_refused_by_name() {
        let mut features: *mut delg_features = std::ptr::dangling_mut();
        let status =
            unsafe { delg_extract_file(std::ptr::null_mut(), c"x.jpg".as_ptr(), &mut features) };
        assert_eq!(status, DELG_ERROR_NULL_ARGUMENT);
        assert!(features.is_null(), "a failed call leaves *out NULL");
        assert_eq!(last_error(), "delg_extract_file: extractor is NULL");

        let status = unsafe {
            delg_open(
                std::ptr::null(),
                std::ptr::null(),
                &mut std::ptr::null_mut(),
            )
        };
        assert_eq!(status, DELG_ERROR_NULL_ARGUMENT);
        assert_eq!(last_error(), "delg_open: weights_path is NULL");

        let status =
            unsafe { delg_match(std::ptr::null(), std::ptr::null(), std::ptr::null_mut()) };
        assert_eq!(status, DELG_ERROR_NULL_ARGUMENT);
        assert_eq!(last_error(), "delg_match: result is NULL");
        unsafe { delg_close(std::ptr::null_mut()) };
        unsafe { delg_features_free(std::ptr::null_mut()) };
    }

    #[test]
    fn a_missing_weight_file_is_a_file_error_naming_it() {
        let mut extractor = std::ptr::null_mut();
        let status = unsafe {
            delg_open(
                c"/nonexistent/w.safetensors".as_ptr(),
                std::ptr::null(),
                &mut extractor,
            )
        };
        assert_eq!(status, DELG_ERROR_FILE);
        assert!(extractor.is_null());
        let message = last_error();
        assert!(
            message.starts_with("delg_open: /nonexistent/w.safetensors"),
            "{message}"
        );
    }

    #[test]
    fn rgb_buffers_are_checked_before_they_are_read() {
        let reason = |w, h, stride| match rgb_image(std::ptr::null(), w, h, stride) {
            Err(f) => (f.status, f.message),
            Ok(_) => panic!("{w}x{h} stride {stride} accepted"),
        };
        assert_eq!(reason(0, 4, 12).0, DELG_ERROR_INVALID_ARGUMENT);
        let (status, message) = reason(4, 4, 11);
        assert_eq!(status, DELG_ERROR_INVALID_ARGUMENT);
        assert!(
            message.contains("stride 11 is less than 3 * width = 12"),
            "{message}"
        );
        assert_eq!(reason(4, 4, usize::MAX).0, DELG_ERROR_INVALID_ARGUMENT);
        // Sizes that add up reach the pointer check.
        assert_eq!(reason(4, 4, 16).1, "rgb is NULL");
    }

    #[test]
    fn padded_rows_are_unpadded() {
        // 2x2 pixels, rows 8 bytes apart (2 bytes of padding), the last row unpadded.
        let buffer = [1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12];
        let image = rgb_image(buffer.as_ptr(), 2, 2, 8).unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(image.as_raw(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn matching_reads_copies_of_the_struct_and_refuses_inconsistent_ones() {
        // Three keypoints of a 2-d descriptor, matched with themselves.
        let descriptors = [1.0f32, 0.0, 0.0, 1.0, 0.7, 0.7];
        let locations = [10.0f32, 20.0, 30.0, 5.0, 40.0, 60.0];
        let scales = [1.0f32; 3];
        let view = delg_features {
            global_dim: 0,
            global: std::ptr::null(),
            num_local: 3,
            local_dim: 2,
            descriptors: descriptors.as_ptr(),
            locations: locations.as_ptr(),
            scales: scales.as_ptr(),
            attention: std::ptr::null(),
        };
        let mut result = delg_match_result {
            matches: 99,
            inliers: 99,
            has_transform: true,
            transform: [[0.0; 3]; 3],
        };
        assert_eq!(
            unsafe { delg_match(&view, &view, &mut result) },
            DELG_OK,
            "{}",
            last_error()
        );
        // Three pairs are below RANSAC's four: matched, not verified.
        assert_eq!(
            (result.matches, result.inliers, result.has_transform),
            (3, 0, false)
        );
        assert_eq!(
            result.transform,
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        );

        let broken = delg_features {
            descriptors: std::ptr::null(),
            ..view
        };
        assert_eq!(
            unsafe { delg_match(&view, &broken, &mut result) },
            DELG_ERROR_NULL_ARGUMENT
        );
        assert_eq!(last_error(), "delg_match: b->descriptors is NULL");
    }

    #[test]
    fn match_params_change_the_verdict_and_bad_ones_are_refused() {
        // Five keypoints with one-hot descriptors; B's lean 0.1 towards the
        // next one, so each is 0.1 from its own in A and ~1 from the others.
        let dim = 5;
        let a_desc: Vec<f32> = (0..dim * dim)
            .map(|i| if i / dim == i % dim { 1.0 } else { 0.0 })
            .collect();
        let mut b_desc = a_desc.clone();
        for k in 0..dim {
            b_desc[k * dim + (k + 1) % dim] = 0.1;
        }
        let locations = [10.0f32, 20.0, 30.0, 5.0, 40.0, 60.0, 70.0, 15.0, 55.0, 45.0];
        let scales = [1.0f32; 5];
        let view = |descriptors: &[f32]| delg_features {
            global_dim: 0,
            global: std::ptr::null(),
            num_local: dim,
            local_dim: dim,
            descriptors: descriptors.as_ptr(),
            locations: locations.as_ptr(),
            scales: scales.as_ptr(),
            attention: std::ptr::null(),
        };
        let (a, b) = (view(&a_desc), view(&b_desc));
        let run = |params: *const delg_match_params| {
            let mut result = delg_match_result {
                matches: 99,
                inliers: 99,
                has_transform: false,
                transform: [[0.0; 3]; 3],
            };
            let status = unsafe { delg_match_with(&a, &b, params, &mut result) };
            (status, result.matches, result.inliers)
        };
        let zero = delg_match_params {
            match_threshold: 0.0,
            ratio_test: false,
            homography: false,
            residual_threshold: 0.0,
            ransac_trials: 0,
        };
        // NULL and all-zero are DELG's settings: every keypoint verifies.
        assert_eq!(run(std::ptr::null()), (DELG_OK, 5, 5), "{}", last_error());
        assert_eq!(run(&zero), (DELG_OK, 5, 5));
        let strict = delg_match_params {
            match_threshold: 0.05,
            ..zero
        };
        assert_eq!(run(&strict), (DELG_OK, 0, 0));
        let ratio = delg_match_params {
            match_threshold: 0.05,
            ratio_test: true,
            ..zero
        };
        assert_eq!(run(&ratio), (DELG_OK, 0, 0));
        let homography = delg_match_params {
            homography: true,
            ..zero
        };
        assert_eq!(run(&homography), (DELG_OK, 5, 5));
        for (bad, field) in [
            (
                delg_match_params {
                    match_threshold: f32::NAN,
                    ..zero
                },
                "params->match_threshold",
            ),
            (
                delg_match_params {
                    residual_threshold: -1.0,
                    ..zero
                },
                "params->residual_threshold",
            ),
            (
                delg_match_params {
                    ransac_trials: MAX_RANSAC_TRIALS + 1,
                    ..zero
                },
                "params->ransac_trials",
            ),
        ] {
            assert_eq!(run(&bad).0, DELG_ERROR_INVALID_ARGUMENT, "{field}");
            assert!(
                last_error().starts_with("delg_match_with: "),
                "{}",
                last_error()
            );
            assert!(last_error().contains(field), "{}", last_error());
        }
    }

    #[test]
    fn extractors_may_move_between_threads() {
        fn sendable<T: Send>() {}
        sendable::<delg_extractor>();
    }

    #[test]
    fn the_version_names_the_commit() {
        let version = unsafe { CStr::from_ptr(delg_version()) }
            .to_string_lossy()
            .into_owned();
        assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
        assert!(version.contains("(commit "), "{version}");
    }
}
