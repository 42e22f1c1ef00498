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
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
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
    pub const ALL: [GgmlType; 30] = [
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
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
        Self::Q2_0,
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
            IQ2_XXS => layout("IQ2_XXS", 256, 66, Q8_K),
            IQ2_XS => layout("IQ2_XS", 256, 74, Q8_K),
            IQ2_S => layout("IQ2_S", 256, 82, Q8_K),
            IQ3_XXS => layout("IQ3_XXS", 256, 98, Q8_K),
            IQ3_S => layout("IQ3_S", 256, 110, Q8_K),
            IQ1_S => layout("IQ1_S", 256, 50, Q8_K),
            IQ1_M => layout("IQ1_M", 256, 56, Q8_K),
            IQ4_NL => layout("IQ4_NL", 32, 18, Q8_0),
            IQ4_XS => layout("IQ4_XS", 256, 136, Q8_K),
            TQ1_0 => layout("TQ1_0", 256, 54, Q8_K),
            TQ2_0 => layout("TQ2_0", 256, 66, Q8_K),
            MXFP4 => layout("MXFP4", 32, 17, Q8_0),
            NVFP4 => layout("NVFP4", 64, 36, Q8_0),
            Q1_0 => layout("Q1_0", 128, 18, Q8_0),
            Q2_0 => layout("Q2_0", 64, 18, Q8_0),
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
        // block_iq1_m has no f16 field: 32 + 16 + 8; block_nvfp4 = 4 + 32; block_tq1_0 = 48 + 4 + 2.
        assert_eq!(GgmlType::IQ1_M.bytes_for(256), Some(56));
        assert_eq!(GgmlType::NVFP4.bytes_for(128), Some(72));
        assert_eq!(GgmlType::TQ1_0.bytes_for(256), Some(54));
        assert_eq!(GgmlType::from_name("iq2_xxs"), Some(GgmlType::IQ2_XXS));
        assert_eq!(GgmlType::from_id(40), Ok(GgmlType::NVFP4));
    }
}
