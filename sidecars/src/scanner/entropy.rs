//! Shannon entropy of a byte string, in bits per byte.

/// `H = -Σ p·log2(p)` over the byte frequencies of `data`; 0 for empty input.
pub(crate) fn shannon(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    #[allow(clippy::cast_precision_loss)] // lengths far below 2^52
    let len = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_byte_has_zero_entropy() {
        assert_eq!(shannon(b"aaaaaaaa"), 0.0);
        assert_eq!(shannon(b""), 0.0);
    }

    #[test]
    fn distinct_bytes_give_log2_of_their_count() {
        assert!((shannon(b"ab") - 1.0).abs() < 1e-12);
        assert!((shannon(b"0123456789abcdef") - 4.0).abs() < 1e-12);
    }

    #[test]
    fn random_looking_tokens_score_above_words() {
        assert!(shannon(b"q7Zx2LmP9vKt4RbN8wYc") > 4.0);
        assert!(shannon(b"password") < 3.0);
    }
}
