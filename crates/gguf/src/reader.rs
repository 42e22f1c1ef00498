//! Parsing a GGUF header: every count and offset is checked against the bytes that
//! exist before it is used, so a malformed file is an error, never a panic, an
//! out-of-bounds read, or an allocation sized by an unchecked count.

use crate::value::{Array, Value, ValueType};
use crate::{GgufError, TensorInfo};
use quant::GgmlType;
use std::collections::HashSet;

/// `GGUF` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// ggml's default tensor data alignment.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (real files nest at most once).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Everything before the tensor data.
#[derive(Debug, Clone)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` or the default.
    pub alignment: u64,
    /// Absolute file offset where tensor data starts.
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n as u64,
                available: self.remaining() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be satisfiable by the bytes left, given a minimum size per item.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, GgufError> {
        let at = self.pos as u64;
        let n = self.u64(what)?;
        let possible = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > possible {
            return Err(GgufError::Invalid(format!(
                "{what} {n} at offset {at} is larger than the file allows ({possible} at most)"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(GgufError::Invalid(format!(
                "{what}: string length {len} at offset {at} runs past the end of the file"
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Invalid(format!("{what}: invalid UTF-8 at offset {at}")))
    }
}

/// Parse the header of a GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic.to_le_bytes()));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(GgufError::Invalid("big-endian GGUF files are not supported".into()))
        }
        v => return Err(GgufError::UnsupportedVersion(v)),
    }
    // A tensor info is at least name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    let n_tensors = c.count("tensor count", 32)?;
    // A key/value is at least key length (8) + value type (4) + one byte.
    let n_kv = c.count("metadata count", 13)?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut keys = HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty_id = c.u32(&format!("type of metadata '{key}'"))?;
        let ty = ValueType::from_id(ty_id).ok_or_else(|| {
            GgufError::Invalid(format!("metadata '{key}' has unknown value type {ty_id}"))
        })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::Invalid(format!("duplicate metadata key '{key}'")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(GgufError::Invalid(format!(
                    "general.alignment must be a power of two up to 1 MiB, got {}",
                    v.summary()
                )))
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let t = read_tensor_info(&mut c, i)?;
        if !names.insert(t.name.clone()) {
            return Err(GgufError::Invalid(format!("duplicate tensor name '{}'", t.name)));
        }
        if t.offset % alignment != 0 {
            return Err(GgufError::Invalid(format!(
                "tensor '{}' offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        tensors.push(t);
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(GgufError::Invalid(format!(
                "tensor '{}' ({} bytes at data offset {}) extends past the end of the file ({} data bytes)",
                t.name, t.n_bytes, t.offset, data_len
            )));
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

fn read_tensor_info(c: &mut Cursor, i: usize) -> Result<TensorInfo, GgufError> {
    let name = c.string(&format!("name of tensor #{i}"))?;
    let n_dims = c.u32(&format!("dimension count of tensor '{name}'"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufError::Invalid(format!(
            "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
        )));
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    let mut n_elements: u64 = 1;
    for d in 0..n_dims {
        let dim = c.u64(&format!("dimension {d} of tensor '{name}'"))?;
        n_elements = n_elements
            .checked_mul(dim)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| GgufError::Invalid(format!("tensor '{name}' shape overflows")))?;
        shape.push(dim);
    }
    let ty_id = c.u32(&format!("type of tensor '{name}'"))?;
    let ty = GgmlType::from_id(ty_id).map_err(|_| GgufError::UnknownTensorType {
        tensor: name.clone(),
        type_id: ty_id,
    })?;
    if shape[0] % ty.block_size() as u64 != 0 {
        return Err(GgufError::Invalid(format!(
            "tensor '{name}': row length {} is not a multiple of {}'s block size {}",
            shape[0],
            ty.name(),
            ty.block_size()
        )));
    }
    let n_bytes = ty
        .bytes_for(n_elements)
        .ok_or_else(|| GgufError::Invalid(format!("tensor '{name}' byte size overflows")))?;
    let offset = c.u64(&format!("offset of tensor '{name}'"))?;
    Ok(TensorInfo { name, shape, ty, offset, n_bytes })
}

fn read_value(c: &mut Cursor, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
    let what = || format!("value of '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what())?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what())?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what())?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what())?)),
        ValueType::U32 => Value::U32(c.u32(&what())?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what())?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what())?)),
        ValueType::U64 => Value::U64(c.u64(&what())?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what())?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what())?)),
        ValueType::Bool => match c.array::<1>(&what())?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(GgufError::Invalid(format!("'{key}': bool byte {b} is not 0 or 1"))),
        },
        ValueType::String => Value::String(c.string(&what())?),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn read_array(c: &mut Cursor, key: &str, depth: u32) -> Result<Array, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::Invalid(format!("'{key}': arrays nested too deeply")));
    }
    let ty_id = c.u32(&format!("array type of '{key}'"))?;
    let ty = ValueType::from_id(ty_id).ok_or_else(|| {
        GgufError::Invalid(format!("'{key}': unknown array element type {ty_id}"))
    })?;
    let min = match ty {
        ValueType::String => 8,
        ValueType::Array => 12,
        fixed => fixed.fixed_size().unwrap_or(1),
    };
    let n = c.count(&format!("array length of '{key}'"), min)?;
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            let raw = c.take(n * std::mem::size_of::<$t>(), key)?;
            Array::$variant(
                raw.chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
                    .collect(),
            )
        }};
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(c.take(n, key)?.to_vec()),
        ValueType::I8 => Array::I8(c.take(n, key)?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => fixed!(U16, u16),
        ValueType::I16 => fixed!(I16, i16),
        ValueType::U32 => fixed!(U32, u32),
        ValueType::I32 => fixed!(I32, i32),
        ValueType::F32 => fixed!(F32, f32),
        ValueType::U64 => fixed!(U64, u64),
        ValueType::I64 => fixed!(I64, i64),
        ValueType::F64 => fixed!(F64, f64),
        ValueType::Bool => {
            let raw = c.take(n, key)?;
            if let Some(b) = raw.iter().find(|&&b| b > 1) {
                return Err(GgufError::Invalid(format!("'{key}': bool byte {b} is not 0 or 1")));
            }
            Array::Bool(raw.iter().map(|&b| b == 1).collect())
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&format!("'{key}'[{i}]"))?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}
