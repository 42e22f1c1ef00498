//! The CUDA C source compiled by NVRTC at start-up: one dequantize kernel per ggml
//! weight format, raw blocks → f16 `[M, K]`, the feed-forward activations, causal
//! attention, the norms, RoPE and residuals of whole decoder blocks, and a fill kernel
//! for benchmarks.
//!
//! Each kernel maps one thread to one output element (grid-stride): the blocks of a
//! matrix are contiguous and rows are whole blocks, so element `i` of the flat output
//! is element `i % BS` of block `i / BS`. Reads of a block's header repeat across its
//! threads but hit L1; the writes are coalesced. It runs once per weight, at prepare.
//!
//! The formulas mirror `quant::blocks` (ggml's scalar dequantizers) term by term; the
//! unit tests in `formulas.rs` run the same index arithmetic in Rust against
//! `quant::dequantize_row` for every format, so a wrong index fails in CI, not on the GPU.
//! No headers: half conversions are inline PTX, so NVRTC needs no include path. The
//! codebooks of the non-linear formats are `quant::tables`, written into the source as
//! `__constant__` arrays at compile time (one copy of the data for CPU and GPU).

use quant::tables;
use quant::GgmlType;

pub use crate::matvec::{gemv_kernel, gemv_q8_kernel, MV_MAX_N};
use crate::source_text::{render, Part, Vals};

/// The program text: the helpers, the codebooks, the kernels.
pub const SOURCE: &str = {
    const PARTS: &[Part] = &[
        Part::Text(HELPERS),
        Part::Text(crate::matvec::MV_FRAME),
        Part::Table("signed char kvalues_iq4nl[16]", Vals::I8(&tables::KVALUES_IQ4NL)),
        Part::Table("signed char kvalues_fp4[16]", Vals::I8(&tables::KVALUES_FP4)),
        Part::Table("unsigned char ksigns_iq2xs[128]", Vals::U8(&tables::KSIGNS_IQ2XS)),
        Part::Table("unsigned long long iq2xxs_grid[256]", Vals::U64(&tables::IQ2XXS_GRID)),
        Part::Table("unsigned long long iq2xs_grid[512]", Vals::U64(&tables::IQ2XS_GRID)),
        Part::Table("unsigned long long iq2s_grid[1024]", Vals::U64(&tables::IQ2S_GRID)),
        Part::Table("unsigned long long iq3xxs_grid[256]", Vals::U64(&tables::IQ3XXS_GRID)),
        Part::Table("unsigned long long iq3s_grid[512]", Vals::U64(&tables::IQ3S_GRID)),
        Part::Table("unsigned long long iq1s_grid[2048]", Vals::U64(&tables::IQ1S_GRID)),
        Part::Text(KERNELS),
        Part::Text(crate::matvec::MV_KERNELS),
        Part::Text(crate::flash_attention::KERNELS),
        Part::Text(crate::stack_moe::KERNELS),
        Part::Text(crate::stack_delta::KERNELS),
        Part::Text(crate::decode_attention::KERNELS),
    ];
    const LEN: usize = render(PARTS, &mut []);
    // Only read here, at compile time. Not a static: clippy 1.95 crashes (ICE) on a
    // const that refers to one.
    #[allow(clippy::large_const_arrays)]
    const BYTES: [u8; LEN] = {
        let mut b = [0u8; LEN];
        render(PARTS, &mut b);
        b
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("the kernel source is ASCII"),
    }
};

const HELPERS: &str = r#"
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

__device__ __forceinline__ float h2f(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float ldh(const u8* p) { return h2f((u16)(p[0] | (p[1] << 8))); }
__device__ __forceinline__ u32 ldu32(const u8* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((u32)p[3] << 24); }

// BS elements per block of BB bytes; the body reads block `b`, element `j`, sets `v`.
// DEQ makes two kernels of one formula: NAME dequantizes a whole matrix to f16, NAME_mv
// multiplies the raw blocks by a few tokens (MV, in matvec.rs).
#define DEQ(NAME, BS, BB, ...) \
extern "C" __global__ void NAME(const u8* __restrict__ src, u16* __restrict__ dst, i64 n) { \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) { \
        const u8* b = src + (i / BS) * BB; const int j = (int)(i % BS); float v; \
        __VA_ARGS__; \
        dst[i] = f2h(v); \
    } \
} \
MV(NAME##_mv, BS, BB, __VA_ARGS__)
"#;

const KERNELS: &str = r#"
DEQ(deq_f32, 1, 4, v = __int_as_float((int)ldu32(b)); (void)j)
DEQ(deq_bf16, 1, 2, v = __int_as_float((int)((u32)(b[0] | (b[1] << 8)) << 16)); (void)j)
MV(mv_f16, 1, 2, v = ldh(b); (void)j)

DEQ(deq_q4_0, 32, 18, {
    int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    v = (q - 8) * ldh(b);
})
DEQ(deq_q4_1, 32, 20, {
    int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
    v = q * ldh(b) + ldh(b + 2);
})
DEQ(deq_q5_0, 32, 22, {
    u32 qh = ldu32(b + 2); int l = j & 15;
    int q = j < 16 ? ((b[6 + l] & 15) | (((qh >> l) << 4) & 0x10)) : ((b[6 + l] >> 4) | ((qh >> (l + 12)) & 0x10));
    v = (q - 16) * ldh(b);
})
DEQ(deq_q5_1, 32, 24, {
    u32 qh = ldu32(b + 4); int l = j & 15;
    int q = j < 16 ? ((b[8 + l] & 15) | (((qh >> l) << 4) & 0x10)) : ((b[8 + l] >> 4) | ((qh >> (l + 12)) & 0x10));
    v = q * ldh(b) + ldh(b + 2);
})
DEQ(deq_q8_0, 32, 34, v = (i8)b[2 + j] * ldh(b))

DEQ(deq_q2_k, 256, 84, {
    int h = j >> 7, r = j & 127, s = r >> 5, part = (r >> 4) & 1, l = r & 15;
    u8 sc = b[h * 8 + s * 2 + part];
    int q = (b[16 + 32 * h + l + 16 * part] >> (2 * s)) & 3;
    v = ldh(b + 80) * (sc & 15) * q - ldh(b + 82) * (sc >> 4);
})
DEQ(deq_q3_k, 256, 110, {
    int h = j >> 7, r = j & 127, s = r >> 5, part = (r >> 4) & 1, l = r & 31;
    int is = h * 8 + s * 2 + part;
    int lo = (b[96 + (is & 7)] >> (4 * (is >> 3))) & 15;
    int hi = (b[104 + (is & 3)] >> (2 * (is >> 2))) & 3;
    int q = ((b[32 + 32 * h + l] >> (2 * s)) & 3) - ((b[l] & (1 << (4 * h + s))) ? 0 : 4);
    v = ldh(b + 108) * ((lo | (hi << 4)) - 32) * q;
})
// Q4_K/Q5_K: 6-bit scale and min of sub-block `is` (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(const u8* q, int is, int* sc, int* m) {
    if (is < 4) { *sc = q[is] & 63; *m = q[is + 4] & 63; }
    else { *sc = (q[is + 4] & 15) | ((q[is - 4] >> 6) << 4); *m = (q[is + 4] >> 4) | ((q[is] >> 6) << 4); }
}
DEQ(deq_q4_k, 256, 144, {
    int jj = j >> 6, hi = (j >> 5) & 1, l = j & 31, sc, m;
    scale_min_k4(b + 4, 2 * jj + hi, &sc, &m);
    u8 x = b[16 + 32 * jj + l];
    int q = hi ? (x >> 4) : (x & 15);
    v = ldh(b) * sc * q - ldh(b + 2) * m;
})
DEQ(deq_q5_k, 256, 176, {
    int jj = j >> 6, hi = (j >> 5) & 1, l = j & 31, sc, m;
    scale_min_k4(b + 4, 2 * jj + hi, &sc, &m);
    u8 x = b[48 + 32 * jj + l];
    int q = (hi ? (x >> 4) : (x & 15)) + (((b[16 + l] >> (2 * jj + hi)) & 1) << 4);
    v = ldh(b) * sc * q - ldh(b + 2) * m;
})
DEQ(deq_q6_k, 256, 210, {
    int h = j >> 7, qt = (j >> 5) & 3, l = j & 31;
    u8 x = b[64 * h + l + 32 * (qt & 1)];
    int q = ((qt >= 2 ? (x >> 4) : (x & 15)) | (((b[128 + 32 * h + l] >> (2 * qt)) & 3) << 4)) - 32;
    v = ldh(b + 208) * (float)(i8)b[192 + 8 * h + (l >> 4) + 2 * qt] * q;
})

// The codebook formats: nibble j of a 32-element group (low nibbles first) indexes a table.
__device__ __forceinline__ int nib32(const u8* qs, int j) { return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4); }
// Half the E8M0 scale 2^(e-127) (the FP4 table is doubled); e < 2 are f32 subnormals.
__device__ __forceinline__ float e8m0_half(u8 e) { return __int_as_float(e < 2 ? (0x00200000 << e) : ((e - 1) << 23)); }
DEQ(deq_iq4_nl, 32, 18, v = ldh(b) * kvalues_iq4nl[nib32(b + 2, j)])
DEQ(deq_mxfp4, 32, 17, v = e8m0_half(b[0]) * kvalues_fp4[nib32(b + 1, j)])
DEQ(deq_iq4_xs, 256, 136, {
    int ib = j >> 5;
    int ls = ((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | ((((b[2] | (b[3] << 8)) >> (2 * ib)) & 3) << 4);
    v = ldh(b) * (ls - 32) * kvalues_iq4nl[nib32(b + 8 + 16 * ib, j & 31)];
})
// NVFP4: four sub-blocks of 16 with UE4M3 scales (halved: the FP4 table is doubled).
__device__ __forceinline__ float ue4m3_half(u8 x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    int e = (x >> 3) & 15, m = x & 7;
    float raw = e == 0 ? m * (1.0f / 512.0f) : (1.0f + m / 8.0f) * __int_as_float((e + 120) << 23);
    return raw * 0.5f;
}
DEQ(deq_nvfp4, 64, 36, {
    int s = j >> 4, l = j & 15;
    u8 x = b[4 + 8 * s + (l & 7)];
    v = ue4m3_half(b[s]) * kvalues_fp4[l < 8 ? (x & 15) : (x >> 4)];
})
DEQ(deq_q1_0, 128, 18, v = ((b[2 + (j >> 3)] >> (j & 7)) & 1) ? ldh(b) : -ldh(b))
DEQ(deq_q2_0, 64, 18, v = (((b[2 + (j >> 2)] >> (2 * (j & 3))) & 3) - 1) * ldh(b))
// TQ1_0: five base-3 digits per byte of qs[0..32] (elements 0..160), of qs[32..48]
// (160..240), four per byte of qh (240..256); digit n = top trit of (q * 3^n) mod 256.
DEQ(deq_tq1_0, 256, 54, {
    int i, n;
    if (j < 160) { i = j & 31; n = j >> 5; }
    else if (j < 240) { i = 32 + ((j - 160) & 15); n = (j - 160) >> 4; }
    else { i = 48 + ((j - 240) & 3); n = (j - 240) >> 2; }
    const u8 pow3[5] = {1, 3, 9, 27, 81};
    int t = ((u8)(b[i] * pow3[n]) * 3) >> 8;
    v = (t - 1) * ldh(b + 52);
})
DEQ(deq_tq2_0, 256, 66, v = (((b[32 * (j >> 7) + (j & 31)] >> (2 * ((j >> 5) & 3))) & 3) - 1) * ldh(b + 64))
// The grid i-quants: element k of 8 (IQ3: of 4) is byte k of a grid entry, with a sign bit.
__device__ __forceinline__ float gsign(u8 signs, int k) { return (signs >> k) & 1 ? -1.0f : 1.0f; }
__device__ __forceinline__ int gbyte(unsigned long long e, int k) { return (int)((e >> (8 * k)) & 255); }
DEQ(deq_iq2_xxs, 256, 66, {
    int ib = j >> 5, l = (j >> 3) & 3, k = j & 7;
    u32 aux = ldu32(b + 6 + 8 * ib);
    float db = ldh(b) * (0.5f + (aux >> 28)) * 0.25f;
    v = db * gbyte(iq2xxs_grid[b[2 + 8 * ib + l]], k) * gsign(ksigns_iq2xs[(aux >> (7 * l)) & 127], k);
})
DEQ(deq_iq2_xs, 256, 74, {
    int ib = j >> 5, l = (j >> 3) & 3, k = j & 7;
    int q = b[2 + 8 * ib + 2 * l] | (b[3 + 8 * ib + 2 * l] << 8);
    float db = ldh(b) * (0.5f + ((b[66 + ib] >> (4 * (l >> 1))) & 15)) * 0.25f;
    v = db * gbyte(iq2xs_grid[q & 511], k) * gsign(ksigns_iq2xs[q >> 9], k);
})
DEQ(deq_iq2_s, 256, 82, {
    int ib = j >> 5, l = (j >> 3) & 3, k = j & 7;
    int idx = b[2 + 4 * ib + l] | ((b[66 + ib] << (8 - 2 * l)) & 0x300);
    float db = ldh(b) * (0.5f + ((b[74 + ib] >> (4 * (l >> 1))) & 15)) * 0.25f;
    v = db * gbyte(iq2s_grid[idx], k) * gsign(b[34 + 4 * ib + l], k);
})
DEQ(deq_iq3_xxs, 256, 98, {
    int ib = j >> 5, g = (j >> 2) & 7;
    u32 aux = ldu32(b + 66 + 4 * ib);
    float db = ldh(b) * (0.5f + (aux >> 28)) * 0.5f;
    v = db * gbyte(iq3xxs_grid[b[2 + 8 * ib + g]], j & 3) * gsign(ksigns_iq2xs[(aux >> (7 * (g >> 1))) & 127], j & 7);
})
DEQ(deq_iq3_s, 256, 110, {
    int ib = j >> 5, g = (j >> 2) & 7;
    int idx = b[2 + 8 * ib + g] | ((b[66 + ib] << (8 - g)) & 256);
    float db = ldh(b) * (1 + 2 * ((b[106 + (ib >> 1)] >> (4 * (ib & 1))) & 15));
    v = db * gbyte(iq3s_grid[idx], j & 3) * gsign(b[74 + 4 * ib + (g >> 1)], j & 7);
})
// IQ1: a ternary grid point (i8 bytes) plus a shift of +-1/8, times the scale 2s + 1.
__device__ __forceinline__ float g1(int idx, int k) { return (float)(i8)((iq1s_grid[idx] >> (8 * k)) & 255); }
DEQ(deq_iq1_s, 256, 50, {
    int ib = j >> 5, l = (j >> 3) & 3;
    int qh = b[34 + 2 * ib] | (b[35 + 2 * ib] << 8);
    int idx = b[2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8);
    float dl = ldh(b) * (2 * ((qh >> 12) & 7) + 1);
    v = dl * (g1(idx, j & 7) + ((qh & 0x8000) ? -0.125f : 0.125f));
})
DEQ(deq_iq1_m, 256, 56, {
    int ib = j >> 5, l = (j >> 3) & 3;
    // The f16 scale: the top nibbles of the four u16 scale words.
    u16 h = (u16)((b[49] >> 4) | (b[51] & 0xF0) | ((b[53] >> 4) << 8) | ((b[55] & 0xF0) << 8));
    int sc = b[48 + 2 * (ib >> 1)] | (b[49 + 2 * (ib >> 1)] << 8);
    float dl = h2f(h) * (2 * ((sc >> (6 * (ib & 1) + 3 * (l >> 1))) & 7) + 1);
    int qh = b[32 + 2 * ib + (l >> 1)], nib = (l & 1) ? (qh >> 4) : (qh & 15);
    int idx = b[4 * ib + l] | ((nib & 7) << 8);
    v = dl * (g1(idx, j & 7) + ((nib & 8) ? -0.125f : 0.125f));
})

// Feed-forward activation on the card: mid = f16(act(gate) * up), saturated to the f16
// range so a large product stays finite. gate and up are the f32 GEMM outputs.
__device__ __forceinline__ float sat_f16(float v) { return fminf(fmaxf(v, -65504.0f), 65504.0f); }
extern "C" __global__ void ffn_silu(const float* __restrict__ g, const float* __restrict__ u, u16* __restrict__ mid, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = g[i];
        mid[i] = f2h(sat_f16(x / (1.0f + expf(-x)) * u[i]));
    }
}
// GELU, tanh approximation (as ggml's gelu).
extern "C" __global__ void ffn_gelu(const float* __restrict__ g, const float* __restrict__ u, u16* __restrict__ mid, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = g[i];
        float y = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * x * (1.0f + 0.044715f * x * x)));
        mid[i] = f2h(sat_f16(y * u[i]));
    }
}

// Causal attention, one block per (token, KV head), one warp per query head of the group:
// each lane holds head dimensions lane, lane+32, ... (at most 8: d, dv <= 256); for every
// visible key the warp reduces the score, updates an online softmax and accumulates the
// value row. The warps of a block read the same K/V rows (L1 hits). Queries are rounded
// to f16 like the keys, as the CPU path does. kc/vc hold cache rows first..; pos are the
// tokens' absolute positions; window 0 = none.
extern "C" __global__ void attn_causal(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                       const int* __restrict__ pos, float* __restrict__ out,
                                       int n_head, int n_kv, int d, int dv, int first, int window) {
    const int t = blockIdx.x, g = blockIdx.y, lane = threadIdx.x & 31;
    const int group = n_head / n_kv, h = g * group + (threadIdx.x >> 5);
    const int p = pos[t];
    const int lo = window > 0 ? max(0, p + 1 - window) : 0;
    float qr[8], acc[8];
    #pragma unroll
    for (int c = 0; c < 8; c++) {
        const int i = lane + 32 * c;
        qr[c] = i < d ? h2f(f2h(q[(i64)t * n_head * d + h * d + i])) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -__int_as_float(0x7f800000), l = 0.0f;  // -inf (no headers, no INFINITY)
    for (int j = lo; j <= p; j++) {
        const u16* kr = kc + (i64)(j - first) * n_kv * d + g * d;
        float s = 0.0f;
        #pragma unroll
        for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < d) s += qr[c] * h2f(kr[i]); }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn), w = expf(s - mn);
        l = l * corr + w;
        const u16* vr = vc + (i64)(j - first) * n_kv * dv + g * dv;
        #pragma unroll
        for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < dv) acc[c] = acc[c] * corr + w * h2f(vr[i]); }
        m = mn;
    }
    #pragma unroll
    for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < dv) out[(i64)t * n_head * dv + h * dv + i] = acc[c] / l; }
}

// The same attention, tiled: a block takes `tq` consecutive tokens of one KV head (a warp
// per (token, query head)); tiles of 32 keys and values are staged in shared memory once
// for all its warps; lane j scores key j of the tile (a dot over the whole head, q read
// from shared memory), so the softmax's reductions and exponentials happen once per tile,
// not per key. Shared memory: 32 x (d/2 + 1) words of keys (the +1 keeps lanes on
// separate banks), 32 x dv halves of values, and the warps' f32 queries.
extern "C" __global__ void attn_tiled(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                      const int* __restrict__ pos, float* __restrict__ out,
                                      int n_head, int n_kv, int d, int dv, int first, int window, int n, int tq) {
    extern __shared__ u32 smem[];
    const int kw = d / 2 + 1;
    u32* ks = smem;                          // [32][kw] half pairs
    u16* vs = (u16*)(smem + 32 * kw);        // [32][dv]
    float* qs = (float*)(smem + 32 * kw + (32 * dv + 1) / 2);
    const int g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int group = n_head / n_kv, warps = blockDim.x >> 5;
    const int t0 = blockIdx.x * tq;
    const int t = t0 + warp / group, h = g * group + warp % group;
    const bool live = t < n;
    const int p = live ? pos[t] : -1;
    const int lo = window > 0 ? max(0, p + 1 - window) : 0;
    // The block's key range: from the first token's window start to the last token's position.
    const int t_last = min(n, t0 + tq) - 1;
    const int p_first = pos[t0], p_last = pos[t_last];
    const int j_lo = window > 0 ? max(0, p_first + 1 - window) : 0;
    float* qw = qs + warp * d;
    for (int i = lane; i < d; i += 32) qw[i] = live ? h2f(f2h(q[(i64)t * n_head * d + h * d + i])) : 0.0f;
    float acc[8];
    #pragma unroll
    for (int c = 0; c < 8; c++) acc[c] = 0.0f;
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m = NEG_INF, l = 0.0f;
    for (int j0 = j_lo; j0 <= p_last; j0 += 32) {
        __syncthreads();
        // Stage the tile (rows past the last position are zeros; the mask drops them).
        for (int e = threadIdx.x; e < 32 * (d / 2); e += blockDim.x) {
            const int r = e / (d / 2), w = e % (d / 2);
            const int j = j0 + r;
            ks[r * kw + w] = j <= p_last ? ((const u32*)(kc + (i64)(j - first) * n_kv * d + g * d))[w] : 0u;
        }
        for (int e = threadIdx.x; e < 32 * dv; e += blockDim.x) {
            const int r = e / dv, i = e % dv;
            const int j = j0 + r;
            vs[r * dv + i] = j <= p_last ? vc[(i64)(j - first) * n_kv * dv + g * dv + i] : (u16)0;
        }
        __syncthreads();
        if (!live) continue;
        const int j = j0 + lane;
        float s = 0.0f;
        const u32* kr = ks + lane * kw;
        for (int w = 0; w < d / 2; w++) {
            const u32 pair = kr[w];
            s += qw[2 * w] * h2f((u16)(pair & 0xffffu)) + qw[2 * w + 1] * h2f((u16)(pair >> 16));
        }
        if (j < lo || j > p) s = NEG_INF;
        float tm = s;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
        const float mn = fmaxf(m, tm);
        if (mn == NEG_INF) continue;  // nothing visible yet (warp-uniform)
        const float corr = expf(m - mn);
        const float w = expf(s - mn);
        float ws = w;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) ws += __shfl_xor_sync(0xffffffffu, ws, o);
        l = l * corr + ws;
        m = mn;
        #pragma unroll
        for (int c = 0; c < 8; c++) acc[c] *= corr;
        for (int r = 0; r < 32; r++) {
            const float pr = __shfl_sync(0xffffffffu, w, r);
            const u16* vr = vs + r * dv;
            #pragma unroll
            for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < dv) acc[c] += pr * h2f(vr[i]); }
        }
    }
    if (!live) return;
    #pragma unroll
    for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < dv) out[(i64)t * n_head * dv + h * dv + i] = acc[c] / l; }
}

// ---- Decoder blocks on the card (stack.rs) ----

// Sum over a block (a multiple of 32 threads); every thread gets the total.
__device__ float block_sum(float v, float* red) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();  // the previous call's readers are done with red
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < warps; w++) t += red[w];
    return t;
}

// One block per token row of width d. When o is given: o is RMS-normed by post (when given,
// gemma's post-norms) and added to the residual x. Then, when w is given, h = f16(rmsnorm(x) * w)
// (the next norm, as the next GEMM's input). The same products in the same order as the CPU's
// rms_norm: (v * scale) * w.
extern "C" __global__ void residual_norm(float* __restrict__ x, const float* __restrict__ o, const float* __restrict__ post,
                                         const float* __restrict__ w, u16* __restrict__ h, int d, float eps) {
    __shared__ float red[32];
    float* xr = x + (i64)blockIdx.x * d;
    if (o) {
        const float* orow = o + (i64)blockIdx.x * d;
        float sc = 1.0f;
        if (post) {
            float ss = 0.0f;
            for (int i = threadIdx.x; i < d; i += blockDim.x) ss += orow[i] * orow[i];
            sc = 1.0f / sqrtf(block_sum(ss, red) / d + eps);
        }
        for (int i = threadIdx.x; i < d; i += blockDim.x) xr[i] += post ? orow[i] * sc * post[i] : orow[i];
    }
    if (!w) return;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    const float sc = 1.0f / sqrtf(block_sum(ss, red) / d + eps);
    u16* hr = h + (i64)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) hr[i] = f2h(sat_f16(xr[i] * sc * w[i]));
}

// One block per token, a warp per Q or K head (8 warps): bias, per-head RMSNorm (qn/kn given),
// RoPE on the first rope_dims dims from the token's (sin, cos) pairs, and for Q the attention
// scale (Q to qh in f16) — times the token's temperature when temp_scale != 0:
// ln(floor((pos + temp_offset) / temp_floor) + 1) * temp_scale + 1, the logarithm in double as
// llama.cpp computes it. K and V (plus bias) go to f16 rows t of kc/vc (the batch's new rows). A lane
// holds dims lane + 32c (head sizes up to 256); partners of a RoPE pair meet in shared memory.
extern "C" __global__ void qk_prep(const float* __restrict__ q, u16* __restrict__ qh, const float* __restrict__ k, const float* __restrict__ v,
                                   const float* __restrict__ bq, const float* __restrict__ bk, const float* __restrict__ bv,
                                   const float* __restrict__ qn, const float* __restrict__ kn, const float* __restrict__ rope,
                                   u16* __restrict__ kc, u16* __restrict__ vc,
                                   int n_head, int n_kv, int d, int dv, int rope_dims, int neox, float eps, float scale,
                                   const int* __restrict__ pos, float temp_scale, float temp_floor, float temp_offset) {
    __shared__ float buf[8][256];
    const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    float q_scale = scale;
    if (temp_scale != 0.0f) {
        const float steps = floorf(((float)pos[t] + temp_offset) / temp_floor);
        q_scale = (float)(log((double)steps + 1.0) * (double)temp_scale + 1.0) * scale;
    }
    const int half = rope_dims / 2;
    const float* ang = rope + (i64)t * rope_dims;
    const i64 row = t;
    for (int hh = warp; hh < n_head + n_kv; hh += warps) {
        const bool is_q = hh < n_head;
        const int kh = hh - n_head;
        const float* src = is_q ? q + ((i64)t * n_head + hh) * d : k + ((i64)t * n_kv + kh) * d;
        const float* bias = is_q ? (bq ? bq + hh * d : 0) : (bk ? bk + kh * d : 0);
        const float* nw = is_q ? qn : kn;
        float r[8], ss = 0.0f;
        #pragma unroll
        for (int c = 0; c < 8; c++) {
            const int i = lane + 32 * c;
            r[c] = i < d ? src[i] + (bias ? bias[i] : 0.0f) : 0.0f;
            ss += r[c] * r[c];
        }
        if (nw) {
            #pragma unroll
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            const float sc = 1.0f / sqrtf(ss / d + eps);
            #pragma unroll
            for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < d) r[c] = r[c] * sc * nw[i]; }
        }
        float* b = buf[warp];
        #pragma unroll
        for (int c = 0; c < 8; c++) { const int i = lane + 32 * c; if (i < d) b[i] = r[c]; }
        __syncwarp();
        #pragma unroll
        for (int c = 0; c < 8; c++) {
            const int i = lane + 32 * c;
            if (i >= rope_dims) continue;
            int p; float x0, x1; bool first;
            if (neox) { p = i < half ? i : i - half; x0 = b[p]; x1 = b[p + half]; first = i < half; }
            else { p = i >> 1; x0 = b[2 * p]; x1 = b[2 * p + 1]; first = (i & 1) == 0; }
            const float sn = ang[2 * p], cs = ang[2 * p + 1];
            r[c] = first ? x0 * cs - x1 * sn : x0 * sn + x1 * cs;
        }
        __syncwarp();
        #pragma unroll
        for (int c = 0; c < 8; c++) {
            const int i = lane + 32 * c;
            if (i >= d) continue;
            if (is_q) qh[((i64)t * n_head + hh) * d + i] = f2h(r[c] * q_scale);
            else kc[(row * n_kv + kh) * d + i] = f2h(r[c]);
        }
    }
    for (int e = threadIdx.x; e < n_kv * dv; e += blockDim.x)
        vc[row * n_kv * dv + e] = f2h(v[(i64)t * n_kv * dv + e] + (bv ? bv[e] : 0.0f));
}

// A sequence's new K/V rows (`rk` [n, kvd], `rv` [n, vd], f16) into its cache rows at their
// positions, read on the card (a captured decode step replays unchanged); one block per row.
extern "C" __global__ void kv_store(const u16* __restrict__ rk, const u16* __restrict__ rv, u16* __restrict__ ck, u16* __restrict__ cv,
                                    const int* __restrict__ pos, int kvd, int vd) {
    const int t = blockIdx.x;
    const i64 p = pos[t];
    for (int e = threadIdx.x; e < kvd; e += blockDim.x) ck[p * kvd + e] = rk[(i64)t * kvd + e];
    for (int e = threadIdx.x; e < vd; e += blockDim.x) cv[p * vd + e] = rv[(i64)t * vd + e];
}

// Attention scores -> probabilities, one block per row (head h, query q: row h * nq + q, rows
// `ld` apart) of `keys` scores for keys lo, lo+1, ...: masked causally (and by the window when window > 0)
// against the query's position, softmax with one pass for the maximum and sum (merged
// online across threads), one pass writing f16 probabilities (zeros where masked).
__device__ __forceinline__ void merge_ml(float& m, float& l, float m2, float l2) {
    const float mn = fmaxf(m, m2);
    if (mn == -__int_as_float(0x7f800000)) return;
    l = l * expf(m - mn) + l2 * expf(m2 - mn);
    m = mn;
}
extern "C" __global__ void attn_softmax(const float* __restrict__ s, u16* __restrict__ p, const int* __restrict__ pos,
                                        int nq, int keys, int ld, int lo, int window) {
    __shared__ float rm[32], rl[32];
    const i64 row = blockIdx.x;
    const int ps = pos[row % nq];
    const float* sr = s + row * ld;
    u16* pr = p + row * ld;
    const int hi = min(keys, ps - lo + 1);
    const int first = window > 0 ? max(0, ps + 1 - window - lo) : 0;
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m = NEG_INF, l = 0.0f;
    for (int j = first + threadIdx.x; j < hi; j += blockDim.x) {
        const float v = sr[j];
        if (v > m) { l = l * expf(m - v) + 1.0f; m = v; } else l += expf(v - m);
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) merge_ml(m, l, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, l, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { rm[warp] = m; rl[warp] = l; }
    __syncthreads();
    m = NEG_INF; l = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) merge_ml(m, l, rm[w], rl[w]);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int j = threadIdx.x; j < keys; j += blockDim.x)
        pr[j] = (j >= first && j < hi) ? f2h(expf(sr[j] - m) * inv) : (u16)0;
}

// Deterministic pseudo-random halves in [-1, 1) (benchmark operands; never zeros).
extern "C" __global__ void fill_f16(u16* dst, i64 n, u32 seed) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 x = (u32)i * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        dst[i] = f2h((float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}
"#;

/// Every kernel name in [`SOURCE`], loaded at start-up.
pub const NAMES: [&str; 91] = [
    "deq_f32", "deq_bf16", "deq_q4_0", "deq_q4_1", "deq_q5_0", "deq_q5_1", "deq_q8_0", "deq_q2_k", "deq_q3_k",
    "deq_q4_k", "deq_q5_k", "deq_q6_k", "deq_iq4_nl", "deq_iq4_xs", "deq_mxfp4", "deq_nvfp4", "deq_q1_0",
    "deq_q2_0", "deq_tq1_0", "deq_tq2_0", "deq_iq2_xxs", "deq_iq2_xs", "deq_iq2_s", "deq_iq3_xxs", "deq_iq3_s",
    "deq_iq1_s", "deq_iq1_m", "fill_f16", "ffn_silu", "ffn_gelu", "attn_causal",
    "attn_tiled", "residual_norm", "qk_prep", "attn_softmax", "flash_d64_q64", "flash_d128_q64",
    "flash_d64_q128", "flash_d128_q128",
    "deq_f32_mv", "deq_bf16_mv", "deq_q4_0_mv", "deq_q4_1_mv", "deq_q5_0_mv", "deq_q5_1_mv", "deq_q8_0_mv",
    "deq_q2_k_mv", "deq_q3_k_mv", "deq_q4_k_mv", "deq_q5_k_mv", "deq_q6_k_mv", "deq_iq4_nl_mv",
    "deq_iq4_xs_mv", "deq_mxfp4_mv", "deq_nvfp4_mv", "deq_q1_0_mv", "deq_q2_0_mv", "deq_tq1_0_mv",
    "deq_tq2_0_mv", "deq_iq2_xxs_mv", "deq_iq2_xs_mv", "deq_iq2_s_mv", "deq_iq3_xxs_mv", "deq_iq3_s_mv",
    "deq_iq1_s_mv", "deq_iq1_m_mv", "mv_f16", "mv_q4_k", "mv_q6_k", "mv_q8_0", "quantize_q8_32", "mv_q4_k_q8", "mv_q8_0_q8", "mv_q6_k_q8",
    "mv_q4_k_q8_s2", "mv_q4_k_q8_s4", "mv_q8_0_q8_s2", "mv_q8_0_q8_s4", "kv_store",
    "mv_q4_k_q8w", "mv_q4_k_q8w_s2", "mv_q4_k_q8w_s4", "attn_decode_d64", "attn_decode_d128", "attn_decode_d256",
    "attn_decode_merge", "moe_gather", "moe_scatter", "delta_conv", "delta_rule_k64", "delta_rule_k128",
];

/// Largest head dimension the attention kernel holds in registers (8 per lane).
pub const ATTN_MAX_DIM: usize = 256;

/// The kernel applying a feed-forward activation between the gate/up and down GEMMs (none
/// yet for gpt-oss's clamped SwiGLU: its blocks run as parts, the activation on the host).
pub fn activation_kernel(a: engine::arch::Activation) -> Option<&'static str> {
    match a {
        engine::arch::Activation::Silu => Some("ffn_silu"),
        engine::arch::Activation::GeluTanh => Some("ffn_gelu"),
        engine::arch::Activation::SwigluOai => None,
    }
}

/// How a weight of type `ty` reaches f16 on the card: `Ok(None)` = it already is f16
/// (copied as is), `Ok(Some(kernel))` = dequantized by that kernel, `Err` = not a weight format.
pub fn dequant_kernel(ty: GgmlType) -> Result<Option<&'static str>, String> {
    use GgmlType::*;
    Ok(Some(match ty {
        F16 => return Ok(None),
        F32 => "deq_f32",
        BF16 => "deq_bf16",
        Q4_0 => "deq_q4_0",
        Q4_1 => "deq_q4_1",
        Q5_0 => "deq_q5_0",
        Q5_1 => "deq_q5_1",
        Q8_0 => "deq_q8_0",
        Q2_K => "deq_q2_k",
        Q3_K => "deq_q3_k",
        Q4_K => "deq_q4_k",
        Q5_K => "deq_q5_k",
        Q6_K => "deq_q6_k",
        IQ4_NL => "deq_iq4_nl",
        IQ4_XS => "deq_iq4_xs",
        MXFP4 => "deq_mxfp4",
        NVFP4 => "deq_nvfp4",
        Q1_0 => "deq_q1_0",
        Q2_0 => "deq_q2_0",
        TQ1_0 => "deq_tq1_0",
        TQ2_0 => "deq_tq2_0",
        IQ2_XXS => "deq_iq2_xxs",
        IQ2_XS => "deq_iq2_xs",
        IQ2_S => "deq_iq2_s",
        IQ3_XXS => "deq_iq3_xxs",
        IQ3_S => "deq_iq3_s",
        IQ1_S => "deq_iq1_s",
        IQ1_M => "deq_iq1_m",
        Q8_1 | Q8_K => return Err(format!("{} is an activation format, not a weight format", ty.name())),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weight_format_has_a_path_and_every_kernel_exists() {
        for ty in GgmlType::ALL {
            match dequant_kernel(ty) {
                Ok(Some(k)) => assert!(NAMES.contains(&k) && SOURCE.contains(&format!("({k},")), "{k}"),
                Ok(None) => assert_eq!(ty, GgmlType::F16),
                Err(_) => assert!(matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K)),
            }
            // Every weight format also multiplies decode tokens from its raw blocks.
            match gemv_kernel(ty) {
                Some(k) => assert!(NAMES.contains(&k), "{k}"),
                None => assert!(matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K)),
            }
        }
        assert!(SOURCE.contains("MV(mv_f16, 1, 2,") && SOURCE.contains("MV(NAME##_mv, BS, BB"));
        assert!(SOURCE.contains(&format!("#define MV_MAX_N {MV_MAX_N}\n")));
    }

    #[test]
    fn codebooks_are_rendered_into_the_source() {
        assert!(SOURCE.contains("__constant__ signed char kvalues_iq4nl[16] = {-127,-104,-83,-65,-49,-35,-22,-10,1,13,25,38,53,69,89,113,};\n"));
        assert!(SOURCE.contains("__constant__ signed char kvalues_fp4[16] = {0,1,2,3,4,6,8,12,0,-1,"));
        assert!(SOURCE.contains("__constant__ unsigned long long iq1s_grid[2048] = {18446744073709551615ull,"));
        assert!(SOURCE.contains("__constant__ unsigned char ksigns_iq2xs[128] = {0,129,130,3,"));
        assert!(SOURCE.starts_with(HELPERS) && SOURCE.contains(KERNELS) && SOURCE.contains(crate::matvec::MV_KERNELS) && SOURCE.ends_with(crate::decode_attention::KERNELS));
    }

    /// Compiles the source when an NVRTC library is on the library path; catches syntax
    /// errors without a GPU. scripts/test.sh fetches NVRTC from PyPI and sets
    /// `TANDEM_REQUIRE_NVRTC=1`, so in CI a missing library fails instead of skipping.
    #[test]
    fn source_compiles_when_nvrtc_is_present() {
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("TANDEM_REQUIRE_NVRTC").is_none(),
                "TANDEM_REQUIRE_NVRTC is set but no libnvrtc is on the library path (scripts/fetch-nvrtc.sh)"
            );
            eprintln!("skipped: no libnvrtc on the library path");
            return;
        }
        // A100 and H100, and the fallback used when NVRTC does not know the card's.
        for arch in ["compute_80", "compute_90", "compute_70"] {
            let opts = cudarc::nvrtc::CompileOptions {
                options: vec![format!("--gpu-architecture={arch}")],
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).unwrap_or_else(|e| panic!("{arch}: {e}"));
            let text = ptx.to_src();
            for name in NAMES {
                assert!(text.contains(&format!(".entry {name}")), "{name} missing from the {arch} PTX");
            }
        }
    }

    /// Machine code for sm_80 and sm_90 (NVRTC runs ptxas): catches what PTX does not, such
    /// as a kernel's registers or shared memory over the card's limits.
    #[test]
    fn source_assembles_for_sm80_and_sm90_when_nvrtc_is_present() {
        use cudarc::nvrtc::{result, sys};
        if !unsafe { sys::is_culib_present() } {
            assert!(std::env::var_os("TANDEM_REQUIRE_NVRTC").is_none(), "TANDEM_REQUIRE_NVRTC is set but no libnvrtc is found");
            eprintln!("skipped: no libnvrtc on the library path");
            return;
        }
        let src = std::ffi::CString::new(SOURCE).unwrap();
        for arch in ["sm_80", "sm_90"] {
            let prog = result::create_program(&src, None).unwrap();
            let compiled = unsafe { result::compile_program(prog, &[format!("--gpu-architecture={arch}")]) };
            let log = unsafe { result::get_program_log(prog) }.unwrap_or_default();
            let log: String = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
            assert!(compiled.is_ok(), "{arch}: {log}");
            let mut size = 0usize;
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result().unwrap();
            let mut cubin = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }.result().unwrap();
            unsafe { result::destroy_program(prog) }.unwrap();
            assert!(cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
            for name in NAMES {
                let found = cubin.windows(name.len() + 1).any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
                assert!(found, "{name} missing from the {arch} cubin");
            }
        }
    }
}
