//! "Did you mean": the known word nearest to a mistyped one, for config keys, enum values
//! and tool names.

/// The candidate nearest to `word` by edit distance, when it is close enough to be the
/// word meant: at most one edit for short words, two from 6 characters, three from 12.
/// Ties go to the first candidate. `None` when nothing is that close, or `word` is itself
/// a candidate.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=5 => 1,
        6..=11 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == word {
            return None;
        }
        let d = distance(&word.to_lowercase(), &candidate.to_lowercase());
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance, where swapping two neighbouring characters counts as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: the distance between a[..i] and b[..j]; only the last three rows are kept.
    let mut two_back = vec![0; b.len() + 1];
    let mut one_back: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitute = one_back[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut d = substitute.min(one_back[j] + 1).min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(two_back[j - 2] + 1);
            }
            row[j] = d;
        }
        two_back = std::mem::replace(&mut one_back, row);
    }
    one_back[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 5] = ["name", "command", "timeout", "max_output", "container"];

    #[test]
    fn a_typo_finds_its_key() {
        assert_eq!(nearest("timout", KEYS), Some("timeout"));
        assert_eq!(nearest("comand", KEYS), Some("command"));
        assert_eq!(nearest("max_ouptut", KEYS), Some("max_output"));
        assert_eq!(nearest("Name", KEYS), Some("name"));
    }

    #[test]
    fn a_different_word_finds_nothing() {
        assert_eq!(nearest("image", KEYS), None);
        assert_eq!(nearest("x", KEYS), None);
        assert_eq!(
            nearest("timeout", KEYS),
            None,
            "the word itself is not a suggestion"
        );
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("same", "same"), 0);
    }
}
