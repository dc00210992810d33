//! Compiles the sync protocol with protox (pure Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sync.proto");
    let fds = protox::compile(["proto/sync.proto"], ["proto"])?;
    // The server side is hand-written (`server.rs`): it sends messages encoded once.
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
