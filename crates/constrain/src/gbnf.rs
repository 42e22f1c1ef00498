//! llama.cpp's GBNF grammars (llama-server's `grammar` field) in llguidance's Lark syntax.
//!
//! GBNF: `name ::= sequence | sequence`, terminals as `"literal"`, `[a-z]` / `[^"]` classes
//! and `.`, groups, `* + ?` and `{m}`, `{m,}`, `{m,n}`, `#` comments; a rule ends at a newline
//! outside parentheses. The rule `root` is the start. Rule names become `g_<name>` (dashes
//! to underscores, lowercased: Lark's rule names), literals JSON strings, classes regexes.

/// Translate a GBNF grammar; an error names what is malformed and where.
pub fn to_lark(src: &str) -> Result<String, String> {
    let mut p = Parser { s: src.chars().collect(), i: 0, depth: 0 };
    let mut out = String::new();
    let mut has_root = false;
    loop {
        p.skip(true);
        if p.i >= p.s.len() {
            break;
        }
        let name = p.name().ok_or_else(|| p.error("a rule name"))?;
        p.skip(false);
        if !p.eat_str("::=") {
            return Err(p.error("'::='"));
        }
        // The body may start on the next line (llama.cpp's own json.gbnf does).
        p.skip(true);
        has_root |= name == "root";
        let body = p.alternatives(false)?;
        out.push_str(&format!("{}: {}\n", rule_name(&name), body));
    }
    if !has_root {
        return Err("the grammar has no 'root' rule".into());
    }
    out.push_str("start: g_root\n");
    Ok(out)
}

fn rule_name(name: &str) -> String {
    format!("g_{}", name.to_ascii_lowercase().replace('-', "_"))
}

struct Parser {
    s: Vec<char>,
    i: usize,
    /// Parentheses open: bounded, so a hostile grammar cannot exhaust the stack.
    depth: usize,
}

/// Most nested parentheses in a grammar.
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn error(&self, want: &str) -> String {
        let line = self.s[..self.i.min(self.s.len())].iter().filter(|&&c| c == '\n').count() + 1;
        let near: String = self.s[self.i.min(self.s.len())..].iter().take(20).collect();
        format!("GBNF: expected {want} at line {line}, near {near:?}")
    }

    /// Skip spaces and comments; newlines too when `newlines`.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
            } else if c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn eat_str(&mut self, t: &str) -> bool {
        let t: Vec<char> = t.chars().collect();
        if self.s[self.i..].starts_with(&t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.i += 1;
        }
        (self.i > start).then(|| self.s[start..self.i].iter().collect())
    }

    /// `seq | seq | ...`; inside parentheses newlines are spaces.
    fn alternatives(&mut self, nested: bool) -> Result<String, String> {
        let mut alts = vec![self.sequence(nested)?];
        loop {
            self.skip(nested);
            if self.peek() == Some('|') {
                self.i += 1;
                self.skip(true);
                alts.push(self.sequence(nested)?);
            } else {
                break;
            }
        }
        Ok(alts.join(" | "))
    }

    fn sequence(&mut self, nested: bool) -> Result<String, String> {
        let mut items = Vec::new();
        loop {
            self.skip(nested);
            // A rule ends at a newline outside parentheses; the next line may start a rule.
            let Some(c) = self.peek() else { break };
            let atom = match c {
                '"' => self.literal()?,
                '[' => self.class()?,
                '.' => {
                    self.i += 1;
                    "/(?s:.)/".to_string()
                }
                '(' => {
                    self.i += 1;
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(format!("GBNF: parentheses nested deeper than {MAX_DEPTH}"));
                    }
                    let inner = self.alternatives(true)?;
                    self.depth -= 1;
                    self.skip(true);
                    if self.peek() != Some(')') {
                        return Err(self.error("')'"));
                    }
                    self.i += 1;
                    format!("({inner})")
                }
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    let save = self.i;
                    let name = self.name().unwrap_or_default();
                    let after = self.i;
                    self.skip(false);
                    let defines = self.eat_str("::=");
                    self.i = if defines { save } else { after };
                    if defines {
                        break;
                    }
                    rule_name(&name)
                }
                '<' => return Err(self.error("a literal, class or rule (token references <...> are not supported)")),
                _ => break,
            };
            // `[0-9] +` is `[0-9]+` to llama.cpp.
            self.skip(nested);
            items.push(atom + &self.repetition()?);
        }
        // An empty alternative matches nothing.
        Ok(if items.is_empty() { "\"\"".to_string() } else { items.join(" ") })
    }

    fn repetition(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(c @ ('*' | '+' | '?')) => {
                self.i += 1;
                Ok(c.to_string())
            }
            Some('{') => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != '}') {
                    self.i += 1;
                }
                if self.peek() != Some('}') {
                    return Err(self.error("'}'"));
                }
                self.i += 1;
                let inner: String = self.s[start + 1..self.i - 1].iter().filter(|c| !c.is_whitespace()).collect();
                let ok = !inner.is_empty() && inner.split(',').count() <= 2 && inner.chars().all(|c| c.is_ascii_digit() || c == ',');
                if !ok || inner.starts_with(',') {
                    return Err(format!("GBNF: bad repetition {{{inner}}}"));
                }
                Ok(format!("{{{inner}}}"))
            }
            _ => Ok(String::new()),
        }
    }

    /// One character of a literal or class, escapes decoded.
    fn char_in(&mut self, what: &str) -> Result<char, String> {
        let c = self.peek().ok_or_else(|| self.error(what))?;
        self.i += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().ok_or_else(|| self.error("an escape"))?;
        self.i += 1;
        let hex = |p: &mut Parser, n: usize| -> Result<char, String> {
            let digits: String = p.s.get(p.i..p.i + n).map(|d| d.iter().collect()).unwrap_or_default();
            p.i += n;
            u32::from_str_radix(&digits, 16).ok().and_then(char::from_u32).ok_or_else(|| format!("GBNF: bad escape \\{e}{digits}"))
        };
        Ok(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            other => other,
        })
    }

    fn literal(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("a closing '\"'")),
                Some('"') => {
                    self.i += 1;
                    break;
                }
                _ => text.push(self.char_in("a literal")?),
            }
        }
        Ok(serde_json::Value::String(text).to_string())
    }

    fn class(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut re = String::from("[");
        if self.peek() == Some('^') {
            self.i += 1;
            re.push('^');
        }
        let mut first = true;
        loop {
            match self.peek() {
                None => return Err(self.error("a closing ']'")),
                Some(']') if !first => {
                    self.i += 1;
                    break;
                }
                _ => {}
            }
            first = false;
            let lo = self.char_in("a class")?;
            re.push_str(&class_char(lo));
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&c| c != ']') {
                self.i += 1;
                let hi = self.char_in("a range end")?;
                re.push('-');
                re.push_str(&class_char(hi));
            }
        }
        re.push(']');
        Ok(format!("/{re}/"))
    }
}

/// A character inside a regex class between `/` delimiters.
fn class_char(c: char) -> String {
    match c {
        '\\' | ']' | '[' | '^' | '-' | '/' | '&' | '~' => format!("\\{c}"),
        c if c.is_ascii_graphic() || c == ' ' => c.to_string(),
        c => format!("\\x{{{:X}}}", c as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_rules_literals_classes_and_repeats() {
        let g = r#"
# a comment
root   ::= "{" ws item ("," ws item)* "}"   # trailing comment
item   ::= [a-z]+ | "\"q\"" | num-val
num-val ::= [0-9]{1,3} [^\x00-\x1F"\\]?
ws ::= | " " | "\n" [ \t]{0,4}
"#;
        let lark = to_lark(g).unwrap();
        assert!(lark.contains(r#"g_root: "{" g_ws g_item ("," g_ws g_item)* "}""#), "{lark}");
        assert!(lark.contains(r#"g_item: /[a-z]/+ | "\"q\"" | g_num_val"#), "{lark}");
        assert!(lark.contains(r#"g_num_val: /[0-9]/{1,3} /[^\x{0}-\x{1F}"\\]/?"#), "{lark}");
        assert!(lark.contains(r#"g_ws: "" | " " | "\n" /[ \x{9}]/{0,4}"#), "{lark}");
        assert!(lark.ends_with("start: g_root\n"));
    }

    /// A JSON grammar laid out as llama.cpp's bundled ones are (tests/json-layout.gbnf): rule
    /// bodies on the next line, nested groups over several lines.
    #[test]
    fn multi_line_grammars_translate() {
        let g = include_str!("../tests/json-layout.gbnf");
        let lark = to_lark(g).unwrap();
        assert!(lark.contains("g_obj: \"{\" g_sp (g_member (\",\" g_sp g_member)*)? \"}\" g_sp\n"), "{lark}");
        assert!(lark.contains("g_num: \"-\"? (\"0\" | /[1-9]/ /[0-9]/{0,15}) (\".\" /[0-9]/+)?"), "{lark}");
        assert_eq!(to_lark("root ::= [0-9] +").unwrap(), "g_root: /[0-9]/+\nstart: g_root\n");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let g = format!("root ::= {}\"a\"{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(to_lark(&g).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn bad_grammars_are_errors() {
        for (g, want) in [
            ("item ::= \"a\"", "no 'root'"),
            ("root ::= \"a", "closing '\"'"),
            ("root ::= [a-z", "closing ']'"),
            ("root ::= (\"a\"", "')'"),
            ("root = \"a\"", "'::='"),
            ("root ::= \"a\"{2,x}", "bad repetition"),
            ("root ::= <think>", "not supported"),
        ] {
            let e = to_lark(g).unwrap_err();
            assert!(e.contains(want), "{g}: {e}");
        }
    }
}
