//! Program planning under the compile budget (§4: ~119 compiles per process, plan ≤ ~100).
//!
//! One program per matrix per bucket is hopeless (SmolLM2: 211 matrices × 4 buckets).
//! So: matmuls sharing an input are one function (Q/K/V; gate/up — or the whole MLP,
//! which also gets its gate/up and its down as functions of their own, sharing its
//! weights, so that it serves separate matmuls too: three functions per bucket);
//! every bucket of a group is a function of the same program, baking the same blob
//! entries, so weights are stored once (`share_buckets`); and groups of consecutive
//! layers are packed as functions of one program (a bank, §1), up to a weight-byte and a
//! function cap (a 15 GiB bank failed, §4). A group too large for one program (a big
//! vocabulary) is split by rows into units, each in its own program.

use std::ops::Range;

/// The shapes that decide a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShapes {
    /// Decoder blocks.
    pub layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Feed-forward size.
    pub ff: usize,
    /// Query projection outputs (heads × head dim).
    pub q_dim: usize,
    /// Key (= value) projection outputs.
    pub kv_dim: usize,
    /// Vocabulary.
    pub vocab: usize,
}

impl ModelShapes {
    /// SmolLM2-135M: 30 layers, dim 576, ff 1536, 9 heads, 3 kv heads (head 64), vocab 49152.
    pub fn smollm2_135m() -> Self {
        ModelShapes { layers: 30, dim: 576, ff: 1536, q_dim: 576, kv_dim: 192, vocab: 49152 }
    }
    /// Gemma-3-270M: 18 layers, dim 640, ff 2048, q 1024, kv 256, vocab 262144.
    pub fn gemma3_270m() -> Self {
        ModelShapes { layers: 18, dim: 640, ff: 2048, q_dim: 1024, kv_dim: 256, vocab: 262144 }
    }
    /// From a loaded model's config.
    pub fn of(c: &engine::arch::Config) -> Self {
        ModelShapes {
            layers: c.n_layer,
            dim: c.n_embd,
            ff: c.n_ff,
            q_dim: c.n_head * c.head_dim,
            kv_dim: c.n_head_kv * c.head_dim,
            vocab: c.n_vocab,
        }
    }
}

/// What a group is in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Q, K, V projections (pre-attention).
    Qkv,
    /// Attention output (post-attention).
    AttnOut,
    /// MLP gate and up.
    GateUp,
    /// MLP down.
    Down,
    /// Whole MLP: gate, up, activation, down.
    Mlp,
    /// Vocabulary projection.
    Vocab,
}

/// One group: weights sharing an input (M of each, common K).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupShape {
    /// Layer, if any.
    pub layer: Option<usize>,
    /// Role.
    pub kind: GroupKind,
    /// Rows of each member (for an MLP: gate, up, down).
    pub ms: Vec<usize>,
    /// Input features of the first member.
    pub k: usize,
}

impl GroupShape {
    /// fp16 bytes of all members.
    pub fn bytes(&self) -> u64 {
        let elems: usize = match self.kind {
            GroupKind::Mlp => 2 * self.ms[0] * self.k + self.ms[2] * self.ms[0],
            _ => self.ms.iter().sum::<usize>() * self.k,
        };
        2 * elems as u64
    }

    /// Functions per bucket: one, or for an MLP three (the fused block, gate/up, down).
    pub fn functions_per_bucket(&self) -> usize {
        match self.kind {
            GroupKind::Mlp => 3,
            _ => 1,
        }
    }
}

/// The groups of a decoder model, in execution order.
pub fn model_groups(s: &ModelShapes, fuse_mlp: bool) -> Vec<GroupShape> {
    let mut g = Vec::new();
    for l in 0..s.layers {
        let layer = Some(l);
        g.push(GroupShape { layer, kind: GroupKind::Qkv, ms: vec![s.q_dim, s.kv_dim, s.kv_dim], k: s.dim });
        g.push(GroupShape { layer, kind: GroupKind::AttnOut, ms: vec![s.dim], k: s.q_dim });
        if fuse_mlp {
            g.push(GroupShape { layer, kind: GroupKind::Mlp, ms: vec![s.ff, s.ff, s.dim], k: s.dim });
        } else {
            g.push(GroupShape { layer, kind: GroupKind::GateUp, ms: vec![s.ff, s.ff], k: s.dim });
            g.push(GroupShape { layer, kind: GroupKind::Down, ms: vec![s.dim], k: s.ff });
        }
    }
    g.push(GroupShape { layer: None, kind: GroupKind::Vocab, ms: vec![s.vocab], k: s.dim });
    g
}

/// Planning limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    /// Token tiles.
    pub buckets: Vec<usize>,
    /// All buckets of a group in one program (weights baked once) rather than one program per bucket.
    pub share_buckets: bool,
    /// Programs per process (the compile budget).
    pub max_programs: usize,
    /// fp16 weight bytes per program.
    pub max_program_bytes: u64,
    /// Functions per program.
    pub max_functions: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig { buckets: vec![64, 128, 256, 512], share_buckets: true, max_programs: 100, max_program_bytes: 1 << 30, max_functions: 64 }
    }
}

/// A group, or a row range of one (a vocabulary larger than a program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Index into [`Plan::groups`].
    pub group: usize,
    /// Rows of the (single-member) group, when split.
    pub rows: Option<Range<usize>>,
    /// fp16 bytes.
    pub bytes: u64,
    /// Functions per bucket ([`GroupShape::functions_per_bucket`]).
    pub functions: usize,
}

/// A program: units × buckets as functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedProgram {
    /// Units, in order.
    pub units: Vec<Unit>,
    /// Buckets it holds functions for.
    pub buckets: Vec<usize>,
}

impl PlannedProgram {
    /// fp16 weight bytes baked into it.
    pub fn bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes).sum()
    }
    /// Functions it holds.
    pub fn functions(&self) -> usize {
        self.units.iter().map(|u| u.functions).sum::<usize>() * self.buckets.len()
    }
}

/// The programs of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The groups.
    pub groups: Vec<GroupShape>,
    /// The programs.
    pub programs: Vec<PlannedProgram>,
}

impl Plan {
    /// Pack `groups` into programs; an error says by how much the budget is exceeded.
    pub fn pack(groups: Vec<GroupShape>, cfg: &PlanConfig) -> Result<Plan, String> {
        if cfg.buckets.is_empty() || cfg.max_functions == 0 {
            return Err("a plan needs at least one bucket and one function per program".into());
        }
        let per_program_buckets = if cfg.share_buckets { cfg.buckets.len() } else { 1 };
        if per_program_buckets > cfg.max_functions {
            return Err(format!("{} buckets per program exceed {} functions per program", per_program_buckets, cfg.max_functions));
        }
        let mut units = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let b = g.bytes();
            let functions = g.functions_per_bucket();
            if functions * per_program_buckets > cfg.max_functions {
                return Err(format!("group {i} ({:?}) needs {} functions per program, more than {}", g.kind, functions * per_program_buckets, cfg.max_functions));
            }
            if b <= cfg.max_program_bytes {
                units.push(Unit { group: i, rows: None, bytes: b, functions });
                continue;
            }
            if g.ms.len() != 1 {
                return Err(format!("group {i} ({:?}) of {b} bytes exceeds {} per program and cannot be split", g.kind, cfg.max_program_bytes));
            }
            let row_bytes = 2 * g.k as u64;
            let per = (cfg.max_program_bytes / row_bytes).max(1) as usize;
            let chunks = g.ms[0].div_ceil(per);
            let per = g.ms[0].div_ceil(chunks); // equal chunks
            for r0 in (0..g.ms[0]).step_by(per) {
                let r = r0..(r0 + per).min(g.ms[0]);
                units.push(Unit { group: i, bytes: r.len() as u64 * row_bytes, rows: Some(r), functions });
            }
        }
        // Greedy in execution order: consecutive layers share a program.
        let mut sets: Vec<Vec<Unit>> = Vec::new();
        let (mut bytes, mut functions) = (0, 0);
        for u in units {
            let fits = !sets.is_empty()
                && bytes + u.bytes <= cfg.max_program_bytes
                && (functions + u.functions) * per_program_buckets <= cfg.max_functions;
            if !fits {
                sets.push(Vec::new());
                (bytes, functions) = (0, 0);
            }
            bytes += u.bytes;
            functions += u.functions;
            sets.last_mut().expect("pushed").push(u);
        }
        let programs: Vec<PlannedProgram> = if cfg.share_buckets {
            sets.into_iter().map(|units| PlannedProgram { units, buckets: cfg.buckets.clone() }).collect()
        } else {
            cfg.buckets.iter().flat_map(|&b| sets.iter().map(move |units| PlannedProgram { units: units.clone(), buckets: vec![b] })).collect()
        };
        if programs.len() > cfg.max_programs {
            return Err(format!("{} programs needed, budget {}", programs.len(), cfg.max_programs));
        }
        Ok(Plan { groups, programs })
    }

    /// Total functions.
    pub fn functions(&self) -> usize {
        self.programs.iter().map(|p| p.functions()).sum()
    }

    /// The programs holding `group`'s functions for `bucket` (several when split by rows).
    pub fn programs_of(&self, group: usize, bucket: usize) -> Vec<usize> {
        (0..self.programs.len())
            .filter(|&p| self.programs[p].buckets.contains(&bucket) && self.programs[p].units.iter().any(|u| u.group == group))
            .collect()
    }
}
