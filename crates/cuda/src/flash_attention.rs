//! The flash-attention kernels of whole stacks (tensor-core `mma.sync`, head sizes 64 and
//! 128), part of the kernels' source (`kernels.rs`); launched from `stack_attention.rs`.

/// The kernels' text (after the helpers: they use `h2f`/`f2h`).
pub(crate) const KERNELS: &str = r#"
// Flash attention on tensor cores (mma.sync m16n8k16, f16 in, f32 accumulation) for head
// sizes D = 64 and 128 (keys and values alike). A block takes BQ (64 or 128) consecutive
// queries of one query head (a warp per 16); it walks the visible keys in tiles of 64, staged in shared
// memory (row-major, rows padded against bank conflicts): S = Q·Kᵀ in
// registers, masked causally and by the window, an online softmax, P rounded to f16 and
// multiplied by V (read transposed by ldmatrix) straight from the score registers (the accumulator layout of m16n8 is the
// operand layout of m16n8k16). Query t of the sequence sits at position pos[0] + t; cache row
// j holds position j. q: f16 [n, n_head, D] (scaled), kc/vc: f16 rows [.., n_kv, D], out: f16.
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
// Four 8x8 f16 matrices from shared memory, transposed; lanes 8i..8i+7 give the row
// addresses of matrix i.
__device__ __forceinline__ void ldsm_x4_trans(u32* r, const u16* p) {
#if __CUDA_ARCH__ >= 800
    asm volatile("{ .reg .u64 g; .reg .u32 a; cvta.to.shared.u64 g, %4; cvt.u32.u64 a, g;\n"
                 "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [a]; }"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
#endif
}
// Two floats as an f16 pair, `lo` in the low half.
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
#define FA_BK 64
// mma.sync m16n8k16 needs compute capability 8.0; older cards compile an empty body and the
// host never launches it there (stack.rs checks the capability).
template <int D, int FA_BQ>
__device__ __forceinline__ void flash_attn(const u16* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                           u16* __restrict__ out, int n, const int* __restrict__ pos, int n_head, int n_kv, int window) {
#if __CUDA_ARCH__ >= 800
    // The first query's position from the card (a captured decode step replays unchanged).
    const int pos0 = pos[0];
    constexpr int KP = D + 8;  // row pitch (halves) of both tiles: 16-byte rows, no bank conflicts
    __shared__ __align__(16) u16 ks[FA_BK * KP];
    __shared__ __align__(16) u16 vs[FA_BK * KP];
    const float NEG_INF = -__int_as_float(0x7f800000);
    const int h = blockIdx.y, gk = h / (n_head / n_kv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, ti = lane & 3;
    const int q0 = blockIdx.x * FA_BQ;
    const i64 qd = (i64)n_head * D, kvd = (i64)n_kv * D;
    const int r0 = q0 + warp * 16 + gi, r1 = r0 + 8;
    const int pr0 = pos0 + r0, pr1 = pos0 + r1;
    u32 qa[D / 16][4];
    #pragma unroll
    for (int kd = 0; kd < D / 16; kd++) {
        const int c = 16 * kd + 2 * ti;
        qa[kd][0] = r0 < n ? *(const u32*)(q + r0 * qd + h * D + c) : 0u;
        qa[kd][1] = r1 < n ? *(const u32*)(q + r1 * qd + h * D + c) : 0u;
        qa[kd][2] = r0 < n ? *(const u32*)(q + r0 * qd + h * D + c + 8) : 0u;
        qa[kd][3] = r1 < n ? *(const u32*)(q + r1 * qd + h * D + c + 8) : 0u;
    }
    float o[D / 8][4];
    #pragma unroll
    for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    const int p_first = pos0 + q0, p_last = pos0 + min(n, q0 + FA_BQ) - 1;
    int j_lo = window > 0 ? max(0, p_first + 1 - window) : 0;
    j_lo -= j_lo % FA_BK;
    for (int j0 = j_lo; j0 <= p_last; j0 += FA_BK) {
        __syncthreads();
        // 16 bytes (8 dims of one key) per thread and step, K and V alike.
        for (int e = threadIdx.x; e < FA_BK * (D / 8); e += blockDim.x) {
            const int r = e / (D / 8), w = e % (D / 8), j = j0 + r;
            const bool in = j <= p_last;
            const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
            *(uint4*)(ks + r * KP + 8 * w) = in ? ((const uint4*)(kc + j * kvd + gk * D))[w] : zero;
            *(uint4*)(vs + r * KP + 8 * w) = in ? ((const uint4*)(vc + j * kvd + gk * D))[w] : zero;
        }
        __syncthreads();
        float s[FA_BK / 8][4];
        #pragma unroll
        for (int jn = 0; jn < FA_BK / 8; jn++) {
            s[jn][0] = s[jn][1] = s[jn][2] = s[jn][3] = 0.0f;
            const u16* kr = ks + (8 * jn + gi) * KP + 2 * ti;
            #pragma unroll
            for (int kd = 0; kd < D / 16; kd++) mma16816(s[jn], qa[kd], *(const u32*)(kr + 16 * kd), *(const u32*)(kr + 16 * kd + 8));
        }
        float mx0 = NEG_INF, mx1 = NEG_INF;
        #pragma unroll
        for (int jn = 0; jn < FA_BK / 8; jn++) {
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = j0 + 8 * jn + 2 * ti + e;
                if (j > pr0 || (window > 0 && pr0 - j >= window)) s[jn][e] = NEG_INF;
                if (j > pr1 || (window > 0 && pr1 - j >= window)) s[jn][2 + e] = NEG_INF;
                mx0 = fmaxf(mx0, s[jn][e]);
                mx1 = fmaxf(mx1, s[jn][2 + e]);
            }
        }
        #pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o2));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float sc0 = mn0 == NEG_INF ? 1.0f : expf(m0 - mn0), sc1 = mn1 == NEG_INF ? 1.0f : expf(m1 - mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
        #pragma unroll
        for (int jn = 0; jn < FA_BK / 8; jn++) {
            #pragma unroll
            for (int e = 0; e < 2; e++) {
                s[jn][e] = mn0 == NEG_INF ? 0.0f : expf(s[jn][e] - mn0);
                s[jn][2 + e] = mn1 == NEG_INF ? 0.0f : expf(s[jn][2 + e] - mn1);
                sum0 += s[jn][e];
                sum1 += s[jn][2 + e];
            }
        }
        l0 = l0 * sc0 + sum0;
        l1 = l1 * sc1 + sum1;
        m0 = mn0;
        m1 = mn1;
        #pragma unroll
        for (int jd = 0; jd < D / 8; jd++) { o[jd][0] *= sc0; o[jd][1] *= sc0; o[jd][2] *= sc1; o[jd][3] *= sc1; }
        #pragma unroll
        for (int kk = 0; kk < FA_BK / 16; kk++) {
            const u32 pa[4] = {pack_h2(s[2 * kk][0], s[2 * kk][1]), pack_h2(s[2 * kk][2], s[2 * kk][3]),
                               pack_h2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_h2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            // V's operand straight from its row-major tile: ldmatrix .trans hands lane (g, t)
            // keys 2t, 2t+1 (and 2t+8, 2t+9) of dim g, two 8-dim column blocks per instruction.
            #pragma unroll
            for (int jd = 0; jd < D / 8; jd += 2) {
                u32 b[4];
                ldsm_x4_trans(b, vs + (16 * kk + (lane & 15)) * KP + 8 * (jd + (lane >> 4)));
                mma16816(o[jd], pa, b[0], b[1]);
                mma16816(o[jd + 1], pa, b[2], b[3]);
            }
        }
    }
    #pragma unroll
    for (int o2 = 1; o2 < 4; o2 <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, o2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, o2);
    }
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    #pragma unroll
    for (int jd = 0; jd < D / 8; jd++) {
        const int c = h * D + 8 * jd + 2 * ti;
        if (r0 < n) *(u32*)(out + r0 * qd + c) = pack_h2(o[jd][0] * inv0, o[jd][1] * inv0);
        if (r1 < n) *(u32*)(out + r1 * qd + c) = pack_h2(o[jd][2] * inv1, o[jd][3] * inv1);
    }
#endif
}
// Kernels by head size and queries per block (a warp per 16 queries).
#define FLASH(NAME, D, BQ) \
extern "C" __global__ void NAME(const u16* q, const u16* kc, const u16* vc, u16* out, int n, const int* pos, int n_head, int n_kv, int window) { \
    flash_attn<D, BQ>(q, kc, vc, out, n, pos, n_head, n_kv, window); \
}
FLASH(flash_d64_q64, 64, 64)
FLASH(flash_d128_q64, 128, 64)
FLASH(flash_d64_q128, 64, 128)
FLASH(flash_d128_q128, 128, 128)
"#;
