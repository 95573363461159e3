//! The per-user folders delg-gpu keeps files in, each by its platform's
//! convention and each overridable by one environment variable.

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserDir {
    /// Fetched model weights: kept until the user removes them.
    Weights,
    /// Compiled GPU pipelines: safe to delete at any time.
    Pipelines,
}

impl UserDir {
    /// The variable that names the folder itself, bypassing the convention.
    pub fn env_var(self) -> &'static str {
        match self {
            UserDir::Weights => "DELG_GPU_DATA_DIR",
            UserDir::Pipelines => "DELG_GPU_CACHE_DIR",
        }
    }

    /// The folder, or `None` when neither the variable nor a home directory is set.
    pub fn path(self) -> Option<PathBuf> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(dir) = var(self.env_var()) {
            return Some(dir);
        }
        // (Windows variable, macOS folder under HOME, XDG variable, its
        // default under HOME, our sub-folder)
        let (windows, macos, xdg, xdg_default, leaf) = match self {
            UserDir::Weights => (
                "APPDATA",
                "Library/Application Support",
                "XDG_DATA_HOME",
                ".local/share",
                "weights",
            ),
            UserDir::Pipelines => (
                "LOCALAPPDATA",
                "Library/Caches",
                "XDG_CACHE_HOME",
                ".cache",
                "pipelines",
            ),
        };
        let home = || var("HOME");
        let base = if cfg!(windows) {
            var(windows)
        } else if cfg!(target_os = "macos") {
            home().map(|h| h.join(macos))
        } else {
            var(xdg).or_else(|| home().map(|h| h.join(xdg_default)))
        };
        base.map(|b| b.join("delg-gpu").join(leaf))
    }
}
