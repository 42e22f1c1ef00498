//! Byte-level BPE (llama.cpp's `llm_tokenizer_bpe_session`): pre-tokenize into
//! words, byte-encode each, then repeatedly apply the lowest-ranked merge among
//! adjacent symbols (leftmost first on ties).

use crate::spm::{char_symbols, Symbol};
use crate::unicode;
use crate::Tokenizer;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

impl Tokenizer {
    /// Tokenize one text fragment (no special tokens inside).
    pub(crate) fn bpe_tokenize(&self, text: &str, out: &mut Vec<u32>) {
        let Some(pre) = &self.pre else { return };
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(u32, i32, i32, usize)>> = BinaryHeap::new();
        let mut encoded = String::new();
        let mut key = String::new();
        for raw in pre.split(text) {
            let word: &str = if self.byte_encode {
                encoded.clear();
                unicode::byte_encode(raw, &mut encoded);
                &encoded
            } else {
                raw
            };
            let whole = (self.ignore_merges || (self.newline_words && word.bytes().all(|b| b == b'\n')))
                .then(|| self.token_to_id.get(word).copied())
                .flatten();
            if let Some(id) = whole {
                out.push(id);
                continue;
            }
            char_symbols(word, &mut symbols);
            heap.clear();
            let rank = |symbols: &[Symbol], key: &mut String, l: i32, r: i32| -> Option<u32> {
                if l < 0 || r < 0 {
                    return None;
                }
                let (a, b) = (symbols[l as usize], symbols[r as usize]);
                key.clear();
                key.push_str(&word[a.start..a.start + a.len]);
                key.push(' ');
                key.push_str(&word[b.start..b.start + b.len]);
                self.merges.get(key.as_str()).copied()
            };
            for i in 1..symbols.len() as i32 {
                if let Some(rk) = rank(&symbols, &mut key, i - 1, i) {
                    let size = symbols[i as usize - 1].len + symbols[i as usize].len;
                    heap.push(Reverse((rk, i - 1, i, size)));
                }
            }
            while let Some(Reverse((_, left, right, size))) = heap.pop() {
                let (l, r) = (symbols[left as usize], symbols[right as usize]);
                // Stale: a side was merged away or has grown (the text no longer matches).
                if l.len == 0 || r.len == 0 || l.len + r.len != size {
                    continue;
                }
                symbols[left as usize].len += r.len;
                symbols[right as usize].len = 0;
                symbols[left as usize].next = r.next;
                if r.next >= 0 {
                    symbols[r.next as usize].prev = left;
                }
                let (prev, next) = (symbols[left as usize].prev, symbols[left as usize].next);
                for (a, b) in [(prev, left), (left, next)] {
                    if let Some(rk) = rank(&symbols, &mut key, a, b) {
                        let size = symbols[a as usize].len + symbols[b as usize].len;
                        heap.push(Reverse((rk, a, b, size)));
                    }
                }
            }
            for s in symbols.iter().filter(|s| s.len > 0) {
                let piece = &word[s.start..s.start + s.len];
                if let Some(&id) = self.token_to_id.get(piece) {
                    out.push(id);
                    continue;
                }
                // Not a token: one token per byte where one exists, else dropped
                // (a byte-encoded piece's bytes are only tokens when ASCII).
                for &b in piece.as_bytes() {
                    let id = if self.byte_encode {
                        std::str::from_utf8(std::slice::from_ref(&b)).ok().and_then(|s| self.token_to_id.get(s))
                    } else {
                        self.token_to_id.get(format!("<0x{b:02X}>").as_str())
                    };
                    if let Some(&id) = id {
                        out.push(id);
                    }
                }
            }
        }
    }
}
