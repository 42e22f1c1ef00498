//! Reading `<arch>.*` hyper-parameters from GGUF metadata.

use crate::error::{EngineError, Result};
use gguf::{GgufFile, Value};

/// Metadata of one architecture: keys are looked up as `<arch>.<suffix>`.
pub struct Meta<'a> {
    /// The file.
    pub file: &'a GgufFile,
    /// `general.architecture`.
    pub arch: &'a str,
}

impl Meta<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn value(&self, suffix: &str) -> Option<&Value> {
        self.file.get(&self.key(suffix))
    }

    /// A required positive integer.
    pub fn usize(&self, suffix: &str) -> Result<usize> {
        self.opt_usize(suffix)?.ok_or_else(|| EngineError::MissingKey(self.key(suffix)))
    }

    /// An optional integer (present with the wrong type is an error).
    pub fn opt_usize(&self, suffix: &str) -> Result<Option<usize>> {
        match self.value(suffix) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| EngineError::MissingKey(self.key(suffix))),
        }
    }

    /// An optional float.
    pub fn opt_f32(&self, suffix: &str) -> Result<Option<f32>> {
        match self.value(suffix) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| EngineError::MissingKey(self.key(suffix))),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, suffix: &str) -> Result<Option<&str>> {
        match self.value(suffix) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| EngineError::MissingKey(self.key(suffix))),
        }
    }

    /// An optional integer per layer, given as one number for every layer or as an array of
    /// `n_layer` (llama.cpp's `get_key_or_arr`: `head_count`, `feed_forward_length`, ...).
    pub fn opt_per_layer(&self, suffix: &str, n_layer: usize) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.value(suffix) else { return Ok(None) };
        if let Some(x) = v.as_u64() {
            let x = usize::try_from(x).map_err(|_| EngineError::BadMetadata(format!("{} = {x}", self.key(suffix))))?;
            return Ok(Some(vec![x; n_layer]));
        }
        let values = v.as_array().and_then(|a| a.to_i64s()).ok_or_else(|| EngineError::MissingKey(self.key(suffix)))?;
        if values.len() != n_layer {
            return Err(EngineError::BadMetadata(format!("{} has {} values for {n_layer} layers", self.key(suffix), values.len())));
        }
        values
            .into_iter()
            .map(|x| usize::try_from(x).map_err(|_| EngineError::BadMetadata(format!("{} holds {x}", self.key(suffix)))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional per-layer boolean array (e.g. a sliding-window pattern given as an array).
    pub fn opt_bool_array(&self, suffix: &str) -> Option<Vec<bool>> {
        self.value(suffix)?.as_array()?.to_i64s().map(|v| v.into_iter().map(|x| x != 0).collect())
    }
}
