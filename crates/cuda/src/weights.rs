//! Weights on the card: their raw GGUF blocks (the matrix-vector kernels of decode steps read
//! them, and resident memory is the file's size), their f16 expansion (what cuBLAS GEMMs
//! read), or both; [`WeightFormat`] chooses. A GEMM over a weight kept only raw dequantizes
//! it into a scratch buffer first, on the same stream.

use crate::gpu::{ensure_dev, err, DevBuf, Gpu, Res};
use crate::kernels::{dequant_kernel, gemv_kernel, gemv_q8_kernel, MV_MAX_N};
use cudarc::driver::result as drv;
use engine::matrix::MatmulShape;
use engine::weights::Weight;
use quant::GgmlType;

/// What the card keeps of each prepared weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// The blocks as the file has them: the least memory; prefill GEMMs expand each weight
    /// into a scratch buffer per call.
    Gguf,
    /// The f16 expansion only: GEMMs read it directly; decode steps run as GEMMs too.
    F16,
    /// Both: raw blocks for decode steps, f16 for prefill GEMMs.
    Both,
    /// `F16` when the model's f16 expansion fits the card's budget (prefill GEMMs read it
    /// directly: about twice the speed of expanding per call, measured on an H100), else
    /// `Gguf`; the engine decides once it knows its budget (see `CudaOptions::model_f16_bytes`).
    Auto,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gguf" => Ok(WeightFormat::Gguf),
            "f16" => Ok(WeightFormat::F16),
            "both" => Ok(WeightFormat::Both),
            "auto" => Ok(WeightFormat::Auto),
            other => Err(format!("unknown weight format `{other}` (auto, gguf, f16, both)")),
        }
    }
}

impl WeightFormat {
    /// Whether a weight of type `ty` keeps its raw blocks (f16 weights are their own expansion).
    /// `Auto` counts as `Gguf` until the engine resolves it.
    fn keeps_raw(self, ty: GgmlType) -> bool {
        ty != GgmlType::F16 && self != WeightFormat::F16
    }

    /// Whether a weight of type `ty` keeps an f16 expansion.
    fn keeps_f16(self, ty: GgmlType) -> bool {
        ty == GgmlType::F16 || matches!(self, WeightFormat::F16 | WeightFormat::Both)
    }

    /// `Auto` made concrete for a model whose f16 expansion takes `f16_bytes`, on a card
    /// holding `budget` bytes of weights; with the reason, for `--verbose`.
    pub fn resolve(self, f16_bytes: usize, budget: usize) -> (WeightFormat, String) {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        match self {
            WeightFormat::Auto if f16_bytes > 0 && f16_bytes <= budget => {
                (WeightFormat::F16, format!("f16 (auto: the model's f16 expansion, {:.1} GiB, fits the {:.1} GiB budget)", gib(f16_bytes), gib(budget)))
            }
            WeightFormat::Auto => {
                (WeightFormat::Gguf, format!("GGUF blocks (auto: the model's f16 expansion, {:.1} GiB, exceeds the {:.1} GiB budget)", gib(f16_bytes), gib(budget)))
            }
            f => (f, format!("{} (--gpu-weights)", f.name())),
        }
    }

    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Gguf => "gguf",
            WeightFormat::F16 => "f16",
            WeightFormat::Both => "both",
            WeightFormat::Auto => "auto",
        }
    }

    /// Bytes a weight of this shape holds on the card.
    pub fn bytes(self, s: &MatmulShape) -> usize {
        let raw = if self.keeps_raw(s.ty) { s.ty.bytes_for((s.m * s.k) as u64).unwrap_or(0) as usize } else { 0 };
        let f16 = if self.keeps_f16(s.ty) { s.m * s.k * 2 } else { 0 };
        raw + f16
    }
}

/// A prepared weight.
pub(crate) struct Prepared {
    raw: Option<DevBuf>,
    f16: Option<DevBuf>,
    ty: GgmlType,
    rows: usize,
    cols: usize,
}

impl Prepared {
    /// Uploads `w` and keeps what `format` says (the compute stream is synchronized after).
    pub(crate) fn upload(gpu: &Gpu, w: &Weight, format: WeightFormat) -> Res<Prepared> {
        gpu.bind()?;
        let data = w.data();
        let raw = DevBuf::new(&gpu.ctx, data.len())?;
        unsafe { drv::memcpy_htod_async(raw.ptr, data, gpu.s_comp.cu_stream()) }.map_err(err("upload weight"))?;
        let (raw, f16) = match dequant_kernel(w.ty)? {
            // f16 blocks are their own expansion.
            None => (None, Some(raw)),
            Some(kernel) => {
                let f16 = if format.keeps_f16(w.ty) {
                    let out = DevBuf::new(&gpu.ctx, w.rows * w.cols * 2)?;
                    gpu.launch_elementwise(kernel, raw.ptr, out.ptr, w.rows * w.cols, None)?;
                    Some(out)
                } else {
                    None
                };
                (format.keeps_raw(w.ty).then_some(raw), f16)
            }
        };
        // The raw upload may be dropped (freed) only after the expansion ran.
        gpu.s_comp.synchronize().map_err(err("prepare weight"))?;
        Ok(Prepared { raw, f16, ty: w.ty, rows: w.rows, cols: w.cols })
    }

    /// Bytes held on the card.
    pub(crate) fn bytes(&self) -> usize {
        self.raw.as_ref().map_or(0, |b| b.bytes) + self.f16.as_ref().map_or(0, |b| b.bytes)
    }

    /// Whether this is `w`'s preparation (type and shape).
    pub(crate) fn matches(&self, w: &Weight) -> bool {
        (self.ty, self.rows, self.cols) == (w.ty, w.rows, w.cols)
    }

    /// Its addresses, for kernels.
    pub(crate) fn dev(&self) -> DevWeight {
        let f16 = self.f16.as_ref().map_or(0, |b| b.ptr);
        // An f16 weight's blocks are its expansion: the matrix-vector kernel reads them too.
        let raw = self.raw.as_ref().map_or(if self.ty == GgmlType::F16 { f16 } else { 0 }, |b| b.ptr);
        DevWeight { f16, raw, ty: self.ty, rows: self.rows, cols: self.cols }
    }
}

/// A weight's addresses on the card (0: not kept in that form).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevWeight {
    pub(crate) f16: u64,
    pub(crate) raw: u64,
    pub(crate) ty: GgmlType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl DevWeight {
    /// A weight already in f16 (a streamed layer's slot).
    pub(crate) fn f16_only(ptr: u64, rows: usize, cols: usize) -> Self {
        DevWeight { f16: ptr, raw: 0, ty: GgmlType::F16, rows, cols }
    }

    /// Bytes a GEMM's expansion of it takes in a scratch buffer (0: it keeps its own f16).
    pub(crate) fn expansion_bytes(&self) -> usize {
        if self.f16 == 0 {
            self.rows * self.cols * 2
        } else {
            0
        }
    }

    /// `out[n, rows] (f32) = x[n, cols] (f16) · Wᵀ` on the compute stream: the raw blocks'
    /// matrix-vector kernel for up to MV_MAX_N tokens, else a GEMM over the f16 expansion,
    /// made in `expand` first when the weight keeps none.
    pub(crate) fn matmul(&self, gpu: &Gpu, x: u64, out: u64, n: usize, expand: &mut Option<DevBuf>) -> Res<()> {
        if n <= MV_MAX_N && self.raw != 0 {
            // 8-bit tokens (in `expand`, unused by decode-sized calls otherwise), integer dots.
            if let Some(kernel) = gemv_q8_kernel(self.ty) {
                let q = ensure_dev(&gpu.ctx, expand, crate::matvec::q8_token_bytes(n, self.cols))?;
                let d = q + (n * self.cols) as u64;
                gpu.quantize_q8(x, q, d, n, self.cols)?;
                return gpu.gemv_q8(kernel, self.raw, q, d, out, self.rows, self.cols, n);
            }
            if let Some(kernel) = gemv_kernel(self.ty) {
                return gpu.gemv(kernel, self.raw, x, out, self.rows, self.cols, n);
            }
        }
        let f16 = self.f16_in(gpu, expand, 0)?;
        gpu.gemm(f16, x, out, self.rows, self.cols, n, false)
    }

    /// The f16 expansion's address: the resident one, or dequantized now into `expand` at
    /// byte `offset` (grown as needed; callers put a group's weights at different offsets).
    pub(crate) fn f16_in(&self, gpu: &Gpu, expand: &mut Option<DevBuf>, offset: usize) -> Res<u64> {
        if self.f16 != 0 {
            return Ok(self.f16);
        }
        let kernel = dequant_kernel(self.ty)?.ok_or("an f16 weight without its blocks")?;
        let elems = self.rows * self.cols;
        let base = ensure_dev(&gpu.ctx, expand, offset + elems * 2)?;
        gpu.launch_elementwise(kernel, self.raw, base + offset as u64, elems, None)?;
        Ok(base + offset as u64)
    }
}

/// Up to MV_MAX_N host tokens `x` (`[n, k]`) through each weight's matrix-vector kernel
/// (every weight keeps its raw blocks): the tokens go up in f16, `outs[i]` (`[n, rows_i]`)
/// come down in f32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matvec_host(gpu: &Gpu, s: &mut crate::pipeline::Scratch, ws: &[DevWeight], k: usize, x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Res<()> {
    if n > MV_MAX_N || x.len() < n * k || ws.len() != outs.len() || ws.iter().zip(outs.iter()).any(|(w, o)| w.cols != k || o.len() < n * w.rows) {
        return Err(format!("matrix-vector buffers do not match n={n} k={k}"));
    }
    if n == 0 {
        return Ok(());
    }
    gpu.bind()?;
    let mut xh = vec![0u8; n * k * 2];
    quant::f32_to_f16_slice(&x[..n * k], &mut xh);
    let total: usize = ws.iter().map(|w| n * w.rows).sum();
    let dx = ensure_dev(&gpu.ctx, &mut s.mv_x, n * k * 2)?;
    let dout = ensure_dev(&gpu.ctx, &mut s.mv_out, total * 4)?;
    let stream = gpu.s_comp.cu_stream();
    let mut run = || -> Res<()> {
        unsafe { drv::memcpy_htod_async(dx, &xh[..], stream) }.map_err(err("upload tokens"))?;
        let mut at = 0;
        for w in ws {
            let kernel = gemv_kernel(w.ty).ok_or_else(|| format!("no matrix-vector kernel for {}", w.ty.name()))?;
            gpu.gemv(kernel, w.raw, dx, dout + (at * 4) as u64, w.rows, w.cols, n)?;
            at += n * w.rows;
        }
        let mut at = 0;
        for (w, o) in ws.iter().zip(outs.iter_mut()) {
            unsafe { drv::memcpy_dtoh_async(&mut o[..n * w.rows], dout + (at * 4) as u64, stream) }.map_err(err("download outputs"))?;
            at += n * w.rows;
        }
        gpu.s_comp.synchronize().map_err(err("matrix-vector"))
    };
    let r = run();
    if r.is_err() {
        gpu.sync_all();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::WeightFormat;

    /// `auto` keeps f16 expansions exactly when the model's fit the budget, says so, and a
    /// chosen format is kept as given.
    #[test]
    fn auto_takes_f16_only_when_it_fits() {
        let gib = 1usize << 30;
        let (f, why) = WeightFormat::Auto.resolve(15 * gib, 70 * gib);
        assert_eq!(f, WeightFormat::F16);
        assert!(why.contains("fits") && why.contains("15.0 GiB"), "{why}");
        let (f, why) = WeightFormat::Auto.resolve(140 * gib, 70 * gib);
        assert_eq!(f, WeightFormat::Gguf);
        assert!(why.contains("exceeds"), "{why}");
        assert_eq!(WeightFormat::Auto.resolve(0, 70 * gib).0, WeightFormat::Gguf);
        assert_eq!(WeightFormat::Both.resolve(15 * gib, gib).0, WeightFormat::Both);
        assert_eq!("auto".parse::<WeightFormat>(), Ok(WeightFormat::Auto));
    }
}
