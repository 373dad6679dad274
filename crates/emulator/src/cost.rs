//! Model and GPU resolution through kvlab's one registry (`costmodel`, parsed from
//! `configs/models.toml` and `configs/gpus.toml`). The emulator has no tables or formulas of its
//! own: step and load times come from [`costmodel::CostModel`].

use std::sync::OnceLock;

use costmodel::{GpuSpec, ModelSpec, Registry};

use crate::Error;

/// The built-in registry, parsed once.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::builtin)
}

/// The model whose name or Hugging Face id is `name`, ignoring ASCII case; the first such entry
/// (as [`Registry::model`]).
pub(crate) fn model<'r>(registry: &'r Registry, name: &str) -> Result<&'r ModelSpec, Error> {
    registry
        .models
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name) || m.hf_id.eq_ignore_ascii_case(name))
        .ok_or_else(|| Error::UnknownName {
            what: "model",
            name: name.to_owned(),
            known: registry.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })
}

/// The GPU called `name`, ignoring ASCII case.
pub(crate) fn gpu<'r>(registry: &'r Registry, name: &str) -> Result<&'r GpuSpec, Error> {
    registry.gpus.iter().find(|g| g.name.eq_ignore_ascii_case(name)).ok_or_else(|| Error::UnknownName {
        what: "gpu",
        name: name.to_owned(),
        known: registry.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(what: &str, name: &str, expect: &str) {
        let r = registry();
        let got = match what {
            "model" => model(r, name).map(|m| format!("{} tp={}", m.name, m.tensor_parallel)),
            _ => gpu(r, name).map(|g| g.name.clone()),
        };
        assert_eq!(got.unwrap_or_else(|e| e.to_string()), expect);
    }

    #[test]
    fn names_resolve_case_insensitively_and_unknown_ones_list_the_known() {
        check("model", "llama-3-8b", "llama-3-8b tp=1");
        check("model", "LLAMA-3-8B", "llama-3-8b tp=1");
        check("model", "meta-llama/meta-llama-3-8b-instruct", "llama-3-8b tp=1");
        // Two entries share the 70B's id: the first (TP 4) wins, as in the registry.
        check("model", "meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b-tp4 tp=4");
        check(
            "model",
            "gpt-5",
            "unknown model \"gpt-5\" (known: llama-3-8b, llama-3-70b-tp4, llama-3-70b-tp8, qwen3-8b, \
             mistral-7b, tiny-llama, tiny-llama-hf)",
        );
        check("gpu", "H100", "h100");
        check("gpu", "b200", "unknown gpu \"b200\" (known: a100-80g, h100, h200, l4, l40s)");
    }
}
