//! Reports of the fixture result directories: report.md, plots (SVG and PNG), comparison.

use std::path::{Path, PathBuf};

use report::compare::{bootstrap_diff_ci, Comparison, Noise};
use report::{plots, write_report, Figure, RunData};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture_runs() -> Vec<RunData> {
    ["baseline-emulated", "cpu-emulated"].iter().map(|n| RunData::load(&fixture(n)).unwrap()).collect()
}

#[test]
fn report_md_of_the_fixture() {
    let out = tempfile::tempdir().unwrap();
    let written = write_report(&fixture_runs(), out.path()).unwrap();
    let md = std::fs::read_to_string(&written.markdown).unwrap();
    insta::assert_snapshot!("report_md", md);
    insta::assert_snapshot!("terminal_table", written.table);
}

/// Text of every `<text>` element of an SVG document, after checking it is well-formed XML.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("invalid SVG: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect()
}

/// Decodes a PNG and returns (width, height, variance of the pixel luminance).
fn png_stats(bytes: &[u8]) -> (u32, u32, f64) {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let lum: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| p.iter().take(3).map(|&c| f64::from(c)).sum::<f64>() / 3.0)
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    (info.width, info.height, var)
}

/// Expected figures of the two-run fixture: name → series count.
const EXPECTED: &[(&str, usize)] = &[
    // Two tiers: the answer first, each run a median and its interval (the fixtures predate
    // token sources: none).
    ("tiers", 4),
    // One prompt length (2048): TTFT over the run, each run points + median line, instead of
    // a vertical stripe against prompt length.
    ("ttft_over_time", 4),
    ("ttft_cdf", 2),
    ("itl_cdf", 2),
    // PCIe TX/RX, GPU util, disk read/write, KV usage + prefix-cache hit rate (no offload tier:
    // no offload hit rate), in flight + arrivals + completions.
    ("timeline_0", 10),
    // No GPU samples: disk 2, engine 3 (with the offload hit rate), requests 3.
    ("timeline_1", 8),
];

#[test]
fn plots_render_with_their_series() {
    let runs = fixture_runs();
    let figures = plots::figures(&runs);
    let got: Vec<(&str, usize)> = figures.iter().map(|f| (f.name.as_str(), f.series_count())).collect();
    assert_eq!(got, EXPECTED);

    let out = tempfile::tempdir().unwrap();
    let written = write_report(&runs, out.path()).unwrap();
    assert_eq!(written.plots.len(), 2 * EXPECTED.len());
    for figure in &figures {
        let svg_path = out.path().join("plots").join(format!("{}.svg", figure.name));
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        let texts = svg_texts(&svg);
        // Every series appears in the legend exactly once.
        for series in figure.panels.iter().flat_map(|p| &p.series) {
            let n = texts.iter().filter(|t| **t == series.label).count();
            assert_eq!(n, 1, "{}: legend entry {:?} appears {n} times", figure.name, series.label);
        }
        assert!(texts.contains(&figure.title), "{}: title missing", figure.name);

        let png = std::fs::read(out.path().join("plots").join(format!("{}.png", figure.name))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let (w, h, var) = png_stats(&png);
        assert_eq!(w, 960, "{}", figure.name);
        assert_eq!(h, 40 + 320 * figure.panels.len() as u32, "{}", figure.name);
        assert!(var > 100.0, "{}: PNG looks blank (variance {var})", figure.name);
    }
}

#[test]
fn emulated_runs_are_labelled_in_titles_and_legends() {
    let figures = plots::figures(&fixture_runs());
    for figure in &figures {
        assert!(figure.title.contains("(emulated)"), "{}", figure.title);
        for series in figure.panels.iter().flat_map(|p| &p.series) {
            if !figure.name.starts_with("timeline") {
                assert!(series.label.contains("(emulated)"), "{}: {}", figure.name, series.label);
            }
        }
    }
    // A measured run is not called emulated.
    let mut runs = fixture_runs();
    for run in &mut runs {
        run.summary.emulated = false;
    }
    let figures = plots::figures(&runs);
    assert!(figures.iter().all(|f: &Figure| !f.title.contains("(emulated)")));
}

#[test]
fn sweep_plot_needs_two_rates_per_engine_and_tier() {
    let base = fixture_runs();
    let mut runs = Vec::new();
    for (i, rate) in [1.0, 2.0, 4.0].into_iter().enumerate() {
        for template in &base {
            let mut run = template.clone();
            run.request_rate = Some(rate);
            run.summary.request_throughput = rate * 0.9;
            run.label = format!("{}-{i}", run.label);
            runs.push(run);
        }
    }
    let figures = plots::figures(&runs);
    let sweep = figures.iter().find(|f| f.name == "sweep").expect("a sweep plot");
    // Two tiers: throughput per tier, TTFT p50 and p99 per tier.
    assert_eq!(sweep.panels.len(), 2);
    assert_eq!(sweep.panels[0].series.len(), 2);
    assert_eq!(sweep.panels[1].series.len(), 4);
    let cpu = &sweep.panels[0].series[1];
    assert_eq!(cpu.label, "cpu emulated (emulated) req/s");
    assert_eq!(cpu.points, vec![(1.0, 0.9), (2.0, 1.8), (4.0, 3.6)]);
    // The fixture alone has one rate: no sweep.
    assert!(plots::figures(&base).iter().all(|f| f.name != "sweep"));
}

/// `check(a, b, p, expect)`: the bootstrap verdict on the difference of percentile `p`.
fn check(a: &[f64], b: &[f64], p: f64, expect: Noise) {
    let ci = bootstrap_diff_ci(a, b, p, 1).unwrap();
    let got = if ci.0 > 0.0 || ci.1 < 0.0 { Noise::Beyond } else { Noise::Within };
    assert_eq!(got, expect, "interval {ci:?}");
}

#[test]
fn bootstrap_separates_shifts_from_noise() {
    let a: Vec<f64> = (0..200).map(|i| 100.0 + f64::from(i % 17)).collect();
    let shifted: Vec<f64> = a.iter().map(|v| v + 20.0).collect();
    let same: Vec<f64> = a.iter().rev().copied().collect();
    check(&a, &shifted, 50.0, Noise::Beyond);
    check(&a, &shifted, 99.0, Noise::Beyond);
    check(&a, &same, 50.0, Noise::Within);
    check(&a, &a[..100], 50.0, Noise::Within);
    // Deterministic: the same seed gives the same interval.
    assert_eq!(bootstrap_diff_ci(&a, &shifted, 50.0, 9), bootstrap_diff_ci(&a, &shifted, 50.0, 9));
    assert_eq!(bootstrap_diff_ci(&a[..1], &shifted, 50.0, 9), None);
}

#[test]
fn comparison_rows_and_deltas() {
    let runs = fixture_runs();
    let c = Comparison::new(&runs);
    assert_eq!(c.runs, ["baseline-emulated (emulated)", "cpu-emulated (emulated)"]);
    let row = c.rows.iter().find(|r| r.metric == "p99_ttft_ms").unwrap();
    let (first, second) = (runs[0].summary.p99_ttft_ms, runs[1].summary.p99_ttft_ms);
    assert_eq!(row.values, vec![Some(first), Some(second)]);
    let delta = row.deltas[1].as_ref().unwrap();
    assert!((delta.abs - (second - first)).abs() < 1e-9);
    assert!(delta.ci.is_some() && delta.noise != Noise::Untested);
    // Goodput is null without SLOs: no row.
    assert!(c.rows.iter().all(|r| r.metric != "request_goodput"));
    // Mean TTFT has no bootstrap.
    let mean = c.rows.iter().find(|r| r.metric == "mean_ttft_ms").unwrap();
    assert_eq!(mean.deltas[1].as_ref().unwrap().noise, Noise::Untested);
}

#[test]
fn result_dirs_expand_from_globs_and_roots() {
    let root = fixture("");
    let root = root.to_str().unwrap().trim_end_matches('/');
    let names = |dirs: Vec<PathBuf>| -> Vec<String> {
        dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    let all = ["baseline-emulated", "cpu-emulated"];
    assert_eq!(names(report::expand_dirs(&[format!("{root}/*-emulated")]).unwrap()), all);
    assert_eq!(names(report::expand_dirs(&[root]).unwrap()), all);
    assert_eq!(names(report::expand_dirs(&[format!("{root}/cpu-emulated")]).unwrap()), ["cpu-emulated"]);
    let err = report::expand_dirs(&[format!("{root}/nothing-*")]).unwrap_err().to_string();
    assert!(err.starts_with("no result directory matches"), "{err}");
}

#[test]
fn malformed_inputs_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("cpu-emulated");
    std::fs::copy(src.join("summary.json"), dir.path().join("summary.json")).unwrap();
    let mut lines: Vec<String> =
        std::fs::read_to_string(src.join("requests.jsonl")).unwrap().lines().map(str::to_owned).collect();
    lines[2] = lines[2].replace("\"end\":", "\"end_\":");
    std::fs::write(dir.path().join("requests.jsonl"), lines.join("\n")).unwrap();
    let err = RunData::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("requests.jsonl:3: (top level): missing field `end`"), "{err}");

    std::fs::write(dir.path().join("summary.json"), "{\"v\": 1,\n \"engine\": 3}").unwrap();
    let err = RunData::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("summary.json:2: engine: invalid type: integer `3`, expected a string (column 12)"),
        "{err}"
    );
}

/// A partial run is marked: an interrupted run (env.json) and a run of an experiment root whose
/// index.json says it is not complete (a Slurm run still going) both carry an INCOMPLETE banner.
#[test]
fn partial_runs_are_marked_incomplete() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpu-emulated");
    let copy = |to: &std::path::Path| {
        std::fs::create_dir_all(to.join("samples")).unwrap();
        for name in ["requests.jsonl", "run.toml", "summary.json"] {
            std::fs::copy(fixture.join(name), to.join(name)).unwrap();
        }
    };
    let tmp = tempfile::tempdir().unwrap();

    let whole = tmp.path().join("whole");
    copy(&whole);
    let data = report::RunData::load(&whole).unwrap();
    assert_eq!(data.incomplete, None);
    let out = report::write_report(&[data], &whole).unwrap();
    assert!(!std::fs::read_to_string(out.markdown).unwrap().contains("INCOMPLETE"));

    let interrupted = tmp.path().join("interrupted");
    copy(&interrupted);
    std::fs::write(interrupted.join("env.json"), r#"{"interrupted": true}"#).unwrap();
    let out = report::write_report(&[report::RunData::load(&interrupted).unwrap()], &interrupted).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("**INCOMPLETE**") && md.contains("interrupted"), "{md}");
    assert!(std::fs::read_to_string(&out.html).unwrap().contains("INCOMPLETE"));

    let root = tmp.path().join("experiment");
    let point = root.join("p0");
    copy(&point);
    std::fs::write(root.join("index.json"), r#"{"complete": false, "points": []}"#).unwrap();
    let data = report::RunData::load(&point).unwrap();
    assert!(data.incomplete.as_deref().unwrap().contains("complete = false"), "{:?}", data.incomplete);
}
