//! The Apple Neural Engine as a matrix engine (issue 5).
//!
//! Everything except [`ffi::macos`] runs and is tested on any machine:
//! [`plan`] packs a model's matmuls into few programs (the ANE compiler leaks, so a
//! process gets ~100 compiles); [`build`] lowers each planned function to MIL text
//! ([`mil`]) with its weights in one blob file ([`blob`]); [`convert`] moves
//! activations between f32 rows and fp16 surfaces; [`engine::AneEngine`] serves the
//! dispatcher over any [`ffi::Driver`]. [`sim::SimDriver`] is a driver that parses and
//! interprets the MIL text and blobs we emit, so CI runs the whole path.
//!
//! Facts about the private API come from `shared/ANE.md`; section numbers in comments
//! (§3, §4...) refer to it.
#![deny(missing_docs)]

pub mod blob;
pub mod build;
pub mod convert;
pub mod engine;
pub mod error;
pub mod evaluator;
pub mod ffi;
pub mod mil;
pub mod plan;
pub mod sim;
pub mod store;

pub use crate::engine::{AneConfig, AneEngine, AneStats, EvalTimeout, WarmUp};
pub use crate::error::AneError;

/// Largest width, height and matmul K the ANE takes on M1–M3 (§4); every tile stays within it.
pub const MAX_DIM: usize = 16384;

/// fp16 matmul outputs above this become inf on the ANE (§4).
pub const FP16_MATMUL_LIMIT: f32 = 32752.0;

/// The bound the overflow guard keeps every matmul output (and partial sum) under:
/// half of [`FP16_MATMUL_LIMIT`], a margin for fp16 rounding while accumulating.
pub const GUARD_LIMIT: f32 = 16384.0;
