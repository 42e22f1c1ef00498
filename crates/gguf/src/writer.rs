//! Writing GGUF (version 3) files.

use crate::value::{Array, Value};
use crate::DEFAULT_ALIGNMENT;
use quant::GgmlType;
use std::io::{self, Write};

/// Collects metadata and tensors, then writes a GGUF v3 file in one pass.
#[derive(Default)]
pub struct GgufWriter {
    pub(crate) metadata: Vec<(String, Value)>,
    pub(crate) tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a metadata value.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Add a tensor; `shape` is innermost-first and `data` its raw block bytes.
    pub fn add_tensor(&mut self, name: &str, shape: &[u64], ty: GgmlType, data: Vec<u8>) -> io::Result<()> {
        let n: u64 = shape.iter().product();
        if ty.bytes_for(n) != Some(data.len() as u64) {
            return Err(io::Error::other(format!(
                "tensor '{name}': {} bytes given, {:?} expected for {n} elements of {}",
                data.len(),
                ty.bytes_for(n),
                ty.name()
            )));
        }
        self.tensors.push((name.to_string(), shape.to_vec(), ty, data));
        Ok(())
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Write the whole file.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let align = self.alignment();
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for (name, shape, ty, data) in &self.tensors {
            put_str(&mut head, name);
            head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in shape {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&(*ty as u32).to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + data.len() as u64).div_ceil(align) * align;
        }
        pad(&mut head, align);
        w.write_all(&head)?;
        let mut written = 0u64;
        for (_, _, _, data) in &self.tensors {
            w.write_all(data)?;
            written += data.len() as u64;
            let padded = written.div_ceil(align) * align;
            w.write_all(&vec![0u8; (padded - written) as usize])?;
            written = padded;
        }
        Ok(())
    }

    /// Write to a file path (via a temporary file renamed into place).
    pub fn write_file(&self, path: &std::path::Path) -> io::Result<()> {
        let tmp = path.with_extension("gguf.tmp");
        {
            let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
            self.write_to(&mut f)?;
            f.flush()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// The file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn pad(buf: &mut Vec<u8>, align: u64) {
    let len = buf.len() as u64;
    buf.resize((len.div_ceil(align) * align) as usize, 0);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_str(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(buf, a),
    }
}

fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => buf.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => buf.extend(v.iter().map(|&x| x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(buf, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(buf, inner)),
    }
}
