//! WGSL sources and their specialisation. Shaders live in `shaders/<family>.wgsl`
//! and are embedded at build time. A tiny preprocessor specialises them:
//! `#include "name"`, `#if NAME` / `#else` / `#endif` on defines whose value is
//! not "0"/"false", and `{{NAME}}` substitution. Every specialisation a kernel
//! can request is a `ShaderSpec`, and the same `ShaderSpec::source` feeds both
//! the pipeline cache and the naga validation tests.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

pub fn raw_source(name: &str) -> Result<&'static str> {
    SHADER_SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Shader {
            name: name.into(),
            detail: "no such file in shaders/".into(),
        })
}

/// One compiled kernel: a shader file, an entry point and its defines.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShaderSpec {
    pub file: &'static str,
    pub entry: &'static str,
    pub defines: BTreeMap<String, String>,
}

impl ShaderSpec {
    pub fn new(file: &'static str, entry: &'static str) -> Self {
        ShaderSpec {
            file,
            entry,
            defines: BTreeMap::new(),
        }
    }

    pub fn def(mut self, key: &str, value: impl ToString) -> Self {
        self.defines.insert(key.to_string(), value.to_string());
        self
    }

    /// Feature flags the compiled source needs from the device, read off the
    /// code itself (naga 30 does not accept `enable subgroups;` yet, so the
    /// subgroup builtins are what give it away).
    pub fn required_features(&self) -> Result<wgpu::Features> {
        let src = self.source()?;
        let code: String = src
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut f = wgpu::Features::empty();
        if code.contains("subgroup") {
            f |= wgpu::Features::SUBGROUP;
        }
        if code.contains("enable f16;") {
            f |= wgpu::Features::SHADER_F16;
        }
        Ok(f)
    }

    pub fn label(&self) -> String {
        let defs: Vec<String> = self
            .defines
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}::{}[{}]", self.file, self.entry, defs.join(","))
    }

    /// The exact WGSL handed to the device.
    pub fn source(&self) -> Result<String> {
        let mut out = String::new();
        expand(self.file, &self.defines, &mut out, 0)?;
        Ok(out)
    }
}

fn truthy(defines: &BTreeMap<String, String>, key: &str) -> bool {
    defines.get(key).is_some_and(|v| v != "0" && v != "false")
}

fn expand(
    file: &str,
    defines: &BTreeMap<String, String>,
    out: &mut String,
    depth: usize,
) -> Result<()> {
    let err = |detail: String| Error::Shader {
        name: file.to_string(),
        detail,
    };
    if depth > 8 {
        return Err(err("#include nested too deeply".into()));
    }
    let src = raw_source(file)?;
    // Stack of (this branch active, any branch taken) per open #if.
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|(a, _)| *a);
    for (lineno, line) in src.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#if ") {
            let cond = rest.trim();
            let (neg, key) = cond
                .strip_prefix('!')
                .map(|k| (true, k))
                .unwrap_or((false, cond));
            let v = truthy(defines, key.trim()) != neg;
            stack.push((v, v));
        } else if t == "#else" {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(format!("line {}: #else without #if", lineno + 1)))?;
            *top = (!top.1, true);
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| err(format!("line {}: #endif without #if", lineno + 1)))?;
        } else if !active(&stack) {
            continue;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            let name = rest.trim().trim_matches('"');
            expand(name, defines, out, depth + 1)?;
        } else {
            out.push_str(
                &substitute(line, defines)
                    .map_err(|k| err(format!("line {}: undefined {{{{{k}}}}}", lineno + 1)))?,
            );
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err("unterminated #if".into()));
    }
    Ok(())
}

fn substitute(
    line: &str,
    defines: &BTreeMap<String, String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| after.to_string())?;
        let key = after[..end].trim();
        out.push_str(defines.get(key).ok_or_else(|| key.to_string())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses and validates a WGSL source with naga, with every capability our
/// optional features can enable.
pub fn validate(label: &str, src: &str) -> Result<naga::Module> {
    let err = |detail: String| Error::Shader {
        name: label.into(),
        detail,
    };
    let module = naga::front::wgsl::parse_str(src).map_err(|e| err(e.emit_to_string(src)))?;
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    v.validate(&module)
        .map_err(|e| err(e.emit_to_string(src)))?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_and_conditionals() {
        let mut d = BTreeMap::new();
        d.insert("A".to_string(), "7".to_string());
        assert_eq!(
            substitute("x = {{A}} + {{ A }};", &d).unwrap(),
            "x = 7 + 7;"
        );
        assert_eq!(substitute("x = {{B}};", &d).unwrap_err(), "B");
    }

    #[test]
    fn every_file_is_utf8_and_named() {
        assert!(!SHADER_SOURCES.is_empty());
        for (name, src) in SHADER_SOURCES {
            assert!(!src.trim().is_empty(), "{name} is empty");
        }
    }
}
