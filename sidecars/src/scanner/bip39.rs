//! BIP-39 English seed phrases: 12, 15, 18, 21 or 24 consecutive wordlist
//! words whose checksum (first `n/3` bits of SHA-256 of the entropy) holds.
//!
//! The wordlist is `rules/bip39-english.txt`, taken from the `bip39` crate
//! (v2.2.2) and checked against the published SHA-256 of BIP-39's
//! `english.txt` (see the tests).

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// Rule id of the detector.
pub(crate) const RULE_ID: &str = "bip39-seed-phrase";
/// Human description of the detector.
pub(crate) const DESCRIPTION: &str = "BIP-39 mnemonic seed phrase (checksum valid)";

const WORDLIST_TXT: &str = include_str!("../../rules/bip39-english.txt");
/// Longest word in the list; longer letter runs cannot be words.
const MAX_WORD: usize = 8;
const MIN_WORD: usize = 3;
/// Longest gap of non-letters between two words of one phrase.
const MAX_GAP: usize = 16;
/// Bytes that may sit between the words of a phrase: white space, list
/// numbering (`1.`, `2)`, `3-`) and JSON or CSV punctuation. Code syntax
/// (`_ : = ( { $ /` …) ends a phrase, so identifiers built from list words
/// do not chain into one.
const GAP_OK: &[u8] = b" \t\r\n0123456789,.\"'`)-[]";

/// Byte classes, one lookup per input byte.
const LETTER: u8 = 2;
const GAP: u8 = 1;
const BREAK: u8 = 0;
static CLASS: [u8; 256] = {
    let mut t = [BREAK; 256];
    let mut i = 0;
    while i < GAP_OK.len() {
        t[GAP_OK[i] as usize] = GAP;
        i += 1;
    }
    let mut c = b'a';
    while c <= b'z' {
        t[c as usize] = LETTER;
        t[(c - 32) as usize] = LETTER;
        c += 1;
    }
    t
};
/// Phrase lengths, longest first so the longest valid phrase wins.
const LENGTHS: [usize; 5] = [24, 21, 18, 15, 12];

static WORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| WORDLIST_TXT.lines().collect());

/// Open-addressing table from a packed word (see [`pack`]) to its index:
/// one multiply and usually one probe per token, since every token of the
/// input is looked up.
struct Table {
    keys: Vec<u64>,
    values: Vec<u16>,
}

const TABLE_BITS: u32 = 12;

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let size = 1usize << TABLE_BITS;
    let mut t = Table {
        keys: vec![0; size],
        values: vec![0; size],
    };
    for (i, w) in WORDS.iter().enumerate() {
        let (Some(key), Ok(value)) = (pack(w.as_bytes()), u16::try_from(i)) else {
            continue;
        };
        let mut s = slot(key);
        while t.keys[s] != 0 {
            s = (s + 1) & (size - 1);
        }
        t.keys[s] = key;
        t.values[s] = value;
    }
    t
});

/// A token of 1..=8 ASCII letters as a non-zero integer, lower-cased.
fn pack(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > MAX_WORD {
        return None;
    }
    Some(
        token
            .iter()
            .fold(0u64, |k, &b| (k << 8) | u64::from(b | 0x20)),
    )
}

fn slot(key: u64) -> usize {
    // Fibonacci hashing: the top TABLE_BITS bits of key × 2^64/φ.
    let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS);
    usize::try_from(h).unwrap_or(0)
}

/// Index of a word (any ASCII case) in the list.
#[cfg(test)]
fn index_of(token: &[u8]) -> Option<u16> {
    lookup_key(pack(token)?)
}

/// Index of the word packed as `key`.
fn lookup_key(key: u64) -> Option<u16> {
    let table = &*TABLE;
    let mask = table.keys.len() - 1;
    let mut s = slot(key);
    loop {
        match table.keys[s] {
            0 => return None,
            k if k == key => return Some(table.values[s]),
            _ => s = (s + 1) & mask,
        }
    }
}

/// Whether the 11-bit indices form a phrase with a valid checksum.
fn checksum_ok(indices: &[u16]) -> bool {
    let n = indices.len();
    if !LENGTHS.contains(&n) {
        return false;
    }
    // 24 words × 11 bits = 264 bits = 33 bytes at most.
    let mut buf = [0u8; 33];
    let mut bit = 0usize;
    for &ix in indices {
        for k in (0..11).rev() {
            if (ix >> k) & 1 == 1 {
                buf[bit / 8] |= 0x80 >> (bit % 8);
            }
            bit += 1;
        }
    }
    let ent_bytes = n * 4 / 3;
    let cs_bits = n / 3;
    let digest = Sha256::digest(&buf[..ent_bytes]);
    let shift = 8 - cs_bits;
    digest[0] >> shift == buf[ent_bytes] >> shift
}

/// One word found in the input.
#[derive(Debug, Clone, Copy)]
struct Word {
    index: u16,
    start: usize,
    end: usize,
}

/// Byte ranges of checksum-valid phrases in `data`, in order.
pub(crate) fn find(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut run: Vec<Word> = Vec::new();
    let mut last_end = 0;
    let mut i = 0;
    let n = data.len();
    while i < n {
        // Skip to the next letter, noting whether the gap could separate
        // the words of a written-down phrase.
        let mut gap = GAP;
        while i < n && CLASS[usize::from(data[i])] != LETTER {
            gap &= CLASS[usize::from(data[i])];
            i += 1;
        }
        let gap_ok = gap == GAP;
        if i == n {
            break;
        }
        // Read the letter run, packing its first MAX_WORD letters.
        let start = i;
        let mut key = 0u64;
        while i < n && CLASS[usize::from(data[i])] == LETTER {
            key = (key << 8) | u64::from(data[i] | 0x20);
            i += 1;
        }
        let len = i - start;
        let word = if (MIN_WORD..=MAX_WORD).contains(&len) {
            lookup_key(key)
        } else {
            None
        };
        match word {
            Some(index) => {
                if !run.is_empty() && (!gap_ok || start - last_end > MAX_GAP) {
                    flush(&run, &mut out);
                    run.clear();
                }
                run.push(Word {
                    index,
                    start,
                    end: i,
                });
            }
            None if !run.is_empty() => {
                flush(&run, &mut out);
                run.clear();
            }
            None => {}
        }
        last_end = i;
    }
    flush(&run, &mut out);
    out
}

/// Report the valid phrases in a run of consecutive words.
fn flush(run: &[Word], out: &mut Vec<(usize, usize)>) {
    if run.len() < 12 {
        return;
    }
    let mut indices = [0u16; 24];
    let mut i = 0;
    'outer: while i + 12 <= run.len() {
        for &n in &LENGTHS {
            if i + n > run.len() {
                continue;
            }
            for (d, w) in indices.iter_mut().zip(&run[i..i + n]) {
                *d = w.index;
            }
            if plausible(&indices[..n]) && checksum_ok(&indices[..n]) {
                out.push((run[i].start, run[i + n - 1].end));
                i += n;
                continue 'outer;
            }
        }
        i += 1;
    }
}

/// Whether the words could be a generated phrase rather than text that
/// happens to use list words: at least 3/4 of the words distinct (rules
/// out `[true, false, true, …]` arrays, `.word` directives and text that
/// repeats its nouns; a random 12-word phrase has 4 or more repeats with
/// probability about 4e-8) and not in list order (rules out copies of the
/// wordlist itself). Test vectors built from repeated entropy bytes, such as
/// `abandon … about`, pass the checksum but are not reported.
fn plausible(indices: &[u16]) -> bool {
    let mut sorted = [0u16; 24];
    let sorted = &mut sorted[..indices.len()];
    sorted.copy_from_slice(indices);
    sorted.sort_unstable();
    let distinct = 1 + sorted.windows(2).filter(|w| w[0] != w[1]).count();
    let ascending = indices.windows(2).all(|w| w[0] < w[1]);
    let descending = indices.windows(2).all(|w| w[0] > w[1]);
    distinct * 4 >= indices.len() * 3 && !ascending && !descending
}

/// Whether the embedded wordlist is the complete, sorted BIP-39 list.
pub(crate) fn wordlist_ok() -> bool {
    WORDS.len() == 2048 && WORDS.windows(2).all(|w| w[0] < w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_found_at_its_index_in_any_case() {
        for (i, w) in WORDS.iter().enumerate() {
            assert_eq!(index_of(w.as_bytes()), u16::try_from(i).ok(), "{w}");
            assert_eq!(
                index_of(w.to_uppercase().as_bytes()),
                u16::try_from(i).ok(),
                "{w}"
            );
        }
        assert_eq!(index_of(b"the"), None);
        assert_eq!(index_of(b"abandons"), None);
        assert_eq!(index_of(b"zooo"), None);
    }

    fn phrase(words: &str) -> Vec<(usize, usize)> {
        find(words.as_bytes())
    }

    #[test]
    fn the_wordlist_is_the_published_bip39_english_list() {
        assert!(wordlist_ok());
        let hex = hex::encode(Sha256::digest(WORDLIST_TXT.as_bytes()));
        assert_eq!(
            hex,
            "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
        );
        assert_eq!(WORDS[0], "abandon");
        assert_eq!(WORDS[2047], "zoo");
    }

    fn indices(p: &str) -> Vec<u16> {
        p.split(' ')
            .map(|w| index_of(w.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn the_checksum_accepts_the_abandon_about_vector() {
        let p = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
        assert!(checksum_ok(&indices(p)));
        let z = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong";
        assert!(checksum_ok(&indices(z)));
        let l = "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth title";
        assert!(checksum_ok(&indices(l)));
    }

    #[test]
    fn low_diversity_vectors_pass_the_checksum_but_are_not_reported() {
        let p = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
        assert!(phrase(p).is_empty());
    }

    #[test]
    fn code_syntax_between_words_ends_a_phrase() {
        let p = "legal_winner_thank_year_wave_sausage_worth_useful_legal_winner_thank_yellow";
        assert!(phrase(p).is_empty());
        let y = "legal: winner: thank: year: wave: sausage: worth: useful: legal: winner: thank: yellow";
        assert!(phrase(y).is_empty());
    }

    #[test]
    fn boolean_arrays_and_wordlist_excerpts_are_not_phrases() {
        let bools = ["true", "false"].repeat(40).join(", ");
        assert!(phrase(&bools).is_empty());
        let words = ".word 3\n".repeat(60);
        assert!(phrase(&words).is_empty());
        let list = WORDS[..200].join("\n");
        assert!(phrase(&list).is_empty());
        let mut rev = WORDS[..200].to_vec();
        rev.reverse();
        assert!(phrase(&rev.join(" ")).is_empty());
    }

    #[test]
    fn a_wrong_checksum_is_not_a_phrase() {
        let p = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon";
        assert!(phrase(p).is_empty());
    }

    #[test]
    fn published_vectors_of_every_length_are_found() {
        for p in [
            "legal winner thank year wave sausage worth useful legal winner thank yellow",
            "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
            "panic chair loud hidden piece abuse imitate neck chef refuse bone charge damage rib anchor",
            "slogan raise whale arena butter decrease guard legal spot during capital slight hazard cup fade pair accuse air eyebrow poem shield",
            "jazz decorate tail virtual hurry expire family road faint few runway liberty have decide rotate orphan earn detect",
            "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length",
            "scheme spot photo card baby mountain device kick cradle pact join borrow",
        ] {
            assert_eq!(phrase(p), vec![(0, p.len())], "{p}");
        }
    }

    #[test]
    fn the_longest_valid_phrase_wins() {
        let p = "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length";
        assert_eq!(phrase(p).len(), 1);
    }

    #[test]
    fn phrases_are_found_in_numbered_lists_json_and_capitals() {
        let p = "1. Legal 2. Winner 3. Thank 4. Year 5. Wave 6. Sausage\n7. Worth 8. Useful 9. Legal 10. Winner 11. Thank 12. Yellow";
        assert_eq!(phrase(p).len(), 1);
        let j = r#"{"m":["legal","winner","thank","year","wave","sausage","worth","useful","legal","winner","thank","yellow"]}"#;
        assert_eq!(phrase(j).len(), 1);
    }

    #[test]
    fn a_phrase_inside_prose_is_found_at_its_words() {
        let p = "seed: legal winner thank year wave sausage worth useful legal winner thank yellow. done";
        let found = phrase(p);
        assert_eq!(found.len(), 1);
        let (s, e) = found[0];
        assert!(p[s..e].starts_with("legal") && p[s..e].ends_with("yellow"));
    }

    #[test]
    fn a_non_word_or_a_long_gap_breaks_the_phrase() {
        let p = "legal winner thank year wave sausage the worth useful legal winner thank yellow";
        assert!(phrase(p).is_empty());
        let gap = format!(
            "legal winner thank year wave sausage{}worth useful legal winner thank yellow",
            " ".repeat(40)
        );
        assert!(phrase(&gap).is_empty());
    }

    #[test]
    fn eleven_words_are_not_enough() {
        assert!(
            phrase("legal winner thank year wave sausage worth useful legal winner thank")
                .is_empty()
        );
    }
}
