use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn problems(text: &str) -> Diagnostics {
    match parse("test.toml", text) {
        Err(ManifestError::Invalid(d)) => d,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn only(text: &str) -> (Problem, (usize, usize), String) {
    let d = problems(text);
    assert_eq!(d.problems.len(), 1, "expected one problem: {d}");
    (
        d.problems[0].clone(),
        d.position(0).expect("position"),
        d.to_string(),
    )
}

#[test]
fn embedded_default_defines_demo_bottle_and_agent() {
    let m = parse(EMBEDDED_ORIGIN, DEFAULT_MANIFEST).expect("default manifest loads");
    assert!(m.bottles.contains_key("demo"));
    assert_eq!(m.agents["demo"].bottle, "demo");
}

#[test]
fn example_manifest_loads() {
    parse(
        "examples/bottle.toml",
        include_str!("../../examples/bottle.toml"),
    )
    .expect("example loads");
}

#[test]
fn defaults_fill_in_omitted_keys() {
    let m = parse("t", "[bottles.b]\n[agents.a]\nbottle = \"b\"\n").unwrap();
    let b = &m.bottles["b"];
    assert_eq!(b.allow_ports, vec![443, 80]);
    assert_eq!(b.dlp.action, DlpAction::Block);
    assert_eq!(m.agents["a"].command, vec!["claude"]);
    assert!(m.agents["a"].copy_cwd);
}

#[test]
fn unknown_key_names_path_line_and_suggestion() {
    let (p, pos, text) = only("[bottles.b]\nalow = [\"x.com\"]\n");
    assert_eq!(p.key_path, "bottles.b.alow");
    assert_eq!(pos, (2, 1));
    assert!(p.message.contains("unknown key"));
    assert!(text.contains("did you mean `allow`"), "{text}");
    assert!(text.contains("test.toml:2:1"), "{text}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let d = problems("[bottles.b]\nalow = []\ncpu = 2\n[agents.a]\nbotle = \"b\"\n");
    let paths: Vec<_> = d.problems.iter().map(|p| p.key_path.as_str()).collect();
    assert_eq!(paths, ["bottles.b.alow", "bottles.b.cpu", "agents.a.botle"]);
}

#[test]
fn agent_naming_missing_bottle_is_an_error_with_suggestion() {
    let (p, pos, text) = only("[bottles.web]\n[agents.a]\nbottle = \"wbe\"\n");
    assert_eq!(p.key_path, "agents.a.bottle");
    assert_eq!(pos.0, 3);
    assert!(text.contains("not defined"));
    assert!(text.contains("did you mean `web`"), "{text}");
}

#[test]
fn route_with_two_token_sources_is_an_error() {
    let (p, _, text) = only(
        "[bottles.b]\n[[bottles.b.routes]]\nhost = \"api.x.com\"\nheader = \"Authorization\"\ntoken = { env = \"T\", file = \"/t\" }\n",
    );
    assert_eq!(p.key_path, "bottles.b.routes[0].token");
    assert!(text.contains("more than one token source"));
    assert!(text.contains("exactly one of"));
}

#[test]
fn route_without_token_source_is_an_error() {
    let (p, _, _) = only("[bottles.b]\n[[bottles.b.routes]]\nhost = \"api.x.com\"\nheader = \"Authorization\"\ntoken = {}\n");
    assert!(p.message.contains("no token source"));
}

#[test]
fn git_remote_without_known_host_key_is_an_error() {
    let (p, pos, text) = only(
        "[bottles.b]\n[[bottles.b.git]]\nname = \"r\"\nupstream = \"ssh://git@h.example/r.git\"\n",
    );
    assert_eq!(p.key_path, "bottles.b.git[0]");
    assert_eq!(pos.0, 2);
    assert!(text.contains("known_host_key"));
    assert!(text.contains("ssh-keyscan"));
}

#[test]
fn duplicate_git_names_are_an_error() {
    let text = format!(
        "[bottles.b]\n[[bottles.b.git]]\nname = \"r\"\nupstream = \"ssh://git@h/r.git\"\nknown_host_key = \"{KEY}\"\n\
         [[bottles.b.git]]\nname = \"r\"\nupstream = \"git@h:s.git\"\nknown_host_key = \"{KEY}\"\n"
    );
    let (p, pos, msg) = only(&text);
    assert_eq!(p.key_path, "bottles.b.git[1].name");
    assert_eq!(pos.0, 7);
    assert!(msg.contains("duplicate git remote name `r`"));
}

#[test]
fn allow_non_commit_refs_defaults_off_and_must_be_a_bool() {
    let remote = |extra: &str| {
        format!(
            "[bottles.b]\n[[bottles.b.git]]\nname = \"r\"\nupstream = \"git@h:r.git\"\nknown_host_key = \"{KEY}\"\n{extra}"
        )
    };
    let m = parse("test.toml", &remote("")).expect("loads");
    assert!(!m.bottles["b"].git[0].allow_non_commit_refs);
    let m = parse("test.toml", &remote("allow_non_commit_refs = true\n")).expect("loads");
    assert!(m.bottles["b"].git[0].allow_non_commit_refs);
    let (p, _, _) = only(&remote("allow_non_commit_refs = \"yes\"\n"));
    assert_eq!(p.key_path, "bottles.b.git[0].allow_non_commit_refs");
}

#[test]
fn invalid_host_pattern_is_an_error() {
    let (p, pos, text) = only("[bottles.b]\nallow = [\"ok.com\", \"https://bad.com/x\"]\n");
    assert_eq!(p.key_path, "bottles.b.allow[1]");
    assert_eq!(pos, (2, 20));
    assert!(text.contains("invalid host pattern"));
}

#[test]
fn removed_cred_proxy_key_gets_migration_hint() {
    let (p, _, text) = only("[bottles.b]\ncred_proxy = { routes = [] }\n");
    assert_eq!(p.key_path, "bottles.b.cred_proxy");
    assert!(p.message.contains("removed"));
    assert!(text.contains("[[bottles.NAME.routes]]"), "{text}");
}

#[test]
fn removed_runtime_key_points_at_docker_section() {
    let (_, _, text) = only("[bottles.b]\nruntime = \"runsc\"\n");
    assert!(text.contains("[bottles.NAME.docker] runtime"), "{text}");
}

#[test]
fn wrong_value_type_is_an_error() {
    let (p, _, text) = only("[bottles.b]\ncpus = \"two\"\n");
    assert_eq!(p.key_path, "bottles.b.cpus");
    assert!(text.contains("expected an integer, found a string"));
}

#[test]
fn bad_enum_value_is_reported_with_position() {
    let d = problems("[bottles.b]\ndlp = { action = \"shout\" }\n");
    assert!(d.to_string().contains("block"), "{d}");
    assert!(d.position(0).is_some());
}

#[test]
fn dlp_actions_per_host_parse_and_unknown_ones_name_the_valid_values() {
    let m = parse(
        "t",
        "[bottles.b]\ndlp = { action = \"block\", hosts = { \"api.anthropic.com\" = \"redact\", \"*.example.com\" = \"warn\" } }\n",
    )
    .unwrap();
    let dlp = &m.bottles["b"].dlp;
    assert_eq!(dlp.action, DlpAction::Block);
    assert_eq!(dlp.hosts["api.anthropic.com"], DlpAction::Redact);
    assert_eq!(dlp.hosts["*.example.com"], DlpAction::Warn);

    let (p, pos, text) =
        only("[bottles.b]\ndlp = { hosts = { \"api.anthropic.com\" = \"redakt\" } }\n");
    assert_eq!(p.key_path, "bottles.b.dlp.hosts.\"api.anthropic.com\"");
    assert_eq!(pos.0, 2);
    assert!(p.message.contains("unknown value `redakt`"), "{text}");
    assert!(text.contains("did you mean `redact`"), "{text}");
    assert!(text.contains("\"block\", \"warn\", \"redact\""), "{text}");

    let (p, _, text) = only("[bottles.b]\ndlp = { action = \"shout\" }\n");
    assert_eq!(p.key_path, "bottles.b.dlp.action");
    assert!(text.contains("\"block\", \"warn\", \"redact\""), "{text}");
}

#[test]
fn dlp_hosts_must_be_distinct_host_patterns() {
    let (p, _, text) = only("[bottles.b]\ndlp = { hosts = { \"https://x.com\" = \"redact\" } }\n");
    assert_eq!(p.key_path, "bottles.b.dlp.hosts.https://x.com");
    assert!(text.contains("invalid host pattern"), "{text}");
    let (_, _, text) = only(
        "[bottles.b]\ndlp = { hosts = { \"API.x.com\" = \"redact\", \"api.x.com\" = \"block\" } }\n",
    );
    assert!(text.contains("same host pattern"), "{text}");
}

#[test]
fn syntax_error_is_reported_with_position() {
    let d = problems("[bottles.b\n");
    assert_eq!(d.problems[0].key_path, "(syntax)");
    assert_eq!(d.position(0).map(|p| p.0), Some(1));
}

#[test]
fn malformed_host_key_and_upstream_are_errors() {
    let d = problems("[bottles.b]\n[[bottles.b.git]]\nname = \"r\"\nupstream = \"https://h/r.git\"\nknown_host_key = \"ssh-ed25519 notbase64!\"\n");
    let paths: Vec<_> = d.problems.iter().map(|p| p.key_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "bottles.b.git[0].upstream",
            "bottles.b.git[0].known_host_key"
        ]
    );
}

#[test]
fn host_key_fingerprint_matches_ssh_keygen_format() {
    let fp = validate::host_key_fingerprint(KEY).unwrap();
    assert!(fp.starts_with("SHA256:"));
    assert_eq!(fp.len(), "SHA256:".len() + 43);
}

#[test]
fn ssh_upstreams_parse_in_both_forms() {
    assert_eq!(
        validate::parse_ssh_upstream("ssh://git@h.example:2222/r.git"),
        Some(("h.example".into(), 2222))
    );
    assert_eq!(
        validate::parse_ssh_upstream("git@github.com:o/r.git"),
        Some(("github.com".into(), 22))
    );
    assert_eq!(
        validate::parse_ssh_upstream("https://github.com/o/r.git"),
        None
    );
}

#[test]
fn locate_prefers_flag_then_cwd_then_config_then_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    let cfg = dir.path().join("cfg");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(cfg.join("bottle")).unwrap();
    assert_eq!(locate(None, &cwd, Some(&cfg)).unwrap(), Origin::Embedded);
    std::fs::write(cfg.join("bottle/bottle.toml"), "").unwrap();
    assert!(matches!(
        locate(None, &cwd, Some(&cfg)).unwrap(),
        Origin::UserConfig(_)
    ));
    std::fs::write(cwd.join("bottle.toml"), "").unwrap();
    assert!(matches!(
        locate(None, &cwd, Some(&cfg)).unwrap(),
        Origin::WorkingDir(_)
    ));
    assert!(matches!(
        locate(Some(&dir.path().join("nope.toml")), &cwd, Some(&cfg)),
        Err(ManifestError::NotFound(_))
    ));
}

#[test]
fn limits_default_and_out_of_range_values_are_named() {
    let m = parse(
        "t.toml",
        "[bottles.b]\n[bottles.b.limits]\nconnections = 8\n",
    )
    .unwrap();
    let b = &m.bottles["b"];
    assert_eq!(b.limits.connections, 8);
    assert_eq!(b.limits.buffered_mib, Limits::default().buffered_mib);
    let text = problems("[bottles.b.limits]\nbuffered_mib = 16\nflows = 0\n").to_string();
    assert!(text.contains("bottles.b.limits.buffered_mib"), "{text}");
    assert!(text.contains("one 16 MiB body raw and decoded"), "{text}");
    assert!(text.contains("bottles.b.limits.flows"), "{text}");
    let text = problems("[bottles.b.limits]\nsockets = 3\n").to_string();
    assert!(text.contains("known keys here: connections"), "{text}");
}

#[test]
fn resolve_pins_names_to_addresses_and_names_bad_entries() {
    let m = parse(
        "t.toml",
        "[bottles.b]\nresolve = { \"api.example.com\" = \"127.0.0.1:8443\", \"corp.internal\" = \"10.1.2.3\" }\n",
    )
    .unwrap();
    assert_eq!(m.bottles["b"].resolve["api.example.com"], "127.0.0.1:8443");
    let text = problems(
        "[bottles.b]\nresolve = { \"*.x.com\" = \"1.2.3.4\", \"y.com\" = \"y.example\" }\n",
    )
    .to_string();
    assert!(text.contains("bottles.b.resolve"), "{text}");
    assert!(text.contains("is not a host name"), "{text}");
    assert!(text.contains("`y.example` is not an address"), "{text}");
}

#[test]
fn disable_rules_names_are_checked_against_the_scanners_rules() {
    let with = |id: &str| {
        format!(
            "[bottles.b]\n[bottles.b.dlp]\ndisable_rules = [\"{id}\"]\n[agents.a]\nbottle = \"b\"\n"
        )
    };
    parse("test.toml", &with("aws-access-key-id")).expect("a built-in rule id may be disabled");
    let (problem, _, text) = only(&with("no-such-rule"));
    assert!(problem.key_path.contains("disable_rules"), "{text}");
    assert!(text.contains("no-such-rule"), "{text}");
}
