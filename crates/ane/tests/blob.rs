//! Weight blobs: header layout field by field, alignment of several blobs, read-back
//! validation, dequantization to fp16, and the guard's scale rule.

mod common;

use ane::blob::{self, BlobWriter, QuantRows, RowSource};
use gguf::GgmlType;
use half::f16;

#[test]
fn header_layout_matches_ane_md() {
    let mut w = BlobWriter::new();
    let a: Vec<f16> = (0..128 * 64).map(|i| f16::from_f32(i as f32 * 0.25)).collect();
    let b: Vec<f16> = (0..40 * 3).map(|i| f16::from_f32(-(i as f32))).collect(); // 240 bytes: not a 64 multiple
    let c: Vec<f16> = vec![f16::ONE; 7];
    let oa = w.push_fp16(&a);
    let ob = w.push_fp16(&b);
    let oc = w.push_fp16(&c);
    let file = w.finish();
    // File header: count, version 2, zeros to 64.
    assert_eq!(&file[0..4], &3u32.to_le_bytes());
    assert_eq!(&file[4..8], &2u32.to_le_bytes());
    assert!(file[8..64].iter().all(|&x| x == 0));
    // First blob as in §7 (M=128, K=64): metadata at 64, data at 128, size 0x4000.
    assert_eq!(oa, 64);
    assert_eq!(&file[64..68], &[0xEF, 0xBE, 0xAD, 0xDE]);
    assert_eq!(&file[68..72], &1u32.to_le_bytes());
    assert_eq!(&file[72..80], &0x4000u64.to_le_bytes());
    assert_eq!(&file[80..88], &128u64.to_le_bytes());
    assert!(file[88..128].iter().all(|&x| x == 0));
    assert_eq!(ob, 128 + 0x4000);
    // Every record 64-byte aligned, data right after it, sizes true.
    for (off, n) in [(oa, a.len()), (ob, b.len()), (oc, c.len())] {
        assert_eq!(off % 64, 0);
        let e = blob::read_entry(&file, off).unwrap();
        assert_eq!((e.dtype, e.size, e.data_offset), (1, 2 * n as u64, off + 64));
    }
    assert_eq!(oc, (ob + 64 + 240).div_ceil(64) * 64);
    assert_eq!(blob::read_fp16(&file, ob, b.len()).unwrap(), b);
    assert_eq!(blob::read_header(&file).unwrap(), 3);
    assert_eq!(file.len() as u64, oc + 64 + 14);
}

#[test]
fn read_back_rejects_bad_offsets_and_sizes() {
    let mut w = BlobWriter::new();
    let o = w.push_fp16(&[f16::ONE; 32]);
    let file = w.finish();
    assert!(blob::read_entry(&file, 0).unwrap_err().contains("after the header"));
    assert!(blob::read_entry(&file, 96).unwrap_err().contains("64-aligned"));
    assert!(blob::read_entry(&file, 4096).unwrap_err().contains("past the end"));
    assert!(blob::read_fp16(&file, o, 31).unwrap_err().contains("declared tensor needs 62"));
    let mut bad = file.clone();
    bad[64] = 0;
    assert!(blob::read_entry(&bad, 64).unwrap_err().contains("sentinel"));
    let mut bad = file.clone();
    bad[72..80].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert!(blob::read_entry(&bad, 64).unwrap_err().contains("outside the file"));
}

#[test]
fn quantized_rows_dequantize_to_fp16_exactly() {
    let mut rng = common::Rng(7);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let (rows, cols) = (37, 512);
        let data = rng.vec(rows * cols, 2.0);
        let rb = ty.bytes_for(cols as u64).unwrap() as usize;
        let mut bytes = vec![0u8; rb * rows];
        for (s, d) in data.chunks(cols).zip(bytes.chunks_mut(rb)) {
            quant::quantize_row(ty, s, d).unwrap();
        }
        let src = QuantRows { ty, bytes: &bytes, rows, cols };
        // A padded tile of rows 3..30, cols 100..356, scaled by 1/4.
        let tile = blob::fp16_tile(&src, 3..30, 100..356, 32, 288, 0.25);
        let mut row = vec![0f32; cols];
        for r in 0..32 {
            for c in 0..288 {
                let want = if r < 27 && c < 256 {
                    quant::dequantize_row(ty, &bytes[(r + 3) * rb..(r + 4) * rb], &mut row).unwrap();
                    f16::from_f32(row[100 + c] * 0.25)
                } else {
                    f16::ZERO
                };
                assert_eq!(tile[r * 288 + c].to_bits(), want.to_bits(), "{ty:?} [{r}, {c}]");
            }
        }
        let norm = blob::max_row_norm(&src, 0..rows);
        let mut want = 0f32;
        for r in 0..rows {
            src.row_f32(r, &mut row);
            want = want.max(row.iter().map(|v| v * v).sum::<f32>().sqrt());
        }
        assert!((norm - want).abs() <= want * 1e-6);
    }
}

#[test]
fn guard_scale_is_the_smallest_sufficient_power_of_two() {
    assert_eq!(blob::guard_scale(0.0), 1.0);
    assert_eq!(blob::guard_scale(16384.0), 1.0);
    assert_eq!(blob::guard_scale(16385.0), 2.0);
    assert_eq!(blob::guard_scale(65536.0), 4.0);
    assert_eq!(blob::guard_scale(65537.0), 8.0);
    assert_eq!(blob::guard_scale(f32::INFINITY), 2f32.powi(24));
    for b in [1e5f32, 3.3e6, 7.7e7] {
        let s = blob::guard_scale(b);
        assert!(b / s <= ane::GUARD_LIMIT && b / (s / 2.0) > ane::GUARD_LIMIT && s.log2().fract() == 0.0);
    }
}
