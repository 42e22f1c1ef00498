//! Tiled matrix products for prefill: many tokens against many weight rows per call.
//!
//! A dot kernel ([`crate::dot_kernel`]) reloads and re-expands every weight block for
//! every token. The tiled kernels instead take the activations of all tokens as
//! [`ActPanels`] (the quantized rows re-laid out so that one 512-bit vector holds the same
//! 4 bytes of 16 tokens), expand each weight row once into unsigned bytes, and then for
//! each 4-byte weight chunk do one broadcast and one VNNI `dpbusd` per 16 tokens (AVX2:
//! `maddubs` per 8 tokens, see `simd::x86::gemm_avx2`): lane `t` accumulates row `r` ·
//! token `t` directly, so no horizontal sums are needed and the float work (block
//! scales) is shared by all the vector's tokens.
//!
//! The integer sums per block are exact, as in the dot kernels; weight offsets (Q4_0's
//! -8, Q5_0's -16, Q6_K's -32, Q8_0 and the codebook formats stored +128) are taken out
//! exactly through the activations' block sums. Only the float accumulation order differs from the scalar
//! reference, so results agree with [`crate::dot_kernel_scalar`] to f32 re-association
//! error.

use crate::util::{rd_f16, rd_f32, rd_i16};
use crate::{GgmlType, QuantError};

/// Tokens per panel: one 512-bit vector of i32 lanes.
pub const PANEL_TOKENS: usize = 16;

/// 64 bytes, 64-byte aligned: one vector of a panel.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// Quantized activations (Q8_0, Q8_1 or Q8_K rows) re-laid out for the tiled kernels,
/// in groups of [`PANEL_TOKENS`] tokens (the last group padded with zero tokens).
///
/// Per group: `qs[c]` holds bytes `4c..4c+4` of every token's quants (chunk-major);
/// `d` the per-block activation scales; and per type the block extras: Q8_0 the i32
/// sum of each block's quants, Q8_1 the stored `s`, Q8_K the 16-element `bsums` as
/// i16 pairs.
pub struct ActPanels {
    pub(crate) ty: GgmlType,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) groups: usize,
    pub(crate) qs: Vec<Line>,
    pub(crate) d: Vec<[f32; 16]>,
    pub(crate) fx: Vec<[f32; 16]>,
    pub(crate) ix: Vec<[i32; 16]>,
}

impl ActPanels {
    /// Re-lay out `n` rows of `k` elements already quantized to `ty` (Q8_0, Q8_1 or Q8_K:
    /// the block type a weight's dot consumes), e.g. by [`crate::quantize_activations`].
    pub fn new(ty: GgmlType, rows: &[u8], k: usize) -> Result<Self, QuantError> {
        let bad = |what: String| QuantError::BadLength { ty: ty.name(), what };
        let qoff = match ty {
            GgmlType::Q8_0 => 2,
            GgmlType::Q8_1 | GgmlType::Q8_K => 4,
            _ => return Err(QuantError::Unsupported { op: "activation panels", ty: ty.name() }),
        };
        let row_bytes = ty
            .bytes_for(k as u64)
            .filter(|&b| b > 0)
            .ok_or_else(|| bad(format!("row of {k} elements")))? as usize;
        if !rows.len().is_multiple_of(row_bytes) {
            return Err(bad(format!("{} bytes is not whole rows of {row_bytes}", rows.len())));
        }
        let (bs, bb) = (ty.block_size(), ty.block_bytes());
        let n = rows.len() / row_bytes;
        let nblk = k / bs;
        let groups = n.div_ceil(PANEL_TOKENS);
        let chunks = k / 4;
        // Q8_K: 8 bsum pairs per super-block; Q8_0: one sum per block; Q8_1: none.
        let nix = match ty {
            GgmlType::Q8_K => 8 * nblk,
            GgmlType::Q8_0 => nblk,
            _ => 0,
        };
        let mut p = ActPanels {
            ty,
            n,
            k,
            groups,
            qs: vec![Line([0; 64]); groups * chunks],
            d: vec![[0.0; 16]; groups * nblk],
            fx: vec![[0.0; 16]; if ty == GgmlType::Q8_1 { groups * nblk } else { 0 }],
            ix: vec![[0; 16]; groups * nix],
        };
        for (t, row) in rows.chunks_exact(row_bytes).enumerate() {
            let (g, l) = (t / PANEL_TOKENS, t % PANEL_TOKENS);
            let qs = &mut p.qs[g * chunks..(g + 1) * chunks];
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let q = &blk[qoff..qoff + bs];
                for (c, four) in q.chunks_exact(4).enumerate() {
                    qs[b * bs / 4 + c].0[4 * l..4 * l + 4].copy_from_slice(four);
                }
                let i = g * nblk + b;
                match ty {
                    GgmlType::Q8_0 => {
                        p.d[i][l] = rd_f16(blk, 0);
                        p.ix[i][l] = q.iter().map(|&v| v as i8 as i32).sum();
                    }
                    GgmlType::Q8_1 => {
                        p.d[i][l] = rd_f16(blk, 0);
                        p.fx[i][l] = rd_f16(blk, 2);
                    }
                    _ => {
                        p.d[i][l] = rd_f32(blk, 0);
                        for j in 0..8 {
                            let lo = rd_i16(blk, 260 + 4 * j) as u16 as u32;
                            let hi = rd_i16(blk, 262 + 4 * j) as u16 as u32;
                            p.ix[i * 8 + j][l] = (lo | (hi << 16)) as i32;
                        }
                    }
                }
            }
        }
        Ok(p)
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Elements per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The block type the panels were built from.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
}

/// A tiled kernel: for every weight row `r` of `w` (whole rows of the weight type) and
/// every token `t` of `a`, writes `out[t * ldo + r]` = row `r` · token `t`.
///
/// # Safety
/// `out.add(t * ldo + r)` must be valid for writes for every `t < a.n()` and every row
/// `r`, and no other thread may access those elements during the call. Lengths and
/// types are checked (panics on mismatch).
pub type GemmFn = unsafe fn(w: &[u8], a: &ActPanels, out: *mut f32, ldo: usize);

/// The instruction sets a tiled kernel may run on, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmIsa {
    /// Intel AMX tiles for the integer products (AVX-512 VNNI for the scales).
    Amx,
    /// AVX-512 VNNI `dpbusd`.
    Avx512Vnni,
    /// AVX2 `maddubs`.
    Avx2,
}

impl GemmIsa {
    /// Short name for `--verbose` and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            GemmIsa::Amx => "AMX",
            GemmIsa::Avx512Vnni => "AVX-512 VNNI",
            GemmIsa::Avx2 => "AVX2",
        }
    }

    /// Whether this CPU (and, for AMX, the OS and the hypervisor: see [`crate::amx_support`])
    /// runs it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86;
            match self {
                GemmIsa::Amx => x86::has_avx512vnni() && crate::amx_support().is_usable(),
                GemmIsa::Avx512Vnni => x86::has_avx512vnni(),
                GemmIsa::Avx2 => x86::has_avx2(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// The instruction set [`gemm_kernel`] prefers here: the fastest available one, except that
/// `TANDEM_AMX=0` in the environment passes over AMX (to compare the two).
pub fn gemm_isa() -> Option<GemmIsa> {
    static ISA: std::sync::OnceLock<Option<GemmIsa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let amx_allowed = std::env::var("TANDEM_AMX").map(|v| v != "0").unwrap_or(true);
        [GemmIsa::Amx, GemmIsa::Avx512Vnni, GemmIsa::Avx2]
            .into_iter()
            .filter(|&isa| isa != GemmIsa::Amx || amx_allowed)
            .find(|isa| isa.available())
    })
}

/// The tiled kernel for weight type `ty` on instruction set `isa`, if this CPU runs it and
/// there is one for the type.
pub fn gemm_kernel_isa(ty: GgmlType, isa: GemmIsa) -> Option<GemmFn> {
    if !isa.available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86;
        match isa {
            GemmIsa::Amx => x86::gemm_kernel_amx(ty),
            GemmIsa::Avx512Vnni => x86::gemm_kernel(ty),
            GemmIsa::Avx2 => x86::gemm_kernel_avx2(ty),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}

/// The tiled kernel for weight type `ty` on this CPU, if there is one (on [`gemm_isa`]:
/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4). Callers fall
/// back to dot kernels.
pub fn gemm_kernel(ty: GgmlType) -> Option<GemmFn> {
    let isa = gemm_isa()?;
    // AMX's integer products are faster, but its sums come back through memory to be
    // scaled per group: for the 16-element groups of Q6_K and the fifth-bit formats Q5_1
    // and Q5_K the VNNI tiles measured faster (bench_gemm, docs/PERF.md).
    if isa == GemmIsa::Amx && matches!(ty, GgmlType::Q5_1 | GgmlType::Q5_K | GgmlType::Q6_K) {
        return gemm_kernel_isa(ty, GemmIsa::Avx512Vnni);
    }
    gemm_kernel_isa(ty, isa)
}

/// Safe whole-matrix form of [`gemm_kernel`]: `out[t * rows + r]` for all rows of `w`.
/// Errors if there is no tiled kernel for `ty` on this CPU or the shapes disagree.
pub fn gemm(ty: GgmlType, w: &[u8], a: &ActPanels, out: &mut [f32]) -> Result<(), QuantError> {
    let kernel = gemm_kernel(ty).ok_or(QuantError::Unsupported { op: "tiled gemm on this CPU", ty: ty.name() })?;
    let row_bytes = ty.bytes_for(a.k as u64).unwrap_or(0) as usize;
    if a.ty != ty.vec_dot_type() || row_bytes == 0 || !w.len().is_multiple_of(row_bytes) {
        return Err(QuantError::BadLength { ty: ty.name(), what: "weights and panels disagree".into() });
    }
    let rows = w.len() / row_bytes;
    if out.len() != rows * a.n {
        return Err(QuantError::BadLength { ty: ty.name(), what: format!("out needs {} floats", rows * a.n) });
    }
    // SAFETY: out holds exactly n * rows floats, indexed t * rows + r; we hold it mutably.
    unsafe { kernel(w, a, out.as_mut_ptr(), rows) };
    Ok(())
}
