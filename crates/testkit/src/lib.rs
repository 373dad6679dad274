//! Test support shared by kvlab's crates; a dev-dependency only.
//!
//! [`edits`]: mutations of a valid input file, line by line, for the property tests of every parser
//! of outside input ("no panic, and every error names the file, line and field").
//! [`located`]: the one check of a reader's error, `FILE:LINE: FIELD: message`.
//! [`services`]: the services `cargo xtask ci` starts or installs (Redis, the Slurm cluster,
//! libCacheSim), or a failure naming them.
//! [`live`]: what a live run looks like from `/proc` and on disk, for the security and fault tests.
//! [`workspace`]: a lab workspace with the repository's configs and a planted secret, for the
//! end-to-end tests of every crate that runs the lab.

pub mod services {
    //! The services `cargo xtask ci` starts for the tests, found through the environment; a test
    //! whose service is missing fails naming it.

    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Duration;

    /// The redis-server `cargo xtask ci` starts (`KVLAB_REDIS_URL`), checked to answer on TCP.
    pub fn redis_url() -> String {
        let url = std::env::var("KVLAB_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "KVLAB_REDIS_URL is unset: this test needs a running redis-server (`cargo xtask ci` starts \
                 one; by hand: `redis-server --port 6390 --save ''` and KVLAB_REDIS_URL=redis://127.0.0.1:6390)"
            )
        });
        let hostport = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_owned();
        TcpStream::connect_timeout(
            &hostport.parse().unwrap_or_else(|_| panic!("KVLAB_REDIS_URL={url}: not host:port")),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("redis-server at {url} (KVLAB_REDIS_URL) is unreachable: {e}"));
        url
    }

    /// The configuration of the loopback Slurm cluster `cargo xtask ci` starts (`SLURM_CONF`),
    /// checked to be a file. Whether the cluster answers is the caller's check (it runs `sinfo`).
    pub fn slurm_conf() -> PathBuf {
        let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "Slurm: SLURM_CONF is unset: this test needs a running Slurm cluster (`cargo xtask ci` \
                 starts one; by hand: `cargo xtask slurm up --nodes 2` and export the SLURM_CONF it prints)"
            )
        });
        assert!(
            conf.is_file(),
            "Slurm: SLURM_CONF={} is not a file: this test needs a running Slurm cluster (`cargo xtask \
             slurm up --nodes 2`)",
            conf.display()
        );
        conf
    }

    /// The Python with libCacheSim's bindings (`libcachesim` from PyPI) that `cargo xtask ci`
    /// installs in a venv of its own (`KVLAB_LIBCACHESIM_PYTHON`), checked to import them.
    pub fn libcachesim_python() -> PathBuf {
        let python = std::env::var_os("KVLAB_LIBCACHESIM_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "libCacheSim: KVLAB_LIBCACHESIM_PYTHON is unset: this test needs a Python with libCacheSim's \
                 bindings (`cargo xtask ci` makes that venv; by hand: `uv venv V && uv pip install --python \
                 V/bin/python -r crates/sim/tests/libcachesim/requirements.txt` and \
                 KVLAB_LIBCACHESIM_PYTHON=V/bin/python)"
            )
        });
        let import = Command::new(&python).args(["-c", "import libcachesim"]).output();
        match import {
            Ok(o) if o.status.success() => python,
            Ok(o) => panic!(
                "libCacheSim: {} (KVLAB_LIBCACHESIM_PYTHON) cannot import libcachesim: {}",
                python.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => {
                panic!("libCacheSim: {} (KVLAB_LIBCACHESIM_PYTHON) does not run: {e}", python.display())
            }
        }
    }
}

pub mod located {
    //! Every reader of outside input (configs, traces, result files, baselines) reports an error
    //! as `FILE:LINE: FIELD: message`; this is the one check of that, shared by the property
    //! tests of every crate and the fuzz targets.

    use proptest::test_runner::TestCaseError;

    /// The parts of an error `msg` about `file`: `(line, field, message)`.
    pub fn parse<'a>(msg: &'a str, file: &str) -> Result<(usize, &'a str, &'a str), TestCaseError> {
        let fail =
            |what: &str| TestCaseError::fail(format!("no {what} in `FILE:LINE: FIELD: message`: {msg}"));
        let rest = msg.strip_prefix(file).and_then(|r| r.strip_prefix(':')).ok_or_else(|| fail("file"))?;
        let (line, rest) = rest.split_once(": ").ok_or_else(|| fail("line"))?;
        let line: usize = line.parse().map_err(|_| fail("line"))?;
        let (field, message) = rest.split_once(": ").ok_or_else(|| fail("field"))?;
        Ok((line, field, message))
    }

    /// `msg` is `file:LINE: FIELD: message`, with LINE within `text` (or one past its end: an
    /// unexpected end after the last line end) and a FIELD and message that are not blank.
    pub fn check(msg: &str, file: &str, text: &str) -> Result<(), TestCaseError> {
        let (line, field, message) = parse(msg, file)?;
        let lines = text.lines().count();
        if !(line >= 1 && line <= lines + 1) {
            return Err(TestCaseError::fail(format!(
                "line {line} is not in the text ({lines} lines): {msg}"
            )));
        }
        if field.trim().is_empty() || message.trim().is_empty() {
            return Err(TestCaseError::fail(format!("blank field or message: {msg}")));
        }
        Ok(())
    }
}

pub mod edits {
    //! Edits of a valid file: hostile values, deleted, inserted and duplicated lines, truncation.
    //! [`apply`] reports the line it touched, so a test can check that an error blames it.

    use proptest::prelude::*;

    /// A change to a valid file, line by line.
    #[derive(Debug, Clone)]
    pub enum Edit {
        /// Replace the value of the line's `key = value` / `key: value` / `"key": value` pairs
        /// (the `nth` one on the line) by `value`.
        Value {
            line: usize,
            nth: usize,
            value: String,
        },
        Delete {
            line: usize,
        },
        Insert {
            line: usize,
            text: String,
        },
        Duplicate {
            line: usize,
        },
        /// Cut the file after this many bytes (at a character boundary).
        Truncate {
            at: usize,
        },
    }

    /// Values that break types and ranges.
    pub const HOSTILE: &[&str] = &[
        "-1",
        "0",
        "1e309",
        "-1e309",
        "1.5",
        "\"x\"",
        "\"\"",
        "[]",
        "{}",
        "[1, \"a\"]",
        "true",
        "null",
        "nan",
        "inf",
        "18446744073709551616",
        "4294967296",
        "-9223372036854775809",
        "\"\\u0000é\"",
        "\"🦀\"",
        "",
        "[",
        "{",
        "\"",
    ];

    pub fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => (0usize..64, 0usize..8, prop_oneof![
                3 => prop::sample::select(HOSTILE).prop_map(str::to_owned),
                1 => ".{0,12}",
            ]).prop_map(|(line, nth, value)| Edit::Value { line, nth, value }),
            1 => (0usize..64).prop_map(|line| Edit::Delete { line }),
            1 => (0usize..64, ".{0,24}").prop_map(|(line, text)| Edit::Insert { line, text }),
            1 => (0usize..64).prop_map(|line| Edit::Duplicate { line }),
            1 => (0usize..4096).prop_map(|at| Edit::Truncate { at }),
        ]
    }

    /// `text` with `e` applied, and the 1-based line it touched (None: the whole file).
    pub fn apply(text: &str, e: &Edit) -> (String, Option<usize>) {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let n = lines.len().max(1);
        match e {
            Edit::Value { line, nth, value } => {
                let i = line % n;
                if let Some(l) = lines.get_mut(i) {
                    *l = replace_value(l, *nth, value);
                }
                (lines.join("\n"), Some(i + 1))
            }
            Edit::Delete { line } => {
                if !lines.is_empty() {
                    lines.remove(line % n);
                }
                (lines.join("\n"), None)
            }
            Edit::Insert { line, text } => {
                let i = line % (lines.len() + 1);
                lines.insert(i, text.clone());
                (lines.join("\n"), Some(i + 1))
            }
            Edit::Duplicate { line } => {
                if let Some(l) = lines.get(line % n).cloned() {
                    lines.insert(line % n, l);
                }
                (lines.join("\n"), None)
            }
            Edit::Truncate { at } => {
                let mut at = (*at).min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                (text[..at].to_owned(), None)
            }
        }
    }

    /// Replaces the value after the `nth` separator (`=`, `:` or `,`) of `line`, up to the next
    /// `,` or `}` (or the line's end).
    pub fn replace_value(line: &str, nth: usize, value: &str) -> String {
        let seps: Vec<usize> = line.match_indices(['=', ':', ',']).map(|(i, _)| i).collect();
        if seps.is_empty() {
            return format!("{line}{value}");
        }
        let start = seps[nth % seps.len()] + 1;
        let end = line[start..].find([',', '}']).map_or(line.len(), |j| start + j);
        format!("{} {value}{}", &line[..start], &line[end..])
    }
}

pub mod live {
    //! A live run seen from outside: its listening sockets (`/proc/net/tcp{,6}`), the command
    //! lines of every process, and the files it wrote.

    use std::path::{Path, PathBuf};

    /// The address `/proc/net/tcp` shows for 127.0.0.1 (hex, little-endian).
    pub const LOOPBACK_HEX: &str = "0100007F";

    /// Listening TCP sockets (state 0A) of `pid` as (local address in `/proc/net` hex, port):
    /// the socket inodes among the process's descriptors, looked up in `/proc/net/tcp{,6}`.
    pub fn listening_sockets(pid: u32) -> Vec<(String, u16)> {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| {
                    let link = std::fs::read_link(e.ok()?.path()).ok()?;
                    Some(link.to_string_lossy().strip_prefix("socket:[")?.trim_end_matches(']').to_owned())
                })
                .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                    continue;
                }
                let (addr, port) = f[1].split_once(':').expect("/proc/net/tcp has ADDR:PORT");
                out.push((addr.to_owned(), u16::from_str_radix(port, 16).expect("a hex port")));
            }
        }
        out
    }

    /// The `/proc/PID` directories of every process whose command line contains `needle`.
    pub fn cmdlines_containing(needle: &str) -> Vec<PathBuf> {
        std::fs::read_dir("/proc")
            .expect("/proc is readable")
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            })
            .map(|e| e.path())
            .collect()
    }

    /// Every file under `dir`, recursively.
    pub fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("a readable directory").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// The pids of live (non-zombie) processes whose command line mentions `needle`.
    pub fn processes_mentioning(needle: &str) -> Vec<u32> {
        cmdlines_containing(needle)
            .into_iter()
            .filter(|proc| !std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z ")))
            .filter_map(|proc| proc.file_name()?.to_str()?.parse().ok())
            .collect()
    }

    /// Panics if a file under `dir` other than `.env` contains `secret`.
    pub fn assert_no_secret(dir: &Path, secret: &str) {
        for f in files_under(dir) {
            if f.ends_with(".env") {
                continue;
            }
            // A socket or a pipe an engine left (vLLM's IPC sockets) holds no bytes to read; every
            // other entry, links included, is read.
            use std::os::unix::fs::FileTypeExt as _;
            let kind = std::fs::symlink_metadata(&f).unwrap().file_type();
            if kind.is_socket() || kind.is_fifo() {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(secret), "secret in {}", f.display());
        }
    }

    /// The records of a result directory's `requests.jsonl` (each line must parse).
    pub fn records<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
        let path = dir.join("requests.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", path.display(), i + 1))
            })
            .collect()
    }
}

pub mod workspace {
    //! A lab workspace for the end-to-end tests: the repository's configs and a planted secret.

    use std::path::Path;

    /// The `.env` secret planted in every test workspace; no result file may contain it.
    pub const TOKEN: &str = "hf_e2ePlantedToken987";

    /// A workspace root with the repository's configs and a planted `.env`.
    pub fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        copy_dir(&repo.join("configs"), &dir.path().join("configs"));
        std::fs::write(dir.path().join(".env"), format!("HF_TOKEN={TOKEN}\n")).unwrap();
        dir
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }

    /// Panics if a file under `dir` other than `.env` contains the planted [`TOKEN`].
    pub fn assert_no_secret(dir: &Path) {
        super::live::assert_no_secret(dir, TOKEN);
    }
}
