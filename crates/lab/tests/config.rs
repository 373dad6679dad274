//! Configuration files: tiers, experiments, LMCache keys. Errors name file, line and key.

use std::path::{Path, PathBuf};

use schema::config::{Experiment, Tier, TierConfig};
use schema::lmcache::LmcacheConfig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Parses an experiment text; returns the error message, or a one-line-per-point listing.
fn check_experiment(text: &str, expect: &str) {
    let got = match Experiment::parse("exp.toml", text) {
        Ok(e) => e
            .points
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} rate={} cache={:?} n={:?} t={:?} mock={}",
                    p.model,
                    p.tier,
                    p.workload,
                    p.request_rate,
                    p.cache_size,
                    p.num_prompts,
                    p.time_limit_s,
                    p.mock_decoding
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => e.to_string(),
    };
    assert_eq!(got.trim(), expect.trim(), "\n--- got:\n{got}\n");
}

const HEAD: &str = "name = \"x\"\n";

#[test]
fn experiment_typo_names_file_line_and_key() {
    check_experiment(
        &format!("{HEAD}[defaults]\nnum_prompts = 3\ntmie_limit = \"5s\"\n[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\n"),
        "exp.toml:4: defaults.tmie_limit: unknown field `tmie_limit`, expected one of `num_prompts`, `time_limit`, `prompt_len`, `gen_len`, `burstiness`, `max_concurrency`, `seed`, `warmup`, `mock_decoding`, `conversation_aware_eviction`, `goodput`, `engine`, `gpu` (column 1)",
    );
}

#[test]
fn experiment_bad_values_point_at_their_line() {
    check_experiment(
        &format!("{HEAD}[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\", \"ssd\"]\nworkloads=[\"random\"]\n"),
        "exp.toml:4: matrix.tiers[1]: unknown tier `ssd`; expected one of baseline, cpu, disk, redis (alias scalability) (column 16)",
    );
    check_experiment(
        &format!("{HEAD}[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\ncache_sizes=[\"4 parsecs\"]\n"),
        "exp.toml:6: matrix.cache_sizes[0]: `4 parsecs`: expected a size, e.g. \"512MiB\" or \"2GiB\" (column 14)",
    );
    check_experiment(
        &format!("{HEAD}[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"sharegpt\"]\n"),
        "exp.toml:5: matrix.workloads[0]: unknown workload `sharegpt`; expected one of shared-prefix, multi-turn, random, repeat (column 12)",
    );
    check_experiment(
        &format!("{HEAD}[defaults]\ntime_limit = \"soon\"\n[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\n"),
        "exp.toml:3: defaults.time_limit: expected seconds or e.g. \"90s\", \"5m\" (column 14)",
    );
}

#[test]
fn experiment_matrix_overrides_and_aliases() {
    check_experiment(
        &format!(
            "{HEAD}[defaults]\nnum_prompts = 10\ntime_limit = 30\n[matrix]\nmodels=[\"m\"]\ntiers=[\"scalability\"]\n\
             workloads=[\"random\", \"multi-turn\"]\nrequest_rates=[1.5, inf]\ncache_sizes=[\"1GiB\"]\n\
             [workload_overrides.multi-turn]\nnum_prompts = 4\ntime_limit = \"2m\"\nmock_decoding = true\n"
        ),
        "m redis random rate=1.5 cache=Some(1073741824) n=Some(10) t=Some(30.0) mock=false\n\
         m redis random rate=inf cache=Some(1073741824) n=Some(10) t=Some(30.0) mock=false\n\
         m redis multi-turn rate=1.5 cache=Some(1073741824) n=Some(4) t=Some(120.0) mock=true\n\
         m redis multi-turn rate=inf cache=Some(1073741824) n=Some(4) t=Some(120.0) mock=true",
    );
}

#[test]
fn experiment_gpu_blocks_sweep_every_other_axis() {
    let matrix = "[matrix]\nmodels=[\"m\"]\ntiers=[\"baseline\", \"cpu\"]\nworkloads=[\"repeat\"]\n";
    let exp = Experiment::parse("exp.toml", &format!("{HEAD}{matrix}gpu_blocks=[512, 4096]\n")).unwrap();
    let got: Vec<(String, Option<u64>)> =
        exp.points.iter().map(|p| (p.tier.to_string(), p.gpu_blocks)).collect();
    let want = [("baseline", 512), ("baseline", 4096), ("cpu", 512), ("cpu", 4096)];
    assert_eq!(got, want.map(|(t, b)| (t.to_owned(), Some(b))).to_vec());
    check_experiment(
        &format!("{HEAD}{matrix}gpu_blocks=[512, 0]\n"),
        "exp.toml:6: matrix.gpu_blocks[1]: must be at least 1 (column 18)",
    );
}

#[test]
fn shipped_experiments_parse() {
    let smoke = Experiment::load(&root().join("configs/experiments/smoke.toml")).unwrap();
    assert_eq!(smoke.points.len(), 6);
    assert_eq!(smoke.slurm.cpus_per_task, Some(1));
    let sweep = Experiment::load(&root().join("configs/experiments/offload-sweep.toml")).unwrap();
    assert_eq!(sweep.points.len(), 16);
    let mt = sweep.points.iter().find(|p| p.workload == "multi-turn").unwrap();
    assert_eq!((mt.num_prompts, mt.prompt_len, mt.time_limit_s), (Some(32), Some(4096), Some(600.0)));
    assert!(sweep.lmcache.is_some());
    // The tier experiments set the GPU cache so that reuse outgrows it.
    assert!(smoke.points.iter().all(|p| p.gpu_blocks == Some(512)));
    let pays = Experiment::load(&root().join("configs/experiments/offload-pays.toml")).unwrap();
    let sizes: Vec<_> = pays.points.iter().map(|p| (p.tier.to_string(), p.gpu_blocks.unwrap())).collect();
    assert_eq!(sizes.len(), 8);
    assert_eq!(sizes[..4].iter().map(|s| s.1).collect::<Vec<_>>(), [512, 1024, 2048, 4096]);
    let lmc = Experiment::load(&root().join("configs/experiments/lmcache-cpu-offload.toml")).unwrap();
    assert_eq!(lmc.points.len(), 2);
    assert!(lmc.points.iter().all(|p| p.workload == "repeat" && p.warmup == Some(10) && p.mock_decoding));
}

#[test]
fn experiment_slurm_table_is_checked() {
    let matrix = "[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\n";
    check_experiment(
        &format!("{HEAD}{matrix}[slurm]\npartiton = \"gpu\"\n"),
        "exp.toml:7: slurm.partiton: unknown field `partiton`, expected one of `partition`, `account`, `qos`, `cpus_per_task`, `mem`, `max_parallel`, `points_per_task`, `gpus_per_node`, `time_margin_s` (column 1)",
    );
    check_experiment(
        &format!("{HEAD}{matrix}[slurm]\nmem = \"lots\"\n"),
        "exp.toml:7: slurm.mem: `lots`: expected Slurm's syntax, e.g. \"16G\" or \"500M\" (column 1)",
    );
    check_experiment(
        &format!("{HEAD}{matrix}[slurm]\nmem = \"16G\"\n"),
        "m disk random rate=inf cache=None n=None t=None mock=false",
    );
}

#[test]
fn experiment_lmcache_typo_is_rejected() {
    check_experiment(
        &format!("{HEAD}[matrix]\nmodels=[\"m\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\n[lmcache]\nmax_local_disk_szie = 5.0\n"),
        "exp.toml:7: lmcache.max_local_disk_szie: unknown LMCache key (LMCache would only warn and ignore it); did you mean `max_local_disk_size`?",
    );
}

#[test]
fn tier_files_parse_and_lmcache_typo_is_rejected() {
    for tier in Tier::ALL {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        assert_eq!(cfg.lmcache.is_none(), tier == Tier::Baseline, "{tier}");
    }
    let text = std::fs::read_to_string(root().join("configs/tiers/disk.toml")).unwrap();
    let typo = text.replace("max_local_disk_size", "max_local_disk_szie");
    let err = TierConfig::parse(Tier::Disk, "disk.toml", &typo).unwrap_err().to_string();
    let line = typo.lines().position(|l| l.starts_with("max_local_disk_szie")).unwrap() + 1;
    assert_eq!(
        err,
        format!(
            "disk.toml:{line}: lmcache.max_local_disk_szie: unknown LMCache key (LMCache would only warn and \
             ignore it); did you mean `max_local_disk_size`?"
        )
    );
    let unknown = text.replace("[vllm]", "[vllm]\ngpu_mem = 0.5");
    let err = TierConfig::parse(Tier::Disk, "disk.toml", &unknown).unwrap_err().to_string();
    assert!(err.starts_with("disk.toml:") && err.contains("unknown field `gpu_mem`"), "{err}");
}

#[test]
fn lmcache_values_are_typed() {
    let text = std::fs::read_to_string(root().join("configs/tiers/cpu.toml")).unwrap();
    let bad = text.replace("local_cpu = true", "local_cpu = \"yes\"");
    let err = TierConfig::parse(Tier::Cpu, "cpu.toml", &bad).unwrap_err().to_string();
    assert_eq!(err, "cpu.toml:7: lmcache.local_cpu: must be true or false");
}

fn check_yaml(text: &str, expect: &str) {
    let got = match LmcacheConfig::check_yaml("lmcache.yaml", text) {
        Ok(c) => c.to_yaml(),
        Err(e) => e.to_string(),
    };
    assert_eq!(got.trim(), expect.trim());
}

#[test]
fn user_lmcache_yaml_is_checked() {
    check_yaml(
        "chunk_size: 256\nlocal_cpu: False\n# comment\nlocal_disk: \"file:///tmp/x/\"  # trailing\nextra_config:\n  a: 1\n",
        "# LMCache configuration generated by kvlab; keys checked.\nchunk_size: 256\nlocal_cpu: false\nlocal_disk: \"file:///tmp/x/\"",
    );
    check_yaml(
        "chunk_size: 256\nremote_ulr: \"redis://127.0.0.1:6379\"\n",
        "lmcache.yaml:2: remote_ulr: unknown LMCache key (LMCache would only warn and ignore it); did you mean `remote_url`?",
    );
    check_yaml("local_disk: /tmp/x\n", "lmcache.yaml:1: local_disk: must be a \"file:///path/\" URL");
}

#[test]
fn indented_lmcache_lines_are_checked() {
    // An indented line under a scalar: the old reader skipped it.
    check_yaml(
        "local_disk: file:///x\n  local_cpu: true\n",
        "lmcache.yaml:2: (top level): mapping values are not allowed in this context (column 12)",
    );
    check_yaml(
        "chunk_size: 256\n  local_cpu: true\n",
        "lmcache.yaml:1: chunk_size: must be a positive integer",
    );
    check_yaml(
        "app_id: abc\n  local_cpu: true\n",
        "lmcache.yaml:2: (top level): mapping values are not allowed in this context (column 12)",
    );
    // A line out of its block's indentation.
    check_yaml(
        "extra_config:\n  a: 1\n b: 2\n",
        "lmcache.yaml:3: (top level): while parsing a block mapping, did not find expected key (column 3)",
    );
    // A nested value where the key takes a scalar.
    check_yaml("chunk_size:\n  - 256\n", "lmcache.yaml:1: chunk_size: must be a positive integer");
    // A list of ports and extra_config pass through; the keys around them are checked.
    check_yaml(
        "lmcache_worker_ports:\n  - 1\n  - 2\nextra_config:\n  anything: {a: [1, 2]}\nchunk_sise: 3\n",
        "lmcache.yaml:6: chunk_sise: unknown LMCache key (LMCache would only warn and ignore it); did you mean `chunk_size`?",
    );
    // An unclosed quote at the end names the last line.
    check_yaml(
        "chunk_size: 256\nremote_url: \"redis://x\n",
        "lmcache.yaml:2: (top level): while scanning a quoted scalar, found unexpected end of stream (column 13)",
    );
    // Not a mapping.
    check_yaml(
        "- chunk_size\n",
        "lmcache.yaml:1: (top level): expected a mapping of `key: value` lines (column 1)",
    );
}

#[test]
fn shipped_lmcache_files_match_the_tiers() {
    for tier in [Tier::Cpu, Tier::Disk, Tier::Redis] {
        let cfg = TierConfig::load(&root().join("configs"), tier).unwrap();
        let yaml = cfg.lmcache.unwrap().to_yaml();
        let path = root().join(format!("configs/lmcache/{tier}.yaml"));
        if std::env::var_os("KVLAB_BLESS").is_some() {
            std::fs::write(&path, &yaml).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap();
        assert_eq!(shipped, yaml, "{} is out of date: run this test with KVLAB_BLESS=1", path.display());
        // The shipped file passes the same check a user's file gets.
        LmcacheConfig::check_yaml(&path.display().to_string(), &shipped).unwrap();
    }
}

/// Each case's experiment text with a one-model matrix after it; the outcome, one line each.
fn outcomes(cases: &[(&str, &str)], matrix: &str) -> String {
    cases
        .iter()
        .map(|(name, settings)| {
            let text = format!("{HEAD}{settings}{matrix}");
            match Experiment::parse("exp.toml", &text) {
                Ok(e) => format!("{name}: ok, {} point(s)", e.points.len()),
                Err(e) => format!("{name}: {e}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn experiment_engine_gpu_and_goodput_are_checked_at_their_line() {
    let matrix = "[matrix]\nmodels=[\"llama-3-8b\"]\ntiers=[\"disk\"]\nworkloads=[\"random\"]\n";
    let cases = [
        ("engine typo", "[defaults]\nengine = \"vlm\"\n"),
        ("engine known", "[defaults]\nengine = \"llamacpp\"\n"),
        ("gpu typo", "[defaults]\ngpu = \"H1000\"\n"),
        ("gpu known", "[defaults]\ngpu = \"H100\"\n"),
        ("goodput metric", "[defaults]\ngoodput = \"ttfb:300\"\n"),
        ("goodput value", "[defaults]\ngoodput = \"ttft:300 tpot:soon\"\n"),
        ("goodput known", "[defaults]\ngoodput = \"ttft:300,tpot:50\"\n"),
        ("override engine typo", "[workload_overrides.random]\nnum_prompts = 2\nengine = \"docker-vllm\"\n"),
    ];
    insta::assert_snapshot!(outcomes(&cases, matrix));
}

/// A model the engine of its point does not know is refused before any point runs, at its
/// line in `matrix.models`.
#[tokio::test]
async fn experiment_models_are_checked_before_any_point_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    let check = |engine: engines::EngineKind, models: &str| {
        let exp = dir.path().join("exp.toml");
        std::fs::write(
            &exp,
            format!(
                "{HEAD}[defaults]\nnum_prompts = 1\n[matrix]\nmodels = [\n  \"llama-3-8b\",\n  {models}\n]\n\
                 tiers = [\"cpu\"]\nworkloads = [\"random\"]\n"
            ),
        )
        .unwrap();
        let mut opts = lab::run::BenchOptions::new(dir.path(), Tier::Cpu);
        opts.engine = engine;
        opts.experiment = Some(exp);
        opts.out = Some(dir.path().join("results"));
        opts.progress = false;
        opts
    };
    let opts = check(engines::EngineKind::Emulated, "\"lama-3-8b\"");
    let err = lab::run::bench(&opts).await.expect_err("a typo of a model").to_string();
    let prefix = format!(
        "{}:7: matrix.models[1]: unknown model `lama-3-8b` for engine `emulated`",
        opts.experiment.unwrap().display()
    );
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains("llama-3-8b (meta-llama/Meta-Llama-3-8B-Instruct)"), "lists the known ones: {err}");
    assert!(!dir.path().join("results").exists(), "nothing ran");

    let opts = check(engines::EngineKind::Vllm, "\"lama-3-8b\"");
    let err = lab::run::bench(&opts).await.expect_err("vLLM needs a registry model").to_string();
    assert!(err.contains(":7: matrix.models[1]: unknown model `lama-3-8b` for engine `vllm`"), "{err}");
}
