//! SentencePiece-style tokenization (llama.cpp's `llm_tokenizer_spm`): start from
//! UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is the
//! highest-scoring token, then emit tokens, falling back to `<0xXX>` byte tokens.

use crate::unicode::utf8_len;
use crate::Tokenizer;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
pub(crate) struct Symbol {
    pub prev: i32,
    pub next: i32,
    pub start: usize,
    pub len: usize,
}

/// Split into UTF-8 characters (by lead byte, clamped to the end, as llama.cpp does).
pub(crate) fn char_symbols(text: &str, out: &mut Vec<Symbol>) {
    out.clear();
    let b = text.as_bytes();
    let mut off = 0;
    while off < b.len() {
        let len = utf8_len(b[off]).min(b.len() - off);
        let i = out.len() as i32;
        off += len;
        out.push(Symbol { prev: i - 1, next: if off == b.len() { -1 } else { i + 1 }, start: off - len, len });
    }
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        if self.score < o.score {
            Ordering::Less
        } else if self.score > o.score {
            Ordering::Greater
        } else {
            o.left.cmp(&self.left)
        }
    }
}

impl Tokenizer {
    /// Tokenize one text fragment (spaces already escaped to U+2581).
    pub(crate) fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols = Vec::with_capacity(text.len());
        char_symbols(text, &mut symbols);
        let mut heap = BinaryHeap::new();
        let try_add = |symbols: &[Symbol], heap: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let piece = &text.as_bytes()[l.start..l.start + l.len + r.len];
            // Symbols always cover whole characters, so this is valid UTF-8.
            let Ok(piece) = std::str::from_utf8(piece) else { return };
            if let Some(&id) = self.token_to_id.get(piece) {
                heap.push(Bigram { score: self.tokens[id as usize].score, left, right, size: piece.len() });
            }
        };
        for i in 1..symbols.len() as i32 {
            try_add(&symbols, &mut heap, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (symbols[bg.left as usize], symbols[bg.right as usize]);
            // Stale: one side was merged away or grew since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            symbols[bg.left as usize].len += r.len;
            symbols[bg.right as usize].len = 0;
            symbols[bg.left as usize].next = r.next;
            if r.next >= 0 {
                symbols[r.next as usize].prev = bg.left;
            }
            let (prev, next) = (symbols[bg.left as usize].prev, symbols[bg.left as usize].next);
            try_add(&symbols, &mut heap, prev, bg.left);
            try_add(&symbols, &mut heap, bg.left, next);
        }
        let mut i = if symbols.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let s = symbols[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                // Every merged symbol is a token, so this is one character.
                None => {
                    for &b in piece.as_bytes() {
                        if let Some(id) = self.spm_byte_token(b) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }

    /// `<0xXX>`, else the byte itself as a token, else the unknown token (where
    /// llama.cpp would throw).
    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        let hex = format!("<0x{b:02X}>");
        if let Some(&id) = self.token_to_id.get(hex.as_str()) {
            return Some(id);
        }
        if b < 0x80 {
            let s = [b];
            if let Some(&id) = std::str::from_utf8(&s).ok().and_then(|s| self.token_to_id.get(s)) {
                return Some(id);
            }
        }
        self.unk
    }
}
