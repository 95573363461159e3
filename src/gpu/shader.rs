//! WGSL sources and their specialisation. Shaders live in `shaders/<family>.wgsl`
//! and are embedded at build time. A tiny preprocessor specialises them:
//! `#include "name"`, `#if NAME` / `#else` / `#endif` on defines whose value is
//! not "0"/"false", `{{NAME}}` substitution, and `#for NAME in A..B` /
//! `#endfor`, which repeats its lines with `{{NAME}}` = A, .., B-1 (bounds may
//! be `{{DEFINE}}`s): kernels whose unrolling depends on a define, such as
//! the subgroup-broadcast steps whose lane index must be a constant. Every specialisation a kernel
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
    if depth > 8 {
        return Err(Error::Shader {
            name: file.to_string(),
            detail: "#include nested too deeply".into(),
        });
    }
    let lines: Vec<&str> = raw_source(file)?.lines().collect();
    expand_lines(file, &lines, 0, defines, out, depth)
}

/// Expands `lines` (which start at line `first` of `file`, for messages).
fn expand_lines(
    file: &str,
    lines: &[&str],
    first: usize,
    defines: &BTreeMap<String, String>,
    out: &mut String,
    depth: usize,
) -> Result<()> {
    let err = |detail: String| Error::Shader {
        name: file.to_string(),
        detail,
    };
    // Stack of (this branch active, any branch taken) per open #if.
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|(a, _)| *a);
    let mut i = 0;
    while i < lines.len() {
        let (line, lineno) = (lines[i], first + i + 1);
        i += 1;
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
                .ok_or_else(|| err(format!("line {lineno}: #else without #if")))?;
            *top = (!top.1, true);
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| err(format!("line {lineno}: #endif without #if")))?;
        } else if !active(&stack) {
            // An inactive #for's body and #endfor are skipped line by line.
            continue;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            let name = rest.trim().trim_matches('"');
            expand(name, defines, out, depth + 1)?;
        } else if let Some(rest) = t.strip_prefix("#for ") {
            let (var, range) =
                for_header(rest, defines).map_err(|e| err(format!("line {lineno}: {e}")))?;
            let end = matching_endfor(&lines[i..])
                .ok_or_else(|| err(format!("line {lineno}: #for without #endfor")))?;
            let body = &lines[i..i + end];
            let mut inner = defines.clone();
            for v in range {
                inner.insert(var.clone(), v.to_string());
                expand_lines(file, body, first + i, &inner, out, depth)?;
            }
            i += end + 1;
        } else if t == "#endfor" {
            return Err(err(format!("line {lineno}: #endfor without #for")));
        } else {
            out.push_str(
                &substitute(line, defines)
                    .map_err(|k| err(format!("line {lineno}: undefined {{{{{k}}}}}")))?,
            );
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err("unterminated #if".into()));
    }
    Ok(())
}

/// `NAME in A..B` of a `#for` line, its bounds substituted.
fn for_header(
    rest: &str,
    defines: &BTreeMap<String, String>,
) -> std::result::Result<(String, std::ops::Range<u32>), String> {
    let rest = substitute(rest, defines).map_err(|k| format!("undefined {{{{{k}}}}}"))?;
    let parsed = rest.split_once(" in ").and_then(|(var, range)| {
        let (a, b) = range.trim().split_once("..")?;
        Some((var.trim(), a.trim().parse().ok()?, b.trim().parse().ok()?))
    });
    match parsed {
        Some((var, a, b)) if !var.is_empty() => Ok((var.to_string(), a..b)),
        _ => Err(format!("expected `#for NAME in A..B`, got `#for {rest}`")),
    }
}

/// Index in `lines` of the `#endfor` closing a `#for` just before them.
fn matching_endfor(lines: &[&str]) -> Option<usize> {
    let mut open = 0usize;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with("#for ") {
            open += 1;
        } else if t == "#endfor" {
            if open == 0 {
                return Some(i);
            }
            open -= 1;
        }
    }
    None
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
    fn for_repeats_lines_with_nested_loops_and_conditionals() {
        let mut d = BTreeMap::new();
        d.insert("N".to_string(), "3".to_string());
        d.insert("ODD".to_string(), "1".to_string());
        let lines = [
            "#for I in 0..{{N}}",
            "#for J in 1..2",
            "a{{I}}{{J}}",
            "#endfor",
            "#if ODD",
            "b{{I}}",
            "#endif",
            "#endfor",
            "#if !ODD",
            "#for K in 0..9",
            "never",
            "#endfor",
            "#endif",
        ];
        let mut out = String::new();
        expand_lines("t", &lines, 0, &d, &mut out, 0).unwrap();
        assert_eq!(out, "a01\nb0\na11\nb1\na21\nb2\n");
        for (bad, why) in [
            (&["#for I in 0..2", "x"][..], "without #endfor"),
            (&["#endfor"][..], "without #for"),
            (
                &["#for I 0..2", "#endfor"][..],
                "expected `#for NAME in A..B`",
            ),
            (&["#for I in 0..{{M}}", "#endfor"][..], "undefined {{M}}"),
        ] {
            let e = expand_lines("t", bad, 0, &d, &mut String::new(), 0).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_file_is_utf8_and_named() {
        assert!(!SHADER_SOURCES.is_empty());
        for (name, src) in SHADER_SOURCES {
            assert!(!src.trim().is_empty(), "{name} is empty");
        }
    }
}
