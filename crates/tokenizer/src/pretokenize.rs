//! Pre-tokenization for byte-level BPE: split text into words with a list of
//! regexes applied in turn (each one re-splits the pieces the previous one made),
//! exactly as llama.cpp's `unicode_regex_split` does.
//!
//! llama.cpp runs the common regexes through hand-written splitters and the rest
//! through `std::regex` on a "collapsed" text in which every non-ASCII code point
//! is replaced by one byte naming its category (`\p{L}` -> 0xD2, ...). We mirror
//! both: the same hand-written splitters for the same regex strings, and the same
//! collapsing (with U+00D0..U+00D5 standing in for those bytes) for the others, so
//! that e.g. `[^a-z]` sees a non-ASCII letter exactly as llama.cpp does.

use crate::unicode::{self, Flags};
use fancy_regex::Regex;

pub(crate) const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
pub(crate) const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN35_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const NEWLINES_RE: &str = r"[^\n]+|[\n]+";

#[derive(Clone)]
enum Splitter {
    Gpt2,
    /// llama3 / qwen2 / qwen35 family: digit group size, whether letters take marks.
    Llama3 { max_digits: usize, marks: bool },
    Newlines,
    Regex { re: Regex, collapsed: bool },
}

#[derive(Clone)]
pub(crate) struct PreTokenizer {
    splitters: Vec<Splitter>,
}

/// Category placeholders of the collapsed text, and the ASCII members of each class.
const CATEGORY_CLASSES: [(&str, u8, char, &str); 10] = [
    (r"\p{N}", unicode::NUMBER, '\u{D1}', "0-9"),
    (r"\p{L}", unicode::LETTER, '\u{D2}', "A-Za-z"),
    (r"\p{P}", unicode::PUNCTUATION, '\u{D3}', r"!-#%-*,-/:-;?-@\[-\]_\{\}"),
    (r"\p{M}", unicode::ACCENT_MARK, '\u{D4}', ""),
    (r"\p{S}", unicode::SYMBOL, '\u{D5}', r"\$\+<->^`\|\~"),
    (r"\p{Lu}", unicode::LETTER, '\u{D2}', "A-Za-z"),
    (r"\p{Ll}", unicode::LETTER, '\u{D2}', "A-Za-z"),
    (r"\p{Lt}", unicode::LETTER, '\u{D2}', "A-Za-z"),
    (r"\p{Lm}", unicode::LETTER, '\u{D2}', "A-Za-z"),
    (r"\p{Lo}", unicode::LETTER, '\u{D2}', "A-Za-z"),
];

fn uses_categories(expr: &str) -> bool {
    CATEGORY_CLASSES.iter().any(|(pat, ..)| expr.contains(pat))
}

/// Rewrite `\p{..}` into the collapsed alphabet, tracking `[...]` like llama.cpp does.
fn collapse_regex(expr: &str) -> Result<String, String> {
    if !expr.is_ascii() {
        return Err(format!("regex mixes unicode categories and non-ASCII characters: {expr}"));
    }
    let b = expr.as_bytes();
    let mut out = String::new();
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && c == b']' && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if c == b'\\' && i + 3 < b.len() && b[i + 1] == b'p' && b[i + 2] == b'{' {
            if let Some(close) = expr[i + 3..].find('}').map(|p| p + i + 3) {
                if close <= i + 10 {
                    if let Some(&(_, _, ch, ascii)) = CATEGORY_CLASSES.iter().find(|(p, ..)| *p == &expr[i..=close]) {
                        if !inside {
                            out.push('[');
                        }
                        out.push_str(&format!("\\x{{{:X}}}", ch as u32));
                        out.push_str(ascii);
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        out.push(c as char);
        i += 1;
    }
    Ok(out)
}

/// ECMAScript `\d` is ASCII-only; Rust's is Unicode. Used only on non-collapsed regexes.
fn ascii_digits(expr: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut prev_backslash = false;
    for c in expr.chars() {
        if prev_backslash {
            prev_backslash = false;
            if c == 'd' {
                out.pop();
                out.push_str(if inside { "0-9" } else { "[0-9]" });
            } else {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => prev_backslash = true,
            '[' => inside = true,
            ']' => inside = false,
            _ => {}
        }
        out.push(c);
    }
    out
}

impl PreTokenizer {
    pub(crate) fn new(exprs: &[&str]) -> Result<PreTokenizer, String> {
        let mut splitters = Vec::new();
        for &expr in exprs {
            let s = match expr {
                GPT2_RE => Splitter::Gpt2,
                LLAMA3_RE => Splitter::Llama3 { max_digits: 3, marks: false },
                QWEN2_RE => Splitter::Llama3 { max_digits: 1, marks: false },
                QWEN35_RE => Splitter::Llama3 { max_digits: 1, marks: true },
                NEWLINES_RE => Splitter::Newlines,
                _ => {
                    let collapsed = uses_categories(expr);
                    let pattern = if collapsed { collapse_regex(expr)? } else { ascii_digits(expr) };
                    let re = Regex::new(&pattern).map_err(|e| format!("regex {expr:?}: {e}"))?;
                    Splitter::Regex { re, collapsed }
                }
            };
            splitters.push(s);
        }
        Ok(PreTokenizer { splitters })
    }

    /// Split `text` into words (slices of `text`).
    pub(crate) fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let cps: Vec<u32> = text.chars().map(|c| c as u32).collect();
        // Piece lengths in code points; starts as one piece covering everything.
        let mut pieces = vec![cps.len()];
        let mut collapsed: Option<(String, Vec<usize>)> = None;
        let mut plain: Option<(String, Vec<usize>)> = None;
        for s in &self.splitters {
            pieces = match s {
                Splitter::Gpt2 => split_gpt2(&cps, &pieces),
                Splitter::Llama3 { max_digits, marks } => split_llama3(&cps, &pieces, *max_digits, *marks),
                Splitter::Newlines => split_newlines(&cps, &pieces),
                Splitter::Regex { re, collapsed: true } => {
                    let (s, starts) = collapsed.get_or_insert_with(|| mapped_text(&cps, true));
                    split_regex(re, s, starts, &pieces)
                }
                Splitter::Regex { re, collapsed: false } => {
                    let (s, starts) = plain.get_or_insert_with(|| mapped_text(&cps, false));
                    split_regex(re, s, starts, &pieces)
                }
            };
        }
        let mut words = Vec::with_capacity(pieces.len());
        let mut byte = 0;
        let mut chars = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len()));
        let _ = chars.next();
        for &n in &pieces {
            if n == 0 {
                continue;
            }
            let end = chars.nth(n - 1).unwrap_or(text.len());
            words.push(&text[byte..end]);
            byte = end;
        }
        words
    }
}

/// The text the regex engine sees: non-ASCII whitespace becomes U+000B; with
/// `collapse`, every other non-ASCII code point becomes its category placeholder.
/// Returns it with the byte offset of every code point (plus the end).
fn mapped_text(cps: &[u32], collapse: bool) -> (String, Vec<usize>) {
    let mut s = String::with_capacity(cps.len());
    let mut starts = Vec::with_capacity(cps.len() + 1);
    for &cp in cps {
        starts.push(s.len());
        let c = if cp < 128 {
            cp
        } else {
            let f = unicode::flags(cp);
            if f.whitespace {
                0x0B
            } else if !collapse {
                cp
            } else {
                CATEGORY_CLASSES[..5].iter().find(|(_, bit, ..)| *bit == f.category).map_or(0xD0, |(_, _, ch, _)| *ch as u32)
            }
        };
        s.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
    }
    starts.push(s.len());
    (s, starts)
}

/// Like `std::regex_iterator` over each piece: matches and the gaps between them
/// all become pieces.
fn split_regex(re: &Regex, text: &str, starts: &[usize], pieces: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut cp_start = 0;
    for &n in pieces {
        let (b0, b1) = (starts[cp_start], starts[cp_start + n]);
        let seg = &text[b0..b1];
        let cp_of = |b: usize| starts.partition_point(|&x| x < b0 + b) - cp_start;
        let mut last = 0; // code points consumed in this piece
        let mut pos = 0; // byte position to search from
        while pos <= seg.len() {
            let m = match re.find_from_pos(seg, pos) {
                Ok(Some(m)) => m,
                _ => break,
            };
            let (ms, me) = (cp_of(m.start()), cp_of(m.end()));
            if ms > last {
                out.push(ms - last);
            }
            if me > ms {
                out.push(me - ms);
            }
            last = me;
            // An empty match must not stall; skip one character past it.
            pos = if m.end() > m.start() { m.end() } else { m.end() + seg[m.end()..].chars().next().map_or(1, char::len_utf8) };
        }
        if last < n {
            out.push(n - last);
        }
        cp_start += n;
    }
    out
}

/// Per-piece cursor giving llama.cpp's view: flags/code point, or "nothing" outside.
struct Piece<'a> {
    cps: &'a [u32],
    ini: usize,
    end: usize,
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

impl Piece<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cps[pos]
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            unicode::flags(self.cps[pos])
        } else {
            Flags::none()
        }
    }
}

fn for_each_piece(cps: &[u32], pieces: &[usize], mut f: impl FnMut(&Piece, &mut Vec<usize>)) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &n in pieces {
        f(&Piece { cps, ini: start, end: start + n }, &mut out);
        start += n;
    }
    out
}

/// Emits pieces up to `end`; returns the length emitted.
struct Emitter<'o> {
    out: &'o mut Vec<usize>,
    prev_end: usize,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

/// Contractions `'s 't 're 've 'm 'll 'd` (ASCII-case-insensitive if `fold`):
/// the length matched at `pos`, if any.
fn contraction(p: &Piece, pos: usize, fold: bool) -> Option<usize> {
    if p.cpt(pos) != '\'' as u32 || pos + 1 >= p.end {
        return None;
    }
    let low = |c: u32| if fold && (b'A' as u32..=b'Z' as u32).contains(&c) { c + 32 } else { c };
    let c1 = low(p.cpt(pos + 1));
    if [b's', b't', b'm', b'd'].iter().any(|&x| c1 == x as u32) {
        return Some(2);
    }
    if pos + 2 < p.end {
        let c2 = low(p.cpt(pos + 2));
        let pair = |a: u8, b: u8| c1 == a as u32 && c2 == b as u32;
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return Some(3);
        }
    }
    None
}

/// Whitespace run at `pos`: (count, end of the last \r or \n in it, or 0).
fn whitespace_run(p: &Piece, pos: usize) -> (usize, usize) {
    let (mut n, mut last_rn) = (0, 0);
    while p.flags(pos + n).whitespace {
        let c = p.cpt(pos + n);
        if c == '\r' as u32 || c == '\n' as u32 {
            last_rn = pos + n + 1;
        }
        n += 1;
    }
    (n, last_rn)
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn split_gpt2(cps: &[u32], pieces: &[usize]) -> Vec<usize> {
    for_each_piece(cps, pieces, |p, out| {
        let mut e = Emitter { out, prev_end: p.ini };
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let flags = p.flags(pos);
            if let Some(n) = contraction(p, pos, false) {
                pos += e.add(pos + n);
                continue;
            }
            let space = cpt == ' ' as u32;
            let mut f2 = if space { p.flags(pos + 1) } else { flags };
            if f2.is_letter() {
                pos += space as usize;
                while f2.is_letter() {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                e.add(pos);
                continue;
            }
            if f2.is_number() {
                pos += space as usize;
                while f2.is_number() {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                e.add(pos);
                continue;
            }
            let other = |f: Flags| !(f.whitespace || f.is_letter() || f.is_number()) && f.is_some();
            if other(f2) {
                pos += space as usize;
                while other(f2) {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                e.add(pos);
                continue;
            }
            let (n_ws, _) = whitespace_run(p, pos);
            if n_ws > 1 && p.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                e.add(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                e.add(pos);
                continue;
            }
            pos += 1;
            e.add(pos);
        }
    })
}

/// llama3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// (qwen2: `\p{N}` single digits; qwen35: letters are `[\p{L}\p{M}]`).
fn split_llama3(cps: &[u32], pieces: &[usize], max_digits: usize, marks: bool) -> Vec<usize> {
    let is_word = |f: Flags| f.is_letter() || (marks && f.is_accent_mark());
    for_each_piece(cps, pieces, |p, out| {
        let mut e = Emitter { out, prev_end: p.ini };
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let flags = p.flags(pos);
            if let Some(n) = contraction(p, pos, true) {
                pos += e.add(pos + n);
                continue;
            }
            let is_rn = cpt == '\r' as u32 || cpt == '\n' as u32;
            if !(is_rn || flags.is_number()) && (is_word(flags) || is_word(p.flags(pos + 1))) {
                pos += 1;
                while is_word(p.flags(pos)) {
                    pos += 1;
                }
                e.add(pos);
                continue;
            }
            if flags.is_number() {
                let mut ini = pos;
                while p.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= max_digits {
                        e.add(pos);
                        ini = pos;
                    }
                }
                e.add(pos);
                continue;
            }
            let mut f2 = if cpt == ' ' as u32 { p.flags(pos + 1) } else { flags };
            let other = |f: Flags| !(f.whitespace || is_word(f) || f.is_number());
            // llama.cpp tests the first flags of the *current* code point here.
            if other(f2) && flags.is_some() {
                pos += (cpt == ' ' as u32) as usize;
                while other(f2) && f2.is_some() {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                while p.cpt(pos) == '\r' as u32 || p.cpt(pos) == '\n' as u32 {
                    pos += 1;
                }
                e.add(pos);
                continue;
            }
            let (n_ws, last_rn) = whitespace_run(p, pos);
            if last_rn > 0 {
                pos = last_rn;
                e.add(pos);
                continue;
            }
            if n_ws > 1 && p.cpt(pos + n_ws) != OUT_OF_RANGE {
                pos += n_ws - 1;
                e.add(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                e.add(pos);
                continue;
            }
            pos += 1;
            e.add(pos);
        }
    })
}

/// `[^\n]+|[\n]+`
fn split_newlines(cps: &[u32], pieces: &[usize]) -> Vec<usize> {
    for_each_piece(cps, pieces, |p, out| {
        let mut pos = p.ini;
        while pos < p.end {
            let nl = cps[pos] == '\n' as u32;
            let start = pos;
            while pos < p.end && (cps[pos] == '\n' as u32) == nl {
                pos += 1;
            }
            out.push(pos - start);
        }
    })
}

#[cfg(test)]
#[path = "pretokenize_tests.rs"]
mod tests;
