//! The scheduler core, shaped like vLLM v1's: continuous batching under a per-step token budget
//! and `max_num_seqs`, chunked prefill, prefix caching on the GPU block pool, preemption by
//! recomputation when blocks run out, and LMCache-like offload hits loaded instead of recomputed.
//!
//! Clock-free: the caller passes `now` (seconds) to [`Core::step`], which returns when the step
//! ends according to the cost model. Real time sleeps until then; virtual time jumps there.

use std::collections::{HashMap, VecDeque};

use costmodel::{PrefillChunk, StepShape, TierLink};
use kvcache::{BlockHash, HashAlgo, HashConfig, Tier};

use crate::blocks::BlockPool;
use crate::config::Resolved;
use crate::metrics::{EngineMetrics, Gauges};
use crate::offload::Access;

/// A request handed to the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct NewRequest {
    pub(crate) id: u64,
    pub(crate) prompt_len: u32,
    /// From [`Core::block_hashes`] of the prompt.
    pub(crate) block_hashes: Vec<BlockHash>,
    pub(crate) max_tokens: u32,
    pub(crate) arrival: f64,
    /// LMCache chunk keys of the prompt (full chunks).
    pub(crate) chunk_keys: Vec<BlockHash>,
    /// For the leading chunks an offload tier holds: which tier (the fastest holding it).
    pub(crate) offload_hits: Vec<Tier>,
    /// The request's conversation, for the offload tiers' policy.
    pub(crate) access: Access,
}

#[derive(Debug)]
struct Req {
    prompt_len: u32,
    block_hashes: Vec<BlockHash>,
    chunk_keys: Vec<BlockHash>,
    offload_hits: Vec<Tier>,
    max_tokens: u32,
    output: u32,
    computed: u32,
    blocks: Vec<u32>,
    /// Blocks registered in the prefix cache.
    cached_blocks: usize,
    arrival: f64,
    first_scheduled: Option<f64>,
    first_token: Option<f64>,
    cached_tokens: u32,
    stored: bool,
    access: Access,
}

impl Req {
    fn num_tokens(&self) -> u32 {
        self.prompt_len + self.output
    }
}

/// A request that finished in the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Finished {
    pub(crate) id: u64,
    pub(crate) prompt_tokens: u32,
    pub(crate) output_tokens: u32,
    /// Prompt tokens not computed at first scheduling (GPU prefix hits plus offload loads).
    pub(crate) cached_tokens: u32,
}

/// What a step did. Buffers are reused from step to step.
#[derive(Debug, Default)]
pub(crate) struct StepOutput {
    pub(crate) start: f64,
    pub(crate) end: f64,
    /// Requests that got one new token at `end`, with their output count so far.
    pub(crate) emitted: Vec<(u64, u32)>,
    pub(crate) finished: Vec<Finished>,
    /// Requests whose prefill completed: their chunk keys go to the offload tiers, as accesses
    /// at the step's end.
    pub(crate) stores: Vec<(u64, Vec<BlockHash>, Access)>,
    /// Requests scheduled for the first time in the step (vLLM's `scheduled_new_reqs`).
    pub(crate) new_reqs: u32,
    /// Requests that continued from an earlier step (vLLM's `scheduled_cached_reqs`).
    pub(crate) cached_reqs: u32,
}

#[derive(Debug)]
pub(crate) struct Core {
    r: Resolved,
    hash_cfg: HashConfig,
    pool: BlockPool,
    reqs: HashMap<u64, Req>,
    waiting: VecDeque<u64>,
    running: Vec<u64>,
    pub(crate) metrics: EngineMetrics,
    out: StepOutput,
    /// End of the last step.
    now: f64,
    scheduled: Vec<(u64, u32)>,
    hit_ids: Vec<u32>,
    shape: StepShape,
    /// Modelled KV bytes loaded in this step, per tier (indexed by `Tier as usize`).
    load_bytes: [u64; 4],
}

impl Core {
    pub(crate) fn new(r: Resolved) -> Self {
        let hash_cfg = HashConfig { block_size: r.cfg.scheduler.block_size, algo: HashAlgo::Xxh3 };
        let blocks = r.num_gpu_blocks.min(u64::from(u32::MAX - 1)) as u32;
        Core {
            pool: BlockPool::new(blocks),
            r,
            hash_cfg,
            reqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics: EngineMetrics::default(),
            out: StepOutput::default(),
            now: 0.0,
            scheduled: Vec::new(),
            hit_ids: Vec::new(),
            shape: StepShape::default(),
            load_bytes: [0; 4],
        }
    }

    /// The end of the last step (model seconds).
    pub(crate) fn now(&self) -> f64 {
        self.now
    }

    pub(crate) fn gauges(&self) -> Gauges {
        Gauges { running: self.running.len(), waiting: self.waiting.len(), kv_usage: self.pool.usage() }
    }

    /// The prompt's GPU block hashes (empty when prefix caching is off).
    pub(crate) fn block_hashes(&self, tokens: &[u32]) -> Vec<BlockHash> {
        if self.r.cfg.scheduler.enable_prefix_caching {
            kvcache::block_hashes(&self.hash_cfg, tokens, None)
        } else {
            Vec::new()
        }
    }

    /// Tokens of the prompt's prefix now in the GPU prefix cache (a hint for the offload shell).
    pub(crate) fn gpu_hit_tokens(&self, hashes: &[BlockHash]) -> u32 {
        let mut ids = Vec::new();
        self.pool.computed_blocks(hashes, &mut ids);
        ids.len() as u32 * self.hash_cfg.block_size
    }

    /// Queues a request. The caller checked `prompt + max_tokens <= max_model_len`, `max_tokens
    /// >= 1` and a non-empty prompt, and never reuses an id.
    pub(crate) fn add(&mut self, req: NewRequest) {
        self.reqs.insert(
            req.id,
            Req {
                prompt_len: req.prompt_len,
                block_hashes: req.block_hashes,
                chunk_keys: req.chunk_keys,
                offload_hits: req.offload_hits,
                max_tokens: req.max_tokens,
                output: 0,
                computed: 0,
                blocks: Vec::new(),
                cached_blocks: 0,
                arrival: req.arrival,
                first_scheduled: None,
                first_token: None,
                cached_tokens: 0,
                stored: false,
                access: req.access,
            },
        );
        self.waiting.push_back(req.id);
    }

    /// Drops a request (client gone); frees its blocks.
    pub(crate) fn abort(&mut self, id: u64) {
        if let Some(req) = self.reqs.remove(&id) {
            self.pool.free(&req.blocks);
            self.running.retain(|&x| x != id);
            self.waiting.retain(|&x| x != id);
        }
    }

    fn blocks_for(&self, tokens: u32) -> usize {
        tokens.div_ceil(self.hash_cfg.block_size) as usize
    }

    /// Marks request `id`'s blocks full up to its first `tokens` tokens, as vLLM's
    /// `cache_blocks` does when it allocates a step's slots (the tokens the step computes count):
    /// full prompt blocks become prefix-cache entries from then on, even for a request scheduled
    /// later in the same step; full blocks of generated tokens are full but match no prompt.
    /// What is full decides where a freed block goes in the free queue ([`BlockPool::free`]).
    fn cache_full_blocks(&mut self, id: u64, tokens: u32) {
        if !self.r.cfg.scheduler.enable_prefix_caching {
            return;
        }
        let req = self.reqs.get_mut(&id).expect("scheduled request exists");
        let full = (tokens / self.hash_cfg.block_size) as usize;
        if full <= req.cached_blocks {
            return;
        }
        // Blocks up to `prompt` hold prompt tokens only; those after it, generated ones too.
        let prompt = full.min(req.block_hashes.len()).max(req.cached_blocks);
        if prompt > req.cached_blocks {
            let (from, blocks) = (req.cached_blocks, &req.blocks);
            self.pool.cache(&blocks[from..prompt], &req.block_hashes[from..prompt]);
        }
        self.pool.fill(&req.blocks[prompt..full]);
        req.cached_blocks = full;
    }

    fn preempt(&mut self, id: u64) {
        let req = self.reqs.get_mut(&id).expect("running request exists");
        self.pool.free(&req.blocks);
        req.blocks.clear();
        req.cached_blocks = 0;
        req.computed = 0;
        self.waiting.push_front(id);
        self.metrics.preemptions += 1;
    }

    /// Modelled seconds of the step just scheduled: its loads from the offload tiers (one
    /// transfer per tier, before the forward pass, not overlapped), the forward pass, then the
    /// copy to host memory of the chunks that requests completing their prefill store (LMCache
    /// saves synchronously at the end of the step; the disk and remote writes that follow run in
    /// the background and cost no step time).
    fn step_duration(&self) -> f64 {
        let cost = &self.r.cost;
        let load: f64 =
            self.r.tiers.iter().map(|t| cost.load_time(t.link(), self.load_bytes[t.tier as usize])).sum();
        let mut store_chunks = 0u64;
        if !self.r.tiers.is_empty() {
            for &(id, n) in &self.scheduled {
                let req = &self.reqs[&id];
                if !req.stored && req.computed + n >= req.num_tokens() {
                    // Chunks an offload tier already holds are not written again.
                    store_chunks += req.chunk_keys.len().saturating_sub(req.offload_hits.len()) as u64;
                }
            }
        }
        let chunk_tokens = u64::from(self.r.cfg.offload.chunk_tokens);
        let store = cost.store_time(TierLink::Cpu, cost.kv_bytes(store_chunks * chunk_tokens));
        load + cost.step_time(&self.shape) + store
    }

    /// Schedules and runs one step starting at `now`. `None` when nothing can run (idle).
    pub(crate) fn step(&mut self, now: f64) -> Option<&StepOutput> {
        let bs = self.hash_cfg.block_size;
        let mut budget = self.r.cfg.scheduler.max_num_batched_tokens;
        self.shape.prefills.clear();
        self.shape.decodes.clear();
        self.load_bytes = [0; 4];
        self.scheduled.clear();
        let mut preempted = false;

        // Running requests first, in order; preempt from the back when blocks run out.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let (computed, n_new, have) = {
                let req = &self.reqs[&id];
                let n = (req.num_tokens() - req.computed).min(budget);
                (req.computed, n, req.blocks.len())
            };
            if n_new == 0 {
                i += 1;
                continue;
            }
            let need = self.blocks_for(computed + n_new).saturating_sub(have) as u32;
            loop {
                let req = self.reqs.get_mut(&id).expect("running request exists");
                if self.pool.allocate(need, &mut req.blocks) {
                    break;
                }
                let victim = self.running.pop().expect("running is not empty");
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    break 'running;
                }
            }
            self.cache_full_blocks(id, computed + n_new);
            self.scheduled.push((id, n_new));
            budget -= n_new;
            let decoding = computed >= self.reqs[&id].prompt_len && n_new == 1;
            if decoding {
                self.shape.decodes.push(computed);
            } else {
                self.shape.prefills.push(PrefillChunk { new_tokens: n_new, context_tokens: computed });
            }
            i += 1;
        }

        let cached_reqs = self.scheduled.len();
        // Then waiting requests, FCFS, unless this step preempted.
        let max_seqs = self.r.cfg.scheduler.max_num_seqs as usize;
        while !preempted && budget > 0 && self.running.len() < max_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let req = &self.reqs[&id];
            let num_tokens = req.num_tokens();
            let prompt_len = req.prompt_len;
            // vLLM recomputes at least the last token.
            let max_hit = num_tokens - 1;
            self.pool.computed_blocks(
                &req.block_hashes[..req.block_hashes.len().min((max_hit / bs) as usize)],
                &mut self.hit_ids,
            );
            let gpu_hit = self.hit_ids.len() as u32 * bs;
            let chunk = self.r.cfg.offload.chunk_tokens;
            let cover = (req.offload_hits.len() as u32 * chunk).min(max_hit);
            let ext = cover.saturating_sub(gpu_hit);
            let start = gpu_hit + ext;
            let n_new = (num_tokens - start).min(budget);
            let need = (self.blocks_for(start + n_new) - self.hit_ids.len()) as u32;
            // As vLLM, check before touching the hits: a hit in the free queue leaves it, so it
            // counts against the free blocks too, and a request that does not fit changes nothing.
            if need + self.pool.num_evictable(&self.hit_ids) > self.pool.num_free() {
                break;
            }
            self.pool.touch(&self.hit_ids);
            let req = self.reqs.get_mut(&id).expect("waiting request exists");
            req.blocks.extend_from_slice(&self.hit_ids);
            req.cached_blocks = self.hit_ids.len();
            let allocated = self.pool.allocate(need, &mut req.blocks);
            debug_assert!(allocated, "checked against the free blocks above");
            // Load [gpu_hit, gpu_hit + ext), each chunk from the tier holding it; the step pays
            // one transfer per tier (see `Core::step`).
            let mut pos = gpu_hit;
            while pos < start {
                let c = pos / chunk;
                let end = ((c + 1) * chunk).min(start);
                let tier = req.offload_hits[c as usize];
                self.load_bytes[tier as usize] += self.r.cost.kv_bytes(u64::from(end - pos));
                self.metrics.tier_hit_tokens[tier as usize] += u64::from(end - pos);
                pos = end;
            }
            let m = &mut self.metrics;
            m.prefix_queries += u64::from(num_tokens);
            m.prefix_hits += u64::from(gpu_hit);
            if !self.r.tiers.is_empty() {
                m.external_queries += u64::from(num_tokens);
                m.external_hits += u64::from(ext);
                m.lmcache_requested += u64::from(prompt_len);
                m.lmcache_hit += u64::from(ext);
            }
            req.computed = start;
            self.cache_full_blocks(id, start + n_new);
            let req = self.reqs.get_mut(&id).expect("waiting request exists");
            let m = &mut self.metrics;
            if req.first_scheduled.is_none() {
                req.first_scheduled = Some(now);
                req.cached_tokens = start;
                m.queue_time.observe(now - req.arrival);
                m.by_source.local_cache_hit += u64::from(gpu_hit);
                m.by_source.external_kv_transfer += u64::from(ext);
                m.by_source.local_compute += u64::from(prompt_len.saturating_sub(start));
                for &tier in &req.offload_hits {
                    let level = if tier == Tier::Cpu { &mut m.lookup_hit_l1 } else { &mut m.lookup_hit_l2 };
                    *level += u64::from(chunk);
                }
            }
            self.scheduled.push((id, n_new));
            budget -= n_new;
            self.shape.prefills.push(PrefillChunk { new_tokens: n_new, context_tokens: start });
            self.waiting.pop_front();
            self.running.push(id);
        }

        if self.scheduled.is_empty() {
            return None;
        }
        let end = now + self.step_duration();
        self.now = end;
        let out = &mut self.out;
        out.start = now;
        out.end = end;
        out.cached_reqs = cached_reqs as u32;
        out.new_reqs = (self.scheduled.len() - cached_reqs) as u32;
        out.emitted.clear();
        out.finished.clear();
        out.stores.clear();
        let m = &mut self.metrics;
        let mut any_finished = false;
        for &(id, n) in &self.scheduled {
            let req = self.reqs.get_mut(&id).expect("scheduled request exists");
            req.computed += n;
            let prompt_len = req.prompt_len;
            if req.computed < req.num_tokens() {
                continue;
            }
            // Caught up: this step samples one token.
            req.output += 1;
            m.generation_tokens += 1;
            out.emitted.push((id, req.output));
            if req.first_token.is_none() {
                req.first_token = Some(end);
                m.prompt_tokens += u64::from(prompt_len);
                m.ttft.observe(end - req.arrival);
                m.prefill_time.observe(end - req.first_scheduled.unwrap_or(req.arrival));
            }
            if !req.stored && !req.chunk_keys.is_empty() && !self.r.tiers.is_empty() {
                req.stored = true;
                m.lmcache_stored += req.chunk_keys.len() as u64 * u64::from(self.r.cfg.offload.chunk_tokens);
                out.stores.push((id, req.chunk_keys.clone(), Access { time_s: end, ..req.access }));
            }
            if req.output >= req.max_tokens {
                any_finished = true;
                m.requests_finished += 1;
                m.decode_time.observe(end - req.first_token.unwrap_or(end));
                m.e2e_time.observe(end - req.arrival);
                out.finished.push(Finished {
                    id,
                    prompt_tokens: prompt_len,
                    output_tokens: req.output,
                    cached_tokens: req.cached_tokens,
                });
            }
        }
        if any_finished {
            for f in &out.finished {
                if let Some(req) = self.reqs.remove(&f.id) {
                    self.pool.free(&req.blocks);
                }
            }
            let reqs = &self.reqs;
            self.running.retain(|id| reqs.contains_key(id));
        }
        Some(&self.out)
    }
}
