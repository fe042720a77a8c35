//! Bare engine boot timing: boots the tiny image (or a root image) to the
//! ready marker N times with no bottle around it and prints each time and
//! the median.
//!
//! cargo run -p bottle-vmm --release --example boot -- [--runs N]
//!     [--engine qemu|libkrun] [--accel tcg|kvm] [--root IMG] [--guest BIN]
//!     [--cmdline WORD]...

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bottle_vmm::probe::HoldingListener;
use bottle_vmm::{Accel, Engine, KrunEngine, MacAddr, QemuEngine, VmSpec};

fn main() -> anyhow::Result<()> {
    let mut runs = 20usize;
    let mut engine = "qemu".to_string();
    let mut accel = Accel::Tcg;
    let mut root: Option<PathBuf> = None;
    let mut guest: Option<PathBuf> = None;
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--runs" => runs = val()?.parse()?,
            "--engine" => engine = val()?,
            "--accel" => {
                accel = if val()? == "kvm" {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            "--root" => root = Some(std::fs::canonicalize(val()?)?),
            "--guest" => guest = Some(val()?.into()),
            "--cmdline" => extra.push(val()?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let kernel = bottle_vmm::kernel::locate()?;
    let initramfs = bottle_vmm::image::ensure_tiny(guest.as_deref())?;
    let eng: Box<dyn Engine> = match engine.as_str() {
        "libkrun" => Box::new(KrunEngine::new()),
        _ => Box::new(QemuEngine::new(accel)),
    };
    let mut times = Vec::new();
    let mut hangs = 0;
    for i in 0..runs {
        let dir = tempfile::tempdir()?;
        let spec = VmSpec {
            cpus: 1,
            memory_mib: 512,
            kernel: kernel.clone(),
            initramfs: initramfs.clone(),
            root_disk: root.clone(),
            boot: bottle_contract::BootConfig::default(),
            cmdline_extra: extra.clone(),
            net_socket: dir.path().join("net.sock"),
            agent_socket: dir.path().join("agent.sock"),
            console_log: dir.path().join("console.log"),
            guest_mac: MacAddr::local([0, 0, 0, 0, 2]),
        };
        let _n = HoldingListener::bind(&spec.net_socket)?;
        let _a = HoldingListener::bind(&spec.agent_socket)?;
        let start = Instant::now();
        let mut vm = eng.spawn(&spec)?;
        match bottle_vmm::wait_for_marker_or_exit(
            &mut vm,
            &spec.console_log,
            Duration::from_secs(60),
        ) {
            Ok(_) => {
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                eprintln!("run {i}: {ms:.0} ms");
                times.push(ms);
            }
            Err(e) => {
                hangs += 1;
                eprintln!(
                    "run {i}: {e}\n{}",
                    std::fs::read_to_string(&spec.console_log).unwrap_or_default()
                );
            }
        }
        vm.kill()?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    if times.is_empty() {
        anyhow::bail!("no run booted");
    }
    let p50 = times[times.len() / 2];
    println!(
        "runs: {} ok, {hangs} failed; min {:.0} ms, max {:.0} ms",
        times.len(),
        times[0],
        times[times.len() - 1]
    );
    println!(
        "bare {engine}-{} boot p50 ms: {p50:.0}",
        if engine == "libkrun" {
            "kvm"
        } else {
            accel.as_str()
        }
    );
    Ok(())
}
