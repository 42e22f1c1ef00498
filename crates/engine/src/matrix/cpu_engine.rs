//! The CPU as a matrix engine: the same interface as the accelerators, so calibration
//! and tests can treat it like one. Nothing to prepare: it reads the mmap directly.

use super::dispatch::CPU_HINT;
use super::{AttentionOp, AttnShape, Availability, Capabilities, Dispatcher, EngineFailure, FeedForward, FusedFeedForward, MatmulShape, MatrixEngine, WeightKey};
use crate::cpu::attention::attention;
use crate::cpu::matmul::matmul;
use half::f16;
use crate::weights::Weight;

/// See the module docs.
#[derive(Default)]
pub struct CpuEngine;

impl MatrixEngine for CpuEngine {
    fn name(&self) -> &str {
        "cpu"
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn supports(&self, _: &MatmulShape) -> Result<(), String> {
        Ok(())
    }
    fn throughput_hint(&self) -> (f64, f64) {
        CPU_HINT
    }
    fn prepare(&self, _: &WeightKey, _: &Weight, _: usize) -> Result<usize, EngineFailure> {
        Ok(0)
    }
    fn evict(&self, _: &WeightKey, _: usize) {}
    fn matmul(&self, _: &[&WeightKey], weights: &[&Weight], _: usize, x: &[f32], _: usize, outs: &mut [&mut [f32]]) -> Result<(), EngineFailure> {
        for (w, out) in weights.iter().zip(outs.iter_mut()) {
            matmul(w, x, out);
        }
        Ok(())
    }
    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities { feed_forward: Some(self), attention: Some(self), stack: None }
    }
}

impl FusedFeedForward for CpuEngine {
    fn feed_forward(&self, ffn: &FeedForward<'_>, _: usize, x: &[f32], _: usize, out: &mut [f32]) -> Result<(), EngineFailure> {
        // Exactly the CPU path's block, so fused and unfused placements agree bit for bit.
        Dispatcher::cpu_only().feed_forward(ffn, x, out);
        Ok(())
    }
}

impl AttentionOp for CpuEngine {
    fn supports_attention(&self, _: &AttnShape) -> Result<(), String> {
        Ok(())
    }
    fn attention(&self, shape: &AttnShape, q: &[f32], positions: &[usize], k_cache: &[f16], v_cache: &[f16], out: &mut [f32]) -> Result<(), EngineFailure> {
        attention(shape, q, positions, k_cache, v_cache, out);
        Ok(())
    }
}
