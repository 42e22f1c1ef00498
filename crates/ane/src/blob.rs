//! Weight blob files (§3 table, checked byte for byte against coremltools in §7):
//! a 64-byte file header (u32 count, u32 version 2), then per blob a 64-byte metadata
//! record (sentinel 0xDEADBEEF, u32 dtype, u64 data size, u64 absolute data offset)
//! followed by the data, each record 64-byte aligned. MIL `BLOBFILE(offset=…)` points
//! at the metadata record, not at the data.
//!
//! Weights come from GGUF rows dequantized with `quant::dequantize_row`, in parallel,
//! converted to fp16 after the overflow guard's power-of-two scale (see [`guard_scale`]).

use half::f16;
use rayon::prelude::*;
use std::ops::Range;

/// The path every program's weights are baked from (§1: the weights dictionary key).
pub const BLOB_PATH: &str = "@model_path/weights/weight.bin";
/// Sentinel at the start of each metadata record.
pub const SENTINEL: u32 = 0xDEAD_BEEF;
/// dtype code of fp16 data (CT `BlobDataType.hpp`).
pub const DTYPE_FP16: u32 = 1;
/// dtype code of int8 data (CT `BlobDataType.hpp`; what coremltools writes for an int8 const, §7).
pub const DTYPE_INT8: u32 = 4;
/// Blob file format version.
pub const VERSION: u32 = 2;

fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// Writes a blob file; each push returns the offset MIL must name.
pub struct BlobWriter {
    bytes: Vec<u8>,
    count: u32,
}

impl Default for BlobWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobWriter {
    /// An empty file (header only).
    pub fn new() -> Self {
        BlobWriter { bytes: vec![0; 64], count: 0 }
    }

    /// Append one blob of `dtype` holding `data`; returns its metadata offset.
    pub fn push(&mut self, dtype: u32, data: &[u8]) -> u64 {
        let meta = align64(self.bytes.len());
        let data_at = meta + 64;
        self.bytes.resize(data_at, 0);
        self.bytes[meta..meta + 4].copy_from_slice(&SENTINEL.to_le_bytes());
        self.bytes[meta + 4..meta + 8].copy_from_slice(&dtype.to_le_bytes());
        self.bytes[meta + 8..meta + 16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        self.bytes[meta + 16..meta + 24].copy_from_slice(&(data_at as u64).to_le_bytes());
        self.bytes.extend_from_slice(data);
        self.count += 1;
        meta as u64
    }

    /// Append fp16 values (little-endian, row-major as given).
    pub fn push_fp16(&mut self, data: &[f16]) -> u64 {
        let mut raw = vec![0u8; data.len() * 2];
        raw.par_chunks_mut(1 << 16).zip(data.par_chunks(1 << 15)).for_each(|(dst, src)| {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&v.to_bits().to_le_bytes());
            }
        });
        self.push(DTYPE_FP16, &raw)
    }

    /// Append int8 values.
    pub fn push_int8(&mut self, data: &[i8]) -> u64 {
        let raw: Vec<u8> = data.iter().map(|&v| v as u8).collect();
        self.push(DTYPE_INT8, &raw)
    }

    /// Blobs written so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The finished file: header filled with the true count (§3, OM).
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[0..4].copy_from_slice(&self.count.to_le_bytes());
        self.bytes[4..8].copy_from_slice(&VERSION.to_le_bytes());
        self.bytes
    }
}

/// One blob as read back through its metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// dtype code.
    pub dtype: u32,
    /// Data bytes.
    pub size: u64,
    /// Absolute offset of the data.
    pub data_offset: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Check the file header; returns the blob count.
pub fn read_header(file: &[u8]) -> Result<u32, String> {
    if file.len() < 64 {
        return Err(format!("blob file of {} bytes has no 64-byte header", file.len()));
    }
    let version = u32_at(file, 4);
    if version != VERSION {
        return Err(format!("blob file version {version}, expected {VERSION}"));
    }
    Ok(u32_at(file, 0))
}

/// Read and validate the metadata record at `offset` (what MIL's BLOBFILE offset names).
pub fn read_entry(file: &[u8], offset: u64) -> Result<BlobEntry, String> {
    let at = usize::try_from(offset).map_err(|_| format!("offset {offset} too large"))?;
    if at % 64 != 0 || at < 64 {
        return Err(format!("blob offset {offset} is not a 64-aligned metadata record after the header"));
    }
    if at + 64 > file.len() {
        return Err(format!("blob offset {offset} is past the end of the {}-byte file", file.len()));
    }
    let sentinel = u32_at(file, at);
    if sentinel != SENTINEL {
        return Err(format!("no 0xDEADBEEF sentinel at offset {offset} (found {sentinel:#x})"));
    }
    let e = BlobEntry { dtype: u32_at(file, at + 4), size: u64_at(file, at + 8), data_offset: u64_at(file, at + 16) };
    if e.data_offset < offset + 64 || e.data_offset.checked_add(e.size).is_none_or(|end| end > file.len() as u64) {
        return Err(format!("blob at {offset}: data [{}, +{}) outside the file", e.data_offset, e.size));
    }
    Ok(e)
}

/// Read an fp16 blob of exactly `n` elements.
pub fn read_fp16(file: &[u8], offset: u64, n: usize) -> Result<Vec<f16>, String> {
    let e = read_entry(file, offset)?;
    if e.dtype != DTYPE_FP16 {
        return Err(format!("blob at {offset} has dtype {}, expected {DTYPE_FP16} (fp16)", e.dtype));
    }
    if e.size != 2 * n as u64 {
        return Err(format!("blob at {offset} holds {} bytes, the declared tensor needs {}", e.size, 2 * n));
    }
    let d = &file[e.data_offset as usize..(e.data_offset + e.size) as usize];
    Ok(d.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect())
}

/// Read an int8 blob of exactly `n` elements.
pub fn read_int8(file: &[u8], offset: u64, n: usize) -> Result<Vec<i8>, String> {
    let e = read_entry(file, offset)?;
    if e.dtype != DTYPE_INT8 {
        return Err(format!("blob at {offset} has dtype {}, expected {DTYPE_INT8} (int8)", e.dtype));
    }
    if e.size != n as u64 {
        return Err(format!("blob at {offset} holds {} bytes, the declared tensor needs {n}", e.size));
    }
    Ok(file[e.data_offset as usize..(e.data_offset + e.size) as usize].iter().map(|&b| b as i8).collect())
}

/// Rows of a weight matrix, dequantized on demand.
pub trait RowSource: Sync {
    /// Output features.
    fn rows(&self) -> usize;
    /// Input features (row length).
    fn cols(&self) -> usize;
    /// Dequantize row `r` into `out` (len == cols).
    fn row_f32(&self, r: usize, out: &mut [f32]);
}

impl RowSource for ::engine::weights::Weight {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        self.dequantize_row(r, out)
    }
}

/// GGUF blocks in memory (any ggml type `quant` dequantizes).
pub struct QuantRows<'a> {
    /// Block type.
    pub ty: quant::GgmlType,
    /// All rows' blocks.
    pub bytes: &'a [u8],
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
}

impl RowSource for QuantRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.bytes.len() / self.rows;
        quant::dequantize_row(self.ty, &self.bytes[r * rb..(r + 1) * rb], out).expect("row length matches the type");
    }
}

/// A dense f32 matrix (tests, and weights already in f32).
pub struct DenseRows {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl RowSource for DenseRows {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[r * self.cols..(r + 1) * self.cols]);
    }
}

/// Largest row L2 norm of rows `rows` (parallel; one dequantization per row).
pub fn max_row_norm(src: &dyn RowSource, rows: Range<usize>) -> f32 {
    rows.into_par_iter()
        .map_init(
            || vec![0f32; src.cols()],
            |buf, r| {
                src.row_f32(r, buf);
                buf.iter().map(|v| v * v).sum::<f32>().sqrt()
            },
        )
        .reduce(|| 0.0, f32::max)
}

/// The overflow guard's scale for a matmul whose outputs are bounded by `bound`:
/// the smallest power of two `s ≥ bound / GUARD_LIMIT`, and 1 when the bound is within it.
///
/// The rule (documented in the crate's engine): by Cauchy–Schwarz every output and every
/// partial sum of row `m` obeys `|Σ w·x| ≤ ‖w_m‖₂ · ‖x‖₂`, so `bound = max_m ‖w_m‖₂ ×
/// activation bound`. Weights are stored as `w / s` and the host multiplies outputs by
/// `s` in f32. A power of two makes both multiplications exact in fp16 and f32 (barring
/// subnormals), so the guard costs no precision where it is not needed.
pub fn guard_scale(bound: f32) -> f32 {
    if !bound.is_finite() {
        return 2f32.powi(24);
    }
    let ratio = bound / crate::GUARD_LIMIT;
    if ratio <= 1.0 {
        1.0
    } else {
        2f32.powi(ratio.log2().ceil() as i32).min(2f32.powi(24))
    }
}

/// Rows `rows` × columns `cols` of `src`, multiplied by `inv_scale`, as fp16 row-major
/// `[pad_rows, pad_cols]` with zeros in the padding. Parallel over rows.
pub fn fp16_tile(
    src: &dyn RowSource,
    rows: Range<usize>,
    cols: Range<usize>,
    pad_rows: usize,
    pad_cols: usize,
    inv_scale: f32,
) -> Vec<f16> {
    assert!(rows.len() <= pad_rows && cols.len() <= pad_cols, "padding smaller than the tile");
    let mut out = vec![f16::ZERO; pad_rows * pad_cols];
    let r0 = rows.start;
    out[..rows.len() * pad_cols].par_chunks_mut(pad_cols).enumerate().for_each_init(
        || vec![0f32; src.cols()],
        |buf, (i, dst)| {
            src.row_f32(r0 + i, buf);
            let seg = &mut buf[cols.clone()];
            if inv_scale != 1.0 {
                seg.iter_mut().for_each(|v| *v *= inv_scale);
            }
            half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut dst[..seg.len()], seg);
        },
    );
    out
}

/// Like [`fp16_tile`], as int8 with one fp16 scale per row (symmetric, per output
/// channel): `w ≈ q · scale`, `scale = max|w| / 127` rounded to fp16, `q` rounded to
/// nearest and clamped to ±127. Rows that are all zero, and padding rows, get scale 1.
/// Returns `[pad_rows, pad_cols]` int8 values and `pad_rows` scales.
pub fn int8_tile(
    src: &dyn RowSource,
    rows: Range<usize>,
    cols: Range<usize>,
    pad_rows: usize,
    pad_cols: usize,
    inv_scale: f32,
) -> (Vec<i8>, Vec<f16>) {
    assert!(rows.len() <= pad_rows && cols.len() <= pad_cols, "padding smaller than the tile");
    let mut q = vec![0i8; pad_rows * pad_cols];
    let mut scales = vec![f16::ONE; pad_rows];
    let r0 = rows.start;
    q[..rows.len() * pad_cols].par_chunks_mut(pad_cols).zip(scales.par_iter_mut()).enumerate().for_each_init(
        || vec![0f32; src.cols()],
        |buf, (i, (dst, scale))| {
            src.row_f32(r0 + i, buf);
            let seg = &buf[cols.clone()];
            let max = seg.iter().fold(0f32, |m, v| m.max((v * inv_scale).abs()));
            if max == 0.0 || !max.is_finite() {
                return;
            }
            // Never 0: a scale below fp16's range becomes its smallest subnormal.
            let s = f16::from_f32(max / 127.0).max(f16::from_bits(1));
            *scale = s;
            let inv = 1.0 / s.to_f32();
            for (d, v) in dst.iter_mut().zip(seg) {
                *d = (v * inv_scale * inv).round().clamp(-127.0, 127.0) as i8;
            }
        },
    );
    (q, scales)
}
