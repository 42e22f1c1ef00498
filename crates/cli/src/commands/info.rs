//! `tandem info`: metadata and tensor table.

use crate::load;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let f = load::open_gguf(&a.model)?;
    let h = f.header();
    println!("file: {}", a.model.display());
    println!("GGUF version {}, {} metadata keys, {} tensors, data at offset {} (alignment {})",
        h.version, h.metadata.len(), h.tensors.len(), h.data_offset, h.alignment);
    println!();
    for (k, v) in f.metadata() {
        println!("{k:<45} {}", v.summary());
    }
    println!();
    println!("{:<40} {:<6} {:>24} {:>12}", "tensor", "type", "shape", "bytes");
    for t in f.tensors() {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        println!("{:<40} {:<6} {:>24} {:>12}", t.name, t.ty.name(), format!("[{}]", shape.join(", ")), t.n_bytes);
    }
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    println!();
    println!("{} parameters, {:.2} MiB of tensor data", params, total as f64 / (1 << 20) as f64);
    Ok(())
}
