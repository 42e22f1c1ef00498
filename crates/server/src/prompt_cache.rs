//! Prompt reuse across requests. A slot keeps the tokens its cache holds after a request;
//! a new prompt goes to the free slot sharing the longest prefix with it and prefills only
//! the rest. A slot's content about to be overwritten is first copied to RAM (`--cache-ram`,
//! least recently used out first), and a later prompt that shares more with a RAM copy than
//! with any slot gets that copy restored into its slot.

use engine::kv_cache::{KvCache, KvSnapshot};

/// A prompt's suffix that still runs is at least this long where the cache allows, so the
/// suffix takes the tiled matmul kernels a whole prefill of it takes (whose rows do not
/// depend on their neighbours): a request repeated exactly gets exactly the same answer.
/// One more than [`crate::scheduler::BATCH_INVARIANT`], the last size on the dot kernels.
pub const MIN_SUFFIX: usize = crate::scheduler::BATCH_INVARIANT + 1;

/// A slot's cache and the tokens it holds (`tokens.len() == cache.len()`).
pub struct SlotCache {
    /// The slot's number (llama-server's `id_slot`).
    pub id: usize,
    /// Keys, values, recurrent state.
    pub cache: KvCache,
    /// The tokens whose positions the cache holds.
    pub tokens: Vec<u32>,
    /// When the slot last served (a counter), for least-recently-used choices.
    pub last_used: u64,
}

impl SlotCache {
    /// An empty slot.
    pub fn new(id: usize, cache: KvCache) -> Self {
        SlotCache { id, cache, tokens: Vec::new(), last_used: 0 }
    }

    /// Forget everything past `keep` positions; returns what was kept (a recurrent cache
    /// keeps all or nothing).
    pub fn truncate(&mut self, keep: usize) -> usize {
        let kept = self.cache.truncate(keep);
        self.tokens.truncate(kept);
        kept
    }
}

/// The length of the common prefix.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How many of the positions holding `held` a prompt reuses: the common prefix, less the
/// prompt's last token (it always runs: its logits start the answer), less what keeps the
/// suffix at [`MIN_SUFFIX`]. A recurrent cache's state covers all of `held` at once: it is
/// reused only whole.
pub fn reusable(held: &[u32], recurrent: bool, prompt: &[u32]) -> usize {
    let shared = common_prefix(held, prompt).min(prompt.len().saturating_sub(1));
    if recurrent {
        return if shared == held.len() { shared } else { 0 };
    }
    let suffix = prompt.len() - shared;
    shared.saturating_sub(MIN_SUFFIX.saturating_sub(suffix))
}

/// The free slot for `prompt`: the one reusing most of it; when none reuses anything, the
/// least recently used (the others' caches may serve later prompts).
pub fn pick_slot(free: &[SlotCache], prompt: &[u32]) -> usize {
    let best = free
        .iter()
        .enumerate()
        .map(|(i, s)| (reusable(&s.tokens, s.cache.is_recurrent(), prompt), std::cmp::Reverse(s.last_used), i))
        .max();
    match best {
        Some((reuse, _, i)) if reuse > 0 => i,
        _ => (0..free.len()).min_by_key(|&i| free[i].last_used).unwrap_or(0),
    }
}

struct Entry {
    tokens: Vec<u32>,
    snapshot: KvSnapshot,
    last_used: u64,
}

/// Slot contents kept in RAM under a byte budget.
pub struct RamCache {
    entries: Vec<Entry>,
    budget: usize,
    used: usize,
}

impl RamCache {
    /// A cache of at most `budget` bytes (0: off).
    pub fn new(budget: usize) -> Self {
        RamCache { entries: Vec::new(), budget, used: 0 }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keep a copy of `slot`'s content, unless a held copy already covers it; copies it
    /// covers are dropped, then the least recently used until it fits. Nothing larger than
    /// the budget is kept.
    pub fn save(&mut self, slot: &SlotCache, now: u64) {
        if slot.tokens.is_empty() || self.budget == 0 {
            return;
        }
        let recurrent = slot.cache.is_recurrent();
        // A copy covers another when the other is its prefix (a recurrent state only when equal).
        let covers = |long: &[u32], short: &[u32]| {
            short.len() <= long.len() && long.starts_with(short) && (!recurrent || long.len() == short.len())
        };
        if let Some(e) = self.entries.iter_mut().find(|e| covers(&e.tokens, &slot.tokens)) {
            e.last_used = now;
            return;
        }
        let snapshot = slot.cache.snapshot();
        let bytes = snapshot.bytes();
        if bytes > self.budget {
            return;
        }
        let used = &mut self.used;
        self.entries.retain(|e| {
            let keep = !covers(&slot.tokens, &e.tokens);
            if !keep {
                *used -= e.snapshot.bytes();
            }
            keep
        });
        while self.used + bytes > self.budget {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used).expect("entries over budget");
            self.used -= self.entries.swap_remove(oldest).snapshot.bytes();
        }
        self.used += bytes;
        self.entries.push(Entry { tokens: slot.tokens.clone(), snapshot, last_used: now });
    }

    /// The held copy reusing most of `prompt` and how much, if any reuses something.
    pub fn best(&self, recurrent: bool, prompt: &[u32]) -> Option<(usize, usize)> {
        (0..self.entries.len())
            .map(|i| (i, reusable(&self.entries[i].tokens, recurrent, prompt)))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, self.entries[i].last_used))
    }

    /// Put copy `i` into `slot` (the copy stays held); false if the slot cannot take it.
    pub fn restore(&mut self, i: usize, slot: &mut SlotCache, now: u64) -> bool {
        let e = &mut self.entries[i];
        if !slot.cache.restore(&e.snapshot) {
            return false;
        }
        e.last_used = now;
        slot.tokens.clone_from(&e.tokens);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_keeps_the_last_token_and_a_tiled_suffix() {
        let held: Vec<u32> = (0..100).collect();
        // Longer prompt sharing 100: reuse all (the suffix is long enough).
        let p: Vec<u32> = (0..120).collect();
        assert_eq!(reusable(&held, false, &p), 100);
        // The same prompt again: the last token reruns, and the suffix grows to MIN_SUFFIX.
        assert_eq!(reusable(&held, false, &held), 100 - MIN_SUFFIX);
        // Diverging at 50 with a long tail: 50.
        let mut q = held.clone();
        q[50] = 999;
        assert_eq!(reusable(&held, false, &q), 50);
        // Nothing shared, or a prompt shorter than the minimum suffix: nothing.
        assert_eq!(reusable(&held, false, &[7, 8]), 0);
        assert_eq!(reusable(&held, false, &held[..5]), 0);
        // Recurrent: all of what is held, or nothing.
        assert_eq!(reusable(&held, true, &p), 100);
        assert_eq!(reusable(&held, true, &q), 0);
        assert_eq!(reusable(&held, true, &held), 0, "the last token must rerun, and a recurrent state cannot go back one");
    }
}
