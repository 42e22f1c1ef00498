//! The kernels' source is assembled at compile time from CUDA text and the codebooks of
//! `quant::tables`, rendered as `__constant__` arrays (one copy of the data for CPU and GPU).

/// A piece of the kernels' source (`kernels::SOURCE`): CUDA text, or a table rendered as
/// `__constant__ DECL = {..};`.
pub(crate) enum Part {
    Text(&'static str),
    Table(&'static str, Vals),
}

/// A table's values.
pub(crate) enum Vals {
    I8(&'static [i8]),
    U8(&'static [u8]),
    U64(&'static [u64]),
}

/// Writes `parts` into `out` (when it is long enough; `&mut []` only counts) and returns
/// the length: a const fn, so the text is built by the compiler.
pub(crate) const fn render(parts: &[Part], out: &mut [u8]) -> usize {
    const fn put(out: &mut [u8], pos: usize, s: &[u8]) -> usize {
        let mut i = 0;
        while i < s.len() {
            if pos + i < out.len() {
                out[pos + i] = s[i];
            }
            i += 1;
        }
        pos + s.len()
    }
    const fn num(out: &mut [u8], pos: usize, v: i128) -> usize {
        let mut digits = [0u8; 40];
        let (mut n, mut len) = (v.unsigned_abs(), 0);
        loop {
            digits[39 - len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let pos = if v < 0 { put(out, pos, b"-") } else { pos };
        put(out, pos, digits.split_at(40 - len).1)
    }
    let mut pos = 0;
    let mut p = 0;
    while p < parts.len() {
        match parts[p] {
            Part::Text(t) => pos = put(out, pos, t.as_bytes()),
            Part::Table(decl, ref vals) => {
                pos = put(out, pos, b"__constant__ ");
                pos = put(out, pos, decl.as_bytes());
                pos = put(out, pos, b" = {");
                let n = match *vals {
                    Vals::I8(v) => v.len(),
                    Vals::U8(v) => v.len(),
                    Vals::U64(v) => v.len(),
                };
                let mut i = 0;
                while i < n {
                    pos = match *vals {
                        Vals::I8(v) => num(out, pos, v[i] as i128),
                        Vals::U8(v) => num(out, pos, v[i] as i128),
                        Vals::U64(v) => {
                            let end = num(out, pos, v[i] as i128);
                            put(out, end, b"ull")
                        }
                    };
                    pos = put(out, pos, b",");
                    i += 1;
                }
                pos = put(out, pos, b"};\n");
            }
        }
        p += 1;
    }
    pos
}
