//! Row-batch dot kernels for decode: one call dots every row of a weight slab against
//! one token, so the per-row call, length checks and prologue are paid once per slab,
//! and the out-of-order core overlaps a row's horizontal sum with the next row's loads
//! (a fifth of a 640-element Q5_0 row's time went to that per-row overhead).
//!
//! Each kernel runs the same inlined body as the single-row kernel of its level, so its
//! results are bit for bit those of [`crate::dot_kernel`].

use super::k_quants::{q4_k_body, q5_k_body, q6_k_body};
use super::legacy::{q4_0_body, q4_1_body, q5_0_body, q5_1_body, q8_0_body};
use super::legacy512;
use super::{Avx2, Avx512};
use crate::{GgmlType, RowsDotFn};

/// How far ahead of the row being dotted its slab is prefetched, in bytes. The hardware
/// prefetchers alone left decode short of the memory's speed: on a 2-core Xeon VM, Gemma 3
/// 270M's tg64 went from 90-101 to 110-119 t/s with 2 KiB (1 KiB: 106-112; 3 KiB and more
/// lost again), SmolLM2's stayed level (docs/PERF.md).
const PREFETCH_AHEAD: usize = 2048;

/// Prefetches the cache lines `PREFETCH_AHEAD` bytes past row `[at, at + len)` of `w`.
#[inline(always)]
fn prefetch_ahead(w: &[u8], at: usize, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let stop = (at + len + PREFETCH_AHEAD).min(w.len());
    let mut p = at + PREFETCH_AHEAD;
    while p < stop {
        // SAFETY: p < w.len(); a prefetch never faults and changes no state.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(p) as *const i8) };
        p += 64;
    }
}

/// `$name(n, w, a, out)`: `out[r]` = row `r` of `w` (n elements, `$wb` bytes per `$qk`)
/// against `a` (`$ab` bytes per `$qk`), with the single-row body `$body`.
macro_rules! rows_entry {
    ($name:ident, $features:literal, $body:expr, $qk:expr, $wb:expr, $ab:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            #[target_feature(enable = $features)]
            unsafe fn inner(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
                let rb = n / $qk * $wb;
                for (r, o) in out.iter_mut().enumerate() {
                    prefetch_ahead(w, r * rb, rb);
                    *o = $body(n, w.as_ptr().add(r * rb), a.as_ptr());
                }
            }
            let ok = n.is_multiple_of($qk) && w.len() == out.len() * (n / $qk * $wb) && a.len() == n / $qk * $ab;
            assert!(ok, "rows dot: {} rows of {n} elements need {} weight and {} activation bytes", out.len(), out.len() * (n / $qk * $wb), n / $qk * $ab);
            // SAFETY: handed out only after run-time detection; lengths checked above.
            unsafe { inner(n, w, a, out) }
        }
    };
}

rows_entry!(q4_0_avx2, "avx2,fma,f16c", q4_0_body::<Avx2>, 32, 18, 34);
rows_entry!(q4_1_avx2, "avx2,fma,f16c", q4_1_body::<Avx2>, 32, 20, 36);
rows_entry!(q5_0_avx2, "avx2,fma,f16c", q5_0_body::<Avx2>, 32, 22, 34);
rows_entry!(q5_1_avx2, "avx2,fma,f16c", q5_1_body::<Avx2>, 32, 24, 36);
rows_entry!(q8_0_avx2, "avx2,fma,f16c", q8_0_body::<Avx2>, 32, 34, 34);
rows_entry!(q4_k_avx2, "avx2,fma,f16c", q4_k_body::<Avx2>, 256, 144, 292);
rows_entry!(q5_k_avx2, "avx2,fma,f16c", q5_k_body::<Avx2>, 256, 176, 292);
rows_entry!(q6_k_avx2, "avx2,fma,f16c", q6_k_body::<Avx2>, 256, 210, 292);
rows_entry!(q4_0_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", legacy512::q4_0, 32, 18, 34);
rows_entry!(q4_1_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", legacy512::q4_1, 32, 20, 36);
rows_entry!(q5_0_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", legacy512::q5_0, 32, 22, 34);
rows_entry!(q5_1_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", legacy512::q5_1, 32, 24, 36);
rows_entry!(q8_0_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", legacy512::q8_0, 32, 34, 34);
rows_entry!(q4_k_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", q4_k_body::<Avx512>, 256, 144, 292);
rows_entry!(q5_k_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", q5_k_body::<Avx512>, 256, 176, 292);
rows_entry!(q6_k_avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", q6_k_body::<Avx512>, 256, 210, 292);

/// The row-batch kernel for `ty` at the detected level: the same body as that level's
/// single-row kernel (at AVX-512 the 32-element formats' two-block kernels).
pub(crate) fn rows_kernel(ty: GgmlType) -> Option<RowsDotFn> {
    use GgmlType::*;
    if super::has_avx512vnni() {
        return match ty {
            Q4_0 => Some(q4_0_avx512),
            Q4_1 => Some(q4_1_avx512),
            Q5_0 => Some(q5_0_avx512),
            Q5_1 => Some(q5_1_avx512),
            Q8_0 => Some(q8_0_avx512),
            Q4_K => Some(q4_k_avx512),
            Q5_K => Some(q5_k_avx512),
            Q6_K => Some(q6_k_avx512),
            _ => None,
        };
    }
    if !super::has_avx2() {
        return None;
    }
    Some(match ty {
        Q4_0 => q4_0_avx2,
        Q4_1 => q4_1_avx2,
        Q5_0 => q5_0_avx2,
        Q5_1 => q5_1_avx2,
        Q8_0 => q8_0_avx2,
        Q4_K => q4_k_avx2,
        Q5_K => q5_k_avx2,
        Q6_K => q6_k_avx2,
        _ => return None,
    })
}
