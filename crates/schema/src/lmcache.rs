//! LMCache configuration: generated per tier, checked against LMCache's known key set, written
//! as the YAML file that `LMCACHE_CONFIG_FILE` points to.
//!
//! LMCache only *warns* about keys it does not know, so a typo (`max_local_disk_szie`) silently
//! runs a different experiment. kvlab rejects unknown keys, naming the key, where it came from and
//! the closest known key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::{ConfigError, Result};

/// The YAML keys LMCache 0.5.6 understands: every key of its configuration's definitions
/// (`lmcache/v1/config.py`, `_CONFIG_DEFINITIONS`, 108 keys), then the old names it still
/// accepts (`_CONFIG_ALIASES` and `_DEPRECATED_CONFIGS`), read from the installed package.
pub const KNOWN_KEYS: &[&str] = &[
    "app_id",
    "audit_actual_remote_url",
    "blend_check_layers",
    "blend_min_tokens",
    "blend_recompute_ratios",
    "blend_special_str",
    "blend_thresholds",
    "blocking_timeout_secs",
    "cache_policy",
    "chunk_size",
    "chunk_statistics_auto_exit_target_unique_chunks",
    "chunk_statistics_auto_exit_timeout_hours",
    "chunk_statistics_auto_start_statistics",
    "chunk_statistics_strategy",
    "controller_pull_url",
    "controller_reply_url",
    "enable_async_loading",
    "enable_blending",
    "enable_chunk_statistics",
    "enable_controller",
    "enable_hidden_state_cache",
    "enable_kv_events",
    "enable_lazy_memory_allocator",
    "enable_p2p",
    "enable_pd",
    "enable_scheduler_bypass_lookup",
    "external_lookup_client",
    "extra_config",
    "gds_backend",
    "gds_buffer_size",
    "gds_path",
    "gds_path_sharding",
    "hidden_state_layers",
    "hidden_states_retrieve_mode",
    "hit_miss_ratio",
    "internal_api_server_enabled",
    "internal_api_server_host",
    "internal_api_server_include_index_list",
    "internal_api_server_port_start",
    "internal_api_server_socket_path_prefix",
    "lazy_memory_expand_trigger_ratio",
    "lazy_memory_initial_ratio",
    "lazy_memory_safe_size",
    "lazy_memory_step_ratio",
    "lmcache_instance_id",
    "lmcache_worker_heartbeat_delay_time",
    "lmcache_worker_heartbeat_time",
    "lmcache_worker_ids",
    "lmcache_worker_ports",
    "local_cpu",
    "local_cpu_use_hugepages",
    "local_disk",
    "local_disk_path_sharding",
    "lookup_server_worker_ids",
    "lookup_timeout_ms",
    "maru_path",
    "maru_pool_size",
    "max_hidden_state_cpu_size",
    "max_local_cpu_size",
    "max_local_disk_size",
    "min_retrieve_tokens",
    "mp_host",
    "mp_port",
    "nixl_backends",
    "nixl_buffer_device",
    "nixl_buffer_size",
    "numa_mode",
    "p2p_host",
    "p2p_init_ports",
    "p2p_lookup_ports",
    "pd_allocation_timeout_sec",
    "pd_backend_mode",
    "pd_bidirectional",
    "pd_buffer_device",
    "pd_buffer_size",
    "pd_condition_poll_interval_sec",
    "pd_max_prefill_len",
    "pd_peer_alloc_port",
    "pd_peer_host",
    "pd_peer_init_port",
    "pd_peer_query_port",
    "pd_proxy_host",
    "pd_proxy_port",
    "pd_role",
    "pd_shutdown_timeout_sec",
    "pd_skip_proxy_notification",
    "pin_check_interval_sec",
    "pin_timeout_sec",
    "pre_caching_hash_algorithm",
    "priority_limit",
    "py_enable_gc",
    "remote_config_url",
    "remote_serde",
    "remote_storage_plugins",
    "remote_url",
    "reserve_local_cpu_size",
    "retrieve_locations",
    "run_script_api_enabled",
    "runtime_plugin_locations",
    "save_decode_cache",
    "save_unfull_chunk",
    "script_allowed_imports",
    "storage_plugins",
    "store_location",
    "transfer_channel",
    "use_gds",
    "use_gpu_connector_v3",
    "use_layerwise",
    // aliases and deprecated names LMCache 0.5.6 still accepts
    "enable_xpyd",
    "nixl_peer_host",
    "nixl_peer_init_port",
    "nixl_peer_alloc_port",
    "nixl_proxy_host",
    "nixl_proxy_port",
    "nixl_role",
    "controller_url",
    "lmcache_worker_port",
    "plugin_locations",
    "external_backends",
    "nixl_peer_port",
];

/// One LMCache setting's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LmValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A checked LMCache configuration: every key is in [`KNOWN_KEYS`], ordered by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct LmcacheConfig {
    entries: BTreeMap<String, LmValue>,
}

/// Where a setting came from, for error messages: a file, a 1-based line and the table the key
/// is in (`lmcache` in a TOML file; none in LMCache's own YAML).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub file: &'a str,
    pub line: usize,
    pub table: Option<&'a str>,
}

impl Origin<'_> {
    /// An error about `key` set here.
    fn error(&self, key: &str, message: String) -> ConfigError {
        let field = match self.table {
            Some(table) => format!("{table}.{key}"),
            None => key.to_owned(),
        };
        ConfigError::config(self.file, self.line, field, message)
    }
}

impl LmcacheConfig {
    /// Sets `key`, rejecting keys LMCache does not know and values of the wrong type.
    pub fn set(&mut self, key: &str, value: LmValue, origin: Origin<'_>) -> Result<()> {
        check_key(key, origin)?;
        check_value(key, &value, origin)?;
        self.entries.insert(key.to_owned(), value);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&LmValue> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &LmValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Replaces `{disk_dir}` and `{redis_url}` in string values.
    pub fn substitute(&mut self, disk_dir: &str, redis_url: &str) {
        for value in self.entries.values_mut() {
            if let LmValue::Str(s) = value {
                *s = s.replace("{disk_dir}", disk_dir).replace("{redis_url}", redis_url);
            }
        }
    }

    /// The YAML text for `LMCACHE_CONFIG_FILE`: one `key: value` line per setting.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("# LMCache configuration generated by kvlab; keys checked.\n");
        for (key, value) in &self.entries {
            let v = match value {
                LmValue::Bool(b) => b.to_string(),
                LmValue::Int(i) => i.to_string(),
                LmValue::Float(f) => format!("{f:?}"),
                LmValue::Str(s) => double_quoted(s),
            };
            let _ = writeln!(out, "{key}: {v}");
        }
        out
    }

    /// Reads and checks a user-written LMCache YAML file: a mapping of LMCache keys, read by a
    /// YAML parser (yaml-rust2), so a malformed or wrongly indented line is an error naming its
    /// line. Every top-level key is checked, with the value when it is a scalar; a nested value
    /// (`extra_config:`'s mapping, a list of ports) is passed through unchecked, and is refused
    /// where the key takes a scalar (`chunk_size`, `local_cpu`, ...).
    pub fn check_yaml(file: &str, text: &str) -> Result<LmcacheConfig> {
        let lines = text.lines().count().max(1);
        // yaml-rust2's lines count from 1, its columns from 0.
        // A parser's position past the last line (an unclosed quote at the end) is the last line.
        let at = |mark: Marker| mark.line().clamp(1, lines);
        let syntax = |mark: Marker, message: String| {
            ConfigError::config(
                file,
                at(mark),
                "(top level)",
                format!("{message} (column {})", mark.col() + 1),
            )
        };
        let mut parser = Parser::new_from_str(text);
        let mut next = || parser.next_token().map_err(|e| syntax(*e.marker(), e.info().to_owned()));
        let mut config = LmcacheConfig::default();
        // StreamStart, then an empty stream or one document holding one mapping.
        let (mut event, mut mark) = next()?;
        if event == Event::StreamStart {
            (event, mark) = next()?;
        }
        if event == Event::StreamEnd {
            return Ok(config);
        }
        if event == Event::DocumentStart {
            (event, mark) = next()?;
        }
        match event {
            Event::MappingStart(..) => {}
            // An empty document (`---` alone, or only comments).
            Event::Scalar(ref v, TScalarStyle::Plain, ..) if v.is_empty() || v == "~" => return Ok(config),
            _ => return Err(syntax(mark, "expected a mapping of `key: value` lines".to_owned())),
        }
        loop {
            let (key_event, key_mark) = next()?;
            let key = match key_event {
                Event::MappingEnd => break,
                Event::Scalar(key, ..) => key,
                _ => {
                    return Err(syntax(
                        key_mark,
                        "expected a key (a plain word such as `chunk_size`)".to_owned(),
                    ))
                }
            };
            let origin = Origin { file, line: at(key_mark), table: None };
            check_key(&key, origin)?;
            let (value_event, value_mark) = next()?;
            match value_event {
                Event::Scalar(value, style, ..) => {
                    let value = match style {
                        TScalarStyle::Plain => parse_plain(&value),
                        _ => LmValue::Str(value),
                    };
                    let origin = Origin { line: at(value_mark), ..origin };
                    check_value(&key, &value, origin)?;
                    config.entries.insert(key, value);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    check_nested(&key, origin)?;
                    skip_nested(&mut next)?;
                }
                _ => return Err(syntax(value_mark, format!("`{key}`: expected a value"))),
            }
        }
        // One document: what follows is its end and the stream's.
        loop {
            match next()? {
                (Event::DocumentEnd, _) => {}
                (Event::StreamEnd, _) => return Ok(config),
                (_, mark) => {
                    return Err(syntax(mark, "a second YAML document: LMCache reads one".to_owned()))
                }
            }
        }
    }
}

/// `s` as a YAML double-quoted scalar: `\"`, `\\`, `\n`, `\t`, `\r`, and `\xXX` or `\uXXXX` for
/// every other character YAML does not allow as it is in a document (the C0 and C1 controls,
/// DEL, NEL, the line and paragraph separators, a BOM, U+FFFE/U+FFFF), so that any string reads
/// back the same.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}'
                if !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') =>
            {
                out.push(c)
            }
            '\u{10000}'.. => out.push(c),
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// Skips the rest of a nested mapping or list whose start was just read.
fn skip_nested(next: &mut impl FnMut() -> Result<(Event, Marker)>) -> Result<()> {
    let mut depth = 1usize;
    while depth > 0 {
        match next()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            Event::StreamEnd => break,
            _ => {}
        }
    }
    Ok(())
}

/// A plain (unquoted) scalar: `true`/`false` in YAML's three spellings, an integer, a float, or
/// else a string.
fn parse_plain(value: &str) -> LmValue {
    match value {
        "true" | "True" | "TRUE" => return LmValue::Bool(true),
        "false" | "False" | "FALSE" => return LmValue::Bool(false),
        _ => {}
    }
    if let Ok(i) = value.parse::<i64>() {
        return LmValue::Int(i);
    }
    if let Ok(f) = value.parse::<f64>() {
        return LmValue::Float(f);
    }
    LmValue::Str(value.to_owned())
}

/// A nested value (mapping or list) where `key` takes a scalar is refused with the scalar's
/// own message; other keys (`extra_config`, lists of ports) take it unchecked.
fn check_nested(key: &str, origin: Origin<'_>) -> Result<()> {
    // The empty string stands for "not a scalar": every key [`check_value`] constrains refuses it.
    check_value(key, &LmValue::Str(String::new()), origin)
}

fn check_key(key: &str, origin: Origin<'_>) -> Result<()> {
    if KNOWN_KEYS.contains(&key) {
        return Ok(());
    }
    let hint = closest(key).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
    Err(origin.error(key, format!("unknown LMCache key (LMCache would only warn and ignore it){hint}")))
}

fn check_value(key: &str, value: &LmValue, origin: Origin<'_>) -> Result<()> {
    let problem = match (key, value) {
        ("chunk_size", LmValue::Int(n)) if *n <= 0 => Some("must be a positive integer"),
        ("chunk_size", LmValue::Int(_)) => None,
        ("chunk_size", _) => Some("must be a positive integer"),
        ("local_cpu" | "save_decode_cache" | "use_layerwise" | "save_unfull_chunk", v)
            if !matches!(v, LmValue::Bool(_)) =>
        {
            Some("must be true or false")
        }
        ("max_local_cpu_size" | "max_local_disk_size", LmValue::Int(n)) if *n < 0 => {
            Some("must be a size in GB, >= 0")
        }
        ("max_local_cpu_size" | "max_local_disk_size", LmValue::Float(f)) if f.is_nan() || *f < 0.0 => {
            Some("must be a size in GB, >= 0")
        }
        ("max_local_cpu_size" | "max_local_disk_size", LmValue::Bool(_) | LmValue::Str(_)) => {
            Some("must be a size in GB, >= 0")
        }
        ("local_disk", LmValue::Str(s)) if !s.starts_with("file://") => {
            Some("must be a \"file:///path/\" URL")
        }
        ("remote_url", LmValue::Str(s)) if !s.contains("://") && s != "{redis_url}" => {
            Some("must be a \"protocol://host:port\" URL")
        }
        ("remote_serde", LmValue::Str(s)) if s != "naive" && s != "cachegen" => {
            Some("must be \"naive\" or \"cachegen\"")
        }
        _ => None,
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(origin.error(key, problem.to_owned())),
    }
}

/// The known key nearest to `key` by edit distance, if it is close enough to be a typo.
fn closest(key: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
