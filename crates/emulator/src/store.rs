//! The offload tiers' real bytes: a map in RAM, chunk files in a directory, values in Redis.
//!
//! A chunk's content is derived from its key (so a read can be verified without keeping a copy)
//! and is `stored_chunk_bytes` long. Every failure is counted per tier and reported to the
//! caller, which recomputes instead; nothing here panics or gives up on the tier for good: a
//! Redis command that fails drops the connection, and the next command connects again.
//!
//! Redis keys are `kvlab:{run_id}:{chunk key}`: two runs sharing one Redis never read, overwrite
//! or delete each other's chunks, and [`Stores::cleanup`] removes exactly the run's keys (SCAN
//! over the prefix and UNLINK, never KEYS).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use kvcache::{BlockHash, Tier};

use crate::config::Resolved;
use crate::metrics::TierIo;
use crate::offload::Change;

/// Redis commands give up after this long (a server that went away must not stall requests).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The result of reading a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    Ok,
    /// Not there (evicted meanwhile, or its write has not landed yet): a plain miss.
    Missing,
    /// An I/O error or corrupt content: counted as a tier error.
    Failed,
}

#[derive(Debug, Default)]
struct Counters {
    /// Every error: reads, writes, deletes, and opening the tier.
    errors: AtomicU64,
    read_errors: AtomicU64,
    /// Failed writes and deletes.
    write_errors: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Stores {
    chunk_bytes: usize,
    cpu: Option<Mutex<HashMap<BlockHash, Vec<u8>>>>,
    disk: Option<PathBuf>,
    redis: Option<RedisStore>,
    counters: [Counters; 4],
}

#[derive(Debug)]
struct RedisStore {
    /// `kvlab:{run_id}:`.
    prefix: String,
    client: Option<redis::Client>,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// The bytes of chunk `key`: the key, then a pattern seeded by it.
fn payload(key: BlockHash, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let seed = key.0.to_le_bytes();
    v.extend_from_slice(&seed[..len.min(8)]);
    v.extend((v.len()..len).map(|i| seed[i % 8] ^ (i as u8)));
    v
}

fn verify(key: BlockHash, data: &[u8], len: usize) -> bool {
    let seed = key.0.to_le_bytes();
    data.len() == len
        && data[..len.min(8)] == seed[..len.min(8)]
        && (len <= 8 || data[len - 1] == seed[(len - 1) % 8] ^ ((len - 1) as u8))
}

fn file_name(key: BlockHash) -> String {
    format!("{key}.kv")
}

/// Reads at most `len + 1` bytes (a chunk file replaced by a device must not read forever), in
/// one blocking call: one hop to the blocking pool per chunk, not one per 2 MB buffer.
async fn read_file(path: &std::path::Path, len: usize) -> Result<Option<Vec<u8>>, ()> {
    let path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(()),
        };
        let mut data = Vec::with_capacity(len + 1);
        file.take(len as u64 + 1).read_to_end(&mut data).map_err(|_| ())?;
        Ok(Some(data))
    });
    read.await.unwrap_or(Err(()))
}

/// Writes a chunk file and waits until it reached the device (`fdatasync`), as an offload tier
/// that must survive the page cache does: the write is real device traffic, which the disk sampler
/// sees in /proc/diskstats while the run goes, not seconds later at writeback.
async fn write_durable(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path).await?;
    file.write_all(data).await?;
    // tokio's File completes the last write in the background: flush surfaces its error (a full
    // disk), which sync_data alone does not report.
    file.flush().await?;
    file.sync_data().await
}

/// `prefix` as a SCAN MATCH pattern that matches exactly the keys starting with it.
fn glob_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('*');
    p
}

impl Stores {
    /// Opens the configured tiers. A disk directory that cannot be created or a Redis URL that
    /// does not parse is counted as an error; the tier then fails every operation (and requests
    /// recompute) until it works again.
    /// `run_id` names the run's Redis keys (see the module docs).
    pub(crate) fn open(r: &Resolved, run_id: &str) -> Self {
        let stores = Stores {
            chunk_bytes: r.stored_chunk_bytes as usize,
            cpu: r.tiers.iter().any(|t| t.tier == Tier::Cpu).then(|| Mutex::new(HashMap::new())),
            disk: r.cfg.offload.disk.as_ref().map(|d| d.dir.clone()),
            redis: r.cfg.offload.remote.as_ref().map(|rc| RedisStore {
                prefix: format!("kvlab:{run_id}:"),
                client: redis::Client::open(rc.url.as_str()).ok(),
                conn: tokio::sync::Mutex::new(None),
            }),
            counters: Default::default(),
        };
        if let Some(dir) = &stores.disk {
            if std::fs::create_dir_all(dir).is_err() {
                stores.error(Tier::Disk);
            }
        }
        if stores.redis.as_ref().is_some_and(|r| r.client.is_none()) {
            stores.error(Tier::Remote);
        }
        stores
    }

    fn error(&self, tier: Tier) {
        self.counters[tier as usize].errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn io(&self, tier: Tier, chunks: u64) -> TierIo {
        let c = &self.counters[tier as usize];
        TierIo {
            tier: Some(tier),
            errors: c.errors.load(Relaxed),
            read_errors: c.read_errors.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            read_bytes: c.read_bytes.load(Relaxed),
            written_bytes: c.written_bytes.load(Relaxed),
            chunks,
        }
    }

    /// Reads and verifies chunk `key` from `tier`.
    pub(crate) async fn read(&self, tier: Tier, key: BlockHash) -> Read {
        let len = self.chunk_bytes;
        let got: Result<Option<Vec<u8>>, ()> = match tier {
            Tier::Cpu => {
                // Verified in place under the lock: no copy of the chunk.
                let found = self.cpu.as_ref().and_then(|m| {
                    let map = m.lock().unwrap_or_else(|e| e.into_inner());
                    map.get(&key).map(|d| verify(key, d, len))
                });
                return self.count_read(tier, found.map(|ok| if ok { Read::Ok } else { Read::Failed }));
            }
            Tier::Disk => match &self.disk {
                Some(dir) => read_file(&dir.join(file_name(key)), len).await,
                None => Ok(None),
            },
            Tier::Remote => self.redis_get(key).await,
            Tier::Gpu => Ok(None),
        };
        let read = match got {
            Ok(None) => None,
            Ok(Some(d)) if verify(key, &d, len) => Some(Read::Ok),
            Ok(Some(_)) | Err(()) => Some(Read::Failed),
        };
        self.count_read(tier, read)
    }

    fn count_read(&self, tier: Tier, read: Option<Read>) -> Read {
        match read {
            None | Some(Read::Missing) => Read::Missing,
            Some(Read::Ok) => {
                self.counters[tier as usize].read_bytes.fetch_add(self.chunk_bytes as u64, Relaxed);
                Read::Ok
            }
            Some(Read::Failed) => {
                self.error(tier);
                self.counters[tier as usize].read_errors.fetch_add(1, Relaxed);
                Read::Failed
            }
        }
    }

    /// Makes one change; false (and counted) when it failed.
    pub(crate) async fn apply(&self, change: Change) -> bool {
        let ok = match change {
            Change::Write(tier, key) => {
                let data = payload(key, self.chunk_bytes);
                let ok = match tier {
                    Tier::Cpu => {
                        if let Some(m) = &self.cpu {
                            m.lock().unwrap_or_else(|e| e.into_inner()).insert(key, data);
                        }
                        true
                    }
                    Tier::Disk => match &self.disk {
                        Some(dir) => write_durable(&dir.join(file_name(key)), &data).await.is_ok(),
                        None => false,
                    },
                    Tier::Remote => self.redis_set(key, data).await,
                    Tier::Gpu => true,
                };
                if ok {
                    self.counters[tier as usize].written_bytes.fetch_add(self.chunk_bytes as u64, Relaxed);
                }
                ok
            }
            Change::Delete(tier, key) => match tier {
                Tier::Cpu => {
                    if let Some(m) = &self.cpu {
                        m.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    }
                    true
                }
                Tier::Disk => match &self.disk {
                    Some(dir) => match tokio::fs::remove_file(dir.join(file_name(key))).await {
                        Ok(()) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                    },
                    None => false,
                },
                Tier::Remote => self.redis_del(key).await,
                Tier::Gpu => true,
            },
        };
        let tier = match change {
            Change::Write(t, _) | Change::Delete(t, _) => t,
        };
        if !ok {
            self.error(tier);
            self.counters[tier as usize].write_errors.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Deletes every Redis key of the run (SCAN over the run's prefix, UNLINK in batches);
    /// returns how many were deleted, or `None` (counted as an error) when Redis failed.
    /// Nothing to do without a redis tier.
    pub(crate) async fn cleanup(&self) -> Option<u64> {
        let Some(r) = &self.redis else { return Some(0) };
        let pattern = glob_prefix(&r.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let Ok((next, keys)) = self.redis_cmd::<(u64, Vec<Vec<u8>>)>(scan).await else {
                self.error(Tier::Remote);
                return None;
            };
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                let Ok(n) = self.redis_cmd::<u64>(unlink).await else {
                    self.error(Tier::Remote);
                    return None;
                };
                deleted += n;
            }
            if next == 0 {
                return Some(deleted);
            }
            cursor = next;
        }
    }

    fn redis_key(&self, key: BlockHash) -> String {
        let prefix = self.redis.as_ref().map_or("", |r| r.prefix.as_str());
        format!("{prefix}{key}")
    }

    async fn redis_conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        let r = self.redis.as_ref()?;
        let mut slot = r.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let client = r.client.as_ref()?;
        let conn = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok()?;
        *slot = Some(conn.clone());
        Some(conn)
    }

    /// Forgets the connection after a failure so the next call reconnects.
    async fn redis_reset(&self) {
        if let Some(r) = &self.redis {
            *r.conn.lock().await = None;
        }
    }

    async fn redis_cmd<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, ()> {
        let Some(mut conn) = self.redis_conn().await else {
            return Err(());
        };
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            _ => {
                self.redis_reset().await;
                Err(())
            }
        }
    }

    async fn redis_get(&self, key: BlockHash) -> Result<Option<Vec<u8>>, ()> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.redis_key(key));
        self.redis_cmd(cmd).await
    }

    async fn redis_set(&self, key: BlockHash, data: Vec<u8>) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key)).arg(data);
        self.redis_cmd::<()>(cmd).await.is_ok()
    }

    async fn redis_del(&self, key: BlockHash) -> bool {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.redis_key(key));
        self.redis_cmd::<()>(cmd).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_prefix_matches_only_the_prefix() {
        assert_eq!(glob_prefix("kvlab:run-1:"), "kvlab:run-1:*");
        assert_eq!(glob_prefix("kvlab:a*b?[c]\\:"), "kvlab:a\\*b\\?\\[c\\]\\\\:*");
    }

    #[test]
    fn payload_verifies_only_itself() {
        let k = BlockHash(0x0123_4567_89ab_cdef);
        let p = payload(k, 1000);
        assert!(verify(k, &p, 1000));
        assert!(!verify(BlockHash(1), &p, 1000));
        assert!(!verify(k, &p[..999], 1000));
        assert!(!verify(k, &vec![0; 1000], 1000));
    }
}
