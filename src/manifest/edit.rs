//! Changes bottle writes into a manifest file itself (`--save` on `bottle
//! approve` and `bottle policy`), made with `toml_edit` so the user's
//! formatting, order and comments stay as they were; only the changed
//! values are new text. [`line_diff`] shows the change before it is written.

use toml_edit::{Array, DocumentMut, InlineTable, Item, TableLike, Value};

/// One change to a bottle of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Add a Debian package to the bottle's image (`[bottles.NAME.image]
    /// packages`), turning `image = "debian"`/`"claude"` into the table form.
    AddPackage(String),
    /// Add a host pattern to `allow`.
    AllowHost(String),
    /// Add an IP address to `allow_ips`.
    AllowIp(String),
    /// Add a port to `allow_ports` (written out with the default 443 and 80
    /// when the key was missing, so they stay allowed).
    AllowPort(u16),
    /// Add a `[[bottles.NAME.rules]]` entry.
    Rule {
        host: String,
        methods: Vec<String>,
        paths: Vec<String>,
    },
    /// Remove exactly this entry from `allow` (or `allow_ips`).
    RemoveHost(String),
    /// Add a `[[bottles.NAME.routes]]` entry whose token is read from
    /// `source` (`env` or `file`, with its value).
    Route {
        name: Option<String>,
        host: String,
        header: String,
        prefix: String,
        source: TokenSourceEdit,
    },
}

/// Where a saved route's token comes from (`token = { env | file | command }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSourceEdit {
    Env(String),
    File(String),
    Command(Vec<String>),
}

/// Why the manifest could not be changed as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("the manifest is not valid TOML ({0}); fix it first")]
    Syntax(String),
    #[error("the manifest has no bottle `{0}`")]
    NoBottle(String),
    #[error("`{key}` of bottle `{bottle}` is not {what}; change it by hand")]
    Shape {
        bottle: String,
        key: String,
        what: &'static str,
    },
    #[error(
        "bottle `{bottle}` uses the `{image}` image, which takes no packages; give it a Debian \
         image (`image = \"debian\"` or a `[bottles.{bottle}.image]` table) by hand"
    )]
    NoPackages { bottle: String, image: String },
    #[error(
        "`{host}` is not an entry of `allow` or `allow_ips` of bottle `{bottle}` (a wildcard may \
         cover it, and the manifest has no deny list); change the manifest by hand"
    )]
    NotListed { bottle: String, host: String },
}

/// `text` with `edits` applied to bottle `bottle`; unchanged when every
/// edit was already there.
pub fn apply(text: &str, bottle: &str, edits: &[Edit]) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Syntax(e.message().trim().to_string()))?;
    let table = doc
        .get_mut("bottles")
        .and_then(Item::as_table_like_mut)
        .and_then(|b| b.get_mut(bottle))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::NoBottle(bottle.to_string()))?;
    for edit in edits {
        apply_one(table, bottle, edit)?;
    }
    Ok(doc.to_string())
}

fn shape(bottle: &str, key: &str, what: &'static str) -> EditError {
    EditError::Shape {
        bottle: bottle.to_string(),
        key: key.to_string(),
        what,
    }
}

fn apply_one(table: &mut dyn TableLike, bottle: &str, edit: &Edit) -> Result<(), EditError> {
    match edit {
        Edit::AddPackage(name) => add_package(table, bottle, name),
        Edit::AllowHost(host) => push_unique(table, bottle, "allow", host.as_str().into(), None),
        Edit::AllowIp(ip) => push_unique(table, bottle, "allow_ips", ip.as_str().into(), None),
        Edit::AllowPort(port) => push_unique(
            table,
            bottle,
            "allow_ports",
            i64::from(*port).into(),
            Some(&crate::manifest::default_allow_ports()),
        ),
        Edit::RemoveHost(host) => remove_host(table, bottle, host),
        Edit::Rule {
            host,
            methods,
            paths,
        } => {
            let mut t = InlineTable::new();
            t.insert("host", host.as_str().into());
            if !methods.is_empty() {
                t.insert("methods", Value::Array(strings(methods)));
            }
            if !paths.is_empty() {
                t.insert("paths", Value::Array(strings(paths)));
            }
            push_entry(table, bottle, "rules", t)
        }
        Edit::Route {
            name,
            host,
            header,
            prefix,
            source,
        } => {
            let mut t = InlineTable::new();
            if let Some(n) = name {
                t.insert("name", n.as_str().into());
            }
            t.insert("host", host.as_str().into());
            t.insert("header", header.as_str().into());
            if !prefix.is_empty() {
                t.insert("prefix", prefix.as_str().into());
            }
            let mut token = InlineTable::new();
            match source {
                TokenSourceEdit::Env(var) => token.insert("env", var.as_str().into()),
                TokenSourceEdit::File(path) => token.insert("file", path.as_str().into()),
                TokenSourceEdit::Command(argv) => {
                    token.insert("command", Value::Array(strings(argv)))
                }
            };
            t.insert("token", Value::InlineTable(token));
            push_entry(table, bottle, "routes", t)
        }
    }
}

fn strings(list: &[String]) -> Array {
    list.iter().map(String::as_str).collect()
}

/// Push `value` onto the array `key` unless it holds it; a missing key is
/// created (with `defaults` first, when the key has a default).
fn push_unique(
    table: &mut dyn TableLike,
    bottle: &str,
    key: &str,
    value: Value,
    defaults: Option<&[u16]>,
) -> Result<(), EditError> {
    if table.get(key).is_none() {
        let mut array = Array::new();
        for d in defaults.unwrap_or_default() {
            array.push(i64::from(*d));
        }
        table.insert(key, Item::Value(Value::Array(array)));
    }
    let array = table
        .get_mut(key)
        .and_then(Item::as_array_mut)
        .ok_or_else(|| shape(bottle, key, "a list"))?;
    if !array.iter().any(|v| same(v, &value)) {
        array.push(value);
    }
    Ok(())
}

/// Equal as values, whatever their formatting.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Integer(x), Value::Integer(y)) => x.value() == y.value(),
        _ => false,
    }
}

fn remove_host(table: &mut dyn TableLike, bottle: &str, host: &str) -> Result<(), EditError> {
    let target: Value = host.into();
    for key in ["allow", "allow_ips"] {
        if let Some(array) = table.get_mut(key).and_then(Item::as_array_mut) {
            let before = array.len();
            array.retain(|v| !same(v, &target));
            if array.len() != before {
                return Ok(());
            }
        }
    }
    Err(EditError::NotListed {
        bottle: bottle.to_string(),
        host: host.to_string(),
    })
}

/// Append an entry to an array of tables (`[[bottles.NAME.KEY]]`) or to an
/// inline array of tables; a missing key becomes `[[bottles.NAME.KEY]]`
/// when the bottle is a `[bottles.NAME]` table, else an inline array.
fn push_entry(
    table: &mut dyn TableLike,
    bottle: &str,
    key: &str,
    entry: InlineTable,
) -> Result<(), EditError> {
    match table.get_mut(key) {
        None => {
            let mut aot = toml_edit::ArrayOfTables::new();
            aot.push(entry.into_table());
            table.insert(key, Item::ArrayOfTables(aot));
            Ok(())
        }
        Some(Item::ArrayOfTables(aot)) => {
            aot.push(entry.into_table());
            Ok(())
        }
        Some(Item::Value(Value::Array(array))) => {
            array.push(Value::InlineTable(entry));
            Ok(())
        }
        Some(_) => Err(shape(bottle, key, "a list of tables")),
    }
}

fn add_package(table: &mut dyn TableLike, bottle: &str, name: &str) -> Result<(), EditError> {
    let image = table.get("image").map(|i| i.as_str().map(str::to_string));
    let base = match image {
        // A table: add to its packages.
        Some(None) => None,
        Some(Some(n)) if n == "debian" || n == "claude" => Some(n),
        Some(Some(n)) => {
            return Err(EditError::NoPackages {
                bottle: bottle.to_string(),
                image: n,
            })
        }
        None => {
            return Err(EditError::NoPackages {
                bottle: bottle.to_string(),
                image: "tiny".to_string(),
            })
        }
    };
    if let Some(builtin) = base {
        // `image = "debian"` becomes `image = { base = "debian", packages = [] }`
        // in place (its comments and position kept).
        let mut t = InlineTable::new();
        t.insert("base", "debian".into());
        if builtin == "claude" {
            t.insert("claude", true.into());
        }
        t.insert("packages", Value::Array(Array::new()));
        let decor = table
            .get("image")
            .and_then(Item::as_value)
            .map(|v| v.decor().clone());
        let mut value = Value::InlineTable(t);
        if let Some(d) = decor {
            *value.decor_mut() = d;
        }
        // In place, so the key keeps the comment above it.
        if let Some(item) = table.get_mut("image") {
            *item = Item::Value(value);
        }
    }
    let image = table
        .get_mut("image")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| shape(bottle, "image", "a table"))?;
    if image.get("packages").is_none() {
        image.insert("packages", Item::Value(Value::Array(Array::new())));
    }
    let array = image
        .get_mut("packages")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| shape(bottle, "image.packages", "a list"))?;
    let v: Value = name.into();
    if !array.iter().any(|x| same(x, &v)) {
        array.push(v);
    }
    Ok(())
}

/// A line diff of `old` to `new` in unified style: `-`/`+` lines with up
/// to two lines of context, hunks headed by `@@ -a,b +c,d @@`.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table (manifests are small).
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (tag, old index, new index).
    let mut ops: Vec<(char, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let mut out = String::new();
    let mut k = 0;
    while k < ops.len() {
        if ops[k].0 == ' ' {
            k += 1;
            continue;
        }
        // A hunk: from CONTEXT lines before this change to CONTEXT lines
        // after the last change closer than 2*CONTEXT to the next.
        let start = k.saturating_sub(CONTEXT);
        let mut end = k;
        let mut last_change = k;
        while end < ops.len() {
            if ops[end].0 != ' ' {
                last_change = end;
            } else if end - last_change > 2 * CONTEXT {
                break;
            }
            end += 1;
        }
        let end = (last_change + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let old_len = hunk.iter().filter(|o| o.0 != '+').count();
        let new_len = hunk.iter().filter(|o| o.0 != '-').count();
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            hunk[0].1 + 1,
            hunk[0].2 + 1
        ));
        for (tag, oi, nj) in hunk {
            let line = if *tag == '+' { b[*nj] } else { a[*oi] };
            out.push_str(&format!("{tag}{line}\n"));
        }
        k = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# my project's bottle
[bottles.t]
# the Debian image, for python
image = "debian"   # keep this comment
allow = [
  "api.example.com", # the API
]

[agents.a]
bottle = "t"
"#;

    fn edited(text: &str, edits: &[Edit]) -> String {
        let out = apply(text, "t", edits).unwrap();
        crate::manifest::parse("t", &out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        out
    }

    #[test]
    fn a_string_image_becomes_a_table_with_the_package_and_comments_stay() {
        let out = edited(TEXT, &[Edit::AddPackage("jq".into())]);
        assert!(
            out.contains(r#"image = { base = "debian", packages = ["jq"] }   # keep this comment"#),
            "{out}"
        );
        for comment in [
            "# my project's bottle",
            "# the Debian image, for python",
            "# the API",
        ] {
            assert!(out.contains(comment), "{comment} in {out}");
        }
        let m = crate::manifest::parse("t", &out).unwrap();
        match &m.bottles["t"].image {
            crate::manifest::ImageSpec::Custom(c) => {
                assert_eq!(c.packages, ["jq"]);
                assert!(!c.claude);
            }
            other => panic!("{other:?}"),
        }
        // Again: nothing changes.
        assert_eq!(edited(&out, &[Edit::AddPackage("jq".into())]), out);
    }

    #[test]
    fn the_claude_image_keeps_claude_code_as_a_table() {
        let text = TEXT.replace("\"debian\"", "\"claude\"");
        let out = edited(&text, &[Edit::AddPackage("jq".into())]);
        let m = crate::manifest::parse("t", &out).unwrap();
        match &m.bottles["t"].image {
            crate::manifest::ImageSpec::Custom(c) => assert!(c.claude && c.packages == ["jq"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_image_table_gets_the_package_in_its_list_or_a_new_list() {
        let text = "[bottles.t.image]\n# tools\npackages = [\"python3\"] # py\nsetup = []\n\n[bottles.t]\ncpus = 1\n";
        let out = edited(text, &[Edit::AddPackage("jq".into())]);
        assert!(
            out.contains("packages = [\"python3\", \"jq\"] # py"),
            "{out}"
        );
        assert!(out.contains("# tools"));
        let text = "[bottles.t]\ncpus = 1\n\n[bottles.t.image]\nclaude = true\n";
        let out = edited(text, &[Edit::AddPackage("jq".into())]);
        assert!(out.contains("packages = [\"jq\"]"), "{out}");
    }

    #[test]
    fn tiny_and_missing_images_take_no_packages() {
        for text in ["[bottles.t]\n", "[bottles.t]\nimage = \"tiny\"\n"] {
            let e = apply(text, "t", &[Edit::AddPackage("jq".into())]).unwrap_err();
            assert!(
                matches!(&e, EditError::NoPackages { image, .. } if image == "tiny"),
                "{e}"
            );
        }
        assert!(matches!(
            apply("[bottles.u]\n", "t", &[Edit::AllowHost("a".into())]),
            Err(EditError::NoBottle(_))
        ));
    }

    #[test]
    fn hosts_ports_and_ips_join_their_lists_once() {
        let out = edited(
            TEXT,
            &[
                Edit::AllowHost("b.example.com".into()),
                Edit::AllowHost("api.example.com".into()),
                Edit::AllowPort(8443),
                Edit::AllowIp("127.0.0.1".into()),
            ],
        );
        let m = crate::manifest::parse("t", &out).unwrap();
        let b = &m.bottles["t"];
        assert_eq!(b.allow, ["api.example.com", "b.example.com"]);
        // The defaults stay allowed when the key was missing.
        assert_eq!(b.allow_ports, [443, 80, 8443]);
        assert_eq!(b.allow_ips, ["127.0.0.1"]);
        assert!(out.contains("# the API"), "{out}");
        let again = edited(&out, &[Edit::AllowPort(8443), Edit::AllowPort(443)]);
        assert_eq!(again, out);
    }

    #[test]
    fn a_missing_allow_key_is_created_and_removing_needs_an_exact_entry() {
        let text = "[bottles.t]\ncpus = 1\n";
        let out = edited(text, &[Edit::AllowHost("a.test".into())]);
        assert!(out.contains("allow = [\"a.test\"]"), "{out}");
        let out = edited(&out, &[Edit::RemoveHost("a.test".into())]);
        assert!(out.contains("allow = []"), "{out}");
        let wild = "[bottles.t]\nallow = [\"*.example.com\"]\n";
        assert!(matches!(
            apply(wild, "t", &[Edit::RemoveHost("a.example.com".into())]),
            Err(EditError::NotListed { .. })
        ));
    }

    #[test]
    fn rules_and_routes_become_tables_of_the_bottle() {
        let out = edited(
            TEXT,
            &[
                Edit::Rule {
                    host: "api.example.com".into(),
                    methods: vec!["GET".into()],
                    paths: vec!["/v1/".into()],
                },
                Edit::Route {
                    name: None,
                    host: "api.example.com".into(),
                    header: "authorization".into(),
                    prefix: "Bearer ".into(),
                    source: TokenSourceEdit::Env("API_TOKEN".into()),
                },
            ],
        );
        let m = crate::manifest::parse("t", &out).unwrap();
        let b = &m.bottles["t"];
        assert_eq!(b.rules[0].paths, ["/v1/"]);
        assert_eq!(b.routes[0].token.env.as_deref(), Some("API_TOKEN"));
        assert_eq!(b.routes[0].prefix, "Bearer ");
        assert!(out.contains("[[bottles.t.routes]]"), "{out}");
        assert!(out.contains("# keep this comment"));
        // A token from a command is saved as its argv.
        let out = edited(
            TEXT,
            &[Edit::Route {
                name: None,
                host: "api.github.com".into(),
                header: "authorization".into(),
                prefix: String::new(),
                source: TokenSourceEdit::Command(vec!["gh".into(), "auth".into(), "token".into()]),
            }],
        );
        let m = crate::manifest::parse("t", &out).unwrap();
        let token = &m.bottles["t"].routes[0].token;
        assert_eq!(
            token.command.as_deref(),
            Some(&["gh", "auth", "token"].map(String::from)[..])
        );
        assert!(token.env.is_none() && token.file.is_none(), "{out}");
    }

    #[test]
    fn the_diff_shows_only_the_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\n";
        let d = line_diff(old, new);
        assert_eq!(
            d,
            "@@ -2,5 +2,5 @@\n b\n c\n-d\n+D\n e\n f\n@@ -8,2 +8,3 @@\n h\n i\n+j\n"
        );
        // Changes closer than twice the context share a hunk.
        let d = line_diff("a\nb\nc\nd\n", "A\nb\nc\nD\n");
        assert_eq!(d, "@@ -1,4 +1,4 @@\n-a\n+A\n b\n c\n-d\n+D\n");
        assert_eq!(line_diff(old, old), "");
    }
}
