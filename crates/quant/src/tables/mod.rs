//! The codebooks of ggml's non-linear formats, value for value as in ggml-common.h:
//! the 4-bit value tables (IQ4_NL/IQ4_XS, MXFP4/NVFP4), the sign table of the i-quants
//! and their grids. Public so that other back ends (the CUDA kernels) use the same data.
//!
//! The grids are stored as level codes (`packed.rs`, written by `tests/gen_grids.py`,
//! which checks the round trip) and expanded here at compile time into ggml's entries:
//! entry `i` of a grid is 8 (IQ3: 4) bytes, byte `j` = value `j` of grid point `i`.

mod packed;

/// IQ4_NL / IQ4_XS: the 16 non-linear 4-bit values (`kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// MXFP4 / NVFP4: the E2M1 values, doubled (`kvalues_mxfp4`); the scales carry the 1/2.
pub const KVALUES_FP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `ksigns_iq2xs`: 7 stored sign bits -> 8 sign bits, the 8th making the count even.
pub const KSIGNS_IQ2XS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = i as u8 | (((i as u32).count_ones() as u8 & 1) << 7);
        i += 1;
    }
    t
};

/// IQ2_XXS grid: 256 points of 8 magnitudes in {8, 25, 43}.
pub const IQ2XXS_GRID: [u64; 256] = expand(&packed::IQ2XXS, 8, 2, [8, 25, 43, 0, 0, 0, 0, 0]);
/// IQ2_XS grid: 512 points of 8 magnitudes in {8, 25, 43}.
pub const IQ2XS_GRID: [u64; 512] = expand(&packed::IQ2XS, 8, 2, [8, 25, 43, 0, 0, 0, 0, 0]);
/// IQ2_S grid: 1024 points of 8 magnitudes in {8, 25, 43}.
pub const IQ2S_GRID: [u64; 1024] = expand(&packed::IQ2S, 8, 2, [8, 25, 43, 0, 0, 0, 0, 0]);
/// IQ3_XXS grid: 256 points of 4 magnitudes in {4, 12, .., 52, 62} (in the low 32 bits).
pub const IQ3XXS_GRID: [u64; 256] = expand(&packed::IQ3XXS, 4, 3, [4, 12, 20, 28, 36, 44, 52, 62]);
/// IQ3_S grid: 512 points of 4 magnitudes in {1, 3, .., 15} (in the low 32 bits).
pub const IQ3S_GRID: [u64; 512] = expand(&packed::IQ3S, 4, 3, [1, 3, 5, 7, 9, 11, 13, 15]);
/// IQ1_S / IQ1_M grid: 2048 points of 8 values in {-1, 0, 1}, as i8 bytes.
pub const IQ1S_GRID: [u64; 2048] = expand(&packed::IQ1S, 8, 2, [0xFF, 0, 1, 0, 0, 0, 0, 0]);

/// Level codes (`bits` each, value 0 lowest) -> entries of `per` bytes.
const fn expand<const N: usize>(codes: &[u16; N], per: usize, bits: u32, levels: [u8; 8]) -> [u64; N] {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        let mut j = 0;
        while j < per {
            let c = (codes[i] >> (bits * j as u32)) & ((1 << bits) - 1);
            out[i] |= (levels[c as usize] as u64) << (8 * j);
            j += 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_ggml_spot_checks() {
        // First and last entries as printed in ggml-common.h.
        assert_eq!(IQ2XXS_GRID[0], 0x0808080808080808);
        assert_eq!(IQ2XXS_GRID[255], 0x2b2b2b1908081908);
        assert_eq!(IQ2XS_GRID[511], 0x2b2b2b2b2b2b2b2b);
        assert_eq!(IQ2S_GRID[1023], 0x2b2b2b2b2b2b2b2b);
        assert_eq!(IQ3XXS_GRID[0], 0x04040404);
        assert_eq!(IQ3XXS_GRID[255], 0x3e341c04);
        assert_eq!(IQ3S_GRID[511], 0x0f0f0101);
        assert_eq!(IQ1S_GRID[0], 0xffffffffffffffff);
        assert_eq!(IQ1S_GRID[2047], 0x0101010101010101);
        assert_eq!(KSIGNS_IQ2XS[..8], [0, 129, 130, 3, 132, 5, 6, 135]);
        assert_eq!(KSIGNS_IQ2XS[127], 255);
    }
}
