//! Splitting raw text around special-token text before tokenizing, with the
//! semantics of llama.cpp's `tokenizer_st_partition`: special tokens are taken
//! longest first, each one splitting every remaining text fragment at all of its
//! (leftmost, non-overlapping) occurrences; LSTRIP/RSTRIP tokens also swallow
//! neighbouring whitespace. Ties in length keep llama.cpp's (GCC `std::sort`)
//! order, see stdsort.rs. A trie finds which special tokens occur in the text at
//! all, so that only those few are run through that (exact but slow) loop.

use crate::unicode::c_isspace;
use crate::vocab::attr;
use crate::{FastMap, TokenData, Tokenizer};

/// A piece of the input: raw text (byte offset, length) or an already known token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// A byte trie over the texts of all special tokens.
#[derive(Clone)]
pub(crate) struct SpecialMatcher {
    edges: FastMap<(u32, u8), u32>,
    /// Position in the special-token cache of the token ending at each node
    /// (`u32::MAX`: none).
    terminal: Vec<u32>,
}

impl SpecialMatcher {
    pub(crate) fn new(tokens: &[TokenData], special: &[u32]) -> SpecialMatcher {
        let mut m = SpecialMatcher { edges: FastMap::default(), terminal: vec![u32::MAX] };
        for (rank, &id) in special.iter().enumerate() {
            let mut node = 0u32;
            for &b in tokens[id as usize].text.as_bytes() {
                let next = m.terminal.len() as u32;
                node = *m.edges.entry((node, b)).or_insert_with(|| next);
                if node == next {
                    m.terminal.push(u32::MAX);
                }
            }
            m.terminal[node as usize] = rank as u32;
        }
        m
    }

    /// Cache positions of the special tokens whose text occurs somewhere in `text`
    /// (unordered, unique).
    pub(crate) fn occurring(&self, text: &[u8]) -> Vec<u32> {
        let mut found = Vec::new();
        if self.edges.is_empty() {
            return found;
        }
        for start in 0..text.len() {
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&next) => node = next,
                    None => break,
                }
                let t = self.terminal[node as usize];
                if t != u32::MAX && !found.contains(&t) {
                    found.push(t);
                }
            }
        }
        found
    }
}

impl Tokenizer {
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0, text.len())];
        // In the order of llama.cpp's special-token cache.
        let mut ranks = self.matcher.occurring(text.as_bytes());
        ranks.sort_unstable();
        let candidates = ranks
            .into_iter()
            .map(|r| self.special[r as usize])
            // Without parse_special only user-defined tokens are split out.
            .filter(|&id| parse_special || self.tokens[id as usize].attr & (attr::CONTROL | attr::UNKNOWN) == 0);

        let bytes = text.as_bytes();
        for id in candidates {
            let data = &self.tokens[id as usize];
            let pat = data.text.as_str();
            let mut out = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(mut off, mut len) = frag else {
                    out.push(frag);
                    continue;
                };
                loop {
                    let Some(rel) = text[off..off + len].find(pat) else {
                        out.push(Fragment::Text(off, len));
                        break;
                    };
                    let at = off + rel;
                    if at > off {
                        let mut left = at - off;
                        if data.attr & attr::LSTRIP != 0 {
                            while left > 0 && c_isspace(bytes[off + left - 1]) {
                                left -= 1;
                            }
                        }
                        if left > 0 {
                            out.push(Fragment::Text(off, left));
                        }
                    }
                    out.push(Fragment::Token(id));
                    let end = at + pat.len();
                    if end >= off + len {
                        break;
                    }
                    let (mut r_off, mut r_len) = (end, off + len - end);
                    if data.attr & attr::RSTRIP != 0 {
                        while r_len > 0 && c_isspace(bytes[r_off]) {
                            r_off += 1;
                            r_len -= 1;
                        }
                    }
                    if r_len == 0 {
                        break;
                    }
                    (off, len) = (r_off, r_len);
                }
            }
            frags = out;
        }
        frags
    }
}
