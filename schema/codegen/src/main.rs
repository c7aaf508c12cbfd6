//! Regenerates the Rust code kept in `schema/src/generated/` from `schema/*.capnp`,
//! or, with `--check`, fails if the kept code differs from what the schema generates.
//!
//! Building engram never needs the `capnp` compiler: the generated code is committed.
//! Only this tool does (Debian: `apt-get install capnproto libcapnp-dev`).
//!
//! ```text
//! cargo run -p engram-schema-codegen            # rewrite schema/src/generated/
//! cargo run -p engram-schema-codegen -- --check # exit 1 if it is out of date
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The schema files, relative to `schema/`, and the generated file each one produces.
const SCHEMAS: &[(&str, &str)] = &[("engram.capnp", "engram_capnp.rs")];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen lives inside schema/")
        .to_path_buf()
}

/// Runs the capnp compiler with the Rust plugin into `output`.
fn generate(output: &Path) -> Result<(), String> {
    let schema = schema_dir();
    let mut command = capnpc::CompilerCommand::new();
    command.src_prefix(&schema).output_path(output);
    for (file, _) in SCHEMAS {
        command.file(schema.join(file));
    }
    command
        .run()
        .map_err(|error| format!("capnp compile failed (is the `capnp` tool installed?): {error}"))
}

fn run(check: bool) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|error| format!("temporary directory: {error}"))?;
    generate(scratch.path())?;
    let kept_dir = schema_dir().join("src").join("generated");
    let mut stale = Vec::new();
    for (_, generated) in SCHEMAS {
        let fresh = std::fs::read(scratch.path().join(generated))
            .map_err(|error| format!("reading generated {generated}: {error}"))?;
        let kept_path = kept_dir.join(generated);
        let kept = std::fs::read(&kept_path).unwrap_or_default();
        if fresh != kept {
            if check {
                stale.push(kept_path.display().to_string());
            } else {
                std::fs::create_dir_all(&kept_dir)
                    .map_err(|error| format!("creating {}: {error}", kept_dir.display()))?;
                std::fs::write(&kept_path, fresh)
                    .map_err(|error| format!("writing {}: {error}", kept_path.display()))?;
                println!("regenerated {}", kept_path.display());
            }
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "generated code is out of date with the schema: {}; run `cargo run -p engram-schema-codegen` and commit the result",
            stale.join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!(
                "engram-schema-codegen: unknown argument {other:?}; usage: engram-schema-codegen [--check]"
            );
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("engram-schema-codegen: {message}");
            ExitCode::FAILURE
        }
    }
}
