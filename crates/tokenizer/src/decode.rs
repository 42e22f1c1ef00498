//! Token ids back to text, as llama.cpp's `token_to_piece` and `detokenize`
//! (remove_special = false), plus a streaming decoder.

use crate::unicode;
use crate::vocab::attr;
use crate::{Kind, Tokenizer};

impl Tokenizer {
    /// The bytes of one token. Control and unknown tokens give nothing unless
    /// `special`; unused/undefined tokens always give nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_piece(id, special, false, &mut out);
        out
    }

    /// Appends the piece; `lstrip` drops one leading space (llama.cpp does this to
    /// the first token when the vocab adds a space prefix).
    pub(crate) fn append_piece(&self, id: u32, special: bool, lstrip: bool, out: &mut Vec<u8>) {
        let Some(t) = self.tokens.get(id as usize) else { return };
        let start = out.len();
        if t.attr & (attr::UNKNOWN | attr::CONTROL) != 0 && !special {
            return;
        }
        if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(t.text.as_bytes());
        } else if t.attr & attr::NORMAL != 0 {
            if self.kind == Kind::Spm || self.escape_whitespaces {
                out.extend_from_slice(t.text.replace('\u{2581}', " ").as_bytes());
            } else {
                byte_decode(&t.text, out);
            }
        } else if t.attr & attr::BYTE != 0 {
            out.push(byte_token_value(&t.text));
        }
        if lstrip && out.get(start) == Some(&b' ') {
            out.remove(start);
        }
    }

    /// Concatenated pieces of `ids` (`special`: render control tokens), with
    /// llama.cpp's clean-up of spaces before punctuation for the vocabularies that
    /// ask for it. Invalid UTF-8 is replaced with U+FFFD.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut raw = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            self.append_piece(id, special, i == 0 && self.add_space_prefix, &mut raw);
        }
        if self.clean_spaces {
            clean_spaces(&mut raw);
        }
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// A streaming decoder over this tokenizer (`special`: render control tokens).
    pub fn stream_decoder(&self, special: bool) -> StreamDecoder<'_> {
        StreamDecoder::with_special(self, special)
    }
}

/// Byte-level BPE text back to bytes; characters that stand for no byte are
/// rendered the way llama.cpp's `llama_decode_text` does.
fn byte_decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// `<0xXX>` -> XX, parsed like `strtol(text.substr(3, 2), 16)`.
fn byte_token_value(text: &str) -> u8 {
    let digits = text.get(3..).unwrap_or("").chars().take(2).take_while(char::is_ascii_hexdigit);
    digits.fold(0u32, |v, c| v * 16 + c.to_digit(16).unwrap()) as u8
}

/// llama.cpp's three clean-up passes over detokenized bytes, in place and byte
/// for byte the same (including its quirks).
pub(crate) fn clean_spaces(t: &mut Vec<u8>) {
    // 1: " ?", " !", " .", " ," lose the space.
    let n1 = t.len();
    let mut total = usize::from(n1 > 0);
    for i in 1..n1 {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    // 2: " ' " becomes "'" (the skipped space is zeroed, as llama.cpp does).
    let n2 = total;
    total = usize::from(n2 > 0);
    let mut i = 1;
    while i < n2 {
        let x = t[i];
        if x == b'\'' && i + 1 < n2 && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    // 3: " 's", " 'm", " 're", " 've" lose the space.
    let n3 = total;
    total = usize::from(n3 > 0);
    for i in 1..n3 {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n3 {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < n3 {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

/// Whether clean-up of `a ++ b` equals clean-up of `a` then of `b` when split at
/// `p`: no clean-up pattern can reach across it.
pub(crate) fn clean_split_ok(t: &[u8], p: usize) -> bool {
    if p == 0 {
        return true;
    }
    let c = t[p - 1];
    if c == b' ' || c == b'\'' {
        return false;
    }
    // " 'r|e", " 'v|e", and the same with a swallowed space after the quote.
    !((c == b'r' || c == b'v') && (p >= 2 && t[p - 2] == b'\'' || p >= 3 && t[p - 3] == b'\''))
}

/// Start of an incomplete UTF-8 sequence at the very end of `t`, if any.
fn incomplete_tail(t: &[u8]) -> usize {
    for k in (t.len().saturating_sub(3)..t.len()).rev() {
        if t[k] >= 0xC0 {
            return match std::str::from_utf8(&t[k..]) {
                Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => k,
                _ => t.len(),
            };
        }
        if t[k] < 0x80 {
            break;
        }
    }
    t.len()
}

/// Decodes ids one at a time, returning only text that is final: complete UTF-8
/// characters that later tokens cannot change. The concatenation of all `push`
/// results and `finish` equals `Tokenizer::decode` of all ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    special: bool,
    first: bool,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// Control tokens are not rendered.
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self::with_special(tok, false)
    }

    /// `special`: render control tokens (as `decode(.., true)`).
    pub fn with_special(tok: &'a Tokenizer, special: bool) -> Self {
        StreamDecoder { tok, special, first: true, pending: Vec::new() }
    }

    /// Feed one id; returns the text that became final.
    pub fn push(&mut self, id: u32) -> String {
        let lstrip = self.first && self.tok.add_space_prefix;
        self.first = false;
        self.tok.append_piece(id, self.special, lstrip, &mut self.pending);
        let mut p = incomplete_tail(&self.pending);
        if self.tok.clean_spaces {
            while !clean_split_ok(&self.pending, p) {
                p -= 1;
            }
        }
        let rest = self.pending.split_off(p);
        let ready = std::mem::replace(&mut self.pending, rest);
        self.render(ready)
    }

    /// Everything still held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let ready = std::mem::take(&mut self.pending);
        self.render(ready)
    }

    fn render(&self, mut bytes: Vec<u8>) -> String {
        if self.tok.clean_spaces {
            clean_spaces(&mut bytes);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}
