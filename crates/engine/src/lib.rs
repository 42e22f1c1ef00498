//! tandem's engine: GGUF model → forward pass over a batch of tokens → logits → sampler.
//!
//! Data flow: [`model::Model`] maps the file and names the weights (per the
//! architecture [`arch::REGISTRY`]); [`forward::Runner`] runs batches through the
//! decoder, with matmuls in [`cpu::matmul`] and attention over the [`kv_cache::KvCache`];
//! [`sampler::Sampler`] picks tokens; [`generate`] drives prompt → tokens.
#![deny(missing_docs)]

pub mod arch;
pub mod block;
pub mod conformance;
pub mod cpu;
pub mod embed;
pub mod error;
pub mod forward;
pub mod generate;
pub mod kl_divergence;
pub mod kv_cache;
pub mod matrix;
pub mod model;
pub mod moe;
pub mod parity;
pub mod perplexity;
pub mod plan;
pub mod random_model;
pub mod sampler;
pub mod weights;

pub use error::{EngineError, Result};
pub use forward::Runner;
pub use model::Model;
