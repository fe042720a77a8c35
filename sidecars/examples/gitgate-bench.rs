//! Serve a git-gate on a TCP port for `bench/gitgate.sh`.
//!
//! `gitgate-bench <mirrors_dir> <listen addr> <hook binary> <identity file>
//! <host key file> <name>=<upstream url>...` — prints `listening <addr>` and
//! serves until killed.

use std::process::ExitCode;

use bottle_sidecars::gitgate::{serve_tcp, GitGate, GitGateConfig};
use bottle_sidecars::policy::GitRemote;
use bottle_sidecars::scanner::Scanner;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gitgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mirrors, listen, hook, identity, host_key_file, remotes @ ..] = args.as_slice() else {
        return Err(
            "usage: gitgate-bench MIRRORS ADDR HOOK IDENTITY HOST_KEY_FILE NAME=URL...".into(),
        );
    };
    let host_key =
        std::fs::read_to_string(host_key_file).map_err(|e| format!("{host_key_file}: {e}"))?;
    let remotes = remotes
        .iter()
        .map(|spec| {
            let (name, url) = spec
                .split_once('=')
                .ok_or(format!("`{spec}` is not NAME=URL"))?;
            Ok(GitRemote {
                name: name.into(),
                upstream: url.into(),
                identity_file: Some(identity.into()),
                known_host_key: host_key.trim().into(),
                extra_hosts: Default::default(),
                allow_force_push: false,
                allow_non_commit_refs: false,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let config = GitGateConfig {
        mirrors_dir: mirrors.into(),
        remotes,
        hook_command: vec![hook.clone()],
        audit: None,
    };
    let scanner = Scanner::builtin().map_err(|e| e.to_string())?;
    let gate = GitGate::new(config, scanner).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening {addr}");
        serve_tcp(gate, listener).await;
        Ok(())
    })
}
