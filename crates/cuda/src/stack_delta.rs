//! Gated DeltaNet layers (qwen35, qwen3next) inside a whole stack on the card: the input
//! projections as the stack's GEMMs, then per sequence the causal convolution and the gated
//! delta rule with the sequence's states (taken from the host cache, put back after), the
//! gated RMSNorm, and the output projection. The recurrence walks the tokens one by one, a
//! block per value head with the head's state in registers (a thread per state row): on the
//! card it is a small part of a prefill next to the projections. Opt-in with
//! `Untried::delta_net` (the CLI's `TANDEM_CUDA_DELTANET=1`) until a GPU has run it.

use crate::gpu::{ensure_dev, err, int, DevBuf, Gpu, KArg, Res};
use crate::stack::PartIo;
use cudarc::driver::result as drv;
use engine::matrix::KvRows;
use engine::plan::{BetaAlpha, DeltaNet, VectorRole, WeightRole};
use std::ops::Range;

/// The kernels (after the matrix-vector frame: they use its `warp_sum`).
pub(crate) const KERNELS: &str = r#"
// The causal depthwise convolution with SiLU over one sequence's n tokens: channel c at token t
// is silu(sum_k taps[c * kw + k] * input[t - (kw - 1) + k]), the inputs before the first token
// from `state` ([kw - 1, cd], oldest first), which then holds the last kw - 1 inputs. A thread
// per channel walks the tokens (kw <= 8).
extern "C" __global__ void delta_conv(const float* __restrict__ in, float* __restrict__ out, float* __restrict__ state,
                                      const float* __restrict__ taps, int n, int cd, int kw) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    const int hist = kw - 1;
    float win[8], w[8];
    #pragma unroll
    for (int k = 0; k < 8; k++) {
        win[k] = k < hist ? state[(i64)k * cd + c] : 0.0f;
        w[k] = k < kw ? taps[(i64)c * kw + k] : 0.0f;
    }
    for (int t = 0; t < n; t++) {
        const float x = in[(i64)t * cd + c];
        float acc = 0.0f;
        #pragma unroll
        for (int k = 0; k < 8; k++) acc += k < hist ? win[k] * w[k] : (k == hist ? x * w[k] : 0.0f);
        out[(i64)t * cd + c] = acc / (1.0f + expf(-acc));
        #pragma unroll
        for (int k = 0; k < 7; k++) if (k + 1 < hist) win[k] = win[k + 1];
        #pragma unroll
        for (int k = 0; k < 8; k++) if (k == hist - 1) win[k] = x;
    }
    #pragma unroll
    for (int k = 0; k < 8; k++) if (k < hist) state[(i64)k * cd + c] = win[k];
}

// The gated delta rule over one sequence: a block per value head h, a thread per value dim j
// holding row j of the head's state S ([dv, DK], row j maps keys to value j) in registers.
// Per token: q and k of the head's key head L2-normed (x / sqrt(sum x^2 + eps)), beta =
// sigmoid(b), decay = exp(softplus(alpha + dt_bias[h]) * A[h]); d_j = beta (v_j - decay S_j.k),
// S_j = decay S_j + d_j k, o_j = S_j.q / sqrt(DK); then the gated RMSNorm over the head,
// o_j / sqrt(mean(o^2) + eps) * norm[j] * silu(z_j), as f16 for the output projection.
// beta/alpha logits: [n, n_v] each, or (ba_per > 0, qwen3next) one [n, 2 n_v] row per token
// holding per key head its ba_per value heads' betas, then their alphas.
template <int DK>
__device__ __forceinline__ void delta_rule(const float* __restrict__ conv, const float* __restrict__ z, const float* __restrict__ bl,
                                           const float* __restrict__ al, int ba_per, const float* __restrict__ dt_bias,
                                           const float* __restrict__ A, const float* __restrict__ norm, float* __restrict__ state,
                                           u16* __restrict__ out, int n, int n_k, int n_v, int dv, int interleaved, float eps) {
    __shared__ float qs[DK], ks[DK], red[2][32];
    const int h = blockIdx.x, j = threadIdx.x, lane = j & 31, warp = j >> 5, nw = blockDim.x >> 5;
    const int kh = interleaved ? h / (n_v / n_k) : h % n_k;
    const i64 kd = (i64)n_k * DK, cd = 2 * kd + (i64)n_v * dv, vd = (i64)n_v * dv;
    float* sp = state + ((i64)h * dv + j) * DK;
    float s[DK];
    #pragma unroll
    for (int i = 0; i < DK; i++) s[i] = sp[i];
    const float scale = 1.0f / sqrtf((float)DK);
    for (int t = 0; t < n; t++) {
        const float* row = conv + (i64)t * cd;
        float sq = 0.0f, sk = 0.0f;
        for (int i = j; i < DK; i += blockDim.x) {
            const float qv = row[kh * DK + i], kv = row[kd + kh * DK + i];
            qs[i] = qv;
            ks[i] = kv;
            sq += qv * qv;
            sk += kv * kv;
        }
        sq = warp_sum(sq);
        sk = warp_sum(sk);
        if (lane == 0) { red[0][warp] = sq; red[1][warp] = sk; }
        __syncthreads();
        sq = 0.0f;
        sk = 0.0f;
        for (int w = 0; w < nw; w++) { sq += red[0][w]; sk += red[1][w]; }
        const float qinv = 1.0f / sqrtf(sq + eps), kinv = 1.0f / sqrtf(sk + eps);
        float b, a;
        if (ba_per > 0) {
            const float* f = bl + (i64)t * 2 * n_v + (h / ba_per) * 2 * ba_per + h % ba_per;
            b = f[0];
            a = f[ba_per];
        } else {
            b = bl[(i64)t * n_v + h];
            a = al[(i64)t * n_v + h];
        }
        const float beta = 1.0f / (1.0f + expf(-b)), x = a + dt_bias[h];
        const float decay = expf((x > 20.0f ? x : log1pf(expf(x))) * A[h]);
        float kv = 0.0f;
        #pragma unroll
        for (int i = 0; i < DK; i++) kv += s[i] * (ks[i] * kinv);
        const float dj = (row[2 * kd + h * dv + j] - decay * kv) * beta;
        float o = 0.0f;
        #pragma unroll
        for (int i = 0; i < DK; i++) {
            s[i] = s[i] * decay + dj * (ks[i] * kinv);
            o += s[i] * (qs[i] * qinv);
        }
        o *= scale;
        const float so = warp_sum(o * o);
        __syncthreads();  // every thread has read red's sums
        if (lane == 0) red[0][warp] = so;
        __syncthreads();
        float ss = 0.0f;
        for (int w = 0; w < nw; w++) ss += red[0][w];
        const float inv = 1.0f / sqrtf(ss / dv + eps), zj = z[(i64)t * vd + h * dv + j];
        out[(i64)t * vd + h * dv + j] = f2h(o * inv * norm[j] * (zj / (1.0f + expf(-zj))));
        __syncthreads();  // before the next token's q, k and sums overwrite the shared ones
    }
    #pragma unroll
    for (int i = 0; i < DK; i++) sp[i] = s[i];
}
#define DELTA_RULE(NAME, DK) \
extern "C" __global__ void NAME(const float* conv, const float* z, const float* bl, const float* al, int ba_per, const float* dt_bias, \
                                const float* A, const float* norm, float* state, u16* out, int n, int n_k, int n_v, int dv, int interleaved, float eps) { \
    delta_rule<DK>(conv, z, bl, al, ba_per, dt_bias, A, norm, state, out, n, n_k, n_v, dv, interleaved, eps); \
}
DELTA_RULE(delta_rule_k64, 64)
DELTA_RULE(delta_rule_k128, 128)
"#;

/// Whether the stack can run this layer: opted in, key heads of 64 or 128, value heads a
/// multiple of 32 up to 1024 (a thread each), at most 8 convolution taps.
pub(crate) fn check(d: &DeltaNet, allowed: bool) -> Result<(), String> {
    if !allowed {
        return Err("recurrent (Gated DeltaNet) layers run op by op, not as a stack on the card (TANDEM_CUDA_DELTANET=1 tries the card's, not yet run on a GPU)".into());
    }
    let sh = &d.shape;
    let fits = [64, 128].contains(&sh.head_k_dim)
        && sh.head_v_dim.is_multiple_of(32)
        && (32..=1024).contains(&sh.head_v_dim)
        && (1..=8).contains(&sh.d_conv)
        && sh.n_k_heads > 0
        && sh.n_v_heads.is_multiple_of(sh.n_k_heads);
    if !fits {
        return Err(format!("no kernels for Gated DeltaNet heads of {}/{} with {} taps", sh.head_k_dim, sh.head_v_dim, sh.d_conv));
    }
    Ok(())
}

/// Per-call buffers of the DeltaNet layers (grown on demand).
#[derive(Default)]
pub(crate) struct Buffers {
    mixed: Option<DevBuf>,
    conv: Option<DevBuf>,
    z: Option<DevBuf>,
    beta: Option<DevBuf>,
    alpha: Option<DevBuf>,
    out: Option<DevBuf>,
    conv_state: Option<DevBuf>,
    ssm_state: Option<DevBuf>,
}

/// Which layer a DeltaNet part is: its index (for the caches' states), its norms' epsilon,
/// each sequence's rows of the batch.
pub(crate) struct Layer<'a> {
    pub(crate) il: usize,
    pub(crate) eps: f32,
    pub(crate) spans: &'a [Range<usize>],
}

/// Layer `l.il` on the card (see the module docs), its weights and vectors by role from `io`;
/// each sequence's states come from and go back to `caches[i].recurrent(il)`.
pub(crate) fn run(gpu: &Gpu, b: &mut Buffers, expand: &mut Option<DevBuf>, d: &DeltaNet, l: &Layer<'_>, io: &PartIo<'_>, caches: &mut [&mut dyn KvRows]) -> Res<()> {
    let (sh, il, w) = (d.shape, l.il, io.weights);
    let (qkv, gate, beta_w, output) = (w.get(WeightRole::DeltaQkv)?, w.get(WeightRole::DeltaGate)?, w.get(WeightRole::DeltaBeta)?, w.get(WeightRole::AttnOutput)?);
    let alpha_w = w.get(WeightRole::DeltaAlpha).ok();
    let (taps, dt_bias, a_vec, norm) = ((io.vector)(VectorRole::DeltaConv), (io.vector)(VectorRole::DeltaDtBias), (io.vector)(VectorRole::DeltaA), (io.vector)(VectorRole::DeltaNorm));
    let (n, cd, vd, hv) = (io.n, sh.conv_dim(), sh.value_dim(), sh.n_v_heads);
    let fused = matches!(d.beta_alpha, BetaAlpha::Fused(_));
    let ba_rows = if fused { 2 * hv } else { hv };
    if (qkv.rows, gate.rows, beta_w.rows, output.cols) != (cd, vd, ba_rows, vd) || fused == alpha_w.is_some() || [taps, dt_bias, a_vec, norm].contains(&0) {
        return Err(format!("layer {il}: the Gated DeltaNet's weights on the card do not match its shape"));
    }
    let mixed = ensure_dev(&gpu.ctx, &mut b.mixed, n * cd * 4)?;
    let conv = ensure_dev(&gpu.ctx, &mut b.conv, n * cd * 4)?;
    let z = ensure_dev(&gpu.ctx, &mut b.z, n * vd * 4)?;
    let beta = ensure_dev(&gpu.ctx, &mut b.beta, n * ba_rows * 4)?;
    let alpha = ensure_dev(&gpu.ctx, &mut b.alpha, n * hv * 4)?;
    let out = ensure_dev(&gpu.ctx, &mut b.out, n * vd * 2)?;
    let conv_state = ensure_dev(&gpu.ctx, &mut b.conv_state, sh.conv_state_len() * 4)?;
    let ssm_state = ensure_dev(&gpu.ctx, &mut b.ssm_state, sh.ssm_state_len() * 4)?;
    qkv.matmul(gpu, io.h, mixed, n, expand)?;
    gate.matmul(gpu, io.h, z, n, expand)?;
    beta_w.matmul(gpu, io.h, beta, n, expand)?;
    if let Some(a) = &alpha_w {
        a.matmul(gpu, io.h, alpha, n, expand)?;
    }
    let kernel = if sh.head_k_dim == 64 { "delta_rule_k64" } else { "delta_rule_k128" };
    let stream = gpu.s_comp.cu_stream();
    for (span, cache) in l.spans.iter().zip(caches.iter_mut()) {
        let (start, len) = (span.start, span.len());
        let (cs, ss) = cache.recurrent(il);
        if cs.len() != sh.conv_state_len() || ss.len() != sh.ssm_state_len() {
            return Err(format!("layer {il}: the sequence's recurrent state does not match the layer"));
        }
        // The states up (from pageable memory: the host copy may change once this returns).
        unsafe {
            drv::memcpy_htod_async(conv_state, &*cs, stream).map_err(err("upload the convolution state"))?;
            drv::memcpy_htod_async(ssm_state, &*ss, stream).map_err(err("upload the recurrent state"))?;
        }
        let rows = |base: u64, width: usize, size: usize| base + (start * width * size) as u64;
        let conv_args = [
            KArg::P(rows(mixed, cd, 4)),
            KArg::P(rows(conv, cd, 4)),
            KArg::P(conv_state),
            KArg::P(taps),
            KArg::I(int(len)?),
            KArg::I(int(cd)?),
            KArg::I(int(sh.d_conv)?),
        ];
        gpu.launch("delta_conv", int(cd.div_ceil(128))? as u32, 128, &conv_args)?;
        let (bl, al) = if fused { (rows(beta, 2 * hv, 4), 0) } else { (rows(beta, hv, 4), rows(alpha, hv, 4)) };
        let rule_args = [
            KArg::P(rows(conv, cd, 4)),
            KArg::P(rows(z, vd, 4)),
            KArg::P(bl),
            KArg::P(al),
            KArg::I(if fused { int(hv / sh.n_k_heads)? } else { 0 }),
            KArg::P(dt_bias),
            KArg::P(a_vec),
            KArg::P(norm),
            KArg::P(ssm_state),
            KArg::P(rows(out, vd, 2)),
            KArg::I(int(len)?),
            KArg::I(int(sh.n_k_heads)?),
            KArg::I(int(hv)?),
            KArg::I(int(sh.head_v_dim)?),
            KArg::I(sh.interleaved as i32),
            KArg::F(l.eps),
        ];
        gpu.launch(kernel, int(hv)? as u32, int(sh.head_v_dim)? as u32, &rule_args)?;
        // The states back into the host cache (into pageable memory: returns once there).
        unsafe {
            drv::memcpy_dtoh_async(cs, conv_state, stream).map_err(err("download the convolution state"))?;
            drv::memcpy_dtoh_async(ss, ssm_state, stream).map_err(err("download the recurrent state"))?;
        }
        gpu.s_comp.synchronize().map_err(err("Gated DeltaNet state"))?;
    }
    output.matmul(gpu, out, io.o, n, expand)
}
