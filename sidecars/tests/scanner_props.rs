//! Property tests: the scanner never panics on arbitrary bytes, and a
//! planted secret is found wherever it sits in random text.
#![allow(clippy::unwrap_used)] // a test crate: helpers may unwrap too

use bottle_sidecars::scanner::Scanner;
use proptest::prelude::*;

/// Well-formed fake secrets, one per kind, with the rule that must find them.
const PLANTS: &[(&str, &str)] = &[
    ("github-pat", "ghp_FAKE0123456789abcdefghijKLMNOPQRSTUV"),
    ("aws-access-key-id", "AKIAFAKE234567ABCDEF"),
    (
        "slack-bot-token",
        "xoxb-123456789012-1234567890123-FAKEabcdefghijklmnopqrst",
    ),
    ("stripe-secret-key", "sk_live_FAKE0123456789abcdefghijkl"),
    (
        "npm-access-token",
        "npm_FAKE0123456789abcdefghijklmnopqrstuv",
    ),
    ("route-token:api", "REAL-route-token-7Qx9"),
    (
        "bip39-seed-phrase",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
    ),
];

fn scanner() -> Scanner {
    Scanner::builtin()
        .unwrap()
        .with_literal_secrets(vec![("api".into(), b"REAL-route-token-7Qx9".to_vec())])
}

/// Source-like filler: words, digits, punctuation and newlines.
fn filler() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 =:;{}()\\[\\].,\"'\n]{0,400}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let found = scanner().scan(&data);
        for f in found {
            prop_assert!(f.start <= f.end && f.end <= data.len());
            prop_assert!(f.line >= 1);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,600}") {
        let _ = scanner().scan(text.as_bytes());
    }

    #[test]
    fn a_planted_secret_is_always_found(
        before in filler(),
        after in filler(),
        which in 0..PLANTS.len(),
    ) {
        let (rule, secret) = PLANTS[which];
        let text = format!("{before}\n{secret}\n{after}");
        let found = scanner().scan(text.as_bytes());
        let start = before.len() + 1;
        let hit = found.iter().find(|f| f.rule_id == rule);
        prop_assert!(hit.is_some(), "{} not found in {:?}: {:?}", rule, text, found);
        let hit = hit.unwrap();
        prop_assert_eq!(hit.start, start);
        prop_assert_eq!(hit.line, before.matches('\n').count() + 2);
        prop_assert!(!hit.redacted.contains(&secret[4..]));
    }
}
