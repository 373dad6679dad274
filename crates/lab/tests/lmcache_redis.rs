//! LMCache has no key prefix, so a vLLM run on the redis tier gets an empty Redis database of its
//! own (`redis://host:port/N`), emptied and released when the run ends; a killed lab's database
//! is emptied by the next claim. Against the redis-server `cargo xtask ci` starts
//! (`KVLAB_REDIS_URL`); its own test binary, because one test sets PATH for a stand-in `vllm`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engines::lmcache_redis::LmcacheDb;
use engines::EngineKind;
use schema::config::Tier;
use testkit::services::redis_url;

/// The tests share the server's databases: one at a time.
static REDIS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn con(url: &str, db: u32) -> redis::Connection {
    redis::Client::open(format!("{}/{db}", url.trim_end_matches('/'))).unwrap().get_connection().unwrap()
}

fn cmd<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap()
}

fn dbsize(url: &str, db: u32) -> u64 {
    cmd(&mut con(url, db), &["DBSIZE"])
}

fn claim_of(url: &str, db: u32) -> Option<String> {
    cmd(&mut con(url, 0), &["GET", &format!("kvlab:lmcache-db:{db}")])
}

/// The database the next claim would take.
fn first_free_db(url: &str) -> u32 {
    let probe = LmcacheDb::claim(url, "probe").unwrap();
    let db = probe.db();
    probe.release().unwrap();
    db
}

#[tokio::test]
async fn two_runs_get_databases_of_their_own_emptied_when_they_end() {
    let _lock = REDIS_LOCK.lock().await;
    let url = redis_url();
    let a = LmcacheDb::claim(&url, "run-a").unwrap();
    let b = LmcacheDb::claim(&url, "run-b").unwrap();
    assert_ne!(a.db(), b.db());
    assert!(a.url().ends_with(&format!("/{}", a.db())), "{}", a.url());
    assert!(claim_of(&url, a.db()).unwrap().contains("\"run_id\":\"run-a\""));
    // LMCache's chunks, as it would store them in each run's database.
    cmd::<()>(&mut con(&url, a.db()), &["SET", "m@1@0@chunk-1", "kv of a"]);
    cmd::<()>(&mut con(&url, b.db()), &["SET", "m@1@0@chunk-1", "kv of b"]);
    let got: String = cmd(&mut con(&url, b.db()), &["GET", "m@1@0@chunk-1"]);
    assert_eq!(got, "kv of b", "the same LMCache key, not the other run's block");
    let (db_a, db_b) = (a.db(), b.db());
    a.release().unwrap();
    assert_eq!(dbsize(&url, db_a), 0, "a's chunks are gone");
    assert_eq!(claim_of(&url, db_a), None, "a's claim is gone");
    assert_eq!(dbsize(&url, db_b), 1, "b's chunks are untouched");
    drop(b);
    assert_eq!((dbsize(&url, db_b), claim_of(&url, db_b)), (0, None), "dropping releases too");
}

#[tokio::test]
async fn a_database_that_holds_data_is_never_claimed_nor_emptied() {
    let _lock = REDIS_LOCK.lock().await;
    let url = redis_url();
    let db = first_free_db(&url);
    // Someone's own data in the database a claim would take first.
    cmd::<()>(&mut con(&url, db), &["SET", "users-key", "theirs"]);
    let run = LmcacheDb::claim(&url, "run").unwrap();
    assert_ne!(run.db(), db);
    run.release().unwrap();
    let kept: String = cmd(&mut con(&url, db), &["GET", "users-key"]);
    assert_eq!(kept, "theirs");
    assert_eq!(claim_of(&url, db), None, "the claim that found data was withdrawn");
    cmd::<()>(&mut con(&url, db), &["DEL", "users-key"]);
}

#[tokio::test]
async fn a_killed_labs_database_is_emptied_by_the_next_claim() {
    let _lock = REDIS_LOCK.lock().await;
    let url = redis_url();
    let db = first_free_db(&url);
    // A claim whose owner is gone: a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let stale =
        format!(r#"{{"run_id":"killed-run","owner":{{"pid":{pid},"start_time":1,"boot_id":"gone"}}}}"#);
    cmd::<()>(&mut con(&url, 0), &["SET", &format!("kvlab:lmcache-db:{db}"), &stale]);
    cmd::<()>(&mut con(&url, db), &["SET", "m@1@0@chunk-9", "kv of the killed run"]);
    let run = LmcacheDb::claim(&url, "next").unwrap();
    assert_eq!(dbsize(&url, db), 0, "the killed run's chunks are gone");
    assert_eq!(run.db(), db, "its database is free again");
    run.release().unwrap();
    // A claim of a live lab is left alone.
    let live = LmcacheDb::claim(&url, "live").unwrap();
    cmd::<()>(&mut con(&url, live.db()), &["SET", "m@1@0@chunk-1", "kv"]);
    let other = LmcacheDb::claim(&url, "other").unwrap();
    assert_eq!(dbsize(&url, live.db()), 1);
    drop((live, other));
}

/// A stand-in `vllm`: stores a chunk where LMCache's YAML says (`remote_url`), keeps a copy of
/// the YAML, and exits as an engine that failed to start.
const FAKE_VLLM: &str = r#"#!/bin/sh
cp "$LMCACHE_CONFIG_FILE" "$FAKE_OUT/lmcache.yaml"
url=$(sed -n 's/^remote_url: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$LMCACHE_CONFIG_FILE")
redis-cli -u "$url" SET 'm@1@0@chunk-1' kv > /dev/null
echo "stored a chunk at $url"
exit 3
"#;

/// Through a whole `bench --engine vllm --tier redis`: LMCache's YAML names the claimed
/// database, and the run empties and releases it although the engine failed.
#[tokio::test]
async fn a_vllm_run_on_the_redis_tier_uses_and_empties_its_own_database() {
    let _lock = REDIS_LOCK.lock().await;
    let url = redis_url();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let vllm = bin.join("vllm");
    std::fs::write(&vllm, FAKE_VLLM).unwrap();
    std::fs::set_permissions(&vllm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));
    std::env::set_var("FAKE_OUT", dir.path());

    let mut opts = lab::run::BenchOptions::new(root(), Tier::Redis);
    opts.engine = EngineKind::Vllm;
    opts.redis_url = Some(url.clone());
    opts.out = Some(dir.path().join("results"));
    opts.progress = false;
    opts.gpu_inventory = Some(engines::GpuInventory::Available { count: 1 });
    opts.ready_timeout = Duration::from_secs(20);
    // The stand-in is `vllm` on PATH, configured by LMCache's YAML (the in-process connector),
    // serving a model from the hub: not the lab's venv, LMCache's server or its tiny model.
    opts.vllm_python = None;
    opts.lmcache_mode = engines::vllm::LmcacheMode::InProcess;
    opts.model = Some(lab::run::DEFAULT_MODEL.into());
    let err = lab::run::bench(&opts).await.expect_err("the stand-in engine exits").to_string();
    assert!(err.contains("vllm"), "{err}");

    let yaml = std::fs::read_to_string(dir.path().join("lmcache.yaml")).expect("the stand-in ran");
    let remote =
        yaml.lines().find_map(|l| l.strip_prefix("remote_url: ")).expect("remote_url").trim_matches('"');
    let db: u32 =
        remote.rsplit('/').next().unwrap().parse().unwrap_or_else(|_| panic!("no database: {remote}"));
    assert!(db >= 1, "{remote}");
    assert_eq!(dbsize(&url, db), 0, "the chunk the engine stored is gone");
    assert_eq!(claim_of(&url, db), None, "the database is released");
    let run_dir = std::fs::read_dir(dir.path().join("results")).unwrap().next().unwrap().unwrap().path();
    let run_toml = std::fs::read_to_string(run_dir.join("run.toml")).unwrap();
    assert!(
        run_toml.contains(&format!("redis_url = \"{url}/{db}\"")),
        "run.toml names the database:\n{run_toml}"
    );
    std::env::set_var("PATH", path);
}
