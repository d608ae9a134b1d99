//! Compiles `crates/mixrank-serve/proto/mixrank.proto` with protox (pure Rust, no
//! protoc), generates the prost messages and tonic client/server with
//! tonic-prost-build, and writes them to `crates/mixrank-serve/src/proto/mixrank.v1.rs`
//! behind a first line that records the .proto's xxh3-64 (checked by mixrank-serve's
//! `generated_proto_code_is_current` test). Written to a temporary name, then renamed.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/mixrank-serve");
    let proto = serve.join("proto/mixrank.proto");
    let out_dir = std::env::temp_dir().join(format!("mixrank-protogen-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let fds = protox::compile([&proto], [serve.join("proto")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_fds(fds)?;
    let generated = std::fs::read_to_string(out_dir.join("mixrank.v1.rs"))?;
    let hash = xxhash_rust::xxh3::xxh3_64(&std::fs::read(&proto)?);
    let text = format!(
        "// Generated from proto/mixrank.proto by tools/protogen; do not edit. proto xxh3-64: {hash:016x}\n{generated}"
    );
    let dest = serve.join("src/proto/mixrank.v1.rs");
    let tmp = dest.with_extension("rs.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &dest)?;
    std::fs::remove_dir_all(&out_dir)?;
    println!("wrote {}", dest.display());
    Ok(())
}
