//! Shell quoting, the one the lab uses for every command line it shows or writes (`--dry-run`,
//! Slurm batch scripts, the Kubernetes Job's command), through the `shlex` crate.

/// `word` as one POSIX shell word: unchanged where it is safe bare, else quoted. A NUL byte, which
/// no argument can hold, is kept as it is (`shlex` refuses it otherwise).
///
/// `shlex` quotes every word with `=`, `,` or `%`, which no POSIX shell treats specially inside
/// an argument; such words stay bare, so the commands the lab prints read as a user types them
/// (`--trace=cuda,nvtx,osrt`, not `'--trace=cuda,nvtx,osrt'`).
pub fn quote(word: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-_./:@+=,%".contains(c);
    if !word.is_empty() && word.chars().all(bare) {
        return word.to_owned();
    }
    shlex::Quoter::new().allow_nul(true).quote(word).map_or_else(|_| word.to_owned(), |q| q.into_owned())
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_come_back_from_a_shell_as_they_went_in() {
        let cases = [
            ("plain-word_1.2/x:y@z+", "plain-word_1.2/x:y@z+"),
            ("--flag=a,b%", "--flag=a,b%"),
            ("--trace=cuda,nvtx,osrt", "--trace=cuda,nvtx,osrt"),
            ("a=b c", "'a=b c'"),
            ("", "''"),
            ("two words", "'two words'"),
            ("it's", r#""it's""#),
            ("$HOME `id` \"q\"", "'$HOME `id` \"q\"'"),
        ];
        for (word, quoted) in cases {
            assert_eq!(quote(word), quoted, "{word:?}");
            assert_eq!(shlex::split(&quote(word)), Some(vec![word.to_owned()]), "{word:?}");
        }
    }
}
