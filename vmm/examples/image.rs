//! Image tool until `bottle image` exists:
//!   image tiny [--guest BIN]                  build the tiny initramfs, print its path
//!   image debian --guest BIN [--name N] [--claude] [--erofs] [--package P]...
//!   image ls | image rm NAME | image export NAME

use std::path::PathBuf;

use bottle_vmm::image::{self, DebianOpts, ImageStore, RootFormat};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| args.windows(2).find(|w| w[0] == f).map(|w| w[1].clone());
    let values = |f: &str| {
        args.windows(2)
            .filter(|w| w[0] == f)
            .map(|w| w[1].clone())
            .collect::<Vec<_>>()
    };
    match args.first().map(String::as_str) {
        Some("tiny") => {
            let g = value("--guest").map(PathBuf::from);
            println!("{}", image::ensure_tiny(g.as_deref())?.display());
        }
        Some("debian") => {
            let guest = PathBuf::from(
                value("--guest").ok_or_else(|| anyhow::anyhow!("--guest BIN is required"))?,
            );
            let opts = DebianOpts {
                name: value("--name").unwrap_or_else(|| "debian".into()),
                claude: flag("--claude"),
                format: if flag("--erofs") {
                    RootFormat::Erofs
                } else {
                    RootFormat::Ext4
                },
                extra_packages: values("--package"),
                ..DebianOpts::default()
            };
            let t = std::time::Instant::now();
            let dir = image::build_debian(&opts, &guest, &mut |line| eprintln!("  {line}"))?;
            eprintln!("took {:.1}s", t.elapsed().as_secs_f64());
            println!("{}", dir.display());
        }
        Some("ls") => {
            for i in ImageStore::open().list()? {
                println!(
                    "{:<12} {:<16} {:>8} MiB  {}",
                    i.name,
                    i.key,
                    i.size_bytes >> 20,
                    i.dir.display()
                );
            }
        }
        Some("rm") => {
            let n = value("rm").ok_or_else(|| anyhow::anyhow!("rm NAME"))?;
            println!("removed {}", ImageStore::open().remove(&n)?);
        }
        Some("export") => {
            let n = value("export").ok_or_else(|| anyhow::anyhow!("export NAME"))?;
            let dir = ImageStore::open()
                .list()?
                .into_iter()
                .find(|i| i.name == n)
                .ok_or_else(|| anyhow::anyhow!("no image {n}"))?
                .dir;
            println!("{}", image::export_rootfs_tar(&dir)?.display());
        }
        _ => anyhow::bail!("usage: image tiny|debian|ls|rm NAME|export NAME"),
    }
    Ok(())
}
