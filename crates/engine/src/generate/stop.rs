//! Stop strings over streamed text: text that might begin a stop string is held back until
//! it either completes one (generation stops, the stop string is not sent) or cannot.

/// Tracks generated text and what of it has been sent.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), text: String::new(), sent: 0 }
    }

    /// Add generated text. Returns the text now safe to send, and whether a stop string completed.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let hay = &self.text[self.sent..];
        if let Some(at) = self.stops.iter().filter_map(|s| hay.find(s.as_str())).min() {
            let cut = self.sent + at;
            let out = self.text[self.sent..cut].to_string();
            self.text.truncate(cut);
            self.sent = cut;
            return (out, true);
        }
        let hold = self.held_back(hay);
        let end = self.text.len() - hold;
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        (out, false)
    }

    /// The text held back (at the end of generation it is sent).
    pub fn flush(&mut self) -> String {
        let out = self.text.get(self.sent..).unwrap_or("").to_string();
        self.sent = self.text.len();
        out
    }

    /// Longest suffix of `hay` that is a proper prefix of a stop string (on a char boundary).
    fn held_back(&self, hay: &str) -> usize {
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(hay.len());
            for k in (best + 1..=max).rev() {
                let start = hay.len() - k;
                if hay.is_char_boundary(start) && s.starts_with(&hay[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, stop) = m.push(p);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(run(&["END"], &["ab", "cE", "N", "Dxyz"]), ("abc".into(), true));
        assert_eq!(run(&["END"], &["ab", "cE", "N", "x"]), ("abcENx".into(), false));
        assert_eq!(run(&["\n\n", "###"], &["a\n", "#", "\n", "\nb"]), ("a\n#".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_is_released_when_it_cannot_match() {
        let mut m = StopMatcher::new(vec!["<|end|>".into()]);
        assert_eq!(m.push("hello <|"), ("hello ".into(), false));
        assert_eq!(m.push("en"), ("".into(), false));
        assert_eq!(m.push("x"), ("<|enx".into(), false));
        assert_eq!(m.push("<|end|> tail"), ("".into(), true));
    }

    #[test]
    fn multibyte_stop() {
        assert_eq!(run(&["é!"], &["caf", "é", "!", "more"]), ("caf".into(), true));
        assert_eq!(run(&["é!"], &["café", "x"]), ("caféx".into(), false));
    }
}
