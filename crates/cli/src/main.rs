//! `tandem`: local LLM inference on GGUF models, with llama.cpp's flag names.

mod commands;
mod engines;
mod load;
mod sampling;
mod text_out;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tandem", version, about = "Local LLM inference on GGUF models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt.
    Run(commands::run::Args),
    /// Print the tokens of a text.
    Tokenize(commands::tokenize::Args),
    /// Measure perplexity over a text file (llama.cpp's method).
    Perplexity(commands::perplexity::Args),
    /// Show a model's metadata and tensors.
    Info(commands::info::Args),
    /// Write a GGUF model with random weights of any shape.
    GenModel(commands::gen_model::Args),
    /// Benchmark prompt processing and generation (llama-bench's tests and table).
    Bench(commands::bench::Args),
    /// Time each engine on a model's matmul shapes and store the crossovers.
    Calibrate(commands::calibrate::Args),
    /// Serve the OpenAI-compatible HTTP API (chat, completions, models, tokenize, metrics).
    Serve(commands::serve::Args),
    /// Chat with a model in the terminal, with its chat template.
    Chat(commands::chat::Args),
}

/// llama.cpp's multi-letter flags written with one dash (`-np 4`, `-fa`), which clap would
/// read as a short flag and its value, in their long forms.
fn llama_style_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG: [(&str, &str); 6] = [
        ("-np", "--parallel"),
        ("-fa", "--flash-attn"),
        ("-ncmoe", "--n-cpu-moe"),
        ("-cmoe", "--cpu-moe"),
        ("-cram", "--cache-ram"),
        ("-ngl", "--n-gpu-layers"),
    ];
    args.map(|a| match LONG.iter().find(|(short, _)| a == *short) {
        Some((_, long)) => long.into(),
        None => a,
    })
    .collect()
}

fn main() {
    let cli = Cli::parse_from(llama_style_args(std::env::args_os()));
    let result = match cli.command {
        Command::Run(a) => commands::run::main(a),
        Command::Tokenize(a) => commands::tokenize::main(a),
        Command::Perplexity(a) => commands::perplexity::main(a),
        Command::Info(a) => commands::info::main(a),
        Command::GenModel(a) => commands::gen_model::main(a),
        Command::Bench(a) => commands::bench::main(a),
        Command::Calibrate(a) => commands::calibrate::main(a),
        Command::Serve(a) => commands::serve::main(a),
        Command::Chat(a) => commands::chat::main(a),
    };
    if let Err(e) = result {
        // One line: the error and its causes.
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
