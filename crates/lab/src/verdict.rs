//! Whether a bench run passed: unlike `vllm bench serve`, a run where requests failed never looks
//! like a success.

use std::path::PathBuf;

use crate::run::RunReport;

/// A run where more requests failed than allowed (or where none was sent).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{run}: {failed} of {sent} requests failed (allowed fraction {max_failed_fraction}); records are in {}{}",
    records.display(),
    hint.as_deref().map(|h| format!("\n{h}")).unwrap_or_default()
)]
pub struct TooManyFailed {
    /// The result directory's name.
    pub run: String,
    pub failed: u64,
    pub sent: u64,
    pub max_failed_fraction: f64,
    /// The run's `requests.jsonl`.
    pub records: PathBuf,
    /// What to do about the failures, where the lab recognises them ([`failure_hint`]).
    pub hint: Option<String>,
}

/// The first run whose failed fraction exceeds `max_failed_fraction` (or that sent nothing).
/// The requests a point's `time_limit` cut short (`interrupted`) are not failures of the engine.
pub fn check_failures(reports: &[RunReport], max_failed_fraction: f64) -> Result<(), TooManyFailed> {
    for report in reports {
        let s = &report.summary;
        let cut = if report.time_limit_reached {
            s.failed_by_class.get("interrupted").copied().unwrap_or(0)
        } else {
            0
        };
        let sent = s.completed + s.failed - cut;
        let failed = s.failed - cut;
        let fraction = if sent == 0 { 1.0 } else { failed as f64 / sent as f64 };
        if sent == 0 || fraction > max_failed_fraction {
            return Err(TooManyFailed {
                run: report.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                failed,
                sent,
                max_failed_fraction,
                records: report.dir.join("requests.jsonl"),
                hint: report.hint.clone(),
            });
        }
    }
    Ok(())
}

/// What to do about a failed request, where the lab recognises why it failed: a server that
/// refuses the prompt's token ids (HTTP 400 whose body speaks of the vocabulary, or of an invalid
/// token or prompt) serves a model whose vocabulary is smaller than the ids drawn, and
/// `--vocab-size` draws them below its size. Read once per run over its records, never per token.
pub(crate) fn failure_hint(error: &stats::RequestError) -> Option<String> {
    let stats::RequestError::HttpStatus { status: 400, body } = error else { return None };
    let lower = body.to_ascii_lowercase();
    let token = lower.contains("token");
    let refused = lower.contains("vocab")
        || (token && (lower.contains("out of range") || lower.contains("invalid")))
        || (lower.contains("prompt") && lower.contains("invalid"));
    refused.then(|| {
        let d = workload::Vocab::default();
        format!(
            "hint: the server refused the prompts' token ids (HTTP 400: {}); its model's vocabulary \
             is likely smaller than the ids drawn ({}..{} unless the lab knows the model): pass \
             --vocab-size N, N the served model's vocabulary size (`vocab_size` in its config.json)",
            one_line(body),
            d.start,
            d.end
        )
    })
}

/// The first 200 characters of a server's answer, on one line.
fn one_line(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::failure_hint;
    use stats::RequestError;

    #[test]
    fn a_refused_vocabulary_suggests_vocab_size() {
        let http = |status: u16, body: &str| RequestError::HttpStatus { status, body: body.to_owned() };
        let cases: [(RequestError, bool); 9] = [
            // vLLM's answer to an id past its tokenizer.
            (
                http(
                    400,
                    r#"{"error":{"message":"Token id 29187 is out of vocabulary","type":"BadRequestError","param":null,"code":400}}"#,
                ),
                true,
            ),
            (http(400, "input token 9000 out of range [0, 8192)"), true),
            (http(400, "Invalid token ids in prompt"), true),
            (http(400, "the prompt is invalid"), true),
            (http(400, "VOCAB size exceeded"), true),
            // Other refusals, and other statuses, are not the vocabulary's.
            (http(400, "max_tokens must be at least 1"), false),
            (http(404, "Token id 29187 is out of vocabulary"), false),
            (http(500, "invalid prompt"), false),
            (RequestError::Connect { message: "token id out of vocabulary".into() }, false),
        ];
        for (error, hinted) in cases {
            let hint = failure_hint(&error);
            assert_eq!(hint.is_some(), hinted, "{error:?}: {hint:?}");
            if let Some(h) = hint {
                assert!(h.contains("--vocab-size N"), "{h}");
                assert!(h.contains(&error.detail()[5..]), "the server's answer is quoted: {h}");
            }
        }
    }
}
