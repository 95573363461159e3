//! The shared-memory (tiled) kernels exist for GPUs this project cannot run
//! on: Metal and DX12 among them. What their design needs must survive naga's
//! translation, so it is checked in the MSL and HLSL naga generates from every
//! tiled specialisation of the shader registry:
//! - workgroup memory declared (`threadgroup` / `groupshared`);
//! - two workgroup barriers (`threadgroup_barrier` /
//!   `GroupMemoryBarrierWithGroupSync`) after the first tile store;
//! - the multiply-accumulate loop (the outermost loop that multiplies from the
//!   tiles and stores none of them; the K loop around it, which stages the
//!   tiles, must hold a barrier) free of branches other than the loop control
//!   naga emits, and calling no shader function, so no per-element bounds
//!   check hides there or in a helper.
//!
//! The `VEC4=1` specialisations (every tiled config has one, chosen where the
//! layout allows) must load whole vec4s from both operand buffers (`float4`
//! or `half4` in MSL, `Load4` in HLSL), and the scalar ones none.
//!
//! The subgroup-broadcast variants are checked to lower to the backends' lane
//! exchange (`simd_broadcast`/`simd_shuffle` in MSL, `WaveReadLaneAt` in HLSL).

use delg_gpu::gpu::shader::validate;
use delg_gpu::gpu::shader::ShaderSpec;
use delg_gpu::ops::all_shader_specs;

mod naga_out;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Msl,
    Hlsl,
}

impl Backend {
    fn barrier(self) -> &'static str {
        match self {
            Backend::Msl => "threadgroup_barrier(metal::mem_flags::mem_threadgroup)",
            Backend::Hlsl => "GroupMemoryBarrierWithGroupSync()",
        }
    }

    /// How a declaration of workgroup variable `name` reads: MSL passes it to
    /// the kernel as a `threadgroup` reference, HLSL declares it `groupshared`.
    fn declares_workgroup(self, code: &str, name: &str) -> bool {
        code.lines().any(|l| {
            let l = l.trim();
            let words: Vec<&str> = l
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            let qualifier = match self {
                Backend::Msl => "threadgroup",
                Backend::Hlsl => "groupshared",
            };
            words.first() == Some(&qualifier) && words.contains(&name)
        })
    }
}

struct Generated {
    module: naga::Module,
    msl: String,
    hlsl: String,
}

fn generate(spec: &ShaderSpec) -> Generated {
    let label = spec.label();
    let src = spec.source().unwrap_or_else(|e| panic!("{e}"));
    translate(&label, &src)
}

/// MSL and HLSL of WGSL `src`.
fn translate(label: &str, src: &str) -> Generated {
    let module = validate(label, src).unwrap_or_else(|e| panic!("{e}"));
    let info = naga_out::info(label, &module);
    let msl = naga_out::msl(label, &module, &info);
    let hlsl = naga_out::hlsl(label, &module, &info);
    Generated { module, msl, hlsl }
}

/// The text of the function named `name`, from its name to the brace that
/// closes its body; None when the backend did not write it (or renamed it).
fn function_text<'a>(code: &'a str, name: &str) -> Option<&'a str> {
    let start = word_positions(code, name)
        .find(|&i| code[i + name.len()..].trim_start().starts_with('('))?;
    let open = start + code[start..].find('{')?;
    Some(&code[start..=matching(code, open)])
}

/// Index of the bracket closing the one at `open` (`(`, `[` or `{`).
fn matching(code: &str, open: usize) -> usize {
    let bytes = code.as_bytes();
    let (o, c) = match bytes[open] {
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        b'{' => (b'{', b'}'),
        other => panic!("no bracket at {open}: {}", other as char),
    };
    let mut depth = 0usize;
    for (i, &ch) in bytes.iter().enumerate().skip(open) {
        if ch == o {
            depth += 1;
        } else if ch == c {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    panic!("unbalanced bracket at {open}");
}

/// Positions where identifier `word` occurs as a whole word.
fn word_positions<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).map(|(i, _)| i).filter(move |&i| {
        !code[..i].chars().next_back().is_some_and(ident)
            && !code[i + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Where `segment` stores into workgroup variable `name` (`name[i] =`, or
/// MSL's `name.inner[i] =`), as opposed to reading it.
fn store_positions<'a>(segment: &'a str, name: &'a str) -> impl Iterator<Item = usize> + 'a {
    word_positions(segment, name).filter(move |&i| {
        let mut rest = &segment[i + name.len()..];
        if let Some(r) = rest.strip_prefix(".inner") {
            rest = r;
        }
        let rest_start = segment.len() - rest.len();
        if !rest.starts_with('[') {
            return false;
        }
        let close = matching(segment, rest_start);
        let after = segment[close + 1..].trim_start();
        after.starts_with('=') && !after.starts_with("==")
    })
}

fn writes(segment: &str, name: &str) -> bool {
    store_positions(segment, name).next().is_some()
}

/// Every `if` in `segment` that is not loop control as naga lowers WGSL
/// loops: `if (!loop_init) { continuing }`, `if (cond) { } else { break; }`,
/// and its guard against unbounded loops, `if (all(loop_bound == 0)) { break; }`.
fn data_branches(segment: &str) -> Vec<String> {
    let mut found = Vec::new();
    for i in word_positions(segment, "if") {
        let Some(paren) = segment[i..].find('(').map(|p| i + p) else {
            continue;
        };
        let cond = segment[paren + 1..matching(segment, paren)].trim();
        let after_cond = &segment[matching(segment, paren) + 1..];
        let open = matching(segment, paren) + 1 + after_cond.find('{').expect("if body");
        let close = matching(segment, open);
        let then_block = segment[open + 1..close].trim();
        let rest = segment[close + 1..].trim_start();
        let else_is_break = rest.strip_prefix("else").is_some_and(|r| {
            let r = r.trim_start();
            let o = segment.len() - r.len();
            r.starts_with('{') && segment[o + 1..matching(segment, o)].trim() == "break;"
        });
        let loop_init = cond.starts_with("!loop_init");
        let loop_exit = then_block.is_empty() && else_is_break;
        let loop_guard = cond.contains("loop_bound") && then_block == "break;";
        if !(loop_init || loop_exit || loop_guard) {
            found.push(format!("if ({cond})"));
        }
    }
    found
}

/// Checks the tiled design in the code one backend generated for `entry`;
/// returns what is wrong, empty when the structure holds.
fn tiled_structure(
    backend: Backend,
    module: &naga::Module,
    code: &str,
    entry: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let tiles: Vec<&str> = module
        .global_variables
        .iter()
        .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
        .filter_map(|(_, v)| v.name.as_deref())
        .collect();
    if tiles.len() < 2 {
        problems.push(format!(
            "{} workgroup tiles in the module, want A and B",
            tiles.len()
        ));
    }
    for tile in &tiles {
        if !backend.declares_workgroup(code, tile) {
            problems.push(format!("workgroup tile {tile} not declared as such"));
        }
    }
    let body = function_text(code, entry).unwrap_or_else(|| panic!("no function {entry}"));
    let helpers: Vec<&str> = module
        .functions
        .iter()
        .filter_map(|(_, f)| f.name.as_deref())
        .collect();
    // What stores into a tile: the tile itself, or a helper that does (a
    // staging function called from the K loop).
    let tile_writers: Vec<&str> = helpers
        .iter()
        .copied()
        .filter(|h| {
            function_text(code, h).is_some_and(|text| tiles.iter().any(|t| writes(text, t)))
        })
        .collect();
    let first_store = |text: &str| {
        let direct = tiles.iter().filter_map(|t| store_positions(text, t).next());
        let called = tile_writers
            .iter()
            .filter_map(|h| word_positions(text, h).next());
        direct.chain(called).min()
    };
    let stores_tiles = |text: &str| first_store(text).is_some();
    // Barriers after the first tile store (naga's zero-initialisation of
    // workgroup memory has its own, before it): one between the loads and
    // the arithmetic, one before the tiles are stored again.
    let first_store = first_store(body).unwrap_or(body.len());
    let barriers = body[first_store..].matches(backend.barrier()).count();
    if barriers < 2 {
        problems.push(format!(
            "{barriers} workgroup barriers after the tile loads, want one before the arithmetic and one before the tiles are stored again"
        ));
    }
    // The multiply-accumulate loop: the outermost loop that reads the tiles,
    // multiplies, and stores no tile (the K loop around it does).
    let loops: Vec<(usize, usize)> = word_positions(body, "while")
        .filter_map(|i| {
            let open = i + body[i..].find('{')?;
            Some((open, matching(body, open)))
        })
        .collect();
    let mac = |&(o, c): &(usize, usize)| {
        let text = &body[o..=c];
        tiles
            .iter()
            .any(|t| word_positions(text, t).next().is_some())
            && text.contains('*')
            && !stores_tiles(text)
    };
    let candidates: Vec<(usize, usize)> = loops.iter().copied().filter(mac).collect();
    let outermost: Vec<(usize, usize)> = candidates
        .iter()
        .copied()
        .filter(|&(o, c)| !candidates.iter().any(|&(po, pc)| po < o && c < pc))
        .collect();
    if outermost.is_empty() {
        problems.push("no loop that multiplies from the tiles without storing them".into());
    }
    for &(o, c) in &outermost {
        let text = &body[o..=c];
        for branch in data_branches(text) {
            problems.push(format!("branch in the multiply-accumulate loop: {branch}"));
        }
        for helper in &helpers {
            if word_positions(text, helper).next().is_some() {
                problems.push(format!("the multiply-accumulate loop calls {helper}"));
            }
        }
        let k_loop = loops
            .iter()
            .filter(|&&(po, pc)| po < o && c < pc)
            .max_by_key(|&&(po, _)| po);
        if !k_loop.is_some_and(|&(po, pc)| body[po..=pc].contains(backend.barrier())) {
            problems.push("the loop around the multiply-accumulate loop has no barrier".into());
        }
    }
    problems
}

/// Whether `code` loads whole vec4s from the operand buffer `name`: an MSL
/// line reading `name[..]` as a `float4`/`half4`, HLSL's `name.Load4(` (f32)
/// or `name.Load<vector<half, 4> >(` (f16).
fn loads_vec4(backend: Backend, code: &str, name: &str) -> bool {
    match backend {
        Backend::Msl => code.lines().any(|l| {
            (l.contains("float4") || l.contains("half4"))
                && word_positions(l, name).any(|i| l[i + name.len()..].starts_with('['))
        }),
        Backend::Hlsl => {
            code.contains(&format!("{name}.Load4("))
                || code.contains(&format!("{name}.Load<vector<half, 4>"))
                || code.contains(&format!("{name}.Load<half4>"))
        }
    }
}

fn tiled_specs() -> Vec<ShaderSpec> {
    all_shader_specs()
        .into_iter()
        .filter(|s| s.defines.get("TILED").is_some_and(|v| v == "1"))
        .collect()
}

#[test]
fn tiled_kernels_keep_their_structure_in_msl_and_hlsl() {
    let specs = tiled_specs();
    for entry in ["gemm_tiled", "conv_tiled"] {
        assert!(
            specs.iter().any(|s| s.entry == entry),
            "no {entry} specialisation in the registry"
        );
    }
    let vec4 = |s: &ShaderSpec| s.defines.get("VEC4").is_some_and(|v| v == "1");
    for entry in ["gemm_tiled", "conv_tiled"] {
        let configs = |vec4_form: bool| {
            let mut c: Vec<Vec<&String>> = specs
                .iter()
                .filter(|s| s.entry == entry && vec4(s) == vec4_form)
                .map(|s| {
                    ["TILE_M", "TILE_N", "TILE_K", "MICRO_M", "MICRO_N"]
                        .map(|d| &s.defines[d])
                        .to_vec()
                })
                .collect();
            c.sort();
            c.dedup();
            c.len()
        };
        assert!(
            configs(true) >= 4,
            "{entry}: vec4 forms of fewer than 4 configs"
        );
        assert_eq!(
            configs(true),
            configs(false),
            "{entry}: a config lacks a form"
        );
    }
    let mut failures = Vec::new();
    for spec in &specs {
        let g = generate(spec);
        let operands = match spec.entry {
            "gemm_tiled" => ["a", "b"],
            _ => ["a_buf", "b_buf"],
        };
        for (backend, code) in [(Backend::Msl, &g.msl), (Backend::Hlsl, &g.hlsl)] {
            for p in tiled_structure(backend, &g.module, code, spec.entry) {
                failures.push(format!("{} ({backend:?}): {p}", spec.label()));
            }
            for name in operands {
                if loads_vec4(backend, code, name) != vec4(spec) {
                    failures.push(format!(
                        "{} ({backend:?}): vec4 loads from {name}: {}, want {}",
                        spec.label(),
                        loads_vec4(backend, code, name),
                        vec4(spec)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The checker itself: a tile read behind a bounds branch, a helper call in
/// the inner loop, or a missing barrier are each caught.
#[test]
fn structure_check_catches_broken_kernels() {
    let spec = tiled_specs()
        .into_iter()
        .find(|s| s.entry == "gemm_tiled" && s.defines.get("VEC4").is_some_and(|v| v == "0"))
        .expect("gemm_tiled's scalar form");
    let good = spec.source().unwrap();
    let inner = "acc[i][j] += av[i] * bv[j];";
    assert!(
        good.contains(inner),
        "gemm_tiled's inner statement changed; update this test"
    );
    let broken = [
        (
            "bounds branch",
            "branch in the multiply-accumulate loop",
            good.replacen(
                inner,
                "if (row0 + i < p.m) { acc[i][j] += av[i] * bv[j]; }",
                1,
            ),
        ),
        (
            "helper call",
            "calls load_b",
            good.replacen(inner, "acc[i][j] += av[i] * load_b(kk, j);", 1),
        ),
        (
            "missing barrier",
            "workgroup barriers after the tile loads",
            {
                let last = good.rfind("workgroupBarrier();").unwrap();
                let mut s = good.clone();
                s.replace_range(last..last + "workgroupBarrier();".len(), "");
                s
            },
        ),
    ];
    for (what, expected, src) in broken {
        let g = translate(what, &src);
        for (backend, code) in [(Backend::Msl, &g.msl), (Backend::Hlsl, &g.hlsl)] {
            let problems = tiled_structure(backend, &g.module, code, spec.entry);
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{what} ({backend:?}): not caught as \"{expected}\": {problems:?}"
            );
        }
    }
}

#[test]
fn subgroup_variants_use_lane_exchange_in_msl_and_hlsl() {
    let specs: Vec<ShaderSpec> = all_shader_specs()
        .into_iter()
        .filter(|s| s.defines.get("SGB").is_some_and(|v| v == "1"))
        .collect();
    assert!(specs.iter().any(|s| s.entry == "gemm_sgb"));
    assert!(specs.iter().any(|s| s.entry == "conv_sgb"));
    for spec in &specs {
        let g = generate(spec);
        let label = spec.label();
        assert!(
            g.msl.contains("metal::simd_broadcast") || g.msl.contains("metal::simd_shuffle"),
            "{label}: MSL has no simd_broadcast/simd_shuffle"
        );
        assert!(
            g.hlsl.contains("WaveReadLaneAt"),
            "{label}: HLSL has no WaveReadLaneAt"
        );
    }
}
