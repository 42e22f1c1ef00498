//! Each sequence's K/V rows kept on the card between calls, inside the sequence's
//! [`KvMirror`]: a decode step then reads the cache where it already is, and only rows the
//! card lacks (written on the host since, e.g. by a CPU step or a restored snapshot) go up.
//!
//! One allocation per sequence: per layer, K `[cap, kvd]` then V `[cap, vd]`, f16. It grows
//! by doubling (its valid rows copied on the card) up to the host cache's context.

use crate::gpu::{err, DevBuf, Gpu, Res};
use cudarc::driver::result as drv;
use engine::matrix::KvRows;

/// Fewest rows a sequence's copy is made with.
const MIN_ROWS: usize = 256;

/// A sequence's rows on the card.
pub(crate) struct DeviceRows {
    buf: DevBuf,
    /// Rows per layer.
    cap: usize,
    /// Per layer: K and V widths.
    widths: Vec<(usize, usize)>,
}

impl DeviceRows {
    fn new(gpu: &Gpu, widths: &[(usize, usize)], cap: usize) -> Res<Self> {
        let bytes = widths.iter().map(|(k, v)| cap * (k + v) * 2).sum();
        Ok(DeviceRows { buf: DevBuf::new(&gpu.ctx, bytes)?, cap, widths: widths.to_vec() })
    }

    /// Layer `il`'s K and V addresses.
    pub(crate) fn layer(&self, il: usize) -> (u64, u64) {
        let before: usize = self.widths[..il].iter().map(|(k, v)| self.cap * (k + v) * 2).sum();
        let k = self.buf.ptr + before as u64;
        (k, k + (self.cap * self.widths[il].0 * 2) as u64)
    }
}

/// Makes `cache`'s copy on the card hold positions `0..pos0` with room for `needed` rows
/// (`widths`: every layer's K and V widths), and returns each layer's K and V addresses.
/// Rows the copy lacks are uploaded on the compute stream. The mirror is left valid up to
/// `pos0` only; the caller raises it once the new rows are written. Also returns the rows
/// the copy has room for (it grows by doubling, so this changes rarely).
pub(crate) fn prepare(gpu: &Gpu, cache: &mut dyn KvRows, widths: &[(usize, usize)], pos0: usize, needed: usize) -> Res<(Vec<(u64, u64)>, usize)> {
    // The cache's positions, from the first layer with K/V rows (recurrent layers have none).
    let n_ctx = match widths.iter().position(|&(kd, _)| kd > 0) {
        Some(il) => cache.layer(il).0.len() / widths[il].0,
        None => return Err("no layer keeps K/V rows".into()),
    };
    if needed > n_ctx {
        return Err(format!("{needed} rows exceed the cache's {n_ctx} positions"));
    }
    let stream = gpu.s_comp.cu_stream();
    let mirror = cache.mirror();
    mirror.changed_from(pos0);
    let valid = mirror.valid;
    let old = mirror.data.take().and_then(|d| d.downcast::<DeviceRows>().ok()).filter(|r| r.widths == widths);
    let (rows, valid) = match old {
        Some(r) if r.cap >= needed => (*r, valid),
        old => {
            let cap = needed.next_power_of_two().max(MIN_ROWS).min(n_ctx).max(needed);
            let new = DeviceRows::new(gpu, widths, cap)?;
            let kept = match old {
                Some(old) if valid > 0 => {
                    for (il, &(kd, vd)) in widths.iter().enumerate() {
                        let ((ok, ov), (nk, nv)) = (old.layer(il), new.layer(il));
                        unsafe {
                            drv::memcpy_dtod_async(nk, ok, valid * kd * 2, stream).map_err(err("grow cached keys"))?;
                            drv::memcpy_dtod_async(nv, ov, valid * vd * 2, stream).map_err(err("grow cached values"))?;
                        }
                    }
                    // The old copy is freed only once its rows are across.
                    gpu.s_comp.synchronize().map_err(err("grow cache rows"))?;
                    valid
                }
                _ => 0,
            };
            (new, kept)
        }
    };
    // Rows written on the host since the card last held them.
    if valid < pos0 {
        for (il, &(kd, vd)) in widths.iter().enumerate() {
            let (k, v) = rows.layer(il);
            let (hk, hv) = cache.layer(il);
            let bits = |h: &[half::f16]| -> &[u16] { unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u16, h.len()) } };
            unsafe {
                drv::memcpy_htod_async(k + (valid * kd * 2) as u64, &bits(hk)[valid * kd..pos0 * kd], stream).map_err(err("upload cached keys"))?;
                drv::memcpy_htod_async(v + (valid * vd * 2) as u64, &bits(hv)[valid * vd..pos0 * vd], stream).map_err(err("upload cached values"))?;
            }
        }
    }
    let layers = (0..widths.len()).map(|il| rows.layer(il)).collect();
    let cap = rows.cap;
    let mirror = cache.mirror();
    mirror.valid = pos0;
    mirror.data = Some(Box::new(rows));
    Ok((layers, cap))
}
