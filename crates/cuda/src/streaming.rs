//! Streaming a decoder stack's weights for models over the VRAM budget: each layer's
//! blocks are copied (on every core) from the mapped file into one of two pinned slots,
//! uploaded on the copy stream and expanded to f16 there by the dequantize kernels, while
//! the compute stream runs the layer before. Events order the two slots: a layer's upload
//! waits for the compute two layers back to be done with its slot, its compute waits for
//! its weights, and the host refills a pinned slot only once its upload is over.

use crate::gpu::{ensure_dev, ensure_host, err, DevBuf, Gpu, HostBuf, Res};
use crate::kernels::dequant_kernel;
use cudarc::driver::result as drv;
use cudarc::driver::CudaEvent;
use crate::stack::LayerWeights;
use crate::weights::DevWeight;
use engine::plan::{Layer, WeightRole};
use rayon::prelude::*;

/// Buffers and events of the two slots (grown on demand, kept across calls).
#[derive(Default)]
pub(crate) struct Buffers {
    raw: [Option<DevBuf>; 2],
    f16: [Option<DevBuf>; 2],
    pinned: [Option<HostBuf>; 2],
    /// Per slot: uploaded (copy stream), weights ready (copy stream), layer done (compute stream).
    events: Vec<CudaEvent>,
}

/// One weight of a layer: where its blocks sit in the raw slot, where its f16 goes, how.
struct Part {
    role: WeightRole,
    raw_at: usize,
    raw_len: usize,
    f16_at: usize,
    rows: usize,
    cols: usize,
    kernel: Option<&'static str>,
}

/// The plan for one stack call.
pub(crate) struct Streamer<'a> {
    layers: &'a [Layer],
    /// Per layer, its weights in the plan's order.
    parts: Vec<Vec<Part>>,
}

const ALIGN: usize = 256;

impl<'a> Streamer<'a> {
    /// Plans every layer and makes sure both slots hold the largest.
    pub(crate) fn new(gpu: &Gpu, b: &mut Buffers, layers: &'a [Layer]) -> Res<Self> {
        let mut parts = Vec::with_capacity(layers.len());
        let (mut raw_max, mut f16_max) = (0, 0);
        for l in layers {
            let (mut raw, mut f16) = (0, 0);
            let mut plan = Vec::new();
            for (role, w) in l.weights() {
                let kernel = dequant_kernel(w.ty)?;
                let elems = w.rows * w.cols;
                plan.push(Part { role, raw_at: raw, raw_len: w.data().len(), f16_at: f16, rows: w.rows, cols: w.cols, kernel });
                raw += w.data().len().next_multiple_of(ALIGN);
                if kernel.is_some() {
                    f16 += (elems * 2).next_multiple_of(ALIGN);
                }
            }
            raw_max = raw_max.max(raw);
            f16_max = f16_max.max(f16);
            parts.push(plan);
        }
        for slot in 0..2 {
            ensure_dev(&gpu.ctx, &mut b.raw[slot], raw_max)?;
            ensure_dev(&gpu.ctx, &mut b.f16[slot], f16_max.max(1))?;
            ensure_host(&gpu.ctx, &mut b.pinned[slot], raw_max, false)?;
        }
        while b.events.len() < 6 {
            b.events.push(gpu.event(false)?);
        }
        Ok(Streamer { layers, parts })
    }

    /// Copy layer `il`'s blocks to its pinned slot and enqueue their upload and expansion.
    pub(crate) fn stage(&self, gpu: &Gpu, b: &mut Buffers, il: usize) -> Res<()> {
        let slot = il % 2;
        let (uploaded, ready, done) = (&b.events[slot], &b.events[2 + slot], &b.events[4 + slot]);
        if il >= 2 {
            uploaded.synchronize().map_err(err("weight upload"))?;
            gpu.s_h2d.wait(done).map_err(err("wait"))?;
        }
        let pinned = b.pinned[slot].as_mut().expect("allocated in new");
        let bytes = pinned.bytes;
        let host = pinned.slice_mut::<u8>(bytes);
        let parts = &self.parts[il];
        let end = parts.iter().map(|p| p.raw_at + p.raw_len).max().unwrap_or(0);
        // Each weight's bytes in pieces of 1 MiB, on every core.
        let mut pieces: Vec<(&mut [u8], &[u8])> = Vec::new();
        let mut rest: &mut [u8] = &mut host[..end];
        let mut at = 0;
        for (p, (_, w)) in parts.iter().zip(self.layers[il].weights()) {
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(p.raw_at - at);
            let (dst, tail) = tail.split_at_mut(p.raw_len);
            rest = tail;
            at = p.raw_at + p.raw_len;
            pieces.extend(dst.chunks_mut(1 << 20).zip(w.data().chunks(1 << 20)));
        }
        pieces.into_par_iter().for_each(|(d, s)| d.copy_from_slice(s));
        let raw = b.raw[slot].as_ref().expect("allocated in new").ptr;
        unsafe { drv::memcpy_htod_async(raw, &host[..end], gpu.s_h2d.cu_stream()) }.map_err(err("upload weights"))?;
        uploaded.record(&gpu.s_h2d).map_err(err("record"))?;
        let f16 = b.f16[slot].as_ref().expect("allocated in new").ptr;
        for p in parts {
            if let Some(k) = p.kernel {
                gpu.launch_elementwise_on(&gpu.s_h2d, k, raw + p.raw_at as u64, f16 + p.f16_at as u64, p.rows * p.cols, None)?;
            }
        }
        ready.record(&gpu.s_h2d).map_err(err("record"))
    }

    /// Layer `il`'s weights as f16 on the card, once staged: the compute stream waits for them.
    pub(crate) fn weights(&self, gpu: &Gpu, b: &Buffers, il: usize) -> Res<LayerWeights> {
        let slot = il % 2;
        gpu.s_comp.wait(&b.events[2 + slot]).map_err(err("wait"))?;
        let (raw, f16) = (b.raw[slot].as_ref().expect("allocated").ptr, b.f16[slot].as_ref().expect("allocated").ptr);
        let at = |p: &Part| match p.kernel {
            Some(_) => f16 + p.f16_at as u64,
            None => raw + p.raw_at as u64, // already f16
        };
        Ok(LayerWeights(self.parts[il].iter().map(|p| (p.role, DevWeight::f16_only(at(p), p.rows, p.cols))).collect()))
    }

    /// The compute stream is done with layer `il`'s slot once it gets here.
    pub(crate) fn done(&self, gpu: &Gpu, b: &Buffers, il: usize) -> Res<()> {
        b.events[4 + il % 2].record(&gpu.s_comp).map_err(err("record"))
    }
}
