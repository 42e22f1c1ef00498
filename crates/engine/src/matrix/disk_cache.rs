//! The on-disk cache of prepared weights (`--kernel-cache DIR`) for engines whose
//! preparation is expensive (compiled programs, converted blobs). Entries are keyed by
//! a hash of the weight's content, its shape and type, the N bucket and the engine's
//! version; every entry carries its key and a checksum, so a corrupt, truncated or
//! stale file is detected, deleted and rebuilt — never trusted.

use crate::weights::Weight;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TNDMKC01";

/// A directory of prepared-weight files.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A valid entry.
    Hit(Vec<u8>),
    /// No entry.
    Miss,
    /// An entry existed but was corrupt or stale; it was removed.
    Rejected(String),
}

/// 64-bit FNV-1a over 8-byte words (fast enough for GBs; not cryptographic).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h ^= u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in words.remainder() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

impl DiskCache {
    /// Use (and create) `dir`.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskCache { dir: dir.to_path_buf() })
    }

    /// The key of a prepared weight: content, shape, type, bucket and engine version.
    pub fn key(engine: &str, engine_version: u32, w: &Weight, bucket: usize) -> String {
        format!(
            "{engine}-v{engine_version}-{:016x}-{}x{}-{}-n{bucket}",
            content_hash(w.data()),
            w.rows,
            w.cols,
            w.ty.name()
        )
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bin"))
    }

    /// Read an entry, checking magic, key and checksum.
    pub fn get(&self, key: &str) -> Lookup {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return Lookup::Miss,
        };
        match Self::decode(key, &bytes) {
            Ok(payload) => Lookup::Hit(payload.to_vec()),
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Rejected(format!("{}: {why}; rebuilding", path.display()))
            }
        }
    }

    fn decode<'a>(key: &str, bytes: &'a [u8]) -> Result<&'a [u8], String> {
        let head = 8 + 8 + key.len() + 8 + 8;
        if bytes.len() < head || &bytes[..8] != MAGIC {
            return Err("not a cache entry".into());
        }
        let klen = u64::from_le_bytes(bytes[8..16].try_into().expect("8")) as usize;
        if klen != key.len() || &bytes[16..16 + klen] != key.as_bytes() {
            return Err("entry belongs to another key (stale)".into());
        }
        let at = 16 + klen;
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8")) as usize;
        let sum = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8"));
        let payload = &bytes[at + 16..];
        if payload.len() != len {
            return Err(format!("truncated ({} of {len} bytes)", payload.len()));
        }
        if content_hash(payload) != sum {
            return Err("checksum mismatch".into());
        }
        Ok(payload)
    }

    /// Write an entry atomically (temporary file, then rename).
    pub fn put(&self, key: &str, payload: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 64 + key.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(key.len() as u64).to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        buf.extend_from_slice(&content_hash(payload).to_le_bytes());
        buf.extend_from_slice(payload);
        let tmp = self.dir.join(format!("{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &buf)?;
        std::fs::rename(&tmp, self.path(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_corruption() {
        let dir = std::env::temp_dir().join(format!("tandem-kc-{}", std::process::id()));
        let c = DiskCache::new(&dir).unwrap();
        assert_eq!(c.get("k1"), Lookup::Miss);
        c.put("k1", b"prepared bytes").unwrap();
        assert_eq!(c.get("k1"), Lookup::Hit(b"prepared bytes".to_vec()));
        // Flip one payload byte: detected, removed, then a miss.
        let p = dir.join("k1.bin");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(c.get("k1"), Lookup::Rejected(w) if w.contains("checksum")));
        assert_eq!(c.get("k1"), Lookup::Miss);
        // Truncated and foreign files too.
        c.put("k2", b"0123456789").unwrap();
        let p2 = dir.join("k2.bin");
        let b = std::fs::read(&p2).unwrap();
        std::fs::write(&p2, &b[..b.len() - 3]).unwrap();
        assert!(matches!(c.get("k2"), Lookup::Rejected(w) if w.contains("truncated")));
        std::fs::write(dir.join("k3.bin"), b"garbage").unwrap();
        assert!(matches!(c.get("k3"), Lookup::Rejected(_)));
        std::fs::copy(dir.join("k1.bin").with_file_name("x"), dir.join("k4.bin")).ok();
        c.put("k5", b"abc").unwrap();
        std::fs::copy(dir.join("k5.bin"), dir.join("k6.bin")).unwrap();
        assert!(matches!(c.get("k6"), Lookup::Rejected(w) if w.contains("stale")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hash_sees_every_byte() {
        let a = vec![7u8; 1001];
        let mut b = a.clone();
        b[1000] = 8;
        assert_ne!(content_hash(&a), content_hash(&b));
        b[1000] = 7;
        b[3] = 0;
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a[..1000]), content_hash(&a));
    }
}
