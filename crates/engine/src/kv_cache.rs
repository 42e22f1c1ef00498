//! The key/value cache: f16 rows per layer, one row per position, sized by `-c`; and the
//! recurrent layers' state (Qwen3.5's Gated DeltaNet), which holds the whole past in a fixed size.

use crate::arch::Config;
use crate::matrix::KvMirror;
use half::f16;
use half::slice::HalfBitsSliceExt;

/// Keys and values of every layer for positions `0..len()`.
pub struct KvCache {
    n_ctx: usize,
    len: usize,
    // f16 bit patterns: a zeroed integer vector comes from the allocator's zeroed pages, so
    // a cache sized for a long context costs memory only as positions fill.
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    /// Per layer: K and V widths (zero for a layer that reads another layer's cache).
    widths: Vec<(usize, usize)>,
    /// Per recurrent layer: its convolution inputs and delta-rule state after `len` positions.
    conv: Vec<Vec<f32>>,
    ssm: Vec<Vec<f32>>,
    /// An engine's copy of the rows (device memory), told of every change made here.
    mirror: KvMirror,
}

impl KvCache {
    /// An empty cache for `n_ctx` positions.
    pub fn new(c: &Config, n_ctx: usize) -> Self {
        let widths: Vec<(usize, usize)> = (0..c.n_layer).map(|il| c.kv_widths(il)).collect();
        KvCache {
            n_ctx,
            len: 0,
            k: widths.iter().map(|&(kd, _)| vec![0u16; n_ctx * kd]).collect(),
            v: widths.iter().map(|&(_, vd)| vec![0u16; n_ctx * vd]).collect(),
            widths,
            conv: (0..c.n_layer).map(|il| vec![0f32; c.recurrent_widths(il).0]).collect(),
            ssm: (0..c.n_layer).map(|il| vec![0f32; c.recurrent_widths(il).1]).collect(),
            mirror: KvMirror::default(),
        }
    }

    /// Whether the model has recurrent layers: their state cannot go back to an earlier position.
    pub fn is_recurrent(&self) -> bool {
        self.ssm.iter().any(|s| !s.is_empty())
    }

    /// Capacity in positions.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything from position `len` on, and return the positions kept. A recurrent
    /// layer's state holds the whole past and cannot be cut: the cache then keeps everything
    /// (`len` at or past its end) or nothing.
    pub fn truncate(&mut self, len: usize) -> usize {
        if len < self.len && self.is_recurrent() {
            self.len = 0;
            self.conv.iter_mut().chain(self.ssm.iter_mut()).for_each(|s| s.fill(0.0));
        }
        self.len = self.len.min(len);
        self.mirror.changed_from(self.len);
        self.len
    }

    /// Store K and V rows (`[n, k_dim]`, `[n, v_dim]`) of `layer` at positions `pos0..pos0+n`.
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (k_dim, v_dim) = self.widths[layer];
        if k_dim == 0 {
            return; // A layer that reads another layer's rows, or a recurrent one.
        }
        let n = k.len() / k_dim;
        self.mirror.changed_from(pos0);
        let kd = &mut self.k[layer][pos0 * k_dim..(pos0 + n) * k_dim];
        kd.iter_mut().zip(k).for_each(|(d, s)| *d = f16::from_f32(*s).to_bits());
        let vd = &mut self.v[layer][pos0 * v_dim..(pos0 + n) * v_dim];
        vd.iter_mut().zip(v).for_each(|(d, s)| *d = f16::from_f32(*s).to_bits());
    }

    /// Every layer's K and V storage as f16 bit patterns (`[n_ctx, k_dim]`, `[n_ctx, v_dim]`):
    /// an engine's write-back, several layers at once. The engine's mirror is not told:
    /// a writer of rows its mirror does not hold lowers it itself.
    pub fn layers_mut(&mut self) -> Vec<(&mut [u16], &mut [u16])> {
        self.k.iter_mut().zip(self.v.iter_mut()).map(|(k, v)| (k.as_mut_slice(), v.as_mut_slice())).collect()
    }

    /// Mark positions up to `len` as filled (after every layer stored them).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// The K and V rows of one layer.
    pub fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (self.k[layer].reinterpret_cast(), self.v[layer].reinterpret_cast())
    }
}

/// A copy of a cache's filled positions (and recurrent state), sized by what it holds, not
/// by the context: what a prompt cache keeps in RAM between requests.
pub struct KvSnapshot {
    len: usize,
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    conv: Vec<Vec<f32>>,
    ssm: Vec<Vec<f32>>,
}

impl KvSnapshot {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory it takes.
    pub fn bytes(&self) -> usize {
        let rows: usize = self.k.iter().chain(&self.v).map(|r| r.len() * 2).sum();
        rows + self.conv.iter().chain(&self.ssm).map(|r| r.len() * 4).sum::<usize>()
    }
}

impl KvCache {
    /// Copy out positions `0..len()` and the recurrent state.
    pub fn snapshot(&self) -> KvSnapshot {
        let rows = |m: &Vec<Vec<u16>>, col: fn(&(usize, usize)) -> usize| -> Vec<Vec<u16>> {
            m.iter().zip(&self.widths).map(|(r, w)| r[..self.len * col(w)].to_vec()).collect()
        };
        KvSnapshot { len: self.len, k: rows(&self.k, |w| w.0), v: rows(&self.v, |w| w.1), conv: self.conv.clone(), ssm: self.ssm.clone() }
    }

    /// Replace this cache's content with a snapshot taken from a cache of the same model;
    /// false (and the cache untouched) when it does not fit: more positions than this
    /// cache's context, or another model's shapes.
    pub fn restore(&mut self, s: &KvSnapshot) -> bool {
        let shapes_match = s.k.len() == self.k.len()
            && s.k.iter().zip(&s.v).zip(&self.widths).all(|((k, v), w)| k.len() == s.len * w.0 && v.len() == s.len * w.1)
            && s.conv.iter().zip(&self.conv).all(|(a, b)| a.len() == b.len())
            && s.ssm.iter().zip(&self.ssm).all(|(a, b)| a.len() == b.len());
        if s.len > self.n_ctx || !shapes_match {
            return false;
        }
        for (dst, src) in self.k.iter_mut().zip(&s.k).chain(self.v.iter_mut().zip(&s.v)) {
            dst[..src.len()].copy_from_slice(src);
        }
        for (dst, src) in self.conv.iter_mut().zip(&s.conv).chain(self.ssm.iter_mut().zip(&s.ssm)) {
            dst.copy_from_slice(src);
        }
        self.len = s.len;
        self.mirror.changed_from(0);
        true
    }
}

impl crate::matrix::KvRows for KvCache {
    fn layer(&self, il: usize) -> (&[f16], &[f16]) {
        KvCache::layer(self, il)
    }
    fn layers_mut(&mut self) -> Vec<(&mut [u16], &mut [u16])> {
        KvCache::layers_mut(self)
    }
    fn store(&mut self, il: usize, pos0: usize, k: &[f32], v: &[f32]) {
        KvCache::store(self, il, pos0, k, v)
    }
    fn recurrent(&mut self, il: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.conv[il], &mut self.ssm[il])
    }
    fn mirror(&mut self) -> &mut KvMirror {
        &mut self.mirror
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_model::tiny_model;

    /// A snapshot restored into another cache gives the same rows and state, costs only the
    /// filled positions, and is refused by a cache too small for it.
    #[test]
    fn snapshot_restores_rows_and_state() {
        let c = tiny_model(quant::GgmlType::Q8_0).config;
        let mut a = KvCache::new(&c, 32);
        let (kd, vd) = c.kv_widths(0);
        for layer in 0..c.n_layer {
            let k: Vec<f32> = (0..5 * kd).map(|i| (i as f32 * 0.37 + layer as f32).sin()).collect();
            let v: Vec<f32> = (0..5 * vd).map(|i| (i as f32 * 0.11 - layer as f32).cos()).collect();
            a.store(layer, 0, &k, &v);
        }
        a.set_len(5);
        let snap = a.snapshot();
        assert_eq!(snap.len(), 5);
        assert_eq!(snap.bytes(), (0..c.n_layer).map(|il| 5 * (c.kv_widths(il).0 + c.kv_widths(il).1) * 2).sum::<usize>());
        let mut b = KvCache::new(&c, 16);
        assert!(b.restore(&snap));
        assert_eq!(b.len(), 5);
        for layer in 0..c.n_layer {
            assert_eq!(a.layer(layer).0[..5 * kd], b.layer(layer).0[..5 * kd]);
            assert_eq!(a.layer(layer).1[..5 * vd], b.layer(layer).1[..5 * vd]);
        }
        assert!(!KvCache::new(&c, 4).restore(&snap), "a cache of 4 positions cannot hold 5");
    }

    /// Every host-side change lowers the engine's mirror to the first row it touched, so
    /// an engine never reads rows of its copy that the host rewrote.
    #[test]
    fn host_changes_lower_the_engine_mirror() {
        use crate::matrix::KvRows;
        let c = tiny_model(quant::GgmlType::Q8_0).config;
        let mut a = KvCache::new(&c, 32);
        let (kd, vd) = c.kv_widths(0);
        a.set_len(20);
        a.mirror().valid = 20;
        a.store(0, 12, &vec![0.5; 2 * kd], &vec![0.5; 2 * vd]);
        assert_eq!(a.mirror().valid, 12, "a store from row 12");
        a.mirror().valid = 20;
        a.truncate(7);
        assert_eq!(a.mirror().valid, 7, "cut to 7 rows");
        a.mirror().valid = 7;
        a.truncate(30);
        assert_eq!(a.mirror().valid, 7, "a cut past the end changes nothing");
        let snap = a.snapshot();
        a.mirror().valid = 7;
        assert!(a.restore(&snap));
        assert_eq!(a.mirror().valid, 0, "restored rows may differ anywhere");
    }

    /// An engine's f16 write-back through `layers_mut` lands exactly where `store` puts the
    /// same values, in every layer, and leaves the other rows alone.
    #[test]
    fn f16_write_back_matches_store() {
        let c = tiny_model(quant::GgmlType::Q8_0).config;
        let (mut a, mut b) = (KvCache::new(&c, 16), KvCache::new(&c, 16));
        let (kd, vd) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        for layer in 0..c.n_layer {
            let k: Vec<f32> = (0..3 * kd).map(|i| (i as f32 * 0.37 + layer as f32).sin()).collect();
            let v: Vec<f32> = (0..3 * vd).map(|i| (i as f32 * 0.11 - layer as f32).cos()).collect();
            a.store(layer, 5, &k, &v);
            let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&f| f16::from_f32(f).to_bits()).collect() };
            let (bk, bv) = &mut b.layers_mut()[layer];
            bk[5 * kd..8 * kd].copy_from_slice(&bits(&k));
            bv[5 * vd..8 * vd].copy_from_slice(&bits(&v));
        }
        for layer in 0..c.n_layer {
            assert_eq!(a.layer(layer), b.layer(layer));
            let (k, _) = b.layer(layer);
            assert!(k[..5 * kd].iter().chain(&k[8 * kd..]).all(|h| h.to_bits() == 0), "rows outside 5..8 untouched");
        }
        let mut layers = b.layers_mut();
        assert_eq!(layers.len(), c.n_layer);
        assert_eq!((layers[0].0.len(), layers[0].1.len()), (16 * kd, 16 * vd));
        layers[1].0[0] = 0x3c00; // 1.0
        drop(layers);
        assert_eq!(b.layer(1).0[0].to_f32(), 1.0);
    }
}
