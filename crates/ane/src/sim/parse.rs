//! Parser of the MIL text dialect (§3), independent of the writer in [`crate::mil`]:
//! it reads what any program in the dialect says, with line numbers in every error.

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// fp16.
    Fp16,
    /// fp32.
    Fp32,
    /// int32.
    Int32,
    /// int8 (weights dequantized by a constexpr op).
    Int8,
    /// uint64.
    Uint64,
    /// bool.
    Bool,
    /// string.
    Str,
}

impl DType {
    fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "fp16" => DType::Fp16,
            "fp32" => DType::Fp32,
            "int32" => DType::Int32,
            "int8" => DType::Int8,
            "uint64" => DType::Uint64,
            "bool" => DType::Bool,
            "string" => DType::Str,
            _ => return None,
        })
    }
}

/// A declared type: a scalar or a tensor with a static shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// Scalar.
    Scalar(DType),
    /// Tensor.
    Tensor(DType, Vec<usize>),
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `string("…")`.
    Str(String),
    /// An integer scalar (`int32`, `uint64`).
    Int(i64),
    /// A float scalar (`fp16`, `fp32`).
    Float(f64),
    /// `bool(…)`.
    Bool(bool),
    /// `tensor<T, [n]>([…])` of numbers.
    List(Ty, Vec<f64>),
    /// `tensor<T, shape>(BLOBFILE(path=…, offset=…))`.
    Blob(Ty, String, u64),
}

/// An argument: a value name or an inline literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Reference to a value.
    Name(String),
    /// Inline literal.
    Lit(Lit),
}

/// `TYPE out = op(args)[attrs];`
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    /// Declared type of the result.
    pub ty: Ty,
    /// Result name.
    pub out: String,
    /// Operation.
    pub op: String,
    /// Keyword arguments.
    pub args: Vec<(String, Arg)>,
    /// Bracketed attributes (name, val).
    pub attrs: Vec<(String, Lit)>,
    /// Source line.
    pub line: usize,
}

/// A function.
#[derive(Debug, Clone, PartialEq)]
pub struct Func {
    /// Name.
    pub name: String,
    /// Opset in angle brackets.
    pub opset: String,
    /// Typed inputs.
    pub inputs: Vec<(Ty, String)>,
    /// Statements.
    pub body: Vec<Stmt>,
    /// Returned names.
    pub outputs: Vec<String>,
    /// Source line.
    pub line: usize,
}

/// A program.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// `program(VERSION)`.
    pub version: String,
    /// buildInfo entries.
    pub build_info: Vec<(String, String)>,
    /// Functions.
    pub funcs: Vec<Func>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    Punct(char),
    Arrow,
}

struct Lexer {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, String> {
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '-' && b.get(i + 1) == Some(&'>') {
            out.push((Tok::Arrow, line));
            i += 2;
        } else if c == '"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\n' {
                    return Err(format!("line {line}: unterminated string"));
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(format!("line {line}: unterminated string"));
            }
            out.push((Tok::Str(b[start..i].iter().collect()), line));
            i += 1;
        } else if c.is_ascii_digit() || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == '.')) {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.' || ((b[i] == '-' || b[i] == '+') && matches!(b[i - 1], 'e' | 'E' | 'p' | 'P'))) {
                i += 1;
            }
            out.push((Tok::Num(b[start..i].iter().collect()), line));
        } else if c.is_alphabetic() || c == '_' || c == '@' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '@') {
                i += 1;
            }
            out.push((Tok::Ident(b[start..i].iter().collect()), line));
        } else if "()[]{}<>,=;".contains(c) {
            out.push((Tok::Punct(c), line));
            i += 1;
        } else {
            return Err(format!("line {line}: unexpected character '{c}'"));
        }
    }
    Ok(out)
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "end of text".into(),
        Some(Tok::Ident(s)) => format!("'{s}'"),
        Some(Tok::Num(s)) => format!("number {s}"),
        Some(Tok::Str(s)) => format!("string \"{s}\""),
        Some(Tok::Punct(c)) => format!("'{c}'"),
        Some(Tok::Arrow) => "'->'".into(),
    }
}

fn number(s: &str, line: usize) -> Result<f64, String> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("-0x")) {
        // C99 hex float: 0x1.8p+3.
        let neg = s.starts_with('-');
        let (mant, exp) = hex.split_once(['p', 'P']).unwrap_or((hex, "0"));
        let (ip, fp) = mant.split_once('.').unwrap_or((mant, ""));
        let mut v = u64::from_str_radix(if ip.is_empty() { "0" } else { ip }, 16).map_err(|_| format!("line {line}: bad number {s}"))? as f64;
        for (k, d) in fp.chars().enumerate() {
            v += d.to_digit(16).ok_or_else(|| format!("line {line}: bad number {s}"))? as f64 / 16f64.powi(k as i32 + 1);
        }
        let e: i32 = exp.parse().map_err(|_| format!("line {line}: bad number {s}"))?;
        return Ok(if neg { -v } else { v } * 2f64.powi(e));
    }
    s.parse().map_err(|_| format!("line {line}: bad number {s}"))
}

impl Lexer {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn line(&self) -> usize {
        self.toks.get(self.pos).or(self.toks.last()).map_or(1, |t| t.1)
    }
    fn err<T>(&self, want: &str) -> Result<T, String> {
        Err(format!("line {}: expected {want}, found {}", self.line(), describe(self.peek())))
    }
    fn punct(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(&format!("'{c}'"))
        }
    }
    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(c));
        self.pos += hit as usize;
        hit
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.err("a name"),
        }
    }
    fn keyword(&mut self, k: &str) -> Result<(), String> {
        match self.peek() {
            Some(Tok::Ident(s)) if s == k => {
                self.pos += 1;
                Ok(())
            }
            _ => self.err(&format!("'{k}'")),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.err("a string"),
        }
    }
    fn num(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(Tok::Num(s)) => {
                let (s, line) = (s.clone(), self.line());
                self.pos += 1;
                number(&s, line)
            }
            _ => self.err("a number"),
        }
    }

    /// `fp16` or `tensor<fp16, [1, 2]>`.
    fn ty(&mut self) -> Result<Ty, String> {
        let name = self.ident()?;
        if name == "tensor" {
            self.punct('<')?;
            let d = self.ident()?;
            let dt = DType::parse(&d).ok_or_else(|| format!("line {}: unknown element type {d}", self.line()))?;
            self.punct(',')?;
            self.punct('[')?;
            let mut shape = Vec::new();
            while !self.eat(']') {
                let v = self.num()?;
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(format!("line {}: dimension {v} is not a natural number", self.line()));
                }
                shape.push(v as usize);
                if !self.eat(',') {
                    self.punct(']')?;
                    break;
                }
            }
            self.punct('>')?;
            return Ok(Ty::Tensor(dt, shape));
        }
        DType::parse(&name).map(Ty::Scalar).ok_or_else(|| format!("line {}: unknown type {name}", self.line()))
    }

    /// A typed literal: `string("x")`, `int32(1)`, `tensor<…>([…])`, `tensor<…>(BLOBFILE(…))`.
    fn lit(&mut self) -> Result<Lit, String> {
        let ty = self.ty()?;
        self.punct('(')?;
        let lit = match &ty {
            Ty::Scalar(DType::Str) => Lit::Str(self.string()?),
            Ty::Scalar(DType::Bool) => match self.ident()?.as_str() {
                "true" => Lit::Bool(true),
                "false" => Lit::Bool(false),
                o => return Err(format!("line {}: bool literal {o}", self.line())),
            },
            Ty::Scalar(DType::Int32 | DType::Uint64) => Lit::Int(self.num()? as i64),
            Ty::Scalar(_) => Lit::Float(self.num()?),
            Ty::Tensor(..) if self.peek() == Some(&Tok::Ident("BLOBFILE".into())) => {
                self.pos += 1;
                self.punct('(')?;
                let (mut path, mut offset) = (None, None);
                while !self.eat(')') {
                    let k = self.ident()?;
                    self.punct('=')?;
                    match (k.as_str(), self.lit()?) {
                        ("path", Lit::Str(s)) => path = Some(s),
                        ("offset", Lit::Int(o)) if o >= 0 => offset = Some(o as u64),
                        (k, v) => return Err(format!("line {}: BLOBFILE argument {k} = {v:?}", self.line())),
                    }
                    self.eat(',');
                }
                match (path, offset) {
                    (Some(p), Some(o)) => Lit::Blob(ty.clone(), p, o),
                    _ => return Err(format!("line {}: BLOBFILE needs path and offset", self.line())),
                }
            }
            Ty::Tensor(..) => {
                self.punct('[')?;
                let mut v = Vec::new();
                while !self.eat(']') {
                    v.push(match self.peek() {
                        Some(Tok::Ident(b)) if b == "true" || b == "false" => {
                            let t = b == "true";
                            self.pos += 1;
                            t as i32 as f64
                        }
                        _ => self.num()?,
                    });
                    if !self.eat(',') {
                        self.punct(']')?;
                        break;
                    }
                }
                Lit::List(ty.clone(), v)
            }
        };
        self.punct(')')?;
        Ok(lit)
    }

    fn arg(&mut self) -> Result<Arg, String> {
        // A literal starts with a type name followed by '(' or '<'.
        let is_lit = matches!(self.peek(), Some(Tok::Ident(s)) if s == "tensor" || DType::parse(s).is_some())
            && matches!(self.toks.get(self.pos + 1).map(|t| &t.0), Some(Tok::Punct('(' | '<')));
        if is_lit {
            Ok(Arg::Lit(self.lit()?))
        } else {
            Ok(Arg::Name(self.ident()?))
        }
    }

    fn stmt(&mut self) -> Result<Stmt, String> {
        let line = self.line();
        let ty = self.ty()?;
        let out = self.ident()?;
        self.punct('=')?;
        let op = self.ident()?;
        self.punct('(')?;
        let mut args = Vec::new();
        while !self.eat(')') {
            let k = self.ident()?;
            self.punct('=')?;
            if args.iter().any(|(a, _): &(String, Arg)| *a == k) {
                return Err(format!("line {line}: argument {k} given twice"));
            }
            args.push((k, self.arg()?));
            if !self.eat(',') {
                self.punct(')')?;
                break;
            }
        }
        let mut attrs = Vec::new();
        if self.eat('[') {
            while !self.eat(']') {
                let k = self.ident()?;
                self.punct('=')?;
                attrs.push((k, self.lit()?));
                if !self.eat(',') {
                    self.punct(']')?;
                    break;
                }
            }
        }
        self.punct(';')?;
        Ok(Stmt { ty, out, op, args, attrs, line })
    }

    fn func(&mut self) -> Result<Func, String> {
        let line = self.line();
        self.keyword("func")?;
        let name = self.ident()?;
        self.punct('<')?;
        let opset = self.ident()?;
        self.punct('>')?;
        self.punct('(')?;
        let mut inputs = Vec::new();
        while !self.eat(')') {
            let ty = self.ty()?;
            inputs.push((ty, self.ident()?));
            if !self.eat(',') {
                self.punct(')')?;
                break;
            }
        }
        self.punct('{')?;
        let mut body = Vec::new();
        while !self.eat('}') {
            body.push(self.stmt()?);
        }
        if self.peek() != Some(&Tok::Arrow) {
            return self.err("'->' and the outputs");
        }
        self.pos += 1;
        self.punct('(')?;
        let mut outputs = Vec::new();
        while !self.eat(')') {
            outputs.push(self.ident()?);
            if !self.eat(',') {
                self.punct(')')?;
                break;
            }
        }
        self.punct(';')?;
        Ok(Func { name, opset, inputs, body, outputs, line })
    }
}

/// Parse a whole program.
pub fn parse(src: &str) -> Result<Program, String> {
    let mut p = Lexer { toks: lex(src)?, pos: 0 };
    p.keyword("program")?;
    p.punct('(')?;
    let version = match p.peek() {
        Some(Tok::Num(s)) => s.clone(),
        _ => return p.err("a version"),
    };
    p.pos += 1;
    p.punct(')')?;
    let mut build_info = Vec::new();
    if p.eat('[') {
        p.keyword("buildInfo")?;
        p.punct('=')?;
        // dict<string, string>({{"k", "v"}, ...})
        p.keyword("dict")?;
        p.punct('<')?;
        p.keyword("string")?;
        p.punct(',')?;
        p.keyword("string")?;
        p.punct('>')?;
        p.punct('(')?;
        p.punct('{')?;
        while !p.eat('}') {
            p.punct('{')?;
            let k = p.string()?;
            p.punct(',')?;
            let v = p.string()?;
            p.punct('}')?;
            build_info.push((k, v));
            p.eat(',');
        }
        p.punct(')')?;
        p.punct(']')?;
    }
    p.punct('{')?;
    let mut funcs = Vec::new();
    while !p.eat('}') {
        funcs.push(p.func()?);
    }
    if p.peek().is_some() {
        return p.err("end of text after the program");
    }
    Ok(Program { version, build_info, funcs })
}
