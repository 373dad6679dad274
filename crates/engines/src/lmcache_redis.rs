//! A Redis database of its own for each vLLM + LMCache run on the redis tier.
//!
//! LMCache has no key prefix setting: its keys carry the model, the world size, the worker and
//! the chunk hash, so two runs of one model sharing a Redis would hit each other's chunks. Its
//! Redis URL does take a database number (`redis://host:port/N`). A run therefore claims a
//! database that is empty, gives LMCache that URL, and when it ends empties the database and
//! releases it ([`LmcacheDb`]'s drop).
//!
//! Invariants:
//! - A claim is the key `kvlab:lmcache-db:N` in database 0, holding the run id and its owner
//!   (pid, start time, boot id: [`Owner`]). Claims are taken with `SET NX` and changed or
//!   deleted only by a script that compares the value first, so two labs never hold one
//!   database.
//! - Only an empty database is claimed, so everything in a claimed database is the run's, and
//!   emptying it on release removes nothing else.
//! - A claim whose owner is gone (a lab killed with SIGKILL) is reaped by the next claim on the
//!   same Redis: its database is emptied and the claim deleted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::emulated::{redis_unreachable, without_credentials};
use super::orphans::Owner;
use crate::error::{EngineError, Result};

/// The claim of database `N`, in database 0.
fn claim_key(db: u32) -> String {
    format!("kvlab:lmcache-db:{db}")
}

/// What a claim holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    run_id: String,
    owner: Owner,
}

/// `SET key new` only while `key` still holds `old`; 1 when it did.
const SWAP: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) \
                    return 1 else return 0 end";
/// `DEL key` only while `key` still holds `value`; 1 when it did.
const DELETE_IF: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

const TIMEOUT: Duration = Duration::from_secs(5);

/// A database claimed for one run: emptied and released when dropped.
#[derive(Debug)]
pub struct LmcacheDb {
    base: String,
    db: u32,
    claim: String,
    released: bool,
}

impl LmcacheDb {
    /// Claims an empty database of the Redis at `url` (its database part, if any, is ignored)
    /// for `run_id`, reaping first the claims of labs that are gone. Refused when Redis does
    /// not answer or every database is in use.
    pub fn claim(url: &str, run_id: &str) -> Result<LmcacheDb> {
        let base = base_url(url)?;
        let mut con = connect(&base, 0)?;
        let databases = databases(&mut con);
        let me = serde_json::to_string(&Claim { run_id: run_id.to_owned(), owner: Owner::current() })
            .map_err(|source| EngineError::Json { what: "LMCache Redis claim".to_owned(), source })?;
        reap_stale(&base, &mut con, databases)?;
        for db in 1..databases {
            let key = claim_key(db);
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&me)
                .arg("NX")
                .query(&mut con)
                .map_err(|e| failed(&base, e))?;
            if taken.is_none() {
                continue;
            }
            let size: u64 =
                redis::cmd("DBSIZE").query(&mut connect(&base, db)?).map_err(|e| failed(&base, e))?;
            if size == 0 {
                return Ok(LmcacheDb { base, db, claim: me, released: false });
            }
            // Someone else's data: not ours to claim, nor to empty.
            unclaim(&base, &mut con, db, &me)?;
        }
        Err(EngineError::launch(
            "vllm",
            format!(
                "the redis tier gives each run an empty Redis database of its own (LMCache has no key \
                 prefix), and every database 1-{} of {} is in use or holds data; free one, or raise \
                 `databases` in redis.conf",
                databases - 1,
                without_credentials(&base)
            ),
        ))
    }

    /// The database's number.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// The URL LMCache gets: the Redis's, with the claimed database.
    pub fn url(&self) -> String {
        with_db(&self.base, self.db)
    }

    /// Empties the database and deletes the claim (if it is still this run's).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.release_now()
    }

    fn release_now(&self) -> Result<()> {
        let mut data = connect(&self.base, self.db)?;
        redis::cmd("FLUSHDB").query::<()>(&mut data).map_err(|e| failed(&self.base, e))?;
        unclaim(&self.base, &mut connect(&self.base, 0)?, self.db, &self.claim)
    }
}

/// Deletes the claim of `db` if it still holds `claim`.
fn unclaim(base: &str, con: &mut redis::Connection, db: u32, claim: &str) -> Result<()> {
    redis::cmd("EVAL")
        .arg(DELETE_IF)
        .arg(1)
        .arg(claim_key(db))
        .arg(claim)
        .query::<i64>(con)
        .map(|_| ())
        .map_err(|e| failed(base, e))
}

impl Drop for LmcacheDb {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.release_now() {
                eprintln!("warning: LMCache's Redis database {} was not emptied: {e}", self.db);
            }
        }
    }
}

/// Empties the databases of claims whose owner is gone and deletes those claims.
fn reap_stale(base: &str, con: &mut redis::Connection, databases: u32) -> Result<()> {
    for db in 1..databases {
        let key = claim_key(db);
        let Some(value): Option<String> =
            redis::cmd("GET").arg(&key).query(con).map_err(|e| failed(base, e))?
        else {
            continue;
        };
        // A value that is not a claim is left alone: it was not written by kvlab.
        let Ok(claim) = serde_json::from_str::<Claim>(&value) else { continue };
        if claim.owner.is_alive() {
            continue;
        }
        // Take the stale claim over (only if nobody else did), empty its database, release it.
        let reaper = format!("{{\"reaping\":{value}}}");
        let swapped: i64 = redis::cmd("EVAL")
            .arg(SWAP)
            .arg(1)
            .arg(&key)
            .arg(&value)
            .arg(&reaper)
            .query(con)
            .map_err(|e| failed(base, e))?;
        if swapped == 1 {
            eprintln!(
                "kvlab: emptied Redis database {db}, left by run {} of a lab that is gone (pid {})",
                claim.run_id, claim.owner.pid
            );
            LmcacheDb { base: base.to_owned(), db, claim: reaper, released: false }.release()?;
        }
    }
    Ok(())
}

/// The number of databases the server has (`CONFIG GET databases`; 16, Redis's default, where
/// CONFIG is not allowed).
fn databases(con: &mut redis::Connection) -> u32 {
    redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query::<Vec<String>>(con)
        .ok()
        .and_then(|v| v.get(1)?.parse().ok())
        .unwrap_or(16)
}

fn connect(base: &str, db: u32) -> Result<redis::Connection> {
    let client = redis::Client::open(with_db(base, db)).map_err(|e| failed(base, e))?;
    client.get_connection_with_timeout(TIMEOUT).map_err(|e| failed(base, e))
}

fn failed(base: &str, e: redis::RedisError) -> EngineError {
    redis_unreachable("vllm", base, e)
}

/// `url` without its database and query: `redis[s]://[user:password@]host[:port]`.
fn base_url(url: &str) -> Result<String> {
    let rest = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")).ok_or_else(|| {
        EngineError::invalid(format!(
            "redis URL `{}`: LMCache's redis tier takes redis://HOST:PORT or rediss://HOST:PORT",
            without_credentials(url)
        ))
    })?;
    let scheme = &url[..url.len() - rest.len()];
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    Ok(format!("{scheme}{authority}"))
}

/// `base` with database `db`: `redis://host:port/N`.
fn with_db(base: &str, db: u32) -> String {
    format!("{base}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let check = |url: &str, expect: &str| {
            let got = base_url(url).map(|b| with_db(&b, 3)).unwrap_or_else(|e| e.to_string());
            assert_eq!(got, expect, "{url}");
        };
        check("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/3");
        check("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/3");
        check("rediss://u:p@h:6380/2?x=1", "rediss://u:p@h:6380/3");
        check("redis://h", "redis://h/3");
        check(
            "unix:///tmp/r.sock",
            "invalid configuration: redis URL `unix:///tmp/r.sock`: LMCache's redis tier takes \
             redis://HOST:PORT or rediss://HOST:PORT",
        );
    }
}
