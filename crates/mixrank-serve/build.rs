//! Compiles proto/mixrank.proto with protox (pure Rust; no protoc needed) and
//! generates the prost messages and tonic service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mixrank.proto");
    let fds = protox::compile(["proto/mixrank.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
