//! The engine's Prometheus `/metrics` endpoint, scraped into `engine.csv` in long format.

use std::time::Duration;

use crate::prom::parse_exposition;
use crate::{Row, Sampler, SamplerError};

/// What to scrape and how often.
#[derive(Debug, Clone)]
pub struct EngineMetricsConfig {
    /// The full URL of the metrics page, e.g. `http://127.0.0.1:8000/metrics`.
    pub url: String,
    /// Scrape interval; 1 s by default (an engine's page can hold thousands of series).
    pub interval: Duration,
    /// Per-request timeout; 2 s by default.
    pub timeout: Duration,
    /// Keep only metrics whose name starts with one of these prefixes (`vllm:`, `lmcache:`);
    /// empty keeps everything.
    pub prefixes: Vec<String>,
    /// The sampler's name, and so its file (`<name>.csv`): `engine` for the engine, the
    /// sidecar's name (`lmcache`) for a process beside it.
    pub name: String,
}

impl EngineMetricsConfig {
    /// The defaults for `url`: every metric, each second, 2 s timeout.
    pub fn new(url: impl Into<String>) -> EngineMetricsConfig {
        EngineMetricsConfig {
            url: url.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            prefixes: Vec::new(),
            name: "engine".to_owned(),
        }
    }
}

/// Scrapes an engine's Prometheus text (vLLM, LMCache, llama.cpp, the emulator: any names).
///
/// Writes `engine.csv`, one row per sample line of each scrape (long format):
///
/// | column | meaning |
/// |---|---|
/// | `t` | seconds since the run's origin, at the start of the scrape |
/// | `metric` | the metric name as exposed (`vllm:num_requests_running`, `..._bucket`, `..._sum`) |
/// | `labels` | the labels, sorted by name, `name="value"` joined by `,`; empty when none |
/// | `value` | the value as exposed (counters are cumulative); empty for NaN and ±Inf |
///
/// An HTTP error, a non-2xx status or a malformed line (named in the error) stops the sampler.
/// The scrape is blocking: [`Sampler::sample`] must not be called from inside an async runtime
/// ([`crate::SamplerSet`] calls it on its own thread).
pub struct EngineMetricsSampler {
    config: EngineMetricsConfig,
    client: Option<reqwest::blocking::Client>,
}

impl EngineMetricsSampler {
    /// Creates the sampler; nothing is fetched until the first sample.
    pub fn new(config: EngineMetricsConfig) -> EngineMetricsSampler {
        EngineMetricsSampler { config, client: None }
    }

    fn http_error(&self, message: impl ToString) -> SamplerError {
        SamplerError::Http { url: self.config.url.clone(), message: message.to_string() }
    }

    fn fetch(&mut self) -> Result<String, SamplerError> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                // Built lazily so it is created (and dropped) on the sampler's thread.
                let client = reqwest::blocking::Client::builder()
                    .timeout(self.config.timeout)
                    .no_proxy()
                    .build()
                    .map_err(|e| self.http_error(e))?;
                self.client = Some(client.clone());
                client
            }
        };
        let response = client
            .get(&self.config.url)
            .header("Accept", "text/plain;version=0.0.4")
            .send()
            .map_err(|e| self.http_error(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.http_error(format!("status {status}")));
        }
        response.text().map_err(|e| self.http_error(e))
    }
}

impl Sampler for EngineMetricsSampler {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn columns(&self) -> Vec<String> {
        ["metric", "labels", "value"].map(String::from).to_vec()
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.config.interval)
    }

    fn sample(&mut self, _t: f64) -> Result<Vec<Row>, SamplerError> {
        let text = self.fetch()?;
        let samples = parse_exposition(&text)
            .map_err(|source| SamplerError::Metrics { url: self.config.url.clone(), source })?;
        let prefixes = &self.config.prefixes;
        Ok(samples
            .into_iter()
            .filter(|s| prefixes.is_empty() || prefixes.iter().any(|p| s.metric.starts_with(p)))
            .map(|s| {
                let labels = s.labels_text();
                // Full precision: gauges such as cache usage are small fractions.
                let value = if s.value.is_finite() { s.value.to_string() } else { String::new() };
                vec![s.metric, labels, value]
            })
            .collect())
    }
}
