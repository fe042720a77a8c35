//! Images users define (`[bottles.NAME.image]`): Debian packages, setup
//! lines and files, layered on the cached Debian tree, one image for the
//! VM and Docker, found again by its definition, and a failed build that
//! leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const MANIFEST: &str = r#"
[bottles.py]
[bottles.py.image]
packages = ["python3", "python3-requests"]
setup = ["python3 -c 'import requests' && echo setup-ran > /etc/bottle-setup-ran"]
files = { "/etc/pip.conf" = "pip.conf" }

[bottles.py.docker]
runtime = "runc"

[agents.a]
bottle = "py"
copy_cwd = false
command = ["/bin/true"]
"#;

const CHECK: &str =
    "python3 -c 'import requests; print(\"requests-ok\")'; cat /etc/bottle-setup-ran /etc/pip.conf";

fn require_debian_base() -> bool {
    let list = stdout(
        &std::process::Command::new(env!("CARGO_BIN_EXE_bottle"))
            .args(["image", "ls"])
            .output()
            .unwrap(),
    );
    skip::require(
        list.lines().any(|l| l.starts_with("debian\t")),
        &format!("the debian image (whose cached tree user images build on) is not built; scripts/setup builds it:\n{list}"),
    ) && skip::require(skip::is_root(), "building images needs root (mmdebstrap, chroot)")
}

/// The key of the built `custom-py` image, from `bottle image ls`.
fn key_of(sb: &Sandbox, m: &std::path::Path) -> Option<String> {
    let out = sb
        .bottle()
        .arg("--manifest")
        .arg(m)
        .args(["image", "ls"])
        .output()
        .unwrap();
    stdout(&out)
        .lines()
        .find(|l| l.starts_with("custom-py\t") && l.contains("bottle py"))
        .and_then(|l| l.split('\t').nth(1))
        .map(str::to_string)
}

#[test]
fn a_bottles_own_image_builds_once_and_runs_on_the_vm_and_docker() {
    if !require_debian_base() || !require_vm() || !require_docker("runc") {
        return;
    }
    let sb = Sandbox::new();
    let _rm = ImageRmOnDrop("custom-py");
    std::fs::write(
        sb.dir.path().join("pip.conf"),
        "index-url = https://pypi.example/simple\n",
    )
    .unwrap();
    let m = sb.manifest(MANIFEST);
    let build = |sb: &Sandbox| {
        let out = sb
            .bottle()
            .arg("--manifest")
            .arg(&m)
            .args(["image", "build", "py"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    build(&sb);
    let key = key_of(&sb, &m).expect("the image is listed, used by bottle py");
    // A second build finds it by its definition.
    let started = std::time::Instant::now();
    assert!(build(&sb).contains("built custom-py"));
    assert!(
        started.elapsed().as_secs() < 30,
        "a cached image was rebuilt"
    );

    for backend in ["--vm", "--docker"] {
        let out = sb
            .bottle()
            .args(["run", backend, "--yes", "--manifest"])
            .arg(&m)
            .args(["a", "--", "/bin/sh", "-c", CHECK])
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{backend}: {text}{}", stderr(&out));
        assert_eq!(
            text, "requests-ok\nsetup-ran\nindex-url = https://pypi.example/simple\n",
            "{backend}"
        );
    }
    // Docker imported the same tree, tagged with the same key.
    let tags = std::process::Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "bottle-custom-py",
        ])
        .output()
        .unwrap();
    assert!(
        stdout(&tags).contains(&format!("bottle-custom-py:{key}")),
        "{}",
        stdout(&tags)
    );
    // The plan says which image and that it is the bottle's own.
    let plan = sb
        .bottle()
        .args(["plan", "--json", "--manifest"])
        .arg(&m)
        .arg("a")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["image"], "custom-py");
    assert_eq!(plan["custom_image"]["packages"][1], "python3-requests");
    // Removing the image removes Docker's copy too.
    let rm = sb
        .bottle()
        .args(["image", "rm", "custom-py"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(key_of(&sb, &m).is_none(), "still listed after rm");
    let tags = std::process::Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "bottle-custom-py",
        ])
        .output()
        .unwrap();
    assert!(
        !stdout(&tags).contains(&key),
        "Docker kept bottle-custom-py:{key}: {}",
        stdout(&tags)
    );
}

#[test]
fn an_unknown_package_fails_with_apts_message_and_leaves_nothing() {
    if !require_debian_base() {
        return;
    }
    let sb = Sandbox::new();
    let m = sb.manifest(
        "[bottles.bad]\nimage = { packages = [\"no-such-package-for-bottle\"] }\n[agents.a]\nbottle = \"bad\"\n",
    );
    let store = bottle_vmm::image::ImageStore::open();
    let before: Vec<_> = std::fs::read_dir(store.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let out = sb
        .bottle()
        .arg("--manifest")
        .arg(&m)
        .args(["image", "build", "bad"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Unable to locate package no-such-package-for-bottle"),
        "{err}"
    );
    let after: Vec<_> = std::fs::read_dir(store.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    // Only this image's entries: other tests may be building theirs.
    let new: Vec<_> = after
        .iter()
        .filter(|n| !before.contains(n) && n.to_string_lossy().contains("custom-bad"))
        .collect();
    assert!(new.is_empty(), "a failed build left {new:?} in the store");
    let base = store.root().join(".base");
    for e in std::fs::read_dir(&base).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".tmp") && !name.starts_with(".layer-"),
            "left {name} in {}",
            base.display()
        );
    }
}

#[test]
fn a_bad_definition_is_named_before_anything_is_built() {
    let sb = Sandbox::new();
    let m = sb.manifest_untrusted(
        "[bottles.b]\nimage = { packages = [\"-oops\"], files = { \"etc/x\" = \"x\" }, dockerfile = \"D\" }\n",
    );
    let out = sb
        .bottle()
        .arg("--manifest")
        .arg(&m)
        .args(["plan", "b"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bottles.b.image.dockerfile"), "{err}");
    let m = sb.manifest_untrusted(
        "[bottles.b]\nimage = { packages = [\"-oops\"], files = { \"etc/x\" = \"x\" } }\n[agents.a]\nbottle = \"b\"\n",
    );
    let out = sb
        .bottle()
        .arg("--manifest")
        .arg(&m)
        .args(["plan", "a"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("`-oops` is not a Debian package name"),
        "{err}"
    );
    assert!(
        err.contains("`etc/x` is not an absolute path in the image"),
        "{err}"
    );
}
