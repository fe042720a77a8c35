//! Structural pass over the raw TOML document: every key is checked against the
//! schema (unknown keys with a "did you mean", removed keys with a migration
//! hint, wrong value types), and all problems are collected at once with their
//! byte spans. Only a document that passes is handed to serde.

use super::diag::Problem;
use super::suggest::did_you_mean;
use std::ops::Range;
use toml_edit::{Item, TableLike, Value};

/// The expected shape of one value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    StrArray,
    IntArray,
    Table(&'static Schema),
    ArrayOfTables(&'static Schema),
    /// A table whose keys are free names and whose values are tables.
    Named(&'static Schema),
    /// A table of free keys with string values.
    StrMap,
    /// A string, or a table of this schema.
    StrOrTable(&'static Schema),
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A table of free keys whose values are each one of a fixed set of strings.
    EnumMap(&'static [&'static str]),
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str | Kind::Enum(_) => "a string",
            Kind::StrOrTable(_) => "a string or a table",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::StrArray => "an array of strings",
            Kind::IntArray => "an array of integers",
            Kind::Table(_) | Kind::Named(_) | Kind::StrMap | Kind::EnumMap(_) => "a table",
            Kind::ArrayOfTables(_) => "an array of tables (`[[...]]`)",
        }
    }
}

#[derive(Debug)]
struct Schema {
    fields: &'static [(&'static str, Kind)],
    /// Keys that older versions (the Python tool) accepted, with what to write now.
    removed: &'static [(&'static str, &'static str)],
}

static TOKEN: Schema = Schema {
    fields: &[
        ("env", Kind::Str),
        ("file", Kind::Str),
        ("command", Kind::StrArray),
    ],
    removed: &[],
};
static ROUTE: Schema = Schema {
    fields: &[
        ("name", Kind::Str),
        ("host", Kind::Str),
        ("header", Kind::Str),
        ("prefix", Kind::Str),
        ("token", Kind::Table(&TOKEN)),
    ],
    removed: &[
        (
            "token_ref",
            "write `token = { env = \"VAR\" }` (or `file`/`command`)",
        ),
        (
            "role",
            "roles were removed; a route only names host, header and token",
        ),
    ],
};
static RULE: Schema = Schema {
    fields: &[
        ("host", Kind::Str),
        ("methods", Kind::StrArray),
        ("paths", Kind::StrArray),
    ],
    removed: &[],
};
static GIT: Schema = Schema {
    fields: &[
        ("name", Kind::Str),
        ("upstream", Kind::Str),
        ("identity_file", Kind::Str),
        ("known_host_key", Kind::Str),
        ("extra_hosts", Kind::StrMap),
        ("allow_force_push", Kind::Bool),
        ("allow_non_commit_refs", Kind::Bool),
    ],
    removed: &[],
};
static DLP_ACTIONS: &[&str] = super::types::DlpAction::NAMES;
static DLP: Schema = Schema {
    fields: &[
        ("action", Kind::Enum(DLP_ACTIONS)),
        ("disable_rules", Kind::StrArray),
        ("hosts", Kind::EnumMap(DLP_ACTIONS)),
    ],
    removed: &[],
};
static VM: Schema = Schema {
    fields: &[("engine", Kind::Str)],
    removed: &[],
};
static DOCKER: Schema = Schema {
    fields: &[("runtime", Kind::Str), ("pids_limit", Kind::Int)],
    removed: &[],
};
static NETWORK: Schema = Schema {
    fields: &[("subnet", Kind::Str), ("mtu", Kind::Int)],
    removed: &[],
};
static LIMITS: Schema = Schema {
    fields: &[
        ("connections", Kind::Int),
        ("buffered_mib", Kind::Int),
        ("flows", Kind::Int),
        ("audit_file_mib", Kind::Int),
        ("audit_files_kept", Kind::Int),
    ],
    removed: &[],
};
static IMAGE: Schema = Schema {
    fields: &[
        ("base", Kind::Enum(&["debian"])),
        ("packages", Kind::StrArray),
        ("claude", Kind::Bool),
        ("setup", Kind::StrArray),
        ("files", Kind::StrMap),
    ],
    removed: &[(
        "dockerfile",
        "a Dockerfile is not read: list `packages`, `setup` lines and `files` instead",
    )],
};
static BOTTLE: Schema = Schema {
    fields: &[
        ("image", Kind::StrOrTable(&IMAGE)),
        ("cpus", Kind::Int),
        ("memory_mib", Kind::Int),
        ("allow", Kind::StrArray),
        ("allow_ports", Kind::IntArray),
        ("passthrough", Kind::StrArray),
        ("allow_ips", Kind::StrArray),
        ("resolve", Kind::StrMap),
        ("upstream_ca", Kind::StrArray),
        ("allow_secret_paths", Kind::Bool),
        ("dlp", Kind::Table(&DLP)),
        ("routes", Kind::ArrayOfTables(&ROUTE)),
        ("rules", Kind::ArrayOfTables(&RULE)),
        ("git", Kind::ArrayOfTables(&GIT)),
        ("supervise", Kind::Bool),
        ("backend", Kind::Str),
        ("vm", Kind::Table(&VM)),
        ("docker", Kind::Table(&DOCKER)),
        ("network", Kind::Table(&NETWORK)),
        ("limits", Kind::Table(&LIMITS)),
    ],
    removed: &[
        (
            "cred_proxy",
            "the credential proxy is now part of the one proxy: move each route to \
             `[[bottles.NAME.routes]]` with `host`, `header` and `token = { env = \"VAR\" }`",
        ),
        ("egress", "write its routes as `[[bottles.NAME.routes]]` and its hosts in `allow`"),
        ("egress_proxy", "write its routes as `[[bottles.NAME.routes]]`"),
        (
            "runtime",
            "the container runtime moved to `[bottles.NAME.docker] runtime = \"auto\" | \"runc\" | \"runsc\"` \
             (auto picks gVisor when dockerd has it)",
        ),
        ("ssh", "raw SSH access was removed; declare the remote in `[[bottles.NAME.git]]` so pushes go through git-gate"),
        ("allowlist", "the key is now `allow`"),
        ("dlp_action", "write `dlp = { action = \"block\" | \"warn\" | \"redact\" }`"),
    ],
};
static AGENT: Schema = Schema {
    fields: &[
        ("bottle", Kind::Str),
        ("command", Kind::StrArray),
        ("prompt", Kind::Str),
        ("prompt_file", Kind::Str),
        ("skills", Kind::StrArray),
        ("allow_secret_paths", Kind::Bool),
        ("env", Kind::StrMap),
        ("copy_cwd", Kind::Bool),
    ],
    removed: &[
        ("cwd", "the working directory is the one `bottle run` starts in; use `copy_cwd = false` to not copy it"),
        ("runtime", "the container runtime is set on the bottle: `[bottles.NAME.docker] runtime = ...`"),
    ],
};
static ROOT: Schema = Schema {
    fields: &[
        ("bottles", Kind::Named(&BOTTLE)),
        ("agents", Kind::Named(&AGENT)),
    ],
    removed: &[],
};

/// Check the whole document; returns every problem found.
pub fn check(doc: &toml_edit::ImDocument<String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_table(
        doc.as_table(),
        &ROOT,
        "",
        doc.as_table().span(),
        &mut problems,
    );
    problems
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn check_table(
    table: &dyn TableLike,
    schema: &Schema,
    path: &str,
    table_span: Option<Range<usize>>,
    problems: &mut Vec<Problem>,
) {
    for (key, item) in table.iter() {
        let key_span = table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or_else(|| item.span());
        let key_path = join(path, key);
        if let Some((_, kind)) = schema.fields.iter().find(|(name, _)| *name == key) {
            check_item(item, *kind, &key_path, key_span, problems);
        } else if let Some((_, hint)) = schema.removed.iter().find(|(name, _)| *name == key) {
            problems.push(Problem::new(
                key_path,
                key_span.or_else(|| table_span.clone()),
                "this key was removed".to_string(),
                Some((*hint).to_string()),
            ));
        } else {
            let known: Vec<&str> = schema.fields.iter().map(|(name, _)| *name).collect();
            let hint = match did_you_mean(key, &known) {
                Some(best) => format!(
                    "did you mean `{best}`? Known keys here: {}",
                    known.join(", ")
                ),
                None => format!("known keys here: {}", known.join(", ")),
            };
            problems.push(Problem::new(
                key_path,
                key_span.or_else(|| table_span.clone()),
                "unknown key".to_string(),
                Some(hint),
            ));
        }
    }
}

fn check_item(
    item: &Item,
    kind: Kind,
    path: &str,
    key_span: Option<Range<usize>>,
    problems: &mut Vec<Problem>,
) {
    let span = item.span().or_else(|| key_span.clone());
    let wrong = |problems: &mut Vec<Problem>, found: &str| {
        problems.push(Problem::new(
            path.to_string(),
            span.clone(),
            format!("expected {}, found {found}", kind.describe()),
            None,
        ));
    };
    match kind {
        Kind::Str => match item.as_value() {
            Some(Value::String(_)) => {}
            other => wrong(problems, describe_found(item, other)),
        },
        Kind::Enum(names) => match item.as_value() {
            Some(Value::String(s)) => check_enum(s.value(), names, path, span.clone(), problems),
            other => wrong(problems, describe_found(item, other)),
        },
        Kind::EnumMap(names) => match item.as_table_like() {
            Some(table) => {
                for (name, sub) in table.iter() {
                    let sub_span = sub.span().or_else(|| span.clone());
                    match sub.as_value() {
                        Some(Value::String(s)) => check_enum(
                            s.value(),
                            names,
                            &join(path, &quote_key(name)),
                            sub_span,
                            problems,
                        ),
                        other => problems.push(Problem::new(
                            join(path, &quote_key(name)),
                            sub_span,
                            format!("expected a string, found {}", describe_found(sub, other)),
                            Some(format!("write one of: {}", quoted(names))),
                        )),
                    }
                }
            }
            None => wrong(problems, describe_found(item, item.as_value())),
        },
        Kind::Int => match item.as_value() {
            Some(Value::Integer(_)) => {}
            other => wrong(problems, describe_found(item, other)),
        },
        Kind::Bool => match item.as_value() {
            Some(Value::Boolean(_)) => {}
            other => wrong(problems, describe_found(item, other)),
        },
        Kind::StrArray | Kind::IntArray => match item.as_value() {
            Some(Value::Array(array)) => {
                for (index, element) in array.iter().enumerate() {
                    let ok = match kind {
                        Kind::StrArray => matches!(element, Value::String(_)),
                        _ => matches!(element, Value::Integer(_)),
                    };
                    if !ok {
                        problems.push(Problem::new(
                            format!("{path}[{index}]"),
                            element.span().or_else(|| span.clone()),
                            format!(
                                "expected {}, found {}",
                                if matches!(kind, Kind::StrArray) {
                                    "a string"
                                } else {
                                    "an integer"
                                },
                                describe_value(element)
                            ),
                            None,
                        ));
                    }
                }
            }
            other => wrong(problems, describe_found(item, other)),
        },
        Kind::Table(schema) => match item.as_table_like() {
            Some(table) => check_table(table, schema, path, span, problems),
            None => wrong(problems, describe_found(item, item.as_value())),
        },
        Kind::StrOrTable(schema) => match (item.as_value(), item.as_table_like()) {
            (Some(Value::String(_)), _) => {}
            (_, Some(table)) => check_table(table, schema, path, span, problems),
            (other, None) => wrong(problems, describe_found(item, other)),
        },
        Kind::Named(schema) => match item.as_table_like() {
            Some(table) => {
                for (name, sub) in table.iter() {
                    let sub_path = join(path, name);
                    let sub_span = sub.span().or_else(|| span.clone());
                    if !valid_name(name) {
                        problems.push(Problem::new(
                            sub_path.clone(),
                            sub_span.clone(),
                            format!("`{name}` is not a valid name"),
                            Some(
                                "use letters, digits, `-` and `_` only, starting with a letter"
                                    .into(),
                            ),
                        ));
                    }
                    match sub.as_table_like() {
                        Some(sub_table) => {
                            check_table(sub_table, schema, &sub_path, sub_span, problems)
                        }
                        None => problems.push(Problem::new(
                            sub_path,
                            sub_span,
                            format!(
                                "expected a table, found {}",
                                describe_found(sub, sub.as_value())
                            ),
                            Some(format!("write it as `[{path}.{name}]`")),
                        )),
                    }
                }
            }
            None => wrong(problems, describe_found(item, item.as_value())),
        },
        Kind::StrMap => match item.as_table_like() {
            Some(table) => {
                for (name, sub) in table.iter() {
                    if !matches!(sub.as_value(), Some(Value::String(_))) {
                        problems.push(Problem::new(
                            join(path, name),
                            sub.span().or_else(|| span.clone()),
                            format!(
                                "expected a string, found {}",
                                describe_found(sub, sub.as_value())
                            ),
                            None,
                        ));
                    }
                }
            }
            None => wrong(problems, describe_found(item, item.as_value())),
        },
        Kind::ArrayOfTables(schema) => {
            if let Some(array) = item.as_array_of_tables() {
                for (index, table) in array.iter().enumerate() {
                    check_table(
                        table,
                        schema,
                        &format!("{path}[{index}]"),
                        table.span(),
                        problems,
                    );
                }
            } else if let Some(Value::Array(array)) = item.as_value() {
                for (index, element) in array.iter().enumerate() {
                    match element.as_inline_table() {
                        Some(table) => check_table(
                            table,
                            schema,
                            &format!("{path}[{index}]"),
                            element.span(),
                            problems,
                        ),
                        None => problems.push(Problem::new(
                            format!("{path}[{index}]"),
                            element.span(),
                            format!("expected a table, found {}", describe_value(element)),
                            None,
                        )),
                    }
                }
            } else {
                wrong(problems, describe_found(item, item.as_value()));
            }
        }
    }
}

/// A value of an enumerated key: unknown values are named with the valid ones.
fn check_enum(
    value: &str,
    names: &[&str],
    path: &str,
    span: Option<Range<usize>>,
    problems: &mut Vec<Problem>,
) {
    if names.contains(&value) {
        return;
    }
    let hint = match did_you_mean(value, names) {
        Some(best) => format!("did you mean `{best}`? Valid values: {}", quoted(names)),
        None => format!("valid values: {}", quoted(names)),
    };
    problems.push(Problem::new(
        path.to_string(),
        span,
        format!("unknown value `{value}`"),
        Some(hint),
    ));
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A free key in a key path: quoted when it holds dots (host names).
fn quote_key(key: &str) -> String {
    if key.contains('.') {
        format!("\"{key}\"")
    } else {
        key.to_string()
    }
}

/// Names of bottles and agents: they become parts of identities and paths.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 40
}

fn describe_found(item: &Item, value: Option<&Value>) -> &'static str {
    match (item, value) {
        (_, Some(v)) => describe_value(v),
        (Item::Table(_), None) => "a table",
        (Item::ArrayOfTables(_), None) => "an array of tables",
        _ => "nothing",
    }
}

fn describe_value(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    //! The schema above and the serde types in `types.rs` describe the same
    //! document: a manifest that sets every key is accepted by the schema,
    //! and its typed value, serialised, has exactly the schema's keys, table
    //! by table, with values of the schema's kinds. Adding a key to one and
    //! not the other fails here (and a new key belongs in `EVERY_KEY`).

    use super::*;
    use serde_json::Value as Json;

    /// Sets every key of the schema, each array of tables and named table once.
    const EVERY_KEY: &str = r#"
[bottles.b]
image = "tiny"
cpus = 1
memory_mib = 256
allow = ["a.example"]
allow_ports = [443]
passthrough = ["p.example"]
allow_ips = ["10.0.0.1"]
resolve = { "a.example" = "10.0.0.1:8443" }
upstream_ca = ["ca.pem"]
allow_secret_paths = true
dlp = { action = "warn", disable_rules = ["r"], hosts = { "api.example" = "redact" } }
supervise = true
backend = "vm"
vm = { engine = "qemu" }
docker = { runtime = "runc", pids_limit = 100 }
network = { subnet = "10.0.2.0/24", mtu = 1500 }
limits = { connections = 8, buffered_mib = 64, flows = 100, audit_file_mib = 2, audit_files_kept = 1 }

[[bottles.b.routes]]
name = "n"
host = "api.example"
header = "Authorization"
prefix = "Bearer "
token = { env = "E", file = "f", command = ["c"] }

[[bottles.b.rules]]
host = "api.example"
methods = ["GET"]
paths = ["/v1/*"]

[[bottles.b.git]]
name = "r"
upstream = "ssh://git@h.example/r.git"
identity_file = "~/.ssh/k"
known_host_key = "ssh-ed25519 AAAA"
extra_hosts = { "h.example" = "10.0.0.2" }
allow_force_push = true

[agents.a]
bottle = "b"
command = ["claude"]
prompt = "p"
prompt_file = "p.md"
skills = ["s"]
allow_secret_paths = true
env = { K = "v" }
copy_cwd = false
"#;

    /// Compare one table's serialised value with its schema, recursively.
    fn agree(schema: &Schema, value: &Json, path: &str, problems: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{path}: the type is not a table: {value}"));
            return;
        };
        let typed: std::collections::BTreeSet<&str> = object.keys().map(String::as_str).collect();
        let schema_keys: std::collections::BTreeSet<&str> =
            schema.fields.iter().map(|(name, _)| *name).collect();
        for k in typed.difference(&schema_keys) {
            problems.push(format!("{path}.{k}: in types.rs, not in the schema"));
        }
        for k in schema_keys.difference(&typed) {
            problems.push(format!("{path}.{k}: in the schema, not in types.rs"));
        }
        for (name, _) in schema.removed {
            if schema_keys.contains(name) {
                problems.push(format!("{path}.{name}: both a key and a removed key"));
            }
        }
        for (name, kind) in schema.fields {
            let Some(v) = object.get(*name) else { continue };
            let here = join(path, name);
            let first = |v: &Json| -> Option<Json> {
                match v {
                    Json::Array(a) => a.first().cloned(),
                    Json::Object(o) => o.values().next().cloned(),
                    _ => None,
                }
            };
            let ok = match kind {
                Kind::Str | Kind::Enum(_) => v.is_string(),
                Kind::Int => v.is_i64() || v.is_u64(),
                Kind::Bool => v.is_boolean(),
                Kind::StrArray => first(v).is_some_and(|e| e.is_string()),
                Kind::IntArray => first(v).is_some_and(|e| e.is_u64() || e.is_i64()),
                Kind::StrMap | Kind::EnumMap(_) => {
                    v.is_object() && first(v).is_some_and(|e| e.is_string())
                }
                Kind::Table(sub) => {
                    agree(sub, v, &here, problems);
                    true
                }
                Kind::StrOrTable(sub) => {
                    if v.is_object() {
                        agree(sub, v, &here, problems);
                    }
                    v.is_string() || v.is_object()
                }
                Kind::ArrayOfTables(sub) => match first(v) {
                    Some(element) => {
                        agree(sub, &element, &format!("{here}[0]"), problems);
                        true
                    }
                    None => false,
                },
                Kind::Named(sub) => match v.as_object().and_then(|o| o.iter().next()) {
                    Some((key, element)) => {
                        agree(sub, element, &join(&here, key), problems);
                        true
                    }
                    None => false,
                },
            };
            if !ok {
                problems.push(format!(
                    "{here}: the schema says {}, the type gives {v} (does EVERY_KEY set it?)",
                    kind.describe()
                ));
            }
        }
    }

    #[test]
    fn the_schema_and_the_serde_types_have_the_same_keys_and_kinds() {
        let doc = toml_edit::ImDocument::parse(EVERY_KEY.to_string()).unwrap();
        let problems = check(&doc);
        assert!(
            problems.is_empty(),
            "the schema refuses EVERY_KEY: {problems:?}"
        );
        let typed: super::super::Manifest = toml::from_str(EVERY_KEY).unwrap();
        let value = serde_json::to_value(&typed).unwrap();
        let mut problems = Vec::new();
        agree(&ROOT, &value, "", &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_agreement_check_catches_a_key_only_one_side_has() {
        static SHORT: Schema = Schema {
            fields: &[("subnet", Kind::Str)],
            removed: &[],
        };
        let mut problems = Vec::new();
        let value = serde_json::json!({ "subnet": "10.0.2.0/24", "mtu": 1500 });
        agree(&SHORT, &value, "network", &mut problems);
        assert_eq!(problems, ["network.mtu: in types.rs, not in the schema"]);
        let mut problems = Vec::new();
        agree(
            &NETWORK,
            &serde_json::json!({ "subnet": "x" }),
            "network",
            &mut problems,
        );
        assert_eq!(problems, ["network.mtu: in the schema, not in types.rs"]);
    }
}
