//! GGUF files: a memory-mapped reader that turns every malformed input into a clear
//! error, and a writer (test fixtures, random-weight models, vocab-only files).
#![deny(missing_docs)]

mod reader;
mod value;
mod writer;

pub use quant::GgmlType;
pub use reader::{parse, Header, DEFAULT_ALIGNMENT, MAGIC};
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

use std::path::{Path, PathBuf};

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// A version we do not read.
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The file ends inside a field.
    #[error("truncated file: {what} at offset {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A tensor has a type id we do not know.
    #[error("tensor '{tensor}' has unknown type id {type_id}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// Its type id.
        type_id: u32,
    },
    /// Any other inconsistency, described.
    #[error("invalid GGUF: {0}")]
    Invalid(String),
}

/// One tensor's description; its data lives at `data_offset + offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost (row length) first, as ggml stores them.
    pub shape: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An open GGUF file: the parsed header plus the bytes (memory-mapped).
pub struct GgufFile {
    header: Header,
    bytes: Bytes,
    path: Option<PathBuf>,
}

impl GgufFile {
    /// Open and memory-map a file, then parse and validate its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        // SAFETY: the map is read-only and private to this process. Another process
        // truncating the file while we hold it could fault on access; llama.cpp and
        // every mmap-based loader accept that risk, and we never write through it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = parse(&map)?;
        Ok(GgufFile { header, bytes: Bytes::Mapped(map), path: Some(path.to_path_buf()) })
    }

    /// Parse a file held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let header = parse(&bytes)?;
        Ok(GgufFile { header, bytes: Bytes::Owned(bytes), path: None })
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    /// Tensor descriptions in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// A tensor description by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (validated to lie inside the file at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.bytes()[start..start + info.n_bytes as usize]
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests;
