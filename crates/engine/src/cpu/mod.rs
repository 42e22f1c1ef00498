//! CPU kernels for everything that is not a weight matmul's inner dot product:
//! the threaded matmul driver, attention, norms, RoPE, activations.

pub mod attention;
pub mod bandwidth;
pub mod delta_net;
pub mod matmul;
pub mod ops;

/// A raw pointer that threads may write through at disjoint indices.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: users only write disjoint elements from different threads (documented at each use).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the Send wrapper, not the raw field).
    pub fn ptr(self) -> *mut T {
        self.0
    }
}
