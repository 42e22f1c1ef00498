//! The matrix-vector kernels of decode steps, part of the kernels' source (`kernels.rs`):
//! `y[t, r] = Σ_k W[r, k] · x[t, k]` for up to [`MV_MAX_N`] f16 tokens, straight from a
//! weight's raw blocks. `MV_FRAME` goes in before the kernels (the `DEQ` macro makes a generic
//! matrix-vector kernel of every dequantizer's formula with it); `MV_KERNELS` after them (the
//! common formats' own kernels, which use the K-quant helpers).

use crate::kernels::dequant_kernel;
use quant::GgmlType;

/// The frame every matrix-vector kernel shares, and the generic one (`MV`).
pub(crate) const MV_FRAME: &str = r#"
// Decode steps: y[t, r] = sum_k W[r, k] * x[t, k] for n <= MV_MAX_N tokens, straight from the
// raw blocks (rows are whole blocks). One warp per row; its lanes take consecutive elements,
// so a block's bytes are read once and coalesced; f32 sums, reduced across the warp.
#define MV_MAX_N 8
__device__ __forceinline__ float warp_sum(float s) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}
// The frame of every matrix-vector kernel, with S warps of a 128-thread block per row (S = 1,
// 2 or 4): warp `part` of a row takes every S-th group of its blocks, so a row has S times
// the bytes in flight (rows of a K/V projection are too few to fill the card one warp each).
// With S > 1 no early return: every thread reaches the block's barrier, and the partial sums
// meet in shared memory.
#define MV_HEAD_S(S, ROW_BYTES) \
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31; \
    const int row = blockIdx.x * ((blockDim.x >> 5) / S) + warp / S, part = warp % S; \
    const bool valid = row < rows; \
    if (S == 1 && !valid) return; \
    const u8* w = src + (i64)(valid ? row : 0) * (ROW_BYTES); \
    float acc[MV_MAX_N]; \
    for (int t = 0; t < MV_MAX_N; t++) acc[t] = 0.0f;
#define MV_TAIL_S(S) \
    if (S == 1) { \
        for (int t = 0; t < MV_MAX_N; t++) { \
            float s = warp_sum(acc[t]); \
            if (valid && lane == 0 && t < n) y[(i64)t * rows + row] = s; \
        } \
    } else { \
        __shared__ float partial[4][MV_MAX_N]; \
        for (int t = 0; t < MV_MAX_N; t++) { \
            float s = warp_sum(acc[t]); \
            if (lane == 0) partial[warp][t] = s; \
        } \
        __syncthreads(); \
        if (valid && part == 0 && lane < n) { \
            float s = 0.0f; \
            for (int p = 0; p < S; p++) s += partial[warp + p][lane]; \
            y[(i64)lane * rows + row] = s; \
        } \
    }
// The frame of a kernel with one warp per row: this warp's row `w`, its lane, one sum per
// token; at the end, the sums reduced across the warp and written.
#define MV_HEAD(ROW_BYTES) MV_HEAD_S(1, ROW_BYTES)
#define MV_TAIL MV_TAIL_S(1)
// Every matrix-vector kernel's signature: raw blocks, f16 tokens `[n, cols]`, f32 out `[n, rows]`.
#define MV_KERNEL(NAME) \
extern "C" __global__ void NAME(const u8* __restrict__ src, const u16* __restrict__ x, float* __restrict__ y, \
                                int rows, int cols, int n)
#define MV(NAME, BS, BB, ...) \
MV_KERNEL(NAME) { \
    MV_HEAD((cols / BS) * BB) \
    for (int i = lane; i < cols; i += 32) { \
        const u8* b = w + (i / BS) * BB; const int j = i % BS; float v; \
        __VA_ARGS__; \
        for (int t = 0; t < MV_MAX_N; t++) if (t < n) acc[t] += v * h2f(x[(i64)t * cols + i]); \
    } \
    MV_TAIL \
}
"#;

/// Q4_K, Q6_K and Q8_0's own kernels.
pub(crate) const MV_KERNELS: &str = r#"
// Matrix-vector kernels of the formats most files hold (Q4_K_M is Q4_K and Q6_K): a warp per
// row as in MV, but each lane takes 8 elements of a block with wide loads and the block's
// scales once. `formulas.rs` walks the same lane mapping in Rust over every element.

// Four f16 at once (8-byte aligned).
__device__ __forceinline__ void ld4h(const u16* p, float* f) {
    unsigned long long v = *(const unsigned long long*)p;
    for (int k = 0; k < 4; k++) f[k] = h2f((u16)(v >> (16 * k)));
}

// Byte k (0..15) of a 16-byte value held in registers (selects, no local-memory array).
__device__ __forceinline__ int byte_at(uint4 v, int k) {
    const u32 w = k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w;
    return (w >> (8 * (k & 3))) & 255;
}
// Q4_K/Q5_K's scale and min of sub-block `is` from a block's first 16 bytes (d, dmin, scales).
__device__ __forceinline__ void scale_min_k4_reg(uint4 h, int is, int* sc, int* m) {
    if (is < 4) { *sc = byte_at(h, 4 + is) & 63; *m = byte_at(h, 8 + is) & 63; }
    else { *sc = (byte_at(h, 8 + is) & 15) | ((byte_at(h, is) >> 6) << 4); *m = (byte_at(h, 8 + is) >> 4) | ((byte_at(h, 4 + is) >> 6) << 4); }
}

// Q4_K: lane L holds qs bytes 4L..4L+3 of each block: elements 64(L/8) + 4(L%8) + k (low
// nibbles, sub-block 2(L/8)) and the same + 32 (high nibbles, the next sub-block). The loads of
// MV_Q4K_UNROLL blocks (each block's 16-byte header as one load, its 4 qs bytes as another) are
// issued before any is used, so a warp keeps several blocks in flight: decode is bound by how
// many bytes are in flight, not by arithmetic.
#define MV_Q4K_UNROLL 4
// The headers and this lane's qs bytes of blocks ib0.. (the last block repeated past the row).
__device__ __forceinline__ void q4k_load(const u8* w, int ib0, int nb, int lane, uint4* hd, u32* qv) {
#pragma unroll
    for (int u = 0; u < MV_Q4K_UNROLL; u++) {
        const u8* b = w + min(ib0 + u, nb - 1) * 144;
        hd[u] = *(const uint4*)b;
        qv[u] = *(const u32*)(b + 16 + 4 * lane);
    }
}
// Sub-blocks 2jj and 2jj+1 of a block from its header: scale (d * sc) and min (dmin * m) of each.
__device__ __forceinline__ void q4k_scales(uint4 h, int jj, float* d0, float* d1, float* o0, float* o1) {
    int sc0, m0, sc1, m1;
    scale_min_k4_reg(h, 2 * jj, &sc0, &m0);
    scale_min_k4_reg(h, 2 * jj + 1, &sc1, &m1);
    const float d = h2f((u16)(h.x & 0xffffu)), dmin = h2f((u16)(h.x >> 16));
    *d0 = d * sc0; *d1 = d * sc1; *o0 = dmin * m0; *o1 = dmin * m1;
}
MV_KERNEL(mv_q4_k) {
    MV_HEAD((cols / 256) * 144)
    const int jj = lane >> 3, l = 4 * (lane & 7), nb = cols / 256;
    for (int ib0 = 0; ib0 < nb; ib0 += MV_Q4K_UNROLL) {
        uint4 hd[MV_Q4K_UNROLL];
        u32 qv[MV_Q4K_UNROLL];
        q4k_load(w, ib0, nb, lane, hd, qv);
#pragma unroll
        for (int u = 0; u < MV_Q4K_UNROLL; u++) {
            if (ib0 + u >= nb) break;
            float d0, d1, o0, o1;
            q4k_scales(hd[u], jj, &d0, &d1, &o0, &o1);
            const u32 q = qv[u];
            const int e = (ib0 + u) * 256 + 64 * jj + l;
            for (int t = 0; t < MV_MAX_N; t++) {
                if (t >= n) break;
                float lo[4], hi[4];
                ld4h(x + (i64)t * cols + e, lo);
                ld4h(x + (i64)t * cols + e + 32, hi);
                float s0 = 0.0f, s1 = 0.0f, x0 = 0.0f, x1 = 0.0f;
                for (int k = 0; k < 4; k++) {
                    s0 += (float)((q >> (8 * k)) & 15) * lo[k]; x0 += lo[k];
                    s1 += (float)((q >> (8 * k + 4)) & 15) * hi[k]; x1 += hi[k];
                }
                acc[t] += d0 * s0 - o0 * x0 + d1 * s1 - o1 * x1;
            }
        }
    }
    MV_TAIL
}

// Decode-step tokens as 8-bit integers for the dp4a kernels: per 32 elements q = round(x / d),
// d = max|x| / 127 (f32); one warp per 32 elements (`blocks` = n * cols / 32, cols % 32 == 0).
extern "C" __global__ void quantize_q8_32(const u16* __restrict__ x, i8* __restrict__ q, float* __restrict__ d, int blocks) {
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (b >= blocks) return;
    const float v = h2f(x[(i64)b * 32 + lane]);
    float a = fabsf(v);
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    const float s = a / 127.0f;
    q[(i64)b * 32 + lane] = (i8)(s > 0.0f ? __float2int_rn(v / s) : 0);
    if (lane == 0) d[b] = s;
}

// Q4_K against 8-bit tokens (`quantize_q8_32`): the lane mapping of mv_q4_k, but each lane's
// four low and four high nibbles meet four activation bytes each in one dp4a, so no element is
// converted to float; the sub-block mins by a dp4a of the same bytes with ones. Per lane and
// block: d_a(sub-block) * (d * sc * dot - dmin * m * sum), as `formulas.rs` transcribes it.
template <int S>
__device__ __forceinline__ void mv_q4_k_q8_rows(const u8* __restrict__ src, const i8* __restrict__ xq, const float* __restrict__ xd,
                                                float* __restrict__ y, int rows, int cols, int n) {
    MV_HEAD_S(S, (cols / 256) * 144)
    const int jj = lane >> 3, l = 4 * (lane & 7), nb = cols / 256;
    for (int ib0 = part * MV_Q4K_UNROLL; valid && ib0 < nb; ib0 += S * MV_Q4K_UNROLL) {
        uint4 hd[MV_Q4K_UNROLL];
        u32 qv[MV_Q4K_UNROLL];
        q4k_load(w, ib0, nb, lane, hd, qv);
#pragma unroll
        for (int u = 0; u < MV_Q4K_UNROLL; u++) {
            if (ib0 + u >= nb) break;
            float d0, d1, o0, o1;
            q4k_scales(hd[u], jj, &d0, &d1, &o0, &o1);
            const int lo = (int)(qv[u] & 0x0F0F0F0Fu), hi = (int)((qv[u] >> 4) & 0x0F0F0F0Fu);
            const int e = (ib0 + u) * 256 + 64 * jj + l, sb = (ib0 + u) * 8 + 2 * jj;
            for (int t = 0; t < MV_MAX_N; t++) {
                if (t >= n) break;
                const int a0 = *(const int*)(xq + (i64)t * cols + e), a1 = *(const int*)(xq + (i64)t * cols + e + 32);
                const float* dt = xd + (i64)t * (cols / 32);
                const int dot0 = __dp4a(lo, a0, 0), dot1 = __dp4a(hi, a1, 0);
                const int sum0 = __dp4a(0x01010101, a0, 0), sum1 = __dp4a(0x01010101, a1, 0);
                acc[t] += dt[sb] * (d0 * (float)dot0 - o0 * (float)sum0) + dt[sb + 1] * (d1 * (float)dot1 - o1 * (float)sum1);
            }
        }
    }
    MV_TAIL_S(S)
}
// Every dp4a kernel's signature; _s2/_s4: 2 or 4 warps per row (MV_HEAD_S).
#define MV_Q8_KERNEL(NAME) \
extern "C" __global__ void NAME(const u8* __restrict__ src, const i8* __restrict__ xq, const float* __restrict__ xd, \
                                float* __restrict__ y, int rows, int cols, int n)
MV_Q8_KERNEL(mv_q4_k_q8) { mv_q4_k_q8_rows<1>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q4_k_q8_s2) { mv_q4_k_q8_rows<2>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q4_k_q8_s4) { mv_q4_k_q8_rows<4>(src, xq, xd, y, rows, cols, n); }

// Q4_K against 8-bit tokens with 16 bytes of quants per lane (the "wide" form): lane L takes
// block L/8 of each group of four consecutive blocks, and its quant bytes 16(L%8)..+15: pair
// j = (L%8)/2 (sub-blocks 2j and 2j+1: low and high nibbles), half h = L%2 (their elements
// 16h..16h+15). Per lane and block one 16-byte load of quants and the block's 16-byte header
// (the same for its 8 lanes), two 16-byte loads of activations, 16 dp4a. A warp keeps
// MV_Q4KW_UNROLL groups (8 blocks) in flight; with S warps per row, warp `part` takes groups
// part*U.., then every S*U-th. `formulas.rs` transcribes it.
#define MV_Q4KW_UNROLL 2
__device__ __forceinline__ int dp4a_x4(uint4 w, int4 a, int c) {
    return __dp4a((int)w.w, a.w, __dp4a((int)w.z, a.z, __dp4a((int)w.y, a.y, __dp4a((int)w.x, a.x, c))));
}
template <int S>
__device__ __forceinline__ void mv_q4_k_q8w_rows(const u8* __restrict__ src, const i8* __restrict__ xq, const float* __restrict__ xd,
                                                 float* __restrict__ y, int rows, int cols, int n) {
    MV_HEAD_S(S, (cols / 256) * 144)
    const int sub = lane & 7, j = sub >> 1, h = sub & 1, nb = cols / 256, ngroups = (nb + 3) / 4;
    const uint4 LO = make_uint4(0x0F0F0F0Fu, 0x0F0F0F0Fu, 0x0F0F0F0Fu, 0x0F0F0F0Fu), ONES = make_uint4(0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u);
    for (int g0 = part * MV_Q4KW_UNROLL; valid && g0 < ngroups; g0 += S * MV_Q4KW_UNROLL) {
        uint4 hd[MV_Q4KW_UNROLL], qv[MV_Q4KW_UNROLL];
#pragma unroll
        for (int u = 0; u < MV_Q4KW_UNROLL; u++) {
            const u8* b = w + min(4 * (g0 + u) + (lane >> 3), nb - 1) * 144;
            hd[u] = *(const uint4*)b;
            qv[u] = *(const uint4*)(b + 16 + 16 * sub);
        }
#pragma unroll
        for (int u = 0; u < MV_Q4KW_UNROLL; u++) {
            const int ib = 4 * (g0 + u) + (lane >> 3);
            if (ib >= nb) continue;
            float d0, d1, o0, o1;
            q4k_scales(hd[u], j, &d0, &d1, &o0, &o1);
            const uint4 q = qv[u];
            const uint4 lo = make_uint4(q.x & LO.x, q.y & LO.y, q.z & LO.z, q.w & LO.w);
            const uint4 hi = make_uint4((q.x >> 4) & LO.x, (q.y >> 4) & LO.y, (q.z >> 4) & LO.z, (q.w >> 4) & LO.w);
            const int e = ib * 256 + 64 * j + 16 * h, sb = ib * 8 + 2 * j;
            for (int t = 0; t < MV_MAX_N; t++) {
                if (t >= n) break;
                const int4 a0 = *(const int4*)(xq + (i64)t * cols + e), a1 = *(const int4*)(xq + (i64)t * cols + e + 32);
                const float* dt = xd + (i64)t * (cols / 32);
                const int dot0 = dp4a_x4(lo, a0, 0), dot1 = dp4a_x4(hi, a1, 0);
                const int sum0 = dp4a_x4(ONES, a0, 0), sum1 = dp4a_x4(ONES, a1, 0);
                acc[t] += dt[sb] * (d0 * (float)dot0 - o0 * (float)sum0) + dt[sb + 1] * (d1 * (float)dot1 - o1 * (float)sum1);
            }
        }
    }
    MV_TAIL_S(S)
}
MV_Q8_KERNEL(mv_q4_k_q8w) { mv_q4_k_q8w_rows<1>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q4_k_q8w_s2) { mv_q4_k_q8w_rows<2>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q4_k_q8w_s4) { mv_q4_k_q8w_rows<4>(src, xq, xd, y, rows, cols, n); }

// Q8_0 against 8-bit tokens: mv_q8_0's lane mapping (eight blocks per warp iteration; lane L:
// block L/4 of the eight, its bytes 8(L%4)..+7), two dp4a per lane and token. The weight bytes
// sit at 2 mod 4 in the 34-byte blocks: read as u16 pairs.
template <int S>
__device__ __forceinline__ void mv_q8_0_q8_rows(const u8* __restrict__ src, const i8* __restrict__ xq, const float* __restrict__ xd,
                                                float* __restrict__ y, int rows, int cols, int n) {
    MV_HEAD_S(S, (cols / 32) * 34)
    const int nb = cols / 32, o = 8 * (lane & 3);
    for (int ib = part * 8 + (lane >> 2); valid && ib < nb; ib += 8 * S) {
        const u8* b = w + ib * 34;
        const float d = ldh(b);
        const u16* p = (const u16*)(b + 2 + o);
        const int w0 = (int)(p[0] | ((u32)p[1] << 16)), w1 = (int)(p[2] | ((u32)p[3] << 16));
        for (int t = 0; t < MV_MAX_N; t++) {
            if (t >= n) break;
            const int2 a = *(const int2*)(xq + (i64)t * cols + ib * 32 + o);
            acc[t] += d * xd[(i64)t * nb + ib] * (float)(__dp4a(w0, a.x, 0) + __dp4a(w1, a.y, 0));
        }
    }
    MV_TAIL_S(S)
}
MV_Q8_KERNEL(mv_q8_0_q8) { mv_q8_0_q8_rows<1>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q8_0_q8_s2) { mv_q8_0_q8_rows<2>(src, xq, xd, y, rows, cols, n); }
MV_Q8_KERNEL(mv_q8_0_q8_s4) { mv_q8_0_q8_rows<4>(src, xq, xd, y, rows, cols, n); }

// Four bytes from a 2-byte aligned address.
__device__ __forceinline__ u32 ld4_u16(const u8* b) {
    const u16* p = (const u16*)b;
    return (u32)p[0] | ((u32)p[1] << 16);
}

// Q6_K against 8-bit tokens: two blocks per warp iteration (lane L: block L/16 of the two, half
// h = (L/8)%2, elements l0 = 4(L%8)..+3 of each of the four 32-element quarters qt, i.e.
// 128h + 32qt + l0..+3, one 16-element scale each). The 6-bit values (0..63) meet the tokens in
// dp4a; the -32 offset as 32 times the dp4a of the same bytes with ones.
extern "C" __global__ void mv_q6_k_q8(const u8* __restrict__ src, const i8* __restrict__ xq, const float* __restrict__ xd,
                                      float* __restrict__ y, int rows, int cols, int n) {
    MV_HEAD((cols / 256) * 210)
    const int nb = cols / 256, h = (lane >> 3) & 1, l0 = 4 * (lane & 7);
    for (int ib = lane >> 4; ib < nb; ib += 2) {
        const u8* b = w + ib * 210;
        const float d = ldh(b + 208);
        const u32 qa = ld4_u16(b + 64 * h + l0), qb = ld4_u16(b + 64 * h + l0 + 32), qh = ld4_u16(b + 128 + 32 * h + l0);
        int v[4];
        v[0] = (int)((qa & 0x0F0F0F0Fu) | ((qh & 0x03030303u) << 4));
        v[1] = (int)((qb & 0x0F0F0F0Fu) | (((qh >> 2) & 0x03030303u) << 4));
        v[2] = (int)(((qa >> 4) & 0x0F0F0F0Fu) | (((qh >> 4) & 0x03030303u) << 4));
        v[3] = (int)(((qb >> 4) & 0x0F0F0F0Fu) | (((qh >> 6) & 0x03030303u) << 4));
        float sc[4];
        for (int qt = 0; qt < 4; qt++) sc[qt] = d * (float)(i8)b[192 + 8 * h + 2 * qt + (l0 >> 4)];
        const int e = ib * 256 + 128 * h + l0, sb = ib * 8 + 4 * h;
        for (int t = 0; t < MV_MAX_N; t++) {
            if (t >= n) break;
            const i8* at = xq + (i64)t * cols + e;
            const float* dt = xd + (i64)t * (cols / 32) + sb;
            float s = 0.0f;
            for (int qt = 0; qt < 4; qt++) {
                const int a = *(const int*)(at + 32 * qt);
                s += dt[qt] * sc[qt] * (float)(__dp4a(v[qt], a, 0) - 32 * __dp4a(0x01010101, a, 0));
            }
            acc[t] += s;
        }
    }
    MV_TAIL
}

// Q6_K: a block per warp iteration; lane L: half h = L/16 and elements l, l+1 (l = 2(L%16)) of
// each of the four 32-element quarters, 128h + 32qt + l.
MV_KERNEL(mv_q6_k) {
    MV_HEAD((cols / 256) * 210)
    const int h = lane >> 4, l = 2 * (lane & 15);
    for (int ib = 0; ib < cols / 256; ib++) {
        const u8* b = w + ib * 210;
        const float d = ldh(b + 208);
        float sc[4];
        for (int qt = 0; qt < 4; qt++) sc[qt] = d * (float)(i8)b[192 + 8 * h + (l >> 4) + 2 * qt];
        float q[4][2];
        for (int e = 0; e < 2; e++) {
            const int xa = b[64 * h + l + e], xb = b[64 * h + l + 32 + e], hb = b[128 + 32 * h + l + e];
            q[0][e] = (float)(((xa & 15) | ((hb & 3) << 4)) - 32);
            q[1][e] = (float)(((xb & 15) | (((hb >> 2) & 3) << 4)) - 32);
            q[2][e] = (float)(((xa >> 4) | (((hb >> 4) & 3) << 4)) - 32);
            q[3][e] = (float)(((xb >> 4) | (((hb >> 6) & 3) << 4)) - 32);
        }
        const int e0 = ib * 256 + 128 * h + l;
        for (int t = 0; t < MV_MAX_N; t++) {
            if (t >= n) break;
            const u16* xt = x + (i64)t * cols + e0;
            float s = 0.0f;
            for (int qt = 0; qt < 4; qt++) {
                const u32 v = *(const u32*)(xt + 32 * qt);
                s += sc[qt] * (q[qt][0] * h2f((u16)v) + q[qt][1] * h2f((u16)(v >> 16)));
            }
            acc[t] += s;
        }
    }
    MV_TAIL
}

// Q8_0: eight blocks per warp iteration; lane L: block L/4 of the eight, its bytes 8(L%4)..+7.
MV_KERNEL(mv_q8_0) {
    MV_HEAD((cols / 32) * 34)
    const int nb = cols / 32, o = 8 * (lane & 3);
    for (int ib = lane >> 2; ib < nb; ib += 8) {
        const u8* b = w + ib * 34;
        const float d = ldh(b);
        float q[8];
        for (int k = 0; k < 8; k++) q[k] = (float)(i8)b[2 + o + k];
        for (int t = 0; t < MV_MAX_N; t++) {
            if (t >= n) break;
            float a[4], c[4];
            ld4h(x + (i64)t * cols + ib * 32 + o, a);
            ld4h(x + (i64)t * cols + ib * 32 + o + 4, c);
            float s = 0.0f;
            for (int k = 0; k < 4; k++) s += q[k] * a[k] + q[4 + k] * c[k];
            acc[t] += d * s;
        }
    }
    MV_TAIL
}

"#;

/// Tokens the raw-block matrix-vector kernels take at once (`MV_MAX_N` in the source).
pub const MV_MAX_N: usize = 8;

/// The kernel multiplying a weight of type `ty` in its raw blocks by 8-bit tokens
/// (`quantize_q8_32`) with integer dot products, for the decode steps of the stack.
/// `TANDEM_CUDA_DP4A` picks: unset, the kernels a GPU check has run (Q4_K and Q8_0: the
/// H100 model check's decode steps on the card, 2026-12-07; 8B-shaped Q4_K decode 88 -> 99
/// t/s); `1`, Q6_K's too (not yet run on a GPU); `0`, none (f16 tokens throughout).
pub fn gemv_q8_kernel(ty: GgmlType) -> Option<&'static str> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let mode = *MODE.get_or_init(|| match std::env::var("TANDEM_CUDA_DP4A").as_deref() {
        Ok("0") => None,
        Ok("1") => Some(true),
        _ => Some(false),
    });
    match (ty, mode) {
        (_, None) => None,
        (GgmlType::Q4_K, Some(_)) if wide_q4_k() => Some("mv_q4_k_q8w"),
        (GgmlType::Q4_K, Some(_)) => Some("mv_q4_k_q8"),
        (GgmlType::Q8_0, Some(_)) => Some("mv_q8_0_q8"),
        (GgmlType::Q6_K, Some(true)) => Some("mv_q6_k_q8"),
        _ => None,
    }
}

/// Whether Q4_K decode takes the wide dp4a kernel (16 quant bytes a lane, `mv_q4_k_q8w`):
/// `TANDEM_CUDA_MV_WIDE=1`, opt-in until measured against the 4-byte one on a GPU.
fn wide_q4_k() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| std::env::var("TANDEM_CUDA_MV_WIDE").is_ok_and(|v| v == "1"))
}

/// Warps per row of the dp4a kernels that have the split form (`_s2`, `_s4`), from
/// `TANDEM_CUDA_MV_SPLIT` (1, 2 or 4; 1 unless set): more bytes in flight per row for
/// weights with few rows. Built without a GPU, so opt-in until the GPU check has run it.
pub fn mv_split() -> usize {
    static SPLIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SPLIT.get_or_init(|| match std::env::var("TANDEM_CUDA_MV_SPLIT").as_deref() {
        Ok("2") => 2,
        Ok("4") => 4,
        _ => 1,
    })
}

/// Bytes of `n` tokens of `cols` as `quantize_q8_32` writes them: the i8 values, then one f32
/// scale per 32.
pub(crate) fn q8_token_bytes(n: usize, cols: usize) -> usize {
    n * cols + n * cols / 32 * 4
}

/// A decode kernel's name without its split suffix, and its warps per row (1, or 2/4 for `_s2`/`_s4`).
pub(crate) fn split_of(kernel: &str) -> (&str, usize) {
    match (kernel.strip_suffix("_s2"), kernel.strip_suffix("_s4")) {
        (Some(base), _) => (base, 2),
        (_, Some(base)) => (base, 4),
        _ => (kernel, 1),
    }
}

/// The split form of `kernel` at the configured split and its warps per row, when it has one.
pub(crate) fn split_kernel(kernel: &str) -> Option<(&'static str, usize)> {
    let split = mv_split();
    if split == 1 {
        return None;
    }
    let want = format!("{kernel}_s{split}");
    crate::kernels::NAMES.iter().copied().find(|n| *n == want).map(|n| (n, split))
}

/// The kernel multiplying a weight of type `ty` in its raw blocks by up to [`MV_MAX_N`]
/// f16 tokens (decode steps), when it has one.
pub fn gemv_kernel(ty: GgmlType) -> Option<&'static str> {
    // The common formats' own kernels (wide loads, scales once per block).
    match ty {
        GgmlType::Q4_K => return Some("mv_q4_k"),
        GgmlType::Q6_K => return Some("mv_q6_k"),
        GgmlType::Q8_0 => return Some("mv_q8_0"),
        _ => {}
    }
    let name = match dequant_kernel(ty) {
        Ok(None) => "mv_f16",
        Ok(Some(deq)) => crate::kernels::NAMES.iter().find(|n| n.strip_suffix("_mv") == Some(deq))?,
        Err(_) => return None,
    };
    Some(name)
}
