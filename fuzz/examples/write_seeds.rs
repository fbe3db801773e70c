//! Writes the seed corpus of `emudev_fuzz::seeds` as files, one per seed, into
//! `<dir>/wire_decode/` and `<dir>/wire_reply/` (default `<dir>`: `corpus`, the directory
//! `cargo fuzz run` reads and which git ignores).
//!
//! `cargo run --example write_seeds [-- DIR]` in `fuzz/`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for s in emudev_fuzz::seeds::requests() {
        files.push((
            dir.join("wire_decode").join(format!("seed_{}", s.name)),
            s.fuzz_input(),
        ));
    }
    for s in emudev_fuzz::seeds::replies() {
        files.push((
            dir.join("wire_reply").join(format!("seed_{}", s.name)),
            s.fuzz_input(),
        ));
    }
    for (path, bytes) in &files {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, bytes));
        if let Err(e) = written {
            eprintln!("write_seeds: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("write_seeds: {} files under {}", files.len(), dir.display());
    ExitCode::SUCCESS
}
