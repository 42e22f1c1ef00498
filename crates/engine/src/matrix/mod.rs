//! Matrix engines and placement: every weight matmul asks the [`Dispatcher`] where to
//! run; the [`policy::PlacementPolicy`] answers with a decision and a reason; engines
//! prepare each weight once ([`cache::PreparedCache`] keeps the budget); a failing
//! engine's op is recomputed on the CPU in the same step and counted.
//!
//! An engine ([`contract`]) takes matrix multiplications — one weight times `[N, K]`
//! activations, or a group of weights sharing one input (Q/K/V, gate/up) — and optionally
//! larger units: a feed-forward block, a prefill's attention, or a batch's whole decoder
//! stack (only the hidden states and the new K/V cross to it and back). Everything else
//! stays on the CPU.

pub mod cache;
pub mod contract;
pub mod cost;
pub mod cpu_engine;
pub mod disk_cache;
pub mod dispatch;
pub mod fault;
pub mod policy;
pub mod reference;
pub mod stats;
pub mod wrap;

pub use contract::*;
pub use dispatch::Dispatcher;
