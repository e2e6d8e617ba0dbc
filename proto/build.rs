//! Compiles the agent protocol. Needs protoc: `cargo xtask ...` exports a vendored one as
//! PROTOC; otherwise install Debian's protobuf-compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/mcpfier/agent/v1/agent.proto"], &["proto"])?;
    Ok(())
}
