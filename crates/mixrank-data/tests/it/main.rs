//! Integration tests of mixrank-data (one test binary for the crate).

mod bad_input;
mod config;
mod config_docs;
mod groups;
mod pipeline;
mod readers;
mod simulate;
mod util;
mod vocabulary;
