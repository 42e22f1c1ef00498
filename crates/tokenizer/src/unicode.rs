//! Code point classification and the GPT-2 byte-to-unicode mapping, as llama.cpp
//! (src/unicode.cpp) defines them.

use crate::unicode_data::{CATEGORY_RANGES, WHITESPACE};
use std::sync::OnceLock;

/// `\p{N}`
pub const NUMBER: u8 = 0x02;
/// `\p{L}`
pub const LETTER: u8 = 0x04;
/// `\p{P}`
pub const PUNCTUATION: u8 = 0x20;
/// `\p{M}`
pub const ACCENT_MARK: u8 = 0x10;
/// `\p{S}`
pub const SYMBOL: u8 = 0x40;

/// Category and whitespace of one code point. `none()` stands for "outside the
/// current piece of text" (llama.cpp's all-zero flags), which the hand-written
/// splitters test for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub category: u8,
    pub whitespace: bool,
}

impl Flags {
    pub fn none() -> Flags {
        Flags::default()
    }
    pub fn is_letter(self) -> bool {
        self.category & LETTER != 0
    }
    pub fn is_number(self) -> bool {
        self.category & NUMBER != 0
    }
    pub fn is_accent_mark(self) -> bool {
        self.category & ACCENT_MARK != 0
    }
    /// llama.cpp's `flags.as_uint() != 0`: true for every real code point.
    pub fn is_some(self) -> bool {
        self.category != 0 || self.whitespace
    }
}

/// Flags of a code point (code points past U+10FFFF are "undefined", 0x01).
pub fn flags(cp: u32) -> Flags {
    let category = if cp >= 0x110000 {
        0x01
    } else {
        let i = CATEGORY_RANGES.partition_point(|&(start, _)| start <= cp);
        CATEGORY_RANGES[i - 1].1
    };
    Flags { category, whitespace: is_whitespace(cp) }
}

pub fn is_whitespace(cp: u32) -> bool {
    (cp <= 0x20 || cp >= 0x85) && WHITESPACE.binary_search(&cp).is_ok()
}

/// Length of a UTF-8 sequence from its first byte (llama.cpp's `unicode_len_utf8`).
pub fn utf8_len(first: u8) -> usize {
    const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LOOKUP[(first >> 4) as usize]
}

struct ByteMaps {
    to_char: [char; 256],
    to_byte: std::collections::HashMap<char, u8>,
}

fn byte_maps() -> &'static ByteMaps {
    static MAPS: OnceLock<ByteMaps> = OnceLock::new();
    MAPS.get_or_init(|| {
        // GPT-2: printable bytes map to themselves, the rest to U+0100.. in byte order.
        let mut to_char = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..256u32 {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            to_char[b as usize] = if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
        }
        let to_byte = to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        ByteMaps { to_char, to_byte }
    })
}

/// The character a byte stands for in byte-level BPE vocabularies.
pub fn byte_to_char(b: u8) -> char {
    byte_maps().to_char[b as usize]
}

/// The byte a byte-level BPE character stands for, if it is one.
pub fn char_to_byte(c: char) -> Option<u8> {
    byte_maps().to_byte.get(&c).copied()
}

/// Byte-level encoding of a word: every UTF-8 byte becomes its stand-in character.
pub fn byte_encode(word: &str, out: &mut String) {
    for &b in word.as_bytes() {
        out.push(byte_to_char(b));
    }
}

/// C `isspace` in the "C" locale (what llama.cpp's lstrip/rstrip use).
pub fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('é' as u32).is_letter());
        assert!(flags('中' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags('٣' as u32).is_number());
        assert_eq!(flags('!' as u32).category, PUNCTUATION);
        assert_eq!(flags('+' as u32).category, SYMBOL);
        assert_eq!(flags(0x301).category, ACCENT_MARK);
        assert!(flags(' ' as u32).whitespace && flags(0x3000).whitespace && flags(0x85).whitespace);
        assert!(!flags('x' as u32).whitespace);
        assert_eq!(flags(0x10FFFF + 1).category, 0x01);
        assert!(flags(0x10FFFF).is_some());
    }

    #[test]
    fn byte_map_roundtrip() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }
}
