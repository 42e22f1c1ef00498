//! Views of tensors inside the memory-mapped GGUF file: nothing is copied out of the
//! mmap except the small vectors (norms) that are converted to f32 once.

use crate::error::{EngineError, Result};
use gguf::{GgmlType, GgufFile, TensorInfo};
use std::sync::Arc;

/// A 2-D weight matrix of `rows` rows of `cols` elements, stored as ggml blocks in the mapped file.
#[derive(Clone)]
pub struct Weight {
    /// Tensor name (identity for caches and logs).
    pub name: String,
    /// Element type of the stored blocks.
    pub ty: GgmlType,
    /// Output features (M).
    pub rows: usize,
    /// Input features (K), the row length.
    pub cols: usize,
    file: Arc<GgufFile>,
    file_id: Arc<str>,
    start: usize,
    len: usize,
}

impl Weight {
    /// The identity of the file this weight lives in (path, size, modification time).
    pub fn file_identity(&self) -> String {
        self.file_id.to_string()
    }

    /// The raw block bytes of all rows.
    pub fn data(&self) -> &[u8] {
        &self.file.bytes()[self.start..self.start + self.len]
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.len / self.rows
    }

    /// The raw bytes of one row.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data()[r * rb..(r + 1) * rb]
    }

    /// A view of rows `range` of this matrix (the same bytes in the map), named `<name>[a..b]`.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Weight {
        assert!(range.start <= range.end && range.end <= self.rows, "rows {range:?} of {} ({} rows)", self.name, self.rows);
        let rb = self.row_bytes();
        Weight {
            name: format!("{}[{}..{}]", self.name, range.start, range.end),
            rows: range.len(),
            start: self.start + range.start * rb,
            len: range.len() * rb,
            ..self.clone()
        }
    }

    /// Dequantize one row into `out` (len == cols).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quant::dequantize_row(self.ty, self.row(r), out).expect("row length validated at load");
    }
}

/// Looks tensors up by name and checks their shapes.
pub struct TensorSource {
    file: Arc<GgufFile>,
    file_id: Arc<str>,
}

impl TensorSource {
    /// Wrap an open file.
    pub fn new(file: Arc<GgufFile>) -> Self {
        let file_id = file_identity(&file).into();
        TensorSource { file, file_id }
    }

    /// The file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.file.tensor(name).ok_or_else(|| EngineError::MissingTensor(name.to_string()))
    }

    /// A matrix with `cols` inputs and `rows` outputs (GGUF shape `[cols, rows]`).
    pub fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Weight> {
        let info = self.info(name)?;
        if info.shape != [cols as u64, rows as u64] {
            return Err(EngineError::BadTensor {
                name: name.into(),
                what: format!("shape {:?}, expected [{cols}, {rows}]", info.shape),
            });
        }
        usable_as_matrix(name, info)?;
        let start = (self.file.header().data_offset + info.offset) as usize;
        Ok(Weight {
            name: name.into(),
            ty: info.ty,
            rows,
            cols,
            file: self.file.clone(),
            file_id: self.file_id.clone(),
            start,
            len: info.n_bytes as usize,
        })
    }

    /// The `n` experts of a 3-D expert tensor (GGUF shape `[cols, rows, n]`), each a matrix
    /// of `rows` × `cols` viewing its own slab of the tensor (named `<tensor>[e]`).
    pub fn experts(&self, name: &str, cols: usize, rows: usize, n: usize) -> Result<Vec<Weight>> {
        let info = self.info(name)?;
        if info.shape != [cols as u64, rows as u64, n as u64] {
            return Err(EngineError::BadTensor {
                name: name.into(),
                what: format!("shape {:?}, expected [{cols}, {rows}, {n}]", info.shape),
            });
        }
        usable_as_matrix(name, info)?;
        let slab = info.n_bytes as usize / n;
        let start = (self.file.header().data_offset + info.offset) as usize;
        Ok((0..n)
            .map(|e| Weight {
                name: format!("{name}[{e}]"),
                ty: info.ty,
                rows,
                cols,
                file: self.file.clone(),
                file_id: self.file_id.clone(),
                start: start + e * slab,
                len: slab,
            })
            .collect())
    }

    /// Consecutive row ranges of a fused matrix of `cols` inputs and `Σ parts` outputs (GGUF
    /// shape `[cols, Σ parts]`): one weight per part, viewing its rows in the map (named
    /// `<tensor>[a..b]`) — phi3's `attn_qkv` (Q, K, V) and `ffn_up` (gate, up).
    pub fn split_rows(&self, name: &str, cols: usize, parts: &[usize]) -> Result<Vec<Weight>> {
        let rows: usize = parts.iter().sum();
        let whole = self.matrix(name, cols, rows)?;
        let mut at = 0;
        Ok(parts
            .iter()
            .map(|&n| {
                let part = whole.rows(at..at + n);
                at += n;
                part
            })
            .collect())
    }

    /// A matrix if present.
    pub fn optional_matrix(&self, name: &str, cols: usize, rows: usize) -> Result<Option<Weight>> {
        if self.has(name) {
            self.matrix(name, cols, rows).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A vector of `n` elements, converted to f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.n_elements() != n as u64 || info.shape.len() != 1 {
            return Err(EngineError::BadTensor {
                name: name.into(),
                what: format!("shape {:?}, expected [{n}]", info.shape),
            });
        }
        let mut out = vec![0f32; n];
        quant::dequantize_row(info.ty, self.file.tensor_data(info), &mut out).map_err(|e| {
            EngineError::BadTensor { name: name.into(), what: e.to_string() }
        })?;
        Ok(out)
    }

    /// A small tensor of GGUF shape `shape` (any dimensions), all of it converted to f32 in
    /// its storage order (`ssm_conv1d`'s taps).
    pub fn vector_of_shape(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.shape.iter().map(|&d| d as usize).ne(shape.iter().copied()) {
            return Err(EngineError::BadTensor { name: name.into(), what: format!("shape {:?}, expected {shape:?}", info.shape) });
        }
        let mut out = vec![0f32; shape.iter().product()];
        quant::dequantize_row(info.ty, self.file.tensor_data(info), &mut out)
            .map_err(|e| EngineError::BadTensor { name: name.into(), what: e.to_string() })?;
        Ok(out)
    }

    /// The `n` rows of a 2-D tensor of vectors (GGUF shape `[len, n]`: per-expert biases),
    /// each converted to f32.
    pub fn vectors(&self, name: &str, len: usize, n: usize) -> Result<Vec<Vec<f32>>> {
        let info = self.info(name)?;
        if info.shape != [len as u64, n as u64] {
            return Err(EngineError::BadTensor { name: name.into(), what: format!("shape {:?}, expected [{len}, {n}]", info.shape) });
        }
        let data = self.file.tensor_data(info);
        let row_bytes = data.len() / n.max(1);
        data.chunks_exact(row_bytes.max(1))
            .take(n)
            .map(|row| {
                let mut out = vec![0f32; len];
                quant::dequantize_row(info.ty, row, &mut out)
                    .map_err(|e| EngineError::BadTensor { name: name.into(), what: e.to_string() })?;
                Ok(out)
            })
            .collect()
    }

    /// A vector if present.
    pub fn optional_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A tensor type with a dot product (not every ggml type has one).
fn usable_as_matrix(name: &str, info: &TensorInfo) -> Result<()> {
    quant::dot_kernel(info.ty).map(|_| ()).map_err(|e| EngineError::BadTensor {
        name: name.into(),
        what: format!("type {} cannot be used as a matrix: {e}", info.ty.name()),
    })
}

/// Path, size and modification time: changes whenever the file's content could have.
fn file_identity(file: &GgufFile) -> String {
    match file.path() {
        None => format!("memory:{:p}:{}", file.bytes().as_ptr(), file.bytes().len()),
        Some(p) => {
            let mtime = std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let abs = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            format!("{}:{}:{mtime}", abs.display(), file.bytes().len())
        }
    }
}
