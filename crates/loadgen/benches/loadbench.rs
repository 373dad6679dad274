//! The load generator on the path users run, against a server in another process.
//!
//! `cargo bench -p kvlab-loadgen --bench loadbench` runs, in one go:
//!
//! - speed: many 128-token streams (128-token random prompts, `--request-rate inf
//!   --max-concurrency C` as `cargo xtask loadgen` builds them) at C = 64, 256 and 1,000 against
//!   a zero-delay SSE server (one write per token) pinned to the last core, the client pinned to
//!   the first core (one core) and then to the first two (two cores, sharing the server's core
//!   on a two-core machine). In the same run, two minimal raw clients (pre-rendered requests,
//!   reading until the chunked body's end, parsing nothing) give the server's ceiling on the same
//!   cores: one polls its sockets and lets tokens gather between reads (the cheapest way to read
//!   this server), the other waits in `epoll` and reads each arrival as the load generator must
//!   to time tokens. Reported: tokens/s, the clients' CPU per request and the load generator's
//!   ratio to each.
//! - scaling: the same streams at the same levels against a server that writes each response
//!   whole (cheap per token, so that the client is the bottleneck), the client on one core and on
//!   two: the client's own speed, how it scales with cores, and its CPU per request on each (the
//!   same cost per request on two cores means the work spreads without a shared bottleneck).
//! - accuracy: a server that sends the first token 80 ms after a request arrived and then one
//!   every 20 ms, 32 tokens, closed loop at 1, 100 and 500 streams for `--accuracy-secs`. The
//!   server records when each request arrived and when it wrote each token (its own lateness);
//!   the client's TTFT and ITL errors are its measurements minus the server's: p50 and p99.
//!
//! Options (after `--`): `--secs S` (speed, per point, default 5), `--accuracy-secs S` (default
//! 20), `--concurrency 64,256,1000`, `--cores 1,2`, `--repeat N` (speed: best of N alternating
//! runs, default 3), `--only speed|scaling|accuracy`, `--rt` (accuracy's processes at real-time priority).
//!
//! Every child process is this same binary: `serve` (the server) and `client` (one measurement,
//! printing one JSON line), started under `taskset`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL: &str = "bench-model";
const PROMPT_LEN: u32 = 128;
const SPEED_TOKENS: u32 = 128;
const ACCURACY_TOKENS: u32 = 32;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("client") => client(&args[1..]),
        _ => orchestrate(&args),
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn opt_num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    opt(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}")))
}

fn opt_list(args: &[String], name: &str, default: &[u32]) -> Vec<u32> {
    opt(args, name).map_or_else(
        || default.to_vec(),
        |v| v.split(',').map(|x| x.trim().parse().expect("a comma-separated list of numbers")).collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Orchestration

/// `--rt`: the accuracy section's children run under `chrt -f 20` (real-time FIFO), so that other
/// processes on a shared machine do not preempt the client or the server for milliseconds. Only
/// there: the client is mostly idle at 50 tokens/s per stream, whereas the speed sections would
/// take both cores from everything else.
static RT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `taskset -c CPUS [chrt -f 20] EXE`.
fn pinned(cpus: &str) -> Command {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus]);
    if RT.load(Ordering::Relaxed) {
        cmd.args(["chrt", "-f", "20"]);
    }
    cmd.arg(exe);
    cmd
}

fn orchestrate(args: &[String]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "the benchmark needs two cores (client and server on separate cores)");
    let only = opt(args, "--only");
    let secs: f64 = opt_num(args, "--secs", 5.0);
    let accuracy_secs: f64 = opt_num(args, "--accuracy-secs", 20.0);
    let levels = opt_list(args, "--concurrency", &[64, 256, 1000]);
    let client_cores = opt_list(args, "--cores", &[1, 2]);
    let repeat: u32 = opt_num(args, "--repeat", 3);
    let server_core = cores - 1;
    println!(
        "machine: {cores} cores; server pinned to core {server_core}; client to cores 0..N (N = 1, 2); \
         ratios are measured within the same run"
    );
    if only.is_none() || only == Some("speed") {
        println!("\nspeed: 128-token prompts, 128-token streams, zero-delay server (one write per token), {secs} s per point");
        println!(
            "{:>6} {:>6} | {:>12} {:>8} | {:>12} {:>8} | {:>12} {:>9} {:>8} | {:>6} {:>6}",
            "cores",
            "conc",
            "raw tok/s",
            "CPU µs/r",
            "epoll tok/s",
            "CPU µs/r",
            "kvlab tok/s",
            "req/s",
            "CPU µs/r",
            "/raw",
            "/epoll"
        );
        for &n in &client_cores {
            let client_cpus = (0..n as usize).map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            for &c in &levels {
                // Alternating the three clients, `repeat` times each, keeping each one's best:
                // other processes on the machine only ever slow a client down.
                let server = Server::start(server_core, &["--ttft-ms", "0", "--itl-ms", "0"]);
                let mut best = [Measured::default(), Measured::default(), Measured::default()];
                for _ in 0..repeat {
                    for (kind, best) in ["raw", "raw-epoll", "loadgen"].into_iter().zip(best.iter_mut()) {
                        let m = run_client(&client_cpus, &server.url, kind, c, secs, n);
                        if m.tokens_per_s > best.tokens_per_s {
                            *best = m;
                        }
                    }
                }
                drop(server);
                let [raw, epoll, kvlab] = best;
                println!(
                    "{n:>6} {c:>6} | {:>12.0} {:>8.1} | {:>12.0} {:>8.1} | {:>12.0} {:>9.0} {:>8.1} | {:>5.0}% {:>5.0}%",
                    raw.tokens_per_s,
                    raw.cpu_us_per_request,
                    epoll.tokens_per_s,
                    epoll.cpu_us_per_request,
                    kvlab.tokens_per_s,
                    kvlab.requests_per_s,
                    kvlab.cpu_us_per_request,
                    100.0 * kvlab.tokens_per_s / raw.tokens_per_s,
                    100.0 * kvlab.tokens_per_s / epoll.tokens_per_s
                );
            }
        }
    }
    if only.is_none() || only == Some("scaling") {
        println!(
            "\nscaling: the same streams at each level, against a server that writes each response \
             whole (cheap per token, so that the client is the bottleneck), client on one core and on two"
        );
        // The client's CPU per request on one core and on two: the same cost per request means
        // the work spreads over the cores without a shared bottleneck (scaling per core used),
        // which a two-core machine, whose second core also runs the server, cannot show as
        // throughput.
        println!(
            "{:>6} | {:>12} {:>9} {:>8} | {:>12} {:>9} {:>8} | {:>7} {:>9}",
            "conc",
            "1 core tok/s",
            "req/s",
            "CPU µs/r",
            "2 cores tok/s",
            "req/s",
            "CPU µs/r",
            "2 / 1",
            "per CPU"
        );
        for &c in &levels {
            let server = Server::start(server_core, &["--ttft-ms", "0", "--itl-ms", "0", "--write", "whole"]);
            let (mut one, mut two) = (Measured::default(), Measured::default());
            for _ in 0..repeat {
                let a = run_client("0", &server.url, "loadgen", c, secs, 1);
                let b = run_client("0,1", &server.url, "loadgen", c, secs, 2);
                if a.tokens_per_s > one.tokens_per_s {
                    one = a;
                }
                if b.tokens_per_s > two.tokens_per_s {
                    two = b;
                }
            }
            drop(server);
            println!(
                "{c:>6} | {:>12.0} {:>9.0} {:>8.1} | {:>12.0} {:>9.0} {:>8.1} | {:>6.2}x {:>8.2}x",
                one.tokens_per_s,
                one.requests_per_s,
                one.cpu_us_per_request,
                two.tokens_per_s,
                two.requests_per_s,
                two.cpu_us_per_request,
                two.tokens_per_s / one.tokens_per_s,
                one.cpu_us_per_request / two.cpu_us_per_request
            );
        }
    }
    if only.is_none() || only == Some("accuracy") {
        RT.store(args.iter().any(|a| a == "--rt"), Ordering::Relaxed);
        println!(
            "\naccuracy: first token at 80 ms, then one every 20 ms, {ACCURACY_TOKENS} tokens, closed loop, \
             {accuracy_secs} s per point, one client core; errors are the client's measurement minus \
             what the server recorded doing (its own lateness subtracted)"
        );
        println!(
            "{:>6} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} | {:>9} {:>9}",
            "conc",
            "requests",
            "TTFT p50",
            "p99",
            "TTFT err",
            "err p99",
            "ITL err",
            "err p99",
            "srv late99",
            "c→s p99",
            "s→c p99"
        );
        for c in opt_list(args, "--accuracy-concurrency", &[1, 100, 500]) {
            let server = Server::start(server_core, &["--ttft-ms", "80", "--itl-ms", "20", "--trace", "1"]);
            let m = run_client("0", &server.url, "accuracy", c, accuracy_secs, 1);
            drop(server);
            println!(
                "{c:>6} {:>9} | {:>9.2} {:>9.2} | {:>9.3} {:>9.3} | {:>9.3} {:>9.3} | {:>9.3} | {:>9.3} {:>9.3}",
                m.requests,
                m.ttft_p50_ms,
                m.ttft_p99_ms,
                m.ttft_err_p50_ms,
                m.ttft_err_p99_ms,
                m.itl_err_p50_ms,
                m.itl_err_p99_ms,
                m.server_late_p99_ms,
                m.to_server_p99_ms,
                m.to_client_p99_ms,
            );
        }
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(core: usize, args: &[&str]) -> Server {
        let mut child = pinned(&core.to_string())
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the server under taskset");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("server stdout"))
            .read_line(&mut line)
            .expect("server port");
        let url = line.trim().to_string();
        assert!(url.starts_with("http://"), "the server said {url:?}");
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing its stdin stops it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Measured {
    requests: u64,
    tokens_per_s: f64,
    requests_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    ttft_err_p50_ms: f64,
    ttft_err_p99_ms: f64,
    itl_err_p50_ms: f64,
    itl_err_p99_ms: f64,
    server_late_p99_ms: f64,
    /// The client process's CPU time (user + system) per completed request, plan building
    /// excluded.
    cpu_us_per_request: f64,
    /// Accuracy: from the client's send time to the server's arrival, and from the server's
    /// first write to the client's first-token time (p99, ms, one monotonic clock).
    to_server_p99_ms: f64,
    to_client_p99_ms: f64,
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn run_client(cpus: &str, url: &str, kind: &str, c: u32, secs: f64, threads: u32) -> Measured {
    let out = pinned(cpus)
        .args(["client", kind, "--url", url])
        .args([
            "--concurrency",
            &c.to_string(),
            "--secs",
            &secs.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("running the client under taskset");
    assert!(out.status.success(), "client {kind} failed: {}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("the client printed its result");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("client result {line:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The server: HTTP/1.1 keep-alive, chunked SSE, one write per token.

#[derive(Clone, Copy)]
struct Timing {
    ttft: Duration,
    itl: Duration,
    /// Zero delay only: the whole response in one write (a server that costs little per token).
    whole: bool,
}

/// Per request (its prompt's first token): arrival, then the instants the server finished
/// writing each token.
type ServerTrace = Arc<Mutex<HashMap<u64, (Instant, Vec<Instant>)>>>;

fn serve(args: &[String]) {
    let timing = Timing {
        ttft: Duration::from_secs_f64(opt_num(args, "--ttft-ms", 0.0) / 1e3),
        itl: Duration::from_secs_f64(opt_num(args, "--itl-ms", 0.0) / 1e3),
        whole: opt(args, "--write") == Some("whole"),
    };
    let trace: Option<ServerTrace> = (opt(args, "--trace") == Some("1")).then(Default::default);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("http://{}", listener.local_addr().expect("addr"));
        std::io::stdout().flush().expect("stdout");
        // Stop when the parent closes stdin.
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
            let _ = tx.send(());
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((sock, _)) = accepted else { continue };
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(sock, timing, trace.clone()));
                }
                _ = &mut rx => break,
            }
        }
    });
}

async fn connection(mut sock: TcpStream, timing: Timing, trace: Option<ServerTrace>) {
    let mut buf = Vec::with_capacity(8192);
    if trace.is_some() {
        kernel_time::enable(&sock);
    }
    // When the kernel received the last bytes read (tracing), else when they were read.
    let mut received = None;
    loop {
        // One request: headers, then Content-Length bytes of body.
        let (head_end, content_length) = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, len);
            }
            if read_more(&mut sock, &mut buf, &mut received).await == 0 {
                return;
            }
        };
        while buf.len() < head_end + content_length {
            if read_more(&mut sock, &mut buf, &mut received).await == 0 {
                return;
            }
        }
        // A request is one write of the client's, so its last bytes came with the read that
        // completed it; tracing times it from the kernel's receive timestamp, which a busy
        // server reading late does not move.
        let arrived = received.take().unwrap_or_else(Instant::now);
        let request: Vec<u8> = buf.drain(..head_end + content_length).collect();
        let head = &request[..head_end];
        let body = &request[head_end..];
        if head.starts_with(b"GET /trace") {
            let text = trace.as_ref().map(render_trace).unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        } else if head.starts_with(b"GET ") {
            let json = format!(r#"{{"object":"list","data":[{{"id":"{MODEL}","object":"model"}}]}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            );
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        } else if stream(&mut sock, body, arrived, timing, trace.as_ref()).await.is_err() {
            return;
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>, received: &mut Option<Instant>) -> usize {
    buf.reserve(8192);
    if !kernel_time::enabled(sock) {
        return sock.read_buf(buf).await.unwrap_or(0);
    }
    loop {
        if sock.readable().await.is_err() {
            return 0;
        }
        match sock.try_io(tokio::io::Interest::READABLE, || kernel_time::recv(sock, buf)) {
            Ok((n, at)) => {
                *received = at.or(*received);
                return n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return 0,
        }
    }
}

/// The kernel's receive timestamps (`SO_TIMESTAMPNS`, which TCP gives for the last segment a
/// `recvmsg` read), for the tracing server: arrival times that do not depend on when the server
/// got round to reading. Linux only; std has no `recvmsg` with control messages.
#[allow(unsafe_code)]
mod kernel_time {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// `SO_TIMESTAMPNS` (and its control message type) on Linux.
    const SO_TIMESTAMPNS: libc::c_int = 35;

    pub(super) fn enable(sock: &tokio::net::TcpStream) {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a pointer to an int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }

    pub(super) fn enabled(sock: &tokio::net::TcpStream) -> bool {
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, and pointers to an int and its size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_TIMESTAMPNS,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0 && on != 0
    }

    fn clock(id: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a timespec to fill.
        unsafe { libc::clock_gettime(id, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }

    /// Reads into `buf`'s spare capacity; the bytes read and the receive time of the last of
    /// them, as an `Instant`.
    pub(super) fn recv(
        sock: &tokio::net::TcpStream,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<(usize, Option<Instant>)> {
        let spare = buf.spare_capacity_mut();
        let mut iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: the iovec points into `buf`'s spare capacity, the control buffer lives here.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel wrote `n` bytes into the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        let (now, now_real) = (Instant::now(), clock(libc::CLOCK_REALTIME));
        let mut at = None;
        // SAFETY: walking the control messages the kernel wrote, with libc's own macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SO_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                    let stamp = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
                    let age = u64::try_from(now_real - stamp).unwrap_or(0);
                    at = now.checked_sub(Duration::from_nanos(age));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok((n, at))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first integer after `key` in `body`.
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(body, key)? + key.len();
    let digits: String = body[at..]
        .iter()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().ok()
}

fn chunk(data: &str) -> Vec<u8> {
    let event = format!("data: {data}\n\n");
    let mut out = format!("{:x}\r\n", event.len()).into_bytes();
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

async fn stream(
    sock: &mut TcpStream,
    body: &[u8],
    arrived: Instant,
    timing: Timing,
    trace: Option<&ServerTrace>,
) -> std::io::Result<()> {
    let n = number_after(body, b"\"max_tokens\"").unwrap_or(16) as u32;
    let prompt_tokens = PROMPT_LEN;
    let id = number_after(body, b"\"prompt\"").unwrap_or(0);
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    let token = chunk(&format!(
        r#"{{"id":"cmpl-1","object":"text_completion","created":0,"model":"{MODEL}","choices":[{{"index":0,"text":"tok","logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    let mut written = Vec::with_capacity(if trace.is_some() { n as usize } else { 0 });
    let mut whole = Vec::new();
    for i in 0..n {
        if timing.whole {
            whole.extend_from_slice(&token);
            continue;
        }
        if !timing.ttft.is_zero() || !timing.itl.is_zero() {
            tokio::time::sleep_until((arrived + timing.ttft + timing.itl * i).into()).await;
        }
        sock.write_all(&token).await?;
        if trace.is_some() {
            written.push(Instant::now());
        }
    }
    let last = chunk(&format!(
        r#"{{"id":"cmpl-1","object":"text_completion","created":0,"model":"{MODEL}","choices":[{{"index":0,"text":"","logprobs":null,"finish_reason":"length"}}],"usage":null}}"#
    ));
    let usage = chunk(&format!(
        r#"{{"id":"cmpl-1","object":"text_completion","created":0,"model":"{MODEL}","choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{},"completion_tokens":{n}}}}}"#,
        prompt_tokens + n
    ));
    let mut end = whole;
    end.extend_from_slice(&last);
    end.extend_from_slice(&usage);
    end.extend_from_slice(&chunk("[DONE]"));
    end.extend_from_slice(b"0\r\n\r\n");
    sock.write_all(&end).await?;
    if let Some(trace) = trace {
        trace.lock().expect("trace").insert(id, (arrived, written));
    }
    Ok(())
}

/// An instant as CLOCK_MONOTONIC nanoseconds, the same in every process of the machine (from its
/// `Debug` form on Linux, `Instant { tv_sec: S, tv_nsec: N }`; std gives no other way).
fn monotonic_ns(t: Instant) -> i128 {
    let text = format!("{t:?}");
    let num = |key: &str| -> i128 {
        text.split(key).nth(1).map_or(0, |r| {
            r.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
        })
    };
    num("tv_sec: ") * 1_000_000_000 + num("tv_nsec: ")
}

/// One line per request: `id arrival_monotonic_ns ttft_ns gap_ns...` (server side).
fn render_trace(trace: &ServerTrace) -> String {
    let trace = trace.lock().expect("trace");
    let mut out = String::new();
    for (id, (arrived, written)) in trace.iter() {
        out += &format!("{id} {}", monotonic_ns(*arrived));
        let mut prev = *arrived;
        for &w in written {
            out += &format!(" {}", w.duration_since(prev).as_nanos());
            prev = w;
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The clients

fn client(args: &[String]) {
    let kind = args.first().map(String::as_str).expect("client raw|loadgen|accuracy");
    let url = opt(args, "--url").expect("--url").to_string();
    let concurrency: u32 = opt_num(args, "--concurrency", 64);
    let secs: f64 = opt_num(args, "--secs", 5.0);
    let threads: usize = opt_num(args, "--threads", 1);
    let m = match kind {
        "raw" => raw_client(&url, concurrency, secs, threads),
        "raw-epoll" => raw_epoll_client(&url, concurrency, secs, threads),
        "loadgen" => loadgen_client(&url, concurrency, secs),
        "accuracy" => accuracy_client(&url, concurrency, secs),
        other => panic!("unknown client {other}"),
    };
    println!("{}", serde_json::to_string(&m).expect("json"));
}

fn prompt_body(max_tokens: u32) -> String {
    let tokens: Vec<String> = (0..PROMPT_LEN).map(|i| (1000 + i * 7).to_string()).collect();
    format!(
        r#"{{"model":"{MODEL}","prompt":[{}],"max_tokens":{max_tokens},"min_tokens":{max_tokens},"ignore_eos":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#,
        tokens.join(",")
    )
}

/// The rendered request of the raw clients: the speed section's completion, streamed.
fn raw_request(addr: &str) -> Arc<[u8]> {
    let body = prompt_body(SPEED_TOKENS);
    format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

/// Keeps the last 7 bytes read in `tail`; true when they end a chunked body ("\r\n0\r\n\r\n").
fn ends_body(tail: &mut [u8; 7], read: &[u8]) -> bool {
    let n = read.len();
    if n >= 7 {
        tail.copy_from_slice(&read[n - 7..]);
    } else {
        tail.rotate_left(n);
        tail[7 - n..].copy_from_slice(read);
    }
    if tail == b"\r\n0\r\n\r\n" {
        *tail = [0; 7];
        return true;
    }
    false
}

/// A client that reads each response as it arrives, as any client that times tokens must, and
/// does nothing else: `concurrency` keep-alive connections on `threads` current-thread tokio
/// runtimes (one per thread, as the load generator's workers), each task writing its pre-rendered
/// request and reading until the chunked body ends, parsing nothing. Against the per-token
/// server this is the ceiling of a client that waits in `epoll` and reads per arrival; the
/// polling raw client's is that of one that lets tokens gather between reads.
fn raw_epoll_client(url: &str, concurrency: u32, secs: f64, threads: usize) -> Measured {
    raw_run(url, concurrency, secs, threads, |addr, request, deadline, conns| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let tasks: Vec<_> = (0..conns)
                .map(|_| {
                    let (addr, request) = (addr.clone(), request.clone());
                    tokio::spawn(async move {
                        let mut sock = TcpStream::connect(&addr).await.expect("connect");
                        sock.set_nodelay(true).expect("nodelay");
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut tail = [0u8; 7];
                        let mut done = 0u64;
                        while Instant::now() < deadline {
                            sock.write_all(&request).await.expect("write");
                            loop {
                                let n = sock.read(&mut buf).await.expect("read");
                                assert!(n > 0, "server closed");
                                if ends_body(&mut tail, &buf[..n]) {
                                    break;
                                }
                            }
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            let mut done = 0;
            for t in tasks {
                done += t.await.expect("raw-epoll task");
            }
            done
        })
    })
}

/// Runs a raw client: `threads` threads, each given the server's address, the rendered request,
/// the deadline and its share of the `concurrency` connections, returning how many responses
/// it read whole. The client's tokens/s and CPU per request.
fn raw_run(
    url: &str,
    concurrency: u32,
    secs: f64,
    threads: usize,
    thread: impl Fn(String, Arc<[u8]>, Instant, usize) -> u64 + Send + Copy + 'static,
) -> Measured {
    let addr = url.trim_start_matches("http://").to_string();
    let request = raw_request(&addr);
    let cpu = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, request) = (addr.clone(), request.clone());
            let conns = concurrency as usize / threads + usize::from(t < concurrency as usize % threads);
            std::thread::spawn(move || thread(addr, request, deadline, conns))
        })
        .collect();
    let n: u64 = handles.into_iter().map(|h| h.join().expect("raw client thread")).sum();
    let elapsed = start.elapsed().as_secs_f64();
    Measured {
        requests: n,
        requests_per_s: n as f64 / elapsed,
        tokens_per_s: (n * u64::from(SPEED_TOKENS)) as f64 / elapsed,
        cpu_us_per_request: (cpu_seconds() - cpu) * 1e6 / n as f64,
        ..Default::default()
    }
}

/// The server's ceiling: `concurrency` keep-alive connections, each sending a pre-rendered request
/// and reading until the chunked body ends, parsing nothing, on `threads` threads. The sockets
/// are polled, not waited on (no `epoll`), and tokens gather between sweeps: the server never
/// wakes its client and gets one ACK per many tokens, which makes its writes cheapest (measured
/// with perf: 4.7 µs per write against 11-13 µs for a client that reads each arrival).
fn raw_client(url: &str, concurrency: u32, secs: f64, threads: usize) -> Measured {
    use std::io::{ErrorKind, Read, Write};
    raw_run(url, concurrency, secs, threads, |addr, request, deadline, conns| {
        // Per connection: the socket, the last 7 bytes read, and whether a response is due.
        let mut socks: Vec<(std::net::TcpStream, [u8; 7], bool)> = (0..conns)
            .map(|_| {
                let s = std::net::TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                s.set_nonblocking(true).expect("nonblocking");
                (s, [0u8; 7], false)
            })
            .collect();
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        while Instant::now() < deadline {
            let mut progress = false;
            for (sock, tail, waiting) in socks.iter_mut() {
                if !*waiting {
                    let mut sent = 0;
                    while sent < request.len() {
                        match sock.write(&request[sent..]) {
                            Ok(n) => sent += n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                            Err(e) => panic!("write: {e}"),
                        }
                    }
                    *waiting = true;
                }
                loop {
                    match sock.read(&mut buf) {
                        Ok(0) => panic!("server closed"),
                        Ok(n) => {
                            progress = true;
                            if ends_body(tail, &buf[..n]) {
                                *waiting = false;
                                done += 1;
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
            if !progress || socks.len() < 256 {
                // Lets answers gather between sweeps: fewer, larger reads (a sweep that reads
                // one token per socket spends the client's core on system calls and measured
                // below the load generator at 64 streams), and the core goes to the server
                // where the two share one.
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        done
    })
}

/// What `cargo xtask loadgen --workload random --prompt-len 128 --gen-len 128 --request-rate inf
/// --max-concurrency C` builds and runs: the library entry point, with records, progress and
/// result files, on a multi-thread runtime as the command's.
fn loadgen_client(url: &str, concurrency: u32, secs: f64) -> Measured {
    let spec = workload::WorkloadSpec {
        source: workload::Source::Random(workload::RandomSpec {
            num_requests: (15_000.0 * secs) as u64,
            prompt_len: workload::LengthDist::Fixed { value: PROMPT_LEN },
            output_len: workload::LengthDist::Fixed { value: SPEED_TOKENS },
            prefix_len: 0,
        }),
        format: workload::PromptFormat::Tokens,
        vocab: workload::Vocab::default(),
    };
    let mut arrival = workload::ArrivalSpec::new(workload::Schedule::Constant { rate: f64::INFINITY });
    arrival.max_concurrency = Some(concurrency);
    arrival.duration_s = Some(secs);
    let plan = workload::build_plan(&spec, &arrival, 0, None).expect("plan");
    let cpu = cpu_seconds();
    let out = run_loadgen(url, &plan);
    let cpu = cpu_seconds() - cpu;
    let s = &out.summary;
    assert_eq!(s.failed, 0, "{:?}", s.failed_by_class);
    Measured {
        requests: s.completed,
        tokens_per_s: s.output_throughput,
        requests_per_s: s.request_throughput,
        ttft_p50_ms: s.median_ttft_ms,
        ttft_p99_ms: s.p99_ttft_ms,
        cpu_us_per_request: cpu * 1e6 / s.completed as f64,
        ..Default::default()
    }
}

fn run_loadgen(url: &str, plan: &workload::Plan) -> loadgen::RunOutcome {
    run_loadgen_at(url, plan, Instant::now())
}

fn run_loadgen_at(url: &str, plan: &workload::Plan, origin: Instant) -> loadgen::RunOutcome {
    let mut cfg = loadgen::LoadgenConfig::new(url);
    cfg.model = Some(MODEL.into());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut sink = loadgen::ResultWriter::in_dir(tmp.path()).expect("result dir");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(loadgen::run(plan, &cfg, &mut sink, origin)).expect("run")
}

/// Closed loop at `concurrency` for `secs` against the 80 ms / 20 ms server; the prompt's first
/// token is the request id, so the server's trace can be matched.
fn accuracy_client(url: &str, concurrency: u32, secs: f64) -> Measured {
    // More than the run can send: the duration limit ends it.
    let n = (f64::from(concurrency) * secs / 0.7 + 10.0) as u64;
    let requests = (0..n)
        .map(|id| workload::Request {
            id,
            prompt: workload::Prompt::Tokens(
                (0..PROMPT_LEN).map(|i| if i == 0 { id as u32 } else { 1000 + i }).collect(),
            ),
            prompt_len: PROMPT_LEN,
            max_tokens: ACCURACY_TOKENS,
            send_at: None,
            depends_on: None,
            meta: Default::default(),
        })
        .collect();
    let plan = workload::Plan {
        requests,
        mode: workload::Mode::Closed { concurrency },
        limits: workload::Limits {
            max_concurrency: None,
            duration: Some(Duration::from_secs_f64(secs)),
            warmup: 0,
        },
    };
    let origin = Instant::now();
    let out = run_loadgen_at(url, &plan, origin);
    let origin_ns = monotonic_ns(origin) as f64 / 1e6;
    let s = &out.summary;
    assert_eq!(s.failed, 0, "{:?}", s.failed_by_class);

    let trace = fetch_trace(url);
    let (mut ttft_err, mut itl_err, mut late) = (Vec::new(), Vec::new(), Vec::new());
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for r in out.records.iter().filter(|r| !r.warmup && r.error.is_none()) {
        let server = &trace[&r.id];
        let arrival_ms = server[0] as f64 / 1e6;
        let server = &server[1..];
        let server_ttft = server[0] as f64 / 1e6;
        to_server.push(arrival_ms - (origin_ns + r.sent * 1e3));
        to_client.push((origin_ns + r.chunks[0].0 * 1e3) - (arrival_ms + server_ttft));
        ttft_err.push(r.ttft() * 1e3 - server_ttft);
        late.push(server_ttft - 80.0);
        for (i, w) in r.chunks.windows(2).enumerate() {
            let server_gap = server[i + 1] as f64 / 1e6;
            itl_err.push((w[1].0 - w[0].0) * 1e3 - server_gap);
            late.push(server_gap - 20.0);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        stats::percentile(v, p)
    };
    Measured {
        requests: s.completed,
        tokens_per_s: s.output_throughput,
        requests_per_s: s.request_throughput,
        ttft_p50_ms: s.median_ttft_ms,
        ttft_p99_ms: s.p99_ttft_ms,
        ttft_err_p50_ms: pct(&mut ttft_err, 50.0),
        ttft_err_p99_ms: pct(&mut ttft_err, 99.0),
        itl_err_p50_ms: pct(&mut itl_err, 50.0),
        itl_err_p99_ms: pct(&mut itl_err, 99.0),
        server_late_p99_ms: pct(&mut late, 99.0),
        cpu_us_per_request: 0.0,
        to_server_p99_ms: pct(&mut to_server, 99.0),
        to_client_p99_ms: pct(&mut to_client, 99.0),
    }
}

/// The server's trace: request id → [arrival to first token, then gaps between tokens] (ns).
fn fetch_trace(url: &str) -> HashMap<u64, Vec<u64>> {
    use std::io::Read as _;
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect for the trace");
    write!(sock, "GET /trace HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").expect("trace request");
    let mut text = String::new();
    // The server keeps the connection open: read up to the announced length.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = sock.read(&mut chunk).expect("trace");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let len = number_after(&buf[..i], b"content-length:").unwrap_or(0) as usize;
            if buf.len() >= i + 4 + len {
                text.push_str(&String::from_utf8_lossy(&buf[i + 4..i + 4 + len]));
                break;
            }
        }
        assert!(n > 0, "the trace was cut short");
    }
    text.lines()
        .map(|l| {
            let mut it = l.split(' ').map(|x| x.parse::<u64>().expect("trace number"));
            let id = it.next().expect("id");
            (id, it.collect())
        })
        .collect()
}
