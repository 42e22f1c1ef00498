//! Models, forward pass, KV cache, sampling.
