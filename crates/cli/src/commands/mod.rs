//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod chat;
pub mod gen_model;
pub mod info;
pub mod perplexity;
pub mod run;
pub mod sweep;
pub mod serve;
pub mod tokenize;
