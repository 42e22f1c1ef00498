//! The tensor type enumeration and its block geometry.

/// Errors from the format layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// The GGUF type id is not one we know.
    #[error("unknown tensor type id {0}")]
    UnknownType(u32),
    /// The type is known but this operation is not implemented for it.
    #[error("{op} is not supported for tensor type {ty}")]
    Unsupported {
        /// The operation (dequantize, quantize, dot).
        op: &'static str,
        /// The type's name.
        ty: &'static str,
    },
    /// A row length is not a multiple of the type's block size, or buffers disagree.
    #[error("bad length for {ty}: {what}")]
    BadLength {
        /// The type's name.
        ty: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// A ggml tensor type, with the numeric ids GGUF files use.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ4_NL = 20,
    IQ4_XS = 23,
    BF16 = 30,
    MXFP4 = 39,
}

/// A type's block geometry and the block type its dot product consumes.
struct Layout {
    name: &'static str,
    block_size: usize,
    block_bytes: usize,
    vec_dot: GgmlType,
}

const fn layout(name: &'static str, block_size: usize, block_bytes: usize, vec_dot: GgmlType) -> Layout {
    Layout { name, block_size, block_bytes, vec_dot }
}

impl GgmlType {
    /// All types this crate knows.
    pub const ALL: [GgmlType; 18] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ4_NL,
        Self::IQ4_XS,
        Self::BF16,
        Self::MXFP4,
    ];

    /// ggml's block layouts (ggml-common.h) and the CPU backend's `vec_dot_type`
    /// (ggml-cpu.c `type_traits_cpu`).
    const fn layout(self) -> Layout {
        use GgmlType::*;
        match self {
            F32 => layout("F32", 1, 4, F32),
            F16 => layout("F16", 1, 2, F16),
            BF16 => layout("BF16", 1, 2, BF16),
            Q4_0 => layout("Q4_0", 32, 18, Q8_0),
            Q4_1 => layout("Q4_1", 32, 20, Q8_1),
            Q5_0 => layout("Q5_0", 32, 22, Q8_0),
            Q5_1 => layout("Q5_1", 32, 24, Q8_1),
            Q8_0 => layout("Q8_0", 32, 34, Q8_0),
            Q8_1 => layout("Q8_1", 32, 36, Q8_1),
            Q2_K => layout("Q2_K", 256, 84, Q8_K),
            Q3_K => layout("Q3_K", 256, 110, Q8_K),
            Q4_K => layout("Q4_K", 256, 144, Q8_K),
            Q5_K => layout("Q5_K", 256, 176, Q8_K),
            Q6_K => layout("Q6_K", 256, 210, Q8_K),
            Q8_K => layout("Q8_K", 256, 292, Q8_K),
            IQ4_NL => layout("IQ4_NL", 32, 18, Q8_0),
            IQ4_XS => layout("IQ4_XS", 256, 136, Q8_K),
            MXFP4 => layout("MXFP4", 32, 17, Q8_0),
        }
    }

    /// The type for a GGUF type id.
    pub fn from_id(id: u32) -> Result<Self, QuantError> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or(QuantError::UnknownType(id))
    }

    /// The type for a name as llama.cpp writes it (`q4_k`, `Q4_K`, `f16`, `iq4_nl`...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The name llama.cpp prints, upper case (`Q4_K`, `F32`, `IQ4_NL`...).
    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.layout().block_size
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.layout().block_bytes
    }

    /// Bytes for `n` elements, or `None` when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.block_bytes() as u64)
    }

    /// The block type a dot product with this weight type consumes: activations are
    /// quantized to it once per matmul (ggml's `vec_dot_type`).
    pub fn vec_dot_type(self) -> GgmlType {
        self.layout().vec_dot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t as u32), Ok(t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), Err(QuantError::UnknownType(4)));
    }

    #[test]
    fn sizes_match_ggml() {
        // Block bytes are ggml's sizeof(block_*): check a derived invariant, bits per weight.
        assert_eq!(GgmlType::Q4_K.bytes_for(256), Some(144));
        assert_eq!(GgmlType::Q6_K.bytes_for(512), Some(420));
        assert_eq!(GgmlType::Q8_0.bytes_for(33), None);
        // sizeof(block_iq4_nl) = 2 + 16, block_iq4_xs = 2 + 2 + 4 + 128, block_mxfp4 = 1 + 16.
        assert_eq!(GgmlType::IQ4_NL.bytes_for(64), Some(36));
        assert_eq!(GgmlType::IQ4_XS.bytes_for(256), Some(136));
        assert_eq!(GgmlType::MXFP4.bytes_for(32), Some(17));
    }
}
