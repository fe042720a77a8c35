use super::*;
use std::io::Write;

const A: &str = "1111111111111111111111111111111111111111";
const Z: &str = "0000000000000000000000000000000000000000";
const AWS_KEY: &str = "AKIAZ7VRSQ5TJ2NXKQ4P";

#[test]
fn updates_parse_and_classify() {
    let u = parse_updates(&format!(
        "{Z} {A} refs/heads/new\n{A} {Z} refs/heads/gone\n"
    ))
    .unwrap();
    assert!(u[0].is_create() && !u[0].is_delete());
    assert!(u[1].is_delete());
}

#[test]
fn malformed_update_lines_are_refused() {
    for bad in [
        "x y z",
        &format!("{A} {A}"),
        &format!("{A} {A} HEAD"),
        &format!("{A} {A} refs/a b"),
    ] {
        assert!(parse_updates(bad).is_err(), "{bad}");
    }
}

/// A work repo; `GitRunner` over its `.git`.
struct Repo(tempfile::TempDir);

impl GitRunner for Repo {
    fn command(&self) -> Command {
        let mut c = crate::gitgate::mirror::git(&self.0.path().join(".git"));
        c.current_dir(self.0.path())
            .env("GIT_WORK_TREE", self.0.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t");
        c
    }
}

impl Repo {
    fn new() -> Self {
        let r = Repo(tempfile::tempdir().unwrap());
        let ok = crate::gitgate::mirror::git_plain()
            .args(["init", "-q", "--initial-branch", "main"])
            .arg(r.0.path())
            .status()
            .unwrap();
        assert!(ok.success());
        r
    }
    fn git(&self, args: &[&str]) -> String {
        self.git_in(args, b"")
    }
    fn git_in(&self, args: &[&str], input: &[u8]) -> String {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
    fn commit(&self, file: &str, content: &[u8], msg: &str) -> String {
        let path = self.0.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self.git(&["add", file]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
    /// Pretend everything reachable now is upstream (a ref to exclude).
    fn mark_upstream(&self, rev: &str) {
        self.git(&["update-ref", "refs/heads/upstream", rev]);
    }
}

fn options() -> ScanOptions {
    ScanOptions {
        remote: "app".into(),
        allow_non_commit_refs: true,
        max_blob_size: MAX_BLOB_SIZE,
    }
}

/// Scan the update of `name` from `old` to `new`, with `upstream` (the
/// only ref then) as what upstream already has.
fn scan_update(
    repo: &Repo,
    old: &str,
    new: &str,
    name: &str,
    options: &ScanOptions,
) -> Result<ScanReport, PushRefusal> {
    let u = RefUpdate {
        old: old.into(),
        new: new.into(),
        name: name.into(),
    };
    // Only refs/heads/upstream counts as upstream's.
    for r in repo.git(&["for-each-ref", "--format=%(refname)"]).lines() {
        if r != "refs/heads/upstream" {
            repo.git(&["update-ref", "-d", r]);
        }
    }
    let scanner = Scanner::builtin().unwrap();
    let peeled = peel_updates(repo, std::slice::from_ref(&u))?;
    check_targets(std::slice::from_ref(&u), &peeled, options)?;
    scan_updates(repo, &scanner, &[u], &peeled, options)
}

fn scan_range(repo: &Repo, old: &str, new: &str) -> Vec<PushFinding> {
    repo.mark_upstream(old);
    scan_update(repo, old, new, "refs/heads/main", &options())
        .unwrap()
        .findings
}

#[test]
fn added_lines_that_look_like_diff_headers_are_still_scanned() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"x\n", "base");
    let content = format!("++ b/fake\n+++ b/other\n\x01deadbeef\n@@ -1 +1 @@\nkey={AWS_KEY}\n");
    let tip = repo.commit("a.txt", content.as_bytes(), "tricky");
    let f = scan_range(&repo, &base, &tip);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (&f[0].place, f[0].line, f[0].oid.as_str()),
        (&Place::File("a.txt".into()), 5, tip.as_str())
    );
}

#[test]
fn secret_in_binary_file_is_found() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"x\n", "base");
    let mut blob = vec![0u8, 1, 2, 255, b'\n'];
    blob.extend_from_slice(format!("{AWS_KEY}\n").as_bytes());
    let tip = repo.commit("blob.bin", &blob, "binary");
    let f = scan_range(&repo, &base, &tip);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].place, Place::File("blob.bin".into()));
}

#[test]
fn lines_only_removed_are_not_findings() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", format!("{AWS_KEY}\n").as_bytes(), "old secret");
    let tip = repo.commit("a.txt", b"clean\n", "remove it");
    assert!(scan_range(&repo, &base, &tip).is_empty());
}

#[test]
fn a_secret_upstream_already_has_is_not_reported_again_when_its_file_changes() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", format!("{AWS_KEY}\n").as_bytes(), "old secret");
    let content = format!("{AWS_KEY}\nmore\n");
    let tip = repo.commit("a.txt", content.as_bytes(), "append");
    assert!(scan_range(&repo, &base, &tip).is_empty());
}

#[test]
fn merge_commit_is_scanned_against_its_first_parent() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    repo.git(&["checkout", "-q", "-b", "side"]);
    repo.commit("s.txt", format!("{AWS_KEY}\n").as_bytes(), "side");
    repo.git(&["checkout", "-q", "main"]);
    repo.commit("m.txt", b"m\n", "main");
    repo.git(&["merge", "-q", "--no-edit", "side"]);
    let tip = repo.git(&["rev-parse", "HEAD"]);
    let f = scan_range(&repo, &base, &tip);
    // Found in the side commit and again in the merge's first-parent diff.
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f.iter().all(|x| x.place == Place::File("s.txt".into())));
}

#[test]
fn an_entry_name_no_diff_shows_is_scanned() {
    // An empty directory named after a key: no file diff mentions it.
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    let empty = repo.git_in(&["mktree"], b"");
    let root = repo.git_in(
        &["mktree"],
        format!(
            "100644 blob {}\ta.txt\n040000 tree {empty}\t{AWS_KEY}\n",
            repo.git(&["rev-parse", "HEAD:a.txt"])
        )
        .as_bytes(),
    );
    let tip = repo.git(&["commit-tree", &root, "-p", &base, "-m", "sneaky"]);
    let f = scan_range(&repo, &base, &tip);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].place, Place::FileName("AKIA…".into()));
    assert_eq!(f[0].via, Some(Via::Commit(tip.clone())));
}

#[test]
fn a_replace_ref_does_not_change_what_is_scanned() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    let x = repo.commit("k.txt", format!("{AWS_KEY}\n").as_bytes(), "x");
    repo.git(&["reset", "-q", "--hard", &base]);
    let y = repo.commit("k.txt", b"clean\n", "y");
    repo.mark_upstream(&base);
    // Upstream (the mirror) holds a replace ref X -> Y.
    repo.git(&["update-ref", &format!("refs/replace/{x}"), &y]);
    let u = RefUpdate {
        old: base.clone(),
        new: x.clone(),
        name: "refs/heads/main".into(),
    };
    let scanner = Scanner::builtin().unwrap();
    let peeled = peel_updates(&repo, std::slice::from_ref(&u)).unwrap();
    let f = scan_updates(&repo, &scanner, &[u], &peeled, &options())
        .unwrap()
        .findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].place.clone(), f[0].oid.clone()),
        (Place::File("k.txt".into()), x)
    );
}

#[test]
fn every_tag_of_a_chain_is_scanned() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    repo.mark_upstream(&base);
    repo.git(&["tag", "-a", "inner", "-m", &format!("x\n\n{AWS_KEY}")]);
    repo.git(&[
        "-c",
        "advice.nestedTag=false",
        "tag",
        "-a",
        "mid",
        "-m",
        "m",
        "inner",
    ]);
    repo.git(&[
        "-c",
        "advice.nestedTag=false",
        "tag",
        "-a",
        "outer",
        "-m",
        "o",
        "mid",
    ]);
    let inner = repo.git(&["rev-parse", "inner"]);
    let outer = repo.git(&["rev-parse", "outer"]);
    let r = scan_update(&repo, Z, &outer, "refs/tags/outer", &options()).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(
        (&f.place, f.line, f.oid.as_str(), f.kind),
        (&Place::TagMessage, 3, inner.as_str(), ObjectKind::Tag)
    );
    assert_eq!(f.via, Some(Via::Ref("refs/tags/outer".into())));
    assert_eq!(r.stats.objects, 3);
}

#[test]
fn a_large_blob_on_a_tag_is_scanned_streaming_to_its_last_line() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    repo.mark_upstream(&base);
    let mut content = "filler line\n".repeat(3 * chunk::CHUNK / 12).into_bytes();
    content.extend_from_slice(format!("k={AWS_KEY}\n").as_bytes());
    let lines = content.iter().filter(|&&b| b == b'\n').count();
    let blob = repo.git_in(&["hash-object", "-w", "--stdin"], &content);
    let r = scan_update(&repo, Z, &blob, "refs/tags/big", &options()).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].line, lines);
    assert_eq!(r.findings[0].kind, ObjectKind::Blob);
    assert!(r.stats.bytes >= content.len() as u64);
}

#[test]
fn a_blob_over_the_size_limit_refuses_the_push() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    let tip = repo.commit("big.bin", &[7u8; 4096], "big");
    repo.mark_upstream(&base);
    let small = ScanOptions {
        max_blob_size: 1024,
        ..options()
    };
    let err = scan_update(&repo, &base, &tip, "refs/heads/main", &small).unwrap_err();
    match err {
        PushRefusal::TooLarge {
            path, size, via, ..
        } => {
            assert_eq!((path.as_str(), size), ("big.bin", 4096));
            assert_eq!(via, Some(Via::Commit(tip)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refs_on_trees_and_blobs_are_refused_unless_allowed() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    repo.mark_upstream(&base);
    let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    repo.git(&["tag", "-a", "t", "-m", "on a tree", &tree]);
    repo.git(&["tag", "-a", "c", "-m", "on a commit", &base]);
    let tag_on_tree = repo.git(&["rev-parse", "t"]);
    let tag_on_commit = repo.git(&["rev-parse", "c"]);
    let strict = ScanOptions {
        allow_non_commit_refs: false,
        ..options()
    };
    match scan_update(&repo, Z, &tag_on_tree, "refs/tags/t", &strict).unwrap_err() {
        PushRefusal::RefTarget {
            ref_name,
            kind,
            tagged,
            ..
        } => assert_eq!(
            (ref_name.as_str(), kind, tagged),
            ("refs/tags/t", ObjectKind::Tree, true)
        ),
        other => panic!("{other:?}"),
    }
    assert!(scan_update(&repo, Z, &tag_on_commit, "refs/tags/c", &strict).is_ok());
    assert!(scan_update(&repo, Z, &tag_on_tree, "refs/tags/t", &options()).is_ok());
}

#[test]
fn a_secret_in_a_ref_name_is_found() {
    let repo = Repo::new();
    let base = repo.commit("a.txt", b"a\n", "base");
    let tip = repo.commit("b.txt", b"b\n", "b");
    repo.mark_upstream(&base);
    let name = format!("refs/heads/{AWS_KEY}");
    let f = scan_update(&repo, &base, &tip, &name, &options())
        .unwrap()
        .findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].place, Place::RefName("refs/heads/AKIA…".into()));
}
