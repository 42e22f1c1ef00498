//! Unit tests on hand-built vocabularies.

use crate::decode::clean_spaces;
use crate::{token_type as tt, Tokenizer, TokenizerError, Vocab};

/// A SentencePiece vocab: <unk> <s> </s>, 256 byte tokens, then `pieces` (text, score).
fn spm_vocab(pieces: &[(&str, f32)], extra: &[(&str, i32)]) -> Vocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![tt::UNKNOWN, tt::CONTROL, tt::CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(tt::BYTE);
        scores.push(0.0);
    }
    for &(p, s) in pieces {
        tokens.push(p.to_string());
        types.push(tt::NORMAL);
        scores.push(s);
    }
    for &(p, t) in extra {
        tokens.push(p.to_string());
        types.push(t);
        scores.push(0.0);
    }
    Vocab { model: "llama".into(), tokens, scores: Some(scores), token_types: Some(types), ..Default::default() }
}

const SPM_PIECES: &[(&str, f32)] = &[
    ("▁", -1.0),
    ("h", -2.0),
    ("e", -2.0),
    ("l", -2.0),
    ("o", -2.0),
    ("w", -2.0),
    ("r", -2.0),
    ("d", -2.0),
    ("he", -1.0),
    ("ll", -1.5),
    ("hell", -0.8),
    ("hello", -0.6),
    ("▁hello", -0.5),
    ("or", -3.0),
    ("wor", -2.9),
    ("ld", -2.0),
    ("world", -0.9),
    ("▁world", -0.7),
];

fn spm() -> Tokenizer {
    let pieces = SPM_PIECES;
    let extra = [("<ctrl>", tt::CONTROL), ("<ud>", tt::USER_DEFINED), ("<|im_end|>", tt::CONTROL), ("<unused1>", tt::CONTROL)];
    Tokenizer::from_vocab(spm_vocab(pieces, &extra)).unwrap()
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(s).unwrap_or_else(|| panic!("no token {s:?}"))
}

#[test]
fn tokenizer_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Tokenizer>();
}

#[test]
fn spm_defaults_and_merging() {
    let t = spm();
    assert_eq!((t.bos(), t.eos(), t.unk()), (Some(1), Some(2), Some(0)));
    assert!(t.add_bos() && !t.add_eos() && t.add_space_prefix());
    // "▁hello" (-0.5) wins over pieces; a space prefix is added to the first fragment.
    assert_eq!(t.encode("hello world", true, false), vec![1, id(&t, "▁hello"), id(&t, "▁world")]);
    assert_eq!(t.encode("hello", false, false), vec![id(&t, "▁hello")]);
    assert_eq!(t.encode("", true, false), vec![1]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
    // Unknown characters fall back to UTF-8 byte tokens.
    let e = t.encode("é", false, false);
    assert_eq!(e, vec![id(&t, "▁"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]);
}

#[test]
fn spm_equal_scores_merge_leftmost_first() {
    let mut v = spm_vocab(&[("a", -1.0), ("aa", -1.0)], &[]);
    v.add_space_prefix = Some(false);
    let t = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(t.encode("aaa", false, false), vec![id(&t, "aa"), id(&t, "a")]);
}

#[test]
fn special_token_partition() {
    let t = spm();
    let ctrl = id(&t, "<ctrl>");
    let ud = id(&t, "<ud>");
    // Control text is only matched with parse_special; user-defined always is.
    let with = t.encode("hello<ctrl>world", false, true);
    assert_eq!(with, vec![id(&t, "▁hello"), ctrl, id(&t, "▁world")]);
    let without = t.encode("hello<ctrl>", false, false);
    assert!(!without.contains(&ctrl));
    assert_eq!(t.encode("<ud>hello", false, false), vec![ud, id(&t, "▁hello")]);
    // After a special token the next fragment gets a space prefix again.
    assert_eq!(t.encode("<ud>world<ud>", false, false), vec![ud, id(&t, "▁world"), ud]);
}

#[test]
fn phi3_rstrip() {
    let mut v = spm_vocab(SPM_PIECES, &[("<|end|>", tt::CONTROL), ("<|user|>", tt::USER_DEFINED)]);
    v.model_name = Some("Phi-3 mini".into());
    let t = Tokenizer::from_vocab(v).unwrap();
    let user = id(&t, "<|user|>");
    // RSTRIP: whitespace after the token is dropped; "hello" then gets the space prefix.
    assert_eq!(t.encode("<|user|>   hello", false, false), vec![user, id(&t, "▁hello")]);
    assert_eq!(t.token_attr(user) & crate::attr::RSTRIP, crate::attr::RSTRIP);
    assert_eq!(t.token_attr(1) & crate::attr::RSTRIP, 0, "<s> is excluded");
}

#[test]
fn eog_and_unused_detection() {
    let t = spm();
    let im_end = id(&t, "<|im_end|>");
    assert_eq!(t.eot(), Some(im_end));
    assert!(t.is_eog(im_end) && t.is_eog(2) && !t.is_eog(1));
    assert_eq!(t.eog_ids(), &[2, im_end][..]);
    let unused = id(&t, "<unused1>");
    assert_ne!(t.token_attr(unused) & crate::attr::UNUSED, 0);
}

#[test]
fn eot_text_becomes_control_and_lowest_id_wins() {
    let mut v = spm_vocab(&[], &[("<end_of_turn>", tt::NORMAL), ("<|endoftext|>", tt::NORMAL), ("</x>", tt::NORMAL)]);
    v.eos = Some(1);
    let t = Tokenizer::from_vocab(v).unwrap();
    let eot = id(&t, "<end_of_turn>");
    assert_eq!(t.eot(), Some(eot));
    assert!(t.is_control(eot) && t.is_control(id(&t, "<|endoftext|>")));
    assert!(t.is_eog(1) && t.is_eog(eot) && !t.is_eog(id(&t, "</x>")));
    // Now control, it is matched in text only with parse_special.
    assert_eq!(t.encode("<end_of_turn>", false, true), vec![eot]);
}

#[test]
fn metadata_overrides_and_bad_ids() {
    let mut v = spm_vocab(&[], &[]);
    v.bos = Some(100_000);
    v.eos = Some(5);
    v.add_bos = Some(false);
    v.add_eos = Some(true);
    let t = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(t.bos(), Some(1), "out-of-range id keeps the default");
    assert!(t.warnings().iter().any(|w| w.contains("bad special token")));
    assert_eq!((t.eos(), t.add_bos(), t.add_eos()), (Some(5), false, true));
    assert_eq!(t.encode("", true, false), vec![5]);
}

#[test]
fn errors() {
    let err = |v: Vocab| Tokenizer::from_vocab(v).unwrap_err();
    assert!(matches!(err(Vocab { model: "llama".into(), ..Default::default() }), TokenizerError::MissingKey(_)));
    assert!(matches!(err(Vocab { model: "foo".into(), tokens: vec!["a".into()], ..Default::default() }), TokenizerError::UnknownModel(_)));
    assert!(matches!(err(Vocab { model: "bert".into(), tokens: vec!["a".into()], ..Default::default() }), TokenizerError::UnsupportedModel(_)));
    let mut v = spm_vocab(&[], &[]);
    v.scores.as_mut().unwrap().pop();
    assert!(matches!(err(v), TokenizerError::LengthMismatch { .. }));
    let mut v = spm_vocab(&[], &[]);
    v.token_types.as_mut().unwrap().truncate(3);
    assert!(matches!(err(v), TokenizerError::LengthMismatch { .. }));
    let v = spm_vocab(&[("a", 0.0), ("a", 0.0)], &[]);
    assert!(matches!(err(v), TokenizerError::DuplicateToken { .. }));
    let v = Vocab { model: "gpt2".into(), pre: Some("gpt-2".into()), tokens: vec!["a".into()], ..Default::default() };
    assert!(matches!(err(v), TokenizerError::MissingKey("tokenizer.ggml.merges")));
    let v = Vocab { model: "gpt2".into(), pre: Some("nope".into()), tokens: vec!["a".into()], merges: Some(vec![]), ..Default::default() };
    let e = err(v);
    assert!(e.to_string().contains("unknown pre-tokenizer type 'nope'"), "{e}");
    let v = Vocab { model: "gpt2".into(), pre: Some("kimi-k2".into()), tokens: vec!["a".into()], merges: Some(vec![]), ..Default::default() };
    assert!(err(v).to_string().contains("not implemented"));
}

/// Byte-level BPE vocab: every byte's stand-in character, then merged tokens.
fn bpe_vocab(pre: Option<&str>, merges: &[&str], specials: &[&str]) -> Vocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| crate::unicode::byte_to_char(b).to_string()).collect();
    let mut types = vec![tt::NORMAL; 256];
    for m in merges {
        let t = m.replace(' ', "");
        if !tokens.contains(&t) {
            tokens.push(t);
            types.push(tt::NORMAL);
        }
    }
    for s in specials {
        tokens.push(s.to_string());
        types.push(tt::CONTROL);
    }
    Vocab {
        model: "gpt2".into(),
        pre: pre.map(String::from),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[test]
fn bpe_merges_by_rank() {
    let merges = ["Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "h e", "l l", "he ll", "hell o"];
    let t = Tokenizer::from_vocab(bpe_vocab(Some("gpt-2"), &merges, &["<|endoftext|>"])).unwrap();
    assert_eq!(t.kind_name(), "bpe");
    assert_eq!((t.bos(), t.eos()), (Some(11), Some(11)), "gpt2 defaults");
    assert!(!t.add_bos());
    let ids = t.encode("hello world!", true, false);
    assert_eq!(ids, vec![id(&t, "hello"), id(&t, "Ġworld"), b'!' as u32]);
    assert_eq!(t.decode(&ids, false), "hello world!");
    // Endoftext is an EOG control token, matched only with parse_special.
    let eot = id(&t, "<|endoftext|>");
    assert!(t.is_eog(eot));
    assert_eq!(t.encode("<|endoftext|>", false, true), vec![eot]);
    assert_eq!(t.encode("<|endoftext|>", false, false).len(), 13);
}

#[test]
fn bpe_missing_pre_defaults_with_warning() {
    let t = Tokenizer::from_vocab(bpe_vocab(None, &["a b"], &[])).unwrap();
    assert_eq!(t.pre_tokenizer(), Some("default"));
    assert!(t.warnings().iter().any(|w| w.contains("missing pre-tokenizer")));
}

#[test]
fn bpe_llama3_ignores_merges_for_whole_words() {
    // "abc" is a token but no merge path leads to it: llama3 takes it whole.
    let mut v = bpe_vocab(Some("llama-bpe"), &["a b"], &[]);
    v.tokens.push("abc".into());
    v.token_types.as_mut().unwrap().push(tt::NORMAL);
    let t = Tokenizer::from_vocab(v.clone()).unwrap();
    assert!(t.add_bos(), "llama3 adds BOS by default");
    assert_eq!(t.encode("abc", false, false), vec![id(&t, "abc")]);
    v.pre = Some("gpt-2".into());
    let t = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(t.encode("abc", false, false), vec![id(&t, "ab"), b'c' as u32]);
}

#[test]
fn all_pre_tokenizers_build_and_split() {
    for name in crate::pre_table::ALL_NAMES {
        let cfg = crate::pre_table::lookup(name).unwrap();
        let pre = crate::pretokenize::PreTokenizer::new(cfg.exprs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = "Hello, wörld! I'm 12345 中文 🦙\n\n  x\u{3000}y";
        let words = pre.split(text);
        assert_eq!(words.concat(), text, "{name}");
    }
}

#[test]
fn token_to_piece_rules() {
    let t = spm();
    assert_eq!(t.token_to_piece(id(&t, "▁hello"), false), b" hello");
    assert_eq!(t.token_to_piece(id(&t, "<0x41>"), false), b"A");
    assert_eq!(t.token_to_piece(1, false), b"");
    assert_eq!(t.token_to_piece(1, true), b"<s>");
    assert_eq!(t.token_to_piece(0, false), b"", "unknown is special too");
    assert_eq!(t.token_to_piece(id(&t, "<ud>"), false), b"<ud>");
    assert_eq!(t.token_to_piece(1_000_000, true), b"");
    // The first token loses its leading space (add_space_prefix), even after BOS.
    let ids = t.encode("hello world", true, false);
    assert_eq!(t.decode(&ids, false), " hello world");
    assert_eq!(t.decode(&ids[1..], false), "hello world");
    assert_eq!(t.decode(&ids, true), "<s> hello world");
}

#[test]
fn clean_spaces_passes() {
    let c = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    };
    assert_eq!(c("Hello , world ! Yes ."), "Hello, world! Yes.");
    assert_eq!(c("it 's I 'm we 're you 've don 't he 'd we 'll"), "it's I'm we're you've don 't he 'd we 'll");
    assert_eq!(c("a ' b"), "a'b");
    assert_eq!(c(" ?"), "?");
    assert_eq!(c(""), "");
}

/// Splitting llama.cpp's clean-up where `StreamDecoder` does gives the same text.
#[test]
fn clean_spaces_split_property() {
    let alphabet = b" ' ?.,!srevtdmlax";
    let mut seed = 12345u64;
    let mut rnd = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _ in 0..20000 {
        let len = rnd(12);
        let s: Vec<u8> = (0..len).map(|_| alphabet[rnd(alphabet.len())]).collect();
        let mut whole = s.clone();
        clean_spaces(&mut whole);
        for p in 0..=len {
            if !crate::decode::clean_split_ok(&s, p) {
                continue;
            }
            let (mut a, mut b) = (s[..p].to_vec(), s[p..].to_vec());
            clean_spaces(&mut a);
            clean_spaces(&mut b);
            a.extend(b);
            assert_eq!(a, whole, "{:?} split at {p}", String::from_utf8_lossy(&s));
        }
    }
}

#[test]
fn stream_decoder_holds_partial_utf8() {
    let t = spm();
    // "é" = C3 A9 as two byte tokens, "🦙" = F0 9F A6 99 as four.
    let ids: Vec<u32> = [0xC3u8, 0xA9, 0xF0, 0x9F, 0xA6, 0x99].iter().map(|b| id(&t, &format!("<0x{b:02X}>"))).collect();
    let mut d = t.stream_decoder(false);
    let outs: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
    assert_eq!(outs, ["", "é", "", "", "", "🦙"]);
    assert_eq!(d.finish(), "");
    // A dangling lead byte is flushed lossily at the end.
    let mut d = t.stream_decoder(false);
    assert_eq!(d.push(ids[0]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(t.decode(&ids[..1], false), "\u{FFFD}");
}

#[test]
fn stream_decoder_matches_decode_with_clean_spaces() {
    let merges = ["Ġ '", "' s", "Ġ ?"];
    let t = Tokenizer::from_vocab(bpe_vocab(Some("gpt-2"), &merges, &[])).unwrap();
    for text in ["it 's a test ? yes , no .", "a ' b ' c", "x 're y 've", " é ? 中 's"] {
        let ids = t.encode(text, false, false);
        let mut d = t.stream_decoder(false);
        let mut s: String = ids.iter().map(|&i| d.push(i)).collect();
        s.push_str(&d.finish());
        assert_eq!(s, t.decode(&ids, false), "{text:?}");
    }
}
