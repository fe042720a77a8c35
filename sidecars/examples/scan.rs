//! Scan every file under a directory with the built-in rules and print the
//! finding count and throughput.
//!
//! `cargo run --release -p bottle-sidecars --example scan -- DIR [--list]`
//!
//! `--list` also prints one `path:line:rule_id:redacted` line per finding
//! (used by `bench/scanner.sh` to count recall). Single-threaded; the MB/s
//! figure counts scanning only, `wall` includes reading the files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bottle_sidecars::scanner::Scanner;

fn main() -> ExitCode {
    let mut dir = None;
    let mut list = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--list" => list = true,
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => return usage(),
        }
    }
    let Some(dir) = dir else { return usage() };
    let scanner = match Scanner::builtin() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scan: built-in rules refused: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wall = Instant::now();
    let mut files = Vec::new();
    if let Err(e) = walk(&dir, &mut files) {
        eprintln!("scan: cannot list {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    files.sort();
    let (mut bytes, mut findings, mut busy) = (0usize, 0usize, Duration::ZERO);
    for path in &files {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("scan: skipping {}: {e}", path.display());
                continue;
            }
        };
        let t = Instant::now();
        let found = scanner.scan(&data);
        busy += t.elapsed();
        bytes += data.len();
        findings += found.len();
        if list {
            for f in &found {
                println!("{}:{}:{}:{}", path.display(), f.line, f.rule_id, f.redacted);
            }
        }
    }
    #[allow(clippy::cast_precision_loss)] // a throughput figure
    let mb = bytes as f64 / 1e6;
    println!(
        "files={} bytes={bytes} findings={findings} scan_secs={:.3} wall_secs={:.3} MBps={:.2}",
        files.len(),
        busy.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        mb / busy.as_secs_f64().max(1e-9),
    );
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: scan DIR [--list]");
    ExitCode::from(2)
}

/// Regular files under `dir`, not following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}
