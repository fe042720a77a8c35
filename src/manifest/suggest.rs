//! "Did you mean" suggestions for misspelt keys.

/// The closest candidate within a small edit distance, if any.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.len() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (levenshtein(&word.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment), so `wbe` is one edit from `web`.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_typo_is_suggested() {
        assert_eq!(did_you_mean("alow", &["allow", "image"]), Some("allow"));
        assert_eq!(
            did_you_mean("memory_mb", &["memory_mib", "cpus"]),
            Some("memory_mib")
        );
    }

    #[test]
    fn swapped_letters_count_as_one_edit() {
        assert_eq!(did_you_mean("wbe", &["web"]), Some("web"));
    }

    #[test]
    fn unrelated_word_gets_no_suggestion() {
        assert_eq!(did_you_mean("banana", &["allow", "image"]), None);
    }
}
