//! Generated text streamed to stdout, piece by piece, by `run` and `chat`.

use std::io::{ErrorKind, Write};

/// Writes each piece and flushes it; the first write error stops the generation and is kept.
pub struct TextOut<W: Write> {
    out: W,
    error: Option<std::io::Error>,
}

impl<W: Write> TextOut<W> {
    /// Stream to `out`.
    pub fn new(out: W) -> Self {
        TextOut { out, error: None }
    }

    /// Write a piece; false (stop generating) once a write has failed.
    pub fn write(&mut self, text: &str) -> bool {
        match self.out.write_all(text.as_bytes()).and_then(|_| self.out.flush()) {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// End the text with a newline. `Ok(false)` when the reader went away (a closed pipe,
    /// `| head`: not an error), any other write error as the error.
    pub fn finish(mut self) -> std::io::Result<bool> {
        let _ = writeln!(self.out);
        let _ = self.out.flush();
        match self.error {
            None => Ok(true),
            Some(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
            Some(e) => Err(e),
        }
    }
}
