//! `delg-gpu weights list | get NAME`: the public checkpoints of
//! weights/registry.toml, downloaded (resuming a cut download), checked
//! against their SHA-256, unpacked and converted through `weights import`,
//! and kept in the user's data directory, where `--weights NAME` finds them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::user_dirs::UserDir;
use crate::jobs::weights_import::{import, Arch, ImportOptions, LayoutChoice};

/// The registry the binary carries.
const BUILT_IN: &str = include_str!("../../weights/registry.toml");
const BUILT_IN_NAME: &str = "weights/registry.toml (built in)";
/// Replaces the built-in registry (tests point it at a local server).
pub const REGISTRY_ENV: &str = "DELG_GPU_REGISTRY";
/// A registry file larger than this is not one.
const MAX_REGISTRY_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: String,
    pub description: String,
    pub arch: String,
    pub format: String,
    pub url: String,
    pub page: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub sha256_prefix: String,
    #[serde(default)]
    pub size: u64,
    pub licence: String,
    #[serde(default)]
    pub score_threshold: Option<f64>,
    #[serde(default)]
    pub dilations: Option<Vec<usize>>,
    #[serde(default)]
    pub manual: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    model: Vec<Model>,
}

/// How a download becomes a delg-gpu weight file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    SavedModelTarGz,
    TorchDelg,
    TorchDolg,
    /// An ImageNet backbone: imported as a backbone file, heads come at training.
    TorchBackbone,
}

impl Format {
    fn parse(text: &str) -> Option<Format> {
        Some(match text {
            "tf2-savedmodel-tar-gz" => Format::SavedModelTarGz,
            "torch-delg" => Format::TorchDelg,
            "torch-dolg" => Format::TorchDolg,
            "torch-backbone" => Format::TorchBackbone,
            _ => return None,
        })
    }
}

pub struct Registry {
    pub source: String,
    pub models: Vec<Model>,
}

impl Registry {
    /// The registry named by `path`, else by $DELG_GPU_REGISTRY, else the built-in one.
    pub fn load(path: Option<&Path>) -> Result<Registry> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(REGISTRY_ENV).map(PathBuf::from));
        let Some(path) = path else {
            return Registry::parse(BUILT_IN, BUILT_IN_NAME);
        };
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut text = String::new();
        file.take(MAX_REGISTRY_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(&path, e))?;
        Registry::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, source: &str) -> Result<Registry> {
        let bad = |reason: String| Error::file(source, reason);
        let file: RegistryFile =
            toml::from_str(text).map_err(|e| bad(format!("not a weights registry: {e}")))?;
        for (i, m) in file.model.iter().enumerate() {
            if Format::parse(&m.format).is_none() {
                return Err(bad(format!(
                    "model '{}': unknown format '{}' (tf2-savedmodel-tar-gz, torch-delg, torch-dolg, torch-backbone)",
                    m.name, m.format
                )));
            }
            let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
            if !(m.sha256.is_empty() || m.sha256.len() == 64 && hex(&m.sha256))
                || !hex(&m.sha256_prefix)
                || m.sha256_prefix.len() > 64
            {
                return Err(bad(format!("model '{}': sha256 is not hex", m.name)));
            }
            let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
            if m.name.is_empty() || !m.name.chars().all(plain) || m.name.starts_with('.') {
                return Err(bad(format!(
                    "model {}: '{}' is not a plain name (letters, digits, - _ .)",
                    i + 1,
                    m.name
                )));
            }
        }
        Ok(Registry {
            source: source.into(),
            models: file.model,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    fn get(&self, name: &str) -> Result<&Model> {
        self.find(name).ok_or_else(|| {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            Error::InvalidArgument(format!(
                "no model '{name}' in {}; known: {}",
                self.source,
                names.join(", ")
            ))
        })
    }
}

/// Where fetched weights are kept: $DELG_GPU_DATA_DIR, else the platform's
/// data directory (XDG on Linux) under delg-gpu/weights.
pub fn data_dir() -> Result<PathBuf> {
    UserDir::Weights.path().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "no home directory to keep weights in: set {} or pass --out",
            UserDir::Weights.env_var()
        ))
    })
}

/// Where `get NAME` keeps the model.
fn kept_path(model: &Model) -> Result<PathBuf> {
    Ok(data_dir()?.join(format!("{}.safetensors", model.name)))
}

/// The weight file `--weights` means: the path itself when it exists or
/// names no model of the registry (the command then reports the missing
/// file), else the fetched model of that name.
pub fn resolve(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let registry = Registry::load(None)?;
    let Some(model) = registry.find(&name) else {
        return Ok(arg.to_path_buf());
    };
    let kept = kept_path(model)?;
    if !kept.exists() {
        return Err(Error::InvalidArgument(format!(
            "model '{name}' is not fetched yet: run `delg-gpu weights get {name}`"
        )));
    }
    Ok(kept)
}

/// The file in the data directory naming the default model.
const DEFAULT_FILE: &str = "default-model";

/// Makes `name` (a fetched model of the registry, or a weight file) what
/// `extract`, `eval` and `match` use without `--weights`.
pub fn set_default(name: &str) -> Result<Vec<String>> {
    let path = resolve(Path::new(name))?;
    if !path.is_file() {
        return Err(Error::InvalidArgument(format!(
            "'{name}' is neither a weight file nor a model of `delg-gpu weights list`"
        )));
    }
    let stored = if path == Path::new(name) {
        std::path::absolute(&path)
            .map_err(|e| Error::io(&path, e))?
            .display()
            .to_string()
    } else {
        name.to_string()
    };
    let dir = data_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = dir.join(DEFAULT_FILE);
    std::fs::write(&file, format!("{stored}\n")).map_err(|e| Error::io(&file, e))?;
    Ok(vec![format!(
        "default model: {stored} ({})",
        path.display()
    )])
}

/// The weights of the default model, or the one line that says how to get one.
pub fn default_weights() -> Result<PathBuf> {
    let file = data_dir()?.join(DEFAULT_FILE);
    let fetch = "fetch one with `delg-gpu weights get delg-r50-gldv2 --accept-unverified` and make it the default with `delg-gpu weights default delg-r50-gldv2`";
    let text = match std::fs::read(&file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
            .trim()
            .to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&file, e)),
    };
    if text.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no --weights given and no default model: {fetch}"
        )));
    }
    let path = resolve(Path::new(&text))?;
    if !path.is_file() {
        return Err(Error::file(
            &file,
            format!("names '{text}' as the default model, which is not there: {fetch}"),
        ));
    }
    Ok(path)
}

/// One line per model: name, whether it is fetched, what it is.
pub fn list(registry: &Registry) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for m in &registry.models {
        let kept = kept_path(m)?;
        let state = if kept.exists() {
            "fetched".to_string()
        } else if m.url.is_empty() {
            "by hand".to_string()
        } else {
            "".to_string()
        };
        lines.push(format!(
            "{:<20} {:<8} {} [{}]",
            m.name, state, m.description, m.licence
        ));
    }
    Ok(lines)
}

pub struct GetOptions {
    pub name: String,
    pub out: Option<PathBuf>,
    /// Use a download whose SHA-256 the registry does not record.
    pub accept_unverified: bool,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Downloads, verifies and converts one model; returns the lines to show.
pub fn get(registry: &Registry, opts: &GetOptions) -> Result<Vec<String>> {
    let model = registry.get(&opts.name)?;
    let format = Format::parse(&model.format).expect("checked when loaded");
    if model.url.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "'{}' has no direct download: {}",
            model.name, model.manual
        )));
    }
    if model.sha256.is_empty() && model.sha256_prefix.is_empty() && !opts.accept_unverified {
        return Err(Error::InvalidArgument(format!(
            "{} records no SHA-256 for '{}', so its download cannot be verified; pass --accept-unverified to use it anyway (the digest is printed, to be recorded in the registry)",
            registry.source, model.name
        )));
    }
    let out = match &opts.out {
        Some(out) => out.clone(),
        None => kept_path(model)?,
    };
    let downloads = data_dir()?.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    let file_name = model.url.rsplit('/').next().unwrap_or("download");
    let file_name = if file_name.is_empty() {
        "download"
    } else {
        file_name
    };
    let download = downloads.join(format!("{}-{file_name}", model.name));
    let fix = manual_fix(model, &download);
    fetch(&model.url, &download, model.size, opts.progress, &fix)?;
    let digest = sha256_hex(&download)?;
    let expected = if model.sha256.is_empty() {
        &model.sha256_prefix
    } else {
        &model.sha256
    };
    if !digest.starts_with(&expected.to_ascii_lowercase()) {
        std::fs::remove_file(&download).map_err(|e| Error::io(&download, e))?;
        return Err(Error::file(
            &download,
            format!(
                "SHA-256 {digest}, but {} records {expected} for '{}': a corrupted or changed download (removed; run the command again)",
                registry.source, model.name
            ),
        ));
    }
    let mut lines = vec![format!(
        "{}: SHA-256 {digest}{}",
        download.display(),
        if expected.is_empty() {
            " (not in the registry: record it there)"
        } else {
            " verified"
        }
    )];
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let import_opts = |src: PathBuf, arch: Arch| ImportOptions {
        src,
        out: out.clone(),
        arch: Some(arch),
        layout: LayoutChoice::Auto,
        dilations: model.dilations.clone().unwrap_or_else(|| vec![6, 12, 18]),
        keep_classifier: false,
        score_threshold: model.score_threshold,
    };
    match format {
        // A backbone is kept as one (import gives it no heads): `train --init NAME`.
        Format::TorchDelg | Format::TorchBackbone => {
            lines.extend(import(&import_opts(download.clone(), Arch::Delg))?)
        }
        Format::TorchDolg => lines.extend(import(&import_opts(download.clone(), Arch::Dolg))?),
        Format::SavedModelTarGz => {
            let unpacked = downloads.join(format!("{}.unpacked", model.name));
            unpack_tar_gz(&download, &unpacked)?;
            let saved_model = find_saved_model(&unpacked).ok_or_else(|| {
                Error::file(
                    &download,
                    "holds no SavedModel (no saved_model.pb with variables/ beside it)",
                )
            })?;
            let converted = import(&import_opts(saved_model, Arch::Delg));
            std::fs::remove_dir_all(&unpacked).map_err(|e| Error::io(&unpacked, e))?;
            lines.extend(converted?);
        }
    }
    Ok(lines)
}

/// What to do by hand when the download fails.
fn manual_fix(model: &Model, download: &Path) -> String {
    let format = Format::parse(&model.format).expect("checked when loaded");
    let then = match format {
        Format::SavedModelTarGz => {
            let tau = model
                .score_threshold
                .map(|t| format!(" --score-threshold {t}"))
                .unwrap_or_default();
            format!("unpack it (tar xzf) and run `delg-gpu weights import DIR{tau} --out {}.safetensors` on the folder holding saved_model.pb", model.name)
        }
        Format::TorchDelg => format!(
            "run `delg-gpu weights import FILE --arch delg --out {}.safetensors`",
            model.name
        ),
        Format::TorchBackbone => format!(
            "run `delg-gpu weights import FILE --arch delg --out {0}.safetensors` and train from it (`delg-gpu train --init {0}.safetensors`)",
            model.name
        ),
        Format::TorchDolg => format!(
            "run `delg-gpu weights import FILE --arch dolg --out {}.safetensors`",
            model.name
        ),
    };
    format!(
        "fetch it by hand (curl -C - -o {} {}), then {then}",
        download.display(),
        model.url
    )
}

/// Downloads `url` into `dest`, resuming from the bytes `dest` already holds.
fn fetch(url: &str, dest: &Path, size: u64, progress: bool, fix: &str) -> Result<()> {
    let failed = |reason: String| Error::Download {
        url: url.into(),
        reason,
        fix: fix.into(),
    };
    let have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    if size > 0 && have == size {
        return Ok(()); // complete: the checksum decides
    }
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled connection fails; a slow but moving one does not.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let resume = match status {
        206 => true,
        200 => false,
        // The range starts at the end: the file is whole already.
        416 if have > 0 => return Ok(()),
        other => return Err(failed(format!("the server answered HTTP {other}"))),
    };
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resume)
        .truncate(!resume)
        .open(dest)
        .map_err(|e| Error::io(dest, e))?;
    let start = if resume { have } else { 0 };
    let total = length.map(|n| n + start).or((size > 0).then_some(size));
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_position(start);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = start;
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            failed(format!(
                "{e} after {written} bytes (run the command again to resume)"
            ))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(|e| Error::io(dest, e))?;
        written += n as u64;
        bar.set_position(written);
        if size > 0 && written > size {
            return Err(failed(format!(
                "more than the {size} bytes the registry records"
            )));
        }
    }
    bar.finish_and_clear();
    file.sync_all().map_err(|e| Error::io(dest, e))?;
    if let Some(total) = total.filter(|&t| written != t) {
        return Err(failed(format!(
            "the connection ended after {written} of {total} bytes (run the command again to resume)"
        )));
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Unpacks the regular files and directories of a .tar.gz into `dir`
/// (replaced), refusing any entry that would land outside it.
fn unpack_tar_gz(archive: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let bad = |reason: String| Error::file(archive, reason);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a .tar.gz: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue; // links and devices: a SavedModel has none
        }
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry with a bad name: {e}")))?
            .into_owned();
        let inside = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside {
            return Err(bad(format!(
                "entry '{}' would land outside the folder it is unpacked in",
                path.display()
            )));
        }
        let target = dir.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut out = File::create(&target).map_err(|e| Error::io(&target, e))?;
        std::io::copy(&mut entry, &mut out)
            .map_err(|e| bad(format!("'{}': {e}", path.display())))?;
    }
    Ok(())
}

/// The first directory (breadth first, a few levels deep) holding a SavedModel.
fn find_saved_model(dir: &Path) -> Option<PathBuf> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for d in level {
            if d.join("saved_model.pb").exists() && d.join("variables/variables.index").exists() {
                return Some(d);
            }
            let Ok(read) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut subdirs: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subdirs.sort();
            next.extend(subdirs);
        }
        level = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_registry_parses_and_names_each_model_once() {
        let registry = Registry::parse(BUILT_IN, BUILT_IN_NAME).unwrap();
        let mut names: Vec<&str> = registry.models.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"delg-r50-gldv2"));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for m in &registry.models {
            assert!(
                m.url.is_empty() != m.manual.is_empty(),
                "{}: a url or a manual way",
                m.name
            );
        }
    }

    #[test]
    fn registries_with_unknown_formats_or_odd_names_are_refused() {
        let entry = |name: &str, format: &str| {
            format!("[[model]]\nname = \"{name}\"\ndescription = \"\"\narch = \"delg\"\nformat = \"{format}\"\nurl = \"\"\npage = \"\"\nlicence = \"\"\n")
        };
        assert!(Registry::parse(&entry("a", "torch-delg"), "r").is_ok());
        let e = Registry::parse(&entry("a", "zip"), "r")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown format 'zip'"), "{e}");
        let e = Registry::parse(&entry("../x", "torch-delg"), "r")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a plain name"), "{e}");
        let e = Registry::parse("[[model]]\nname = 3\n", "r")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("r: not a weights registry"), "{e}");
    }
}
