//! The emulator's prefix cache request by request against what real vLLM (0.32.0, its CPU build,
//! `--num-gpu-blocks-override 40`, blocks of 128 tokens) hit on the same plans, one request at a
//! time: the plans of the lab's `emulator_hits_what_vllm_hits` tests (`crates/lab/tests/vllm.rs`),
//! which hold the emulator against a live vLLM where `cargo xtask ci` installed one. Here the
//! figures vLLM gave are frozen, so a change to the block pool that moves any request's hit fails
//! without vLLM (docs/fidelity.md, "The emulator's prefix cache against the real vLLM").

use emulator::{run_virtual, EmulatorConfig};
use workload::{
    build_plan, ArrivalSpec, Dependency, LengthDist, Limits, Mode, Plan, Prompt, PromptFormat, Request,
    RequestMeta, Schedule, SecondsDist, SessionsSpec, SharedPrefixSpec, Source, WorkloadSpec,
};

/// The lab's plan for `--workload <source> --num-requests N --prompt-len 2048|1024 --gen-len 4
/// --max-concurrency 1 --seed 3` on a cache of 40 blocks of 128 tokens.
fn plan(source: Source) -> Plan {
    let spec = WorkloadSpec { source, format: PromptFormat::Tokens, vocab: Default::default() };
    let arrival = ArrivalSpec {
        schedule: Schedule::Constant { rate: f64::INFINITY },
        max_concurrency: Some(1),
        warmup: 0,
        duration_s: None,
    };
    build_plan(&spec, &arrival, 3, None).unwrap()
}

/// Runs `plan` on the emulator with vLLM's cache and checks each request's cached tokens, in
/// blocks of 128, against `vllm` (request id, blocks hit), every other request hitting nothing.
fn check(plan: &Plan, vllm: &[(u64, u32)]) {
    let mut cfg = EmulatorConfig { model: "tiny-llama-hf".to_owned(), ..EmulatorConfig::default() };
    cfg.scheduler.block_size = 128;
    cfg.scheduler.num_gpu_blocks = Some(40);
    let records = run_virtual(&cfg, plan).unwrap();
    assert_eq!(records.len(), plan.requests.len());
    let got: Vec<(u64, u32)> = records
        .iter()
        .map(|r| (r.id, r.cached_tokens.expect("cached tokens counted")))
        .filter(|&(_, tokens)| tokens > 0)
        .map(|(id, tokens)| {
            assert_eq!(tokens % 128, 0, "request {id}: {tokens} cached tokens");
            (id, tokens / 128)
        })
        .collect();
    assert_eq!(got, vllm, "(request, blocks hit): emulator against vLLM");
}

/// 8 groups of a 1,920-token prefix (15 blocks) and a 128-token suffix of their own: 40
/// requests, 15,232 cached tokens on vLLM.
#[test]
fn shared_prefix_hits_what_vllm_hit() {
    let p = plan(Source::SharedPrefix(SharedPrefixSpec {
        num_requests: 40,
        groups: 8,
        prefix_len: 1920,
        suffix_len: LengthDist::fixed(128),
        output_len: LengthDist::fixed(4),
    }));
    check(
        &p,
        &[
            (3, 15),
            (5, 5),
            (7, 15),
            (12, 6),
            (14, 6),
            (17, 6),
            (18, 15),
            (23, 15),
            (27, 15),
            (30, 15),
            (38, 6),
        ],
    );
}

/// 8 sessions of 4 turns over a 512-token system prompt, 128-token user turns and 4-token
/// answers: 32 requests, 22,016 cached tokens on vLLM. Requests `4s + t - 1` are session `s`'s
/// turn `t`; every turn after the first hits the whole previous prompt but its last, partly
/// written block, every first turn but the first hits the system prompt.
#[test]
fn multi_turn_hits_what_vllm_hit() {
    let p = plan(Source::Sessions(SessionsSpec {
        sessions: 8,
        turns: LengthDist::fixed(4),
        system_prompt_len: 512,
        tools_len: 0,
        user_len: LengthDist::fixed(128),
        output_len: LengthDist::fixed(4),
        think_time: SecondsDist::Fixed { value: 0.2 },
    }));
    let mut vllm = Vec::new();
    for session in 0..8u64 {
        for turn in 1..=4u32 {
            let blocks = if turn == 1 { 4 } else { 3 + turn };
            if session > 0 || turn > 1 {
                vllm.push((session * 4 + u64::from(turn) - 1, blocks));
            }
        }
    }
    check(&p, &vllm);
}

/// A request that generates across several blocks (each full block of generated tokens is
/// cached, as on vLLM, but matches no prompt), then the same prompt again, then the prompt and
/// one block more: the second hits the prompt but its last block (the hit stops a token short),
/// so it recomputes that block into a second block of the same hash; the third hits both.
#[test]
fn long_generations_and_recomputed_blocks() {
    let prompt: Vec<u32> = (0..256).collect();
    let mut longer = prompt.clone();
    longer.extend(1_000..1_128);
    let request = |id: u64, tokens: &[u32], max_tokens: u32| Request {
        id,
        prompt_len: tokens.len() as u32,
        prompt: Prompt::Tokens(tokens.to_vec()),
        max_tokens,
        send_at: None,
        depends_on: id.checked_sub(1).map(|parent| Dependency { parent, think_time: Default::default() }),
        meta: RequestMeta::default(),
    };
    let plan = Plan {
        requests: vec![request(0, &prompt, 300), request(1, &prompt, 4), request(2, &longer, 4)],
        mode: Mode::Open,
        limits: Limits::default(),
    };
    check(&plan, &[(1, 1), (2, 2)]);
}
