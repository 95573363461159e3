//! How one product is recorded: block and K-chunk limits per variant, the
//! shared-memory tiled kernel, and the subgroup-broadcast kernel reading its
//! operands from packed storage textures.

use super::*;

/// The tiled kernel in the shape of `config`, staging its tiles with vec4
/// loads when `vec4` (see `Gemm::vec4_operands`).
pub(super) fn tiled_spec(config: TiledConfig, bias: bool, vec4: bool) -> ShaderSpec {
    config
        .specialise(ShaderSpec::new("gemm", "gemm_tiled"))
        .def("GEMM", 1)
        .def("BIAS", bias as u32)
        .def("VEC4", vec4 as u32)
}

/// Subgroups across N in a 256-invocation workgroup; narrow outputs use
/// fewer so no workgroup computes mostly padding.
pub(super) const SGB_LAYOUTS: [u64; 4] = [1, 2, 4, 8];
/// Invocations per workgroup of the subgroup kernel.
pub(super) const SGB_WORKGROUP: u64 = 256;
/// Columns of C one subgroup computes (the shader's tile); its rows are 4
/// per lane, strided by the lane count.
pub(super) const SGB_COLS: u64 = 32;

/// Subgroups of `lanes` lanes down M in a workgroup with `sg_n` across N.
fn sgb_sg_m(lanes: u64, sg_n: u64) -> u64 {
    SGB_WORKGROUP / lanes / sg_n
}

pub(super) fn sgb_spec(lanes: u64, sg_n: u64, bias: bool) -> ShaderSpec {
    ShaderSpec::new("gemm", "gemm_sgb")
        .def("GEMM", 1)
        .def("SGB", 1)
        .def("LANES", lanes)
        .def("TEXELS", lanes / 4)
        .def("SG_M", sgb_sg_m(lanes, sg_n))
        .def("SG_N", sg_n)
        .def("BIAS", bias as u32)
}

pub(super) fn pack_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "pack").def("PACK", 1)
}
/// The sizes chunks are cut to; the device's own in `record`, small ones in
/// tests so that every split path runs on tiny data.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// f32 elements one window may span.
    pub(super) window: u64,
    /// Texels per texture dimension.
    pub(super) texture_dim: u64,
    /// f32 elements per operand texture.
    pub(super) texture_budget: u64,
    /// Rows per column-sum block.
    pub(super) sum_block: u64,
}

impl Limits {
    pub(super) fn of(gpu: &Gpu) -> Limits {
        Limits {
            window: gpu.max_window_elems(),
            texture_dim: gpu.limits.max_texture_dimension_2d as u64,
            texture_budget: TEXTURE_BUDGET,
            sum_block: SUM_BLOCK,
        }
    }
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct GemmParams {
        m: u32,
        n: u32,
        k: u32,
        lda: u32,
        ldb: u32,
        ldc: u32,
        shift_a: u32,
        shift_b: u32,
        shift_c: u32,
        shift_bias: u32,
        trans_a: u32,
        trans_b: u32,
        accumulate: u32,
        groups_m: u32,
        _pad: [u32; 2],
    }
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct PackParams {
        rows: u32,
        cols: u32,
        ld: u32,
        shift: u32,
        trans: u32,
        width: u32,
        height: u32,
        _pad: u32,
    }
}

pub(super) fn round_up(x: u64, q: u64) -> u64 {
    x.div_ceil(q) * q
}

/// Halves a chunk size, keeping it a multiple of `q` while it can.
pub(super) fn halve(x: u64, q: u64) -> u64 {
    let h = x / 2;
    if h >= q {
        h / q * q
    } else {
        h
    }
}

/// A product's sizes and layouts: all that its blocking depends on.
#[derive(Clone, Copy)]
pub(super) struct GemmShape {
    pub(super) d: Dims,
    pub(super) ta: bool,
    pub(super) tb: bool,
}

/// One product being recorded.
pub(super) struct Gemm<'a> {
    pub(super) a: &'a DeviceTensor,
    pub(super) b: &'a DeviceTensor,
    pub(super) bias: Option<&'a DeviceTensor>,
    pub(super) c: &'a DeviceTensor,
    pub(super) shape: GemmShape,
}

/// Where a block of an operand starts in its tensor, its leading dimension,
/// and how many elements a window over it spans.
pub(super) struct Block {
    pub(super) start: u64,
    pub(super) ld: u64,
    pub(super) span: u64,
}

impl GemmShape {
    /// Block of op(A) rows m0.., reduction k0.. of size mc × kc.
    pub(super) fn block_a(&self, m0: u64, k0: u64, mc: u64, kc: u64) -> Block {
        let Dims { m, k, .. } = self.d;
        if self.ta {
            Block {
                start: k0 * m + m0,
                ld: m,
                span: (kc - 1) * m + mc,
            }
        } else {
            Block {
                start: m0 * k + k0,
                ld: k,
                span: (mc - 1) * k + kc,
            }
        }
    }

    /// Block of op(B) reduction k0.., columns n0.. of size kc × nc.
    pub(super) fn block_b(&self, k0: u64, n0: u64, kc: u64, nc: u64) -> Block {
        let Dims { n, k, .. } = self.d;
        if self.tb {
            Block {
                start: n0 * k + k0,
                ld: k,
                span: (nc - 1) * k + kc,
            }
        } else {
            Block {
                start: k0 * n + n0,
                ld: n,
                span: (kc - 1) * n + nc,
            }
        }
    }

    pub(super) fn block_c(&self, m0: u64, n0: u64, mc: u64, nc: u64) -> Block {
        let n = self.d.n;
        Block {
            start: m0 * n + n0,
            ld: n,
            span: (mc - 1) * n + nc,
        }
    }

    /// Shrinks chunk sizes (mc, nc, kc) until every operand block fits one
    /// window; `q` are the multiples each is kept at while it can.
    pub(super) fn fit_windows(
        &self,
        mut c: [u64; 3],
        q: [u64; 3],
        window: u64,
    ) -> Result<[u64; 3]> {
        loop {
            let [mc, nc, kc] = c;
            // Which chunk dimension to shrink: the one that strides the
            // too-large block (a transposed operand spans its K rows), or the
            // other one once that is down to a single row.
            let pick =
                |primary: usize, secondary: usize| if c[primary] > 1 { primary } else { secondary };
            let shrink = if self.block_a(0, 0, mc, kc).span > window {
                if self.ta {
                    pick(2, 0)
                } else {
                    pick(0, 2)
                }
            } else if self.block_b(0, 0, kc, nc).span > window {
                if self.tb {
                    pick(1, 2)
                } else {
                    pick(2, 1)
                }
            } else if self.block_c(0, 0, mc, nc).span > window {
                pick(0, 1)
            } else {
                return Ok(c);
            };
            if c[shrink] <= 1 {
                return Err(Error::LimitExceeded {
                    what: format!("a {}×{}×{} matrix product", self.d.m, self.d.n, self.d.k),
                    needed: self.d.m.max(self.d.n).max(self.d.k) * 4,
                    limit: window * 4,
                    name: "max_storage_buffer_binding_size",
                    fix: "one row of an operand must fit one binding; use smaller matrices".into(),
                });
            }
            c[shrink] = halve(c[shrink], q[shrink]);
        }
    }
}

/// How the subgroup-broadcast kernel cuts a product: its subgroup size, its
/// workgroup layout (`sg_n` subgroups across N, `bm` × `bn` outputs) and the
/// chunk sizes, each chunk's operands packed into one texture with K padded
/// to whole steps of `lanes`.
pub(super) struct SgbBlocking {
    pub(super) lanes: u64,
    pub(super) sg_n: u64,
    pub(super) bm: u64,
    pub(super) bn: u64,
    pub(super) mc: u64,
    pub(super) nc: u64,
    pub(super) kc: u64,
}

impl GemmShape {
    pub(super) fn sgb_blocking(&self, lim: Limits, lanes: u64) -> Result<SgbBlocking> {
        let Dims { m, n, k } = self.d;
        let sg_n = SGB_LAYOUTS
            .into_iter()
            .find(|&s| SGB_COLS * s >= n)
            .unwrap_or(8);
        let (bm, bn) = (4 * lanes * sgb_sg_m(lanes, sg_n), SGB_COLS * sg_n);
        let dim = lim.texture_dim;
        // Texture limits first: A is [rows][K/4 texels], B is [K rows][cols/4
        // texels], both padded to whole tiles and within the scratch budget
        // (which gives way to at least one tile).
        let kc = k
            .min(SGB_MAX_K)
            .min(dim / lanes * lanes)
            .min((lim.texture_budget / bn / lanes * lanes).max(lanes))
            .max(1);
        let kp = round_up(kc, lanes);
        let nc = n
            .min(dim * 4 / bn * bn)
            .min((lim.texture_budget / kp / bn * bn).max(bn))
            .max(1);
        let mc = m
            .min(dim / bm * bm)
            .min((lim.texture_budget / kp / bm * bm).max(bm))
            .max(1);
        let [mc, nc, kc] = self.fit_windows([mc, nc, kc], [bm, bn, lanes], lim.window)?;
        Ok(SgbBlocking {
            lanes,
            sg_n,
            bm,
            bn,
            mc,
            nc,
            kc,
        })
    }
}

impl SgbBlocking {
    /// The operand textures of this blocking: A as [rows][K/4 texels], B as
    /// [K rows][columns/4 texels], padded to tiles.
    pub(super) fn textures(&self) -> [ScratchNeed; 2] {
        let kp = round_up(self.kc, self.lanes);
        let texture = |purpose, width: u64, rows: u64| ScratchNeed::Texture {
            purpose,
            need: TextureNeed {
                format: wgpu::TextureFormat::Rgba32Float,
                width: width as u32,
                rows: rows as u32,
            },
        };
        [
            texture("gemm A", kp / 4, round_up(self.mc, self.bm)),
            texture("gemm B", round_up(self.nc, self.bn) / 4, kp),
        ]
    }
}

impl Gemm<'_> {
    pub(super) fn gemm_params(
        &self,
        m0: u64,
        n0: u64,
        k0: u64,
        size: [u64; 3],
        groups_m: u64,
    ) -> GemmParams {
        let [mc, nc, kc] = size;
        GemmParams {
            m: mc as u32,
            n: nc as u32,
            k: kc as u32,
            lda: self.shape.block_a(m0, k0, mc, kc).ld as u32,
            ldb: self.shape.block_b(k0, n0, kc, nc).ld as u32,
            ldc: self.shape.d.n as u32,
            shift_a: 0,
            shift_b: 0,
            shift_c: 0,
            shift_bias: 0,
            trans_a: self.shape.ta as u32,
            trans_b: self.shape.tb as u32,
            accumulate: (k0 > 0) as u32,
            groups_m: groups_m as u32,
            _pad: [0; 2],
        }
    }

    /// Binds C's chunk at rows m0.., columns n0.. (and the bias for it) and
    /// records the product kernel.
    pub(super) fn dispatch_gemm(
        &self,
        rec: &mut Recorder,
        spec: &ShaderSpec,
        mut p: GemmParams,
        mut bindings: Vec<Binding>,
        [m0, n0]: [u64; 2],
        groups: u64,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let cb = self.shape.block_c(m0, n0, p.m as u64, p.n as u64);
        let wc = self.c.window(gpu, cb.start, cb.span)?;
        p.shift_c = wc.shift;
        bindings.push((&wc).into());
        if let Some(bias) = self.bias {
            let wb = bias.window(gpu, n0, p.n as u64)?;
            p.shift_bias = wb.shift;
            bindings.push((&wb).into());
        }
        rec.dispatch_groups(spec, bytemuck::bytes_of(&p), bindings, groups)
    }

    /// Whether both operand windows of a chunk can be read as vec4s: the
    /// axis each is contiguous along (K of a plain A, M of a transposed one;
    /// N of a plain B, K of a transposed one), its leading dimension and its
    /// window's start all whole vec4s, so no quad straddles an edge and every
    /// quad is inside the window's vec4 view.
    fn vec4_operands(&self, [mc, nc, kc]: [u64; 3], [a_shift, b_shift]: [u32; 2]) -> bool {
        let GemmShape { ta, tb, .. } = self.shape;
        let a_contiguous = if ta { mc } else { kc };
        let b_contiguous = if tb { kc } else { nc };
        let [lda, ldb] = [
            self.shape.block_a(0, 0, 1, 1).ld,
            self.shape.block_b(0, 0, 1, 1).ld,
        ];
        [
            a_contiguous,
            b_contiguous,
            lda,
            ldb,
            a_shift as u64,
            b_shift as u64,
        ]
        .iter()
        .all(|v| v.is_multiple_of(4))
    }

    pub(super) fn record_tiled(
        &self,
        rec: &mut Recorder,
        lim: Limits,
        config: TiledConfig,
    ) -> Result<()> {
        let Dims { m, n, k } = self.shape.d;
        let (tm, tn) = (config.tile_m as u64, config.tile_n as u64);
        let q = [tm, tn, config.tile_k as u64];
        let [mc, nc, kc] = self.shape.fit_windows([m, n, k], q, lim.window)?;
        let kc = kc.min(TILED_MAX_K);
        let gpu = rec.gpu();
        for n0 in (0..n).step_by(nc as usize) {
            let ncl = nc.min(n - n0);
            for k0 in (0..k).step_by(kc as usize) {
                let kcl = kc.min(k - k0);
                let bb = self.shape.block_b(k0, n0, kcl, ncl);
                let wb = self.b.window(gpu, bb.start, bb.span)?;
                for m0 in (0..m).step_by(mc as usize) {
                    let mcl = mc.min(m - m0);
                    let ab = self.shape.block_a(m0, k0, mcl, kcl);
                    let wa = self.a.window(gpu, ab.start, ab.span)?;
                    let groups_m = mcl.div_ceil(tm);
                    let mut p = self.gemm_params(m0, n0, k0, [mcl, ncl, kcl], groups_m);
                    p.shift_a = wa.shift;
                    p.shift_b = wb.shift;
                    let vec4 = self.vec4_operands([mcl, ncl, kcl], [wa.shift, wb.shift]);
                    let spec = tiled_spec(config, self.bias.is_some(), vec4);
                    let groups = groups_m * ncl.div_ceil(tn);
                    self.dispatch_gemm(
                        rec,
                        &spec,
                        p,
                        vec![(&wa).into(), (&wb).into()],
                        [m0, n0],
                        groups,
                    )?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn record_sgb(&self, rec: &mut Recorder, lim: Limits, lanes: u64) -> Result<()> {
        let Dims { m, n, k } = self.shape.d;
        let blocking = self.shape.sgb_blocking(lim, lanes)?;
        let [need_a, need_b] = blocking.textures();
        let SgbBlocking {
            lanes,
            sg_n,
            bm,
            bn,
            mc,
            nc,
            kc,
        } = blocking;
        let gpu = rec.gpu();
        let tex_a = OperandTexture::of(gpu, need_a)?;
        let tex_b = OperandTexture::of(gpu, need_b)?;
        let spec = sgb_spec(lanes, sg_n, self.bias.is_some());
        for n0 in (0..n).step_by(nc as usize) {
            let ncl = nc.min(n - n0);
            for k0 in (0..k).step_by(kc as usize) {
                let kcl = kc.min(k - k0);
                let bb = self.shape.block_b(k0, n0, kcl, ncl);
                let pb = Pack {
                    rows: kcl,
                    cols: ncl,
                    trans: self.shape.tb,
                    width: round_up(ncl, bn) / 4,
                    height: round_up(kcl, lanes),
                    // Padding columns only reach outputs that are not stored.
                    copyable: kcl % lanes == 0 && ncl % 4 == 0,
                };
                pb.record(rec, self.b, &bb, &tex_b)?;
                for m0 in (0..m).step_by(mc as usize) {
                    let mcl = mc.min(m - m0);
                    let ab = self.shape.block_a(m0, k0, mcl, kcl);
                    let pa = Pack {
                        rows: mcl,
                        cols: kcl,
                        trans: self.shape.ta,
                        width: round_up(kcl, lanes) / 4,
                        height: round_up(mcl, bm),
                        // Padding rows only reach outputs that are not stored.
                        copyable: kcl % lanes == 0,
                    };
                    pa.record(rec, self.a, &ab, &tex_a)?;
                    let groups_m = mcl.div_ceil(bm);
                    let p = self.gemm_params(m0, n0, k0, [mcl, ncl, kcl], groups_m);
                    let bindings = vec![
                        Binding::Texture(tex_a.view.clone()),
                        Binding::Texture(tex_b.view.clone()),
                    ];
                    self.dispatch_gemm(
                        rec,
                        &spec,
                        p,
                        bindings,
                        [m0, n0],
                        groups_m * ncl.div_ceil(bn),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A scratch texture the subgroup kernel reads an operand from; successive
/// chunks of the op (and later products) reuse it.
pub(super) struct OperandTexture {
    pub(super) texture: wgpu::Texture,
    pub(super) view: wgpu::TextureView,
}

impl OperandTexture {
    pub(super) fn of(gpu: &Gpu, need: ScratchNeed) -> Result<Self> {
        let ScratchNeed::Texture { purpose, need } = need else {
            return Err(Error::Internal("a gemm operand needs a texture".into()));
        };
        let texture = gpu.scratch_texture(purpose, need)?;
        let view = texture.create_view(&Default::default());
        Ok(OperandTexture { texture, view })
    }
}

/// Packing of one operand block into a texture (rows × cols, transposed
/// from storage when `trans`), zero-padded to width × height texels.
pub(super) struct Pack {
    pub(super) rows: u64,
    pub(super) cols: u64,
    pub(super) trans: bool,
    pub(super) width: u64,
    pub(super) height: u64,
    /// Whether the kernel never lets the padding reach a stored output, so
    /// stale padding from an earlier chunk is harmless.
    pub(super) copyable: bool,
}

/// Texel size, and the row pitch alignment of buffer-to-texture copies.
pub(super) const TEXEL_BYTES: u64 = 16;
pub(super) const COPY_PITCH: u64 = 256;

impl Pack {
    pub(super) fn record(
        &self,
        rec: &mut Recorder,
        src: &DeviceTensor,
        block: &Block,
        dst: &OperandTexture,
    ) -> Result<()> {
        let byte = src.offset + block.start * 4;
        // A plain copy (a memcpy per row) when the block already has the
        // texture's layout; the kernel otherwise.
        if self.copyable
            && !self.trans
            && (block.ld * 4).is_multiple_of(COPY_PITCH)
            && byte.is_multiple_of(TEXEL_BYTES)
        {
            let slice = BufSlice {
                buffer: src.buffer.clone(),
                offset: byte,
                size: block.span * 4,
            };
            let extent = wgpu::Extent3d {
                width: (self.cols / 4) as u32,
                height: self.rows as u32,
                depth_or_array_layers: 1,
            };
            rec.copy_to_texture(slice, (block.ld * 4) as u32, dst.texture.clone(), 0, extent);
            return Ok(());
        }
        let w = src.window(rec.gpu(), block.start, block.span)?;
        let p = PackParams {
            rows: self.rows as u32,
            cols: self.cols as u32,
            ld: block.ld as u32,
            shift: w.shift,
            trans: self.trans as u32,
            width: self.width as u32,
            height: self.height as u32,
            _pad: 0,
        };
        let groups = (self.width * self.height).div_ceil(WG);
        rec.dispatch_groups(
            &pack_spec(),
            bytemuck::bytes_of(&p),
            vec![(&w).into(), Binding::Texture(dst.view.clone())],
            groups,
        )
    }
}
