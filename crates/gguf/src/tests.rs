use super::*;

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("u8", Value::U8(7))
        .set("i8", Value::I8(-7))
        .set("u16", Value::U16(65535))
        .set("i16", Value::I16(-300))
        .set("u32", Value::U32(1 << 31))
        .set("i32", Value::I32(-5))
        .set("f32", Value::F32(1.5))
        .set("bool", Value::Bool(true))
        .set("u64", Value::U64(u64::MAX))
        .set("i64", Value::I64(i64::MIN))
        .set("f64", Value::F64(-2.25))
        .set("strs", Value::Array(Array::String(vec!["a".into(), "".into(), "ü€😀".into()])))
        .set("f32s", Value::Array(Array::F32(vec![0.5, -1.0])))
        .set(
            "nested",
            Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::Bool(vec![true, false])])),
        );
    w.add_tensor("a", &[32, 2], GgmlType::F32, vec![1u8; 256]).unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0, vec![2u8; 34]).unwrap();
    w
}

#[test]
fn round_trips_every_value_type() {
    let w = sample();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.header().version, 3);
    assert_eq!(f.metadata(), &w.metadata[..]);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get("u16").and_then(Value::as_u32), Some(65535));
    assert_eq!(f.get("i32").and_then(Value::as_u32), None);
    let b = f.tensor("b").unwrap();
    assert_eq!((b.ty, b.n_bytes, b.offset % 32), (GgmlType::Q8_0, 34, 0));
    assert_eq!(f.tensor_data(b), &[2u8; 34][..]);
    assert_eq!(f.tensor_data(f.tensor("a").unwrap()), &[1u8; 256][..]);
}

#[test]
fn honours_general_alignment() {
    let mut w = sample();
    w.set("general.alignment", Value::U32(64));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.header().alignment, 64);
    assert_eq!(f.header().data_offset % 64, 0);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[2u8; 34][..]);
}

#[test]
fn reads_version_2() {
    let mut bytes = sample().to_bytes();
    bytes[4] = 2;
    assert_eq!(GgufFile::from_bytes(bytes).unwrap().header().version, 2);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample().to_bytes();
    for len in 0..bytes.len() - 1 {
        // Cutting only trailing padding after the last tensor is still valid; everything else errors.
        let r = parse(&bytes[..len]);
        if len < bytes.len() - 64 {
            assert!(r.is_err(), "prefix of {len} bytes parsed");
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    // Flip each header byte to a few values: must never panic (errors or a valid parse).
    let bytes = sample().to_bytes();
    let head_len = parse(&bytes).unwrap().data_offset as usize;
    for i in 0..head_len {
        for v in [0x00, 0xff, 0x7f, 0x80] {
            let mut b = bytes.clone();
            b[i] = v;
            let _ = parse(&b);
        }
    }
}

fn err(bytes: &[u8]) -> String {
    parse(bytes).unwrap_err().to_string()
}

#[test]
fn names_what_is_wrong() {
    let good = sample().to_bytes();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(err(&b).contains("not a GGUF file"));
    let mut b = good.clone();
    b[4] = 9;
    assert!(err(&b).contains("unsupported GGUF version 9"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err(&b).contains("big-endian"));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("tensor count"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&b).contains("metadata count"));
    // First key's string length.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(err(&b).contains("string length"));
    assert!(err(&good[..good.len() - 100]).contains("extends past the end"));
}

#[test]
fn rejects_bad_tensors() {
    let one = |name: &str, shape: &[u64], ty: GgmlType, n: usize| {
        let mut w = GgufWriter::new();
        w.tensors.push((name.into(), shape.to_vec(), ty, vec![0; n]));
        w
    };
    let mut w = one("t", &[32], GgmlType::F32, 128);
    w.tensors.push(("t".into(), vec![32], GgmlType::F32, vec![0; 128]));
    assert!(err(&w.to_bytes()).contains("duplicate tensor name 't'"));

    let w = one("big", &[1 << 40, 1 << 40], GgmlType::F32, 0);
    assert!(err(&w.to_bytes()).contains("shape overflows"));

    let w = one("odd", &[33], GgmlType::Q8_0, 34);
    assert!(err(&w.to_bytes()).contains("block size"));

    let mut b = one("u", &[32], GgmlType::F32, 128).to_bytes();
    // type id sits just before the 8-byte offset at the end of the tensor info.
    let info_end = 24 + 8 + 1 + 4 + 8 + 4 + 8;
    b[info_end - 12..info_end - 8].copy_from_slice(&4u32.to_le_bytes());
    assert!(err(&b).contains("unknown type id 4"));

    let w = one("deep", &[1, 1, 1, 1, 1], GgmlType::F32, 4);
    assert!(err(&w.to_bytes()).contains("5 dimensions"));
}

#[test]
fn rejects_bad_metadata() {
    let mut w = GgufWriter::new();
    w.metadata.push(("k".into(), Value::U8(1)));
    w.metadata.push(("k".into(), Value::U8(2)));
    assert!(err(&w.to_bytes()).contains("duplicate metadata key 'k'"));

    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(48));
    assert!(err(&w.to_bytes()).contains("power of two"));

    let mut w = GgufWriter::new();
    w.set("b", Value::Bool(true));
    let mut b = w.to_bytes();
    let at = b.len() - 1 - (b.len() - (24 + 8 + 1 + 4 + 1));
    b[at] = 2;
    assert!(err(&b).contains("bool byte 2"));
}
