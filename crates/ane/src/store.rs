//! The persistent compiled-model directory (`--kernel-cache DIR`).
//!
//! Building a program (dequantizing its weights, measuring row norms, writing the blob
//! and the MIL text) is the expensive host-side half of a compile. Each built program is
//! stored as one entry of the shared [`DiskCache`](::engine::matrix::disk_cache::DiskCache) — MIL text, weight blob and the
//! per-function I/O map the engine needs — under a key hashing everything the bytes
//! depend on: the content of every weight it bakes (not the file's path or time), the
//! row ranges, the group ops, the buckets, the build options, and [`FORMAT_VERSION`].
//! The cache checks magic, key and checksum on every read, so a corrupt, truncated or
//! stale entry is rejected, deleted and rebuilt, never trusted; [`decode`] then checks
//! every length and index again before anything is used.
//!
//! The runtime's own compiled model is cached by the driver
//! ([`crate::ffi::Driver::compile_cached`]) in a subdirectory per key, [`compiled_dir`].

use crate::build::{BuiltProgram, FnIo, GroupOp, InIo, OutIo, Part, Segment};
use ::engine::matrix::disk_cache::content_hash;
use ::engine::weights::Weight;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bumped whenever the MIL, the blob or the encoding below changes: older entries become stale.
pub const FORMAT_VERSION: u32 = 3;

/// Why a stored entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The payload ends before a field.
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A field holds an impossible value.
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The MIL text is not UTF-8.
    NotUtf8,
    /// Bytes remain after the last field.
    Trailing(usize),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Truncated { field } => write!(f, "entry ends inside {field}"),
            StoreError::Invalid { field, value } => write!(f, "{field} = {value} is impossible"),
            StoreError::NotUtf8 => f.write_str("MIL text is not UTF-8"),
            StoreError::Trailing(n) => write!(f, "{n} bytes after the last field"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One unit of a program as the key sees it: its weights and the rows it bakes.
pub struct KeyUnit<'a> {
    /// The group's weights.
    pub weights: &'a [Weight],
    /// Rows of a split (single-member) group; `None` = all.
    pub rows: Option<Range<usize>>,
    /// The group's computation.
    pub op: GroupOp,
    /// An MLP's input bound ([`crate::build::GroupSpec::input_bound`]).
    pub input_bound: Option<f32>,
}

/// The key of a program: a hash over the content of every weight it bakes, the plan
/// (units, row ranges, ops, buckets), `options` (the build configuration, as text) and
/// [`FORMAT_VERSION`]. Hashing reads every weight byte once.
pub fn program_key(units: &[KeyUnit], buckets: &[usize], options: &str) -> String {
    let mut d = format!("ane-format{FORMAT_VERSION};{options};buckets{buckets:?}");
    for u in units {
        d.push_str(&format!(";op{:?};rows{:?};bound{:?}", u.op, u.rows, u.input_bound.map(f32::to_bits)));
        for w in u.weights {
            d.push_str(&format!(";{}x{}:{}:{:016x}", w.rows, w.cols, w.ty.name(), content_hash(w.data())));
        }
    }
    format!("ane-v{FORMAT_VERSION}-{:016x}-{:08x}", content_hash(d.as_bytes()), d.len())
}

/// Where the driver keeps its compiled form of the program stored under `key`.
pub fn compiled_dir(root: &Path, key: &str) -> PathBuf {
    root.join("ane-compiled").join(key)
}

struct W(Vec<u8>);

impl W {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn us(&mut self, v: usize) {
        self.u64(v as u64)
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.us(b.len());
        self.0.extend_from_slice(b);
    }
}

/// Serialize a built program (I/O maps, MIL text, blob).
pub fn encode(p: &BuiltProgram) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(p.blob.len() + p.mil.len() + 4096));
    w.us(p.functions.len());
    for f in &p.functions {
        for v in [f.group, f.bucket, f.procedure] {
            w.us(v);
        }
        w.0.push(f.part.code());
        w.u64(f.macs);
        w.us(f.inputs.len());
        for i in &f.inputs {
            i.shape.iter().for_each(|&d| w.us(d));
            w.us(i.cols.start);
            w.us(i.cols.end);
        }
        w.us(f.outputs.len());
        for o in &f.outputs {
            o.shape.iter().for_each(|&d| w.us(d));
            w.f32(o.scale);
            w.us(o.segments.len());
            for s in &o.segments {
                for v in [s.output, s.col0, s.ch0, s.len] {
                    w.us(v);
                }
            }
        }
        match f.weight_norm {
            Some(n) => {
                w.0.push(1);
                w.f32(n);
            }
            None => w.0.push(0),
        }
    }
    w.bytes(p.mil.as_bytes());
    w.bytes(&p.blob);
    w.0
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
}

/// No tensor dimension or count in a program comes near this; larger values are corrupt.
const SANE: u64 = 1 << 40;

impl R<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], StoreError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(StoreError::Truncated { field })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, StoreError> {
        let s = self.take(8, field)?;
        Ok(u64::from_le_bytes(s.try_into().map_err(|_| StoreError::Truncated { field })?))
    }
    /// A count or dimension, bounded so later allocations cannot explode.
    fn us(&mut self, field: &'static str) -> Result<usize, StoreError> {
        let v = self.u64(field)?;
        if v > SANE {
            return Err(StoreError::Invalid { field, value: v });
        }
        usize::try_from(v).map_err(|_| StoreError::Invalid { field, value: v })
    }
    /// A count of records at least `min_bytes` long each: no larger than the bytes left.
    fn count(&mut self, field: &'static str, min_bytes: usize) -> Result<usize, StoreError> {
        let n = self.us(field)?;
        if n.saturating_mul(min_bytes) > self.b.len() - self.at {
            return Err(StoreError::Invalid { field, value: n as u64 });
        }
        Ok(n)
    }
    fn f32(&mut self, field: &'static str) -> Result<f32, StoreError> {
        let s = self.take(4, field)?;
        Ok(f32::from_bits(u32::from_le_bytes(s.try_into().map_err(|_| StoreError::Truncated { field })?)))
    }
    fn shape(&mut self, field: &'static str) -> Result<[usize; 4], StoreError> {
        let mut s = [0; 4];
        for d in &mut s {
            *d = self.us(field)?;
        }
        Ok(s)
    }
    fn bytes(&mut self, field: &'static str) -> Result<&[u8], StoreError> {
        let n = self.us(field)?;
        self.take(n, field)
    }
}

/// Read back what [`encode`] wrote, checking every count, index and scale.
pub fn decode(bytes: &[u8]) -> Result<BuiltProgram, StoreError> {
    let mut r = R { b: bytes, at: 0 };
    let nf = r.count("function count", 49)?;
    let mut functions = Vec::with_capacity(nf);
    for procedure_expected in 0..nf {
        let (group, bucket, procedure) = (r.us("group")?, r.us("bucket")?, r.us("procedure")?);
        if procedure != procedure_expected {
            return Err(StoreError::Invalid { field: "procedure", value: procedure as u64 });
        }
        let code = r.take(1, "part")?[0];
        let part = Part::from_code(code).ok_or(StoreError::Invalid { field: "part", value: code as u64 })?;
        let macs = r.u64("macs")?;
        let ni = r.count("input count", 48)?;
        let mut inputs = Vec::with_capacity(ni);
        for _ in 0..ni {
            let shape = r.shape("input shape")?;
            let cols = r.us("input cols")?..r.us("input cols")?;
            if cols.start > cols.end {
                return Err(StoreError::Invalid { field: "input cols", value: cols.start as u64 });
            }
            inputs.push(InIo { shape, cols });
        }
        let no = r.count("output count", 44)?;
        let mut outputs = Vec::with_capacity(no);
        for _ in 0..no {
            let shape = r.shape("output shape")?;
            let scale = r.f32("output scale")?;
            if !(scale.is_finite() && scale > 0.0) {
                return Err(StoreError::Invalid { field: "output scale", value: scale.to_bits() as u64 });
            }
            let ns = r.count("segment count", 32)?;
            let mut segments = Vec::with_capacity(ns);
            for _ in 0..ns {
                let s = Segment { output: r.us("segment")?, col0: r.us("segment")?, ch0: r.us("segment")?, len: r.us("segment")? };
                segments.push(s);
            }
            outputs.push(OutIo { shape, segments, scale });
        }
        let weight_norm = match r.take(1, "weight norm flag")?[0] {
            0 => None,
            1 => {
                let n = r.f32("weight norm")?;
                if !n.is_finite() {
                    return Err(StoreError::Invalid { field: "weight norm", value: n.to_bits() as u64 });
                }
                Some(n)
            }
            v => return Err(StoreError::Invalid { field: "weight norm flag", value: v as u64 }),
        };
        functions.push(FnIo { group, part, bucket, procedure, inputs, outputs, weight_norm, macs });
    }
    let mil = std::str::from_utf8(r.bytes("MIL text")?).map_err(|_| StoreError::NotUtf8)?.to_string();
    let blob = r.bytes("blob")?.to_vec();
    if r.at != bytes.len() {
        return Err(StoreError::Trailing(bytes.len() - r.at));
    }
    Ok(BuiltProgram { mil, blob, functions })
}

/// What the engine expects of a program: per unit and part, the K it reads and the output widths it fills.
pub struct Expect<'a> {
    /// Per unit (build id), one entry per part it has functions for: the part, its input
    /// features and the output features of each output ([`crate::build::GroupSpec::part_io`]).
    pub units: &'a [Vec<(Part, usize, Vec<usize>)>],
    /// Buckets, each unit has one function per part and bucket.
    pub buckets: &'a [usize],
    /// Surface layout.
    pub layout: crate::mil::Layout,
}

/// Check a decoded program against what the engine will do with it, so a wrong (but
/// checksummed) entry is an error rather than an out-of-bounds read later.
pub fn validate(p: &BuiltProgram, e: &Expect) -> Result<(), StoreError> {
    let bad = |field, value: usize| Err(StoreError::Invalid { field, value: value as u64 });
    if p.functions.len() != e.units.iter().map(Vec::len).sum::<usize>() * e.buckets.len() {
        return bad("function count", p.functions.len());
    }
    let mut seen = std::collections::HashSet::new();
    for f in &p.functions {
        let Some(parts) = e.units.get(f.group) else { return bad("group", f.group) };
        let Some((_, k, outs)) = parts.iter().find(|(part, _, _)| *part == f.part) else { return bad("part", f.part.code() as usize) };
        if !e.buckets.contains(&f.bucket) {
            return bad("bucket", f.bucket);
        }
        // Every (unit, part, bucket) exactly once.
        if !seen.insert((f.group, f.part, f.bucket)) {
            return bad("duplicate function", f.procedure);
        }
        for i in &f.inputs {
            let (c, t) = dims(i.shape, e.layout);
            if i.cols.end > *k || i.cols.len() > c || t < f.bucket {
                return bad("input", i.cols.end);
            }
        }
        for o in &f.outputs {
            let (c, t) = dims(o.shape, e.layout);
            if t < f.bucket {
                return bad("output width", t);
            }
            for s in &o.segments {
                let Some(&m) = outs.get(s.output) else { return bad("segment output", s.output) };
                if s.ch0 + s.len > c || s.col0 + s.len > m {
                    return bad("segment", s.ch0 + s.len);
                }
            }
        }
    }
    Ok(())
}

/// (channels holding features, positions holding tokens) of a surface shape.
fn dims(s: [usize; 4], layout: crate::mil::Layout) -> (usize, usize) {
    match layout {
        crate::mil::Layout::ChannelMajor => (s[1], s[3]),
        crate::mil::Layout::TokenMajor => (s[3], s[1]),
    }
}
