//! The HTML report of a stress run: one self-contained page (inline SVG and
//! CSS, no scripts, nothing fetched) with the summary, uploads and arrivals
//! over time, the lag of every file over time, and a lag histogram. Pure.

use std::fmt::Write;

use super::stats::{Sample, Summary};

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 16.0;
const RIGHT: f64 = 16.0;
/// More points than this are thinned evenly: the page stays small.
const MAX_POINTS: usize = 4000;

/// What the page says about the run besides the numbers.
pub struct RunInfo<'a> {
    pub run_id: &'a str,
    pub master: &'a str,
    pub standby: Option<&'a str>,
    pub sessions: usize,
    pub size_spec: &'a str,
    pub rate: Option<f64>,
}

pub fn render(info: &RunInfo, summary: &Summary, samples: &[Sample]) -> String {
    let mut page = String::new();
    let title = format!("sftp-ha stress run {}", escape(info.run_id));
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:sans-serif;margin:24px;color:#222;max-width:820px}}\
         table{{border-collapse:collapse}}td,th{{padding:3px 12px 3px 0;text-align:left}}\
         th{{font-weight:normal;color:#555}}h2{{font-size:17px;margin-top:28px}}\
         svg{{background:#fafafa;border:1px solid #ddd}}.note{{color:#666;font-size:13px}}\
         </style></head><body>\n<h1>{title}</h1>\n<table>\n"
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(page, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    };
    row("master", info.master.to_string());
    row("standby", info.standby.unwrap_or("not watched").to_string());
    row(
        "files",
        format!(
            "{} ({}), sizes {}",
            summary.files,
            mib(summary.bytes),
            info.size_spec
        ),
    );
    row(
        "sessions, rate",
        format!(
            "{}, {}",
            info.sessions,
            info.rate
                .map_or("full speed".to_string(), |r| format!("{r} files/s"))
        ),
    );
    row(
        "upload",
        format!(
            "{:.2} s: {:.1} files/s, {:.2} MiB/s",
            summary.upload_seconds, summary.files_per_second, summary.mib_per_second
        ),
    );
    if let Some(lag) = &summary.lag_seconds {
        row(
            "replication lag",
            format!(
                "p50 {} · p95 {} · p99 {} · max {}",
                ms(lag.p50),
                ms(lag.p95),
                ms(lag.p99),
                ms(lag.max)
            ),
        );
    }
    if let (Some(arrived), Some(missing)) = (summary.arrived, summary.missing) {
        row(
            "on the standby",
            format!("{arrived} arrived, {missing} missing"),
        );
    }
    page.push_str("</table>\n");

    let end = samples
        .iter()
        .map(|s| s.arrived.unwrap_or(s.uploaded).max(s.uploaded))
        .fold(0.0, f64::max)
        .max(0.001);
    page.push_str("<h2>Files per second: uploaded to the master, arrived on the standby</h2>\n");
    page.push_str(&throughput_chart(samples, end));
    if summary.lag_seconds.is_some() {
        page.push_str("<h2>Replication lag of each file, by the time its upload ended</h2>\n");
        page.push_str(&lag_chart(samples, end));
        page.push_str("<h2>Lag histogram</h2>\n");
        page.push_str(&histogram(samples));
        page.push_str("<p class=\"note\">Lag: from the master acknowledging the end of an upload to the file being seen complete on the standby (polled about every 20 ms).</p>\n");
    }
    page.push_str("</body></html>\n");
    page
}

fn throughput_chart(samples: &[Sample], end: f64) -> String {
    let bucket = nice_step(end / 60.0).max(0.01);
    let n = (end / bucket).ceil().max(1.0) as usize;
    let mut up = vec![0usize; n];
    let mut arrived = vec![0usize; n];
    for s in samples {
        up[((s.uploaded / bucket) as usize).min(n - 1)] += 1;
        if let Some(a) = s.arrived {
            arrived[((a / bucket) as usize).min(n - 1)] += 1;
        }
    }
    let per_sec = |c: usize| c as f64 / bucket;
    let ymax = up
        .iter()
        .chain(&arrived)
        .map(|c| per_sec(*c))
        .fold(0.0, f64::max);
    let mut svg = frame(end, ymax, "seconds since start", "files/s");
    let (x, y) = scales(end, ymax);
    let bw = (x(bucket) - x(0.0)).max(1.0);
    for (i, c) in up.iter().enumerate().filter(|(_, c)| **c > 0) {
        let top = y(per_sec(*c));
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#7aa6d6\"/>",
            x(i as f64 * bucket),
            (bw - 1.0).max(0.5),
            y(0.0) - top
        );
    }
    if arrived.iter().any(|c| *c > 0) {
        let points: Vec<String> = arrived
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:.1},{:.1}", x((i as f64 + 0.5) * bucket), y(per_sec(*c))))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#d2691e\" stroke-width=\"2\"/>",
            points.join(" ")
        );
    }
    svg.push_str(&legend(&[
        ("#7aa6d6", "uploaded"),
        ("#d2691e", "arrived on the standby"),
    ]));
    svg.push_str("</svg>\n");
    svg
}

fn lag_chart(samples: &[Sample], end: f64) -> String {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.lag().map(|l| (s.uploaded, l * 1000.0)))
        .collect();
    let ymax = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut svg = frame(end, ymax, "seconds since start", "lag (ms)");
    let (x, y) = scales(end, ymax);
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    for (t, l) in points.iter().step_by(step) {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#d2691e\" fill-opacity=\"0.6\"/>",
            x(*t),
            y(*l)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn histogram(samples: &[Sample]) -> String {
    let lags: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.lag().map(|l| l * 1000.0))
        .collect();
    let max = lags.iter().copied().fold(0.0, f64::max);
    let width = nice_step(max / 40.0).max(1.0);
    let n = ((max / width).floor() as usize + 1).max(1);
    let mut bins = vec![0usize; n];
    for l in &lags {
        bins[((l / width) as usize).min(n - 1)] += 1;
    }
    let xmax = n as f64 * width;
    let ymax = bins.iter().copied().max().unwrap_or(0) as f64;
    let mut svg = frame(xmax, ymax, "lag (ms)", "files");
    let (x, y) = scales(xmax, ymax);
    for (i, c) in bins.iter().enumerate().filter(|(_, c)| **c > 0) {
        let top = y(*c as f64);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#d2691e\"/>",
            x(i as f64 * width),
            (x(width) - x(0.0) - 1.0).max(0.5),
            y(0.0) - top
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Value → pixel for a chart whose axes end at `xmax` and `ymax`.
fn scales(xmax: f64, ymax: f64) -> (impl Fn(f64) -> f64, impl Fn(f64) -> f64) {
    let (xmax, ymax) = (axis_end(xmax), axis_end(ymax));
    (
        move |v: f64| LEFT + v / xmax * (W - LEFT - RIGHT),
        move |v: f64| H - BOTTOM - v / ymax * (H - BOTTOM - TOP),
    )
}

/// An open `<svg>` with axes, ticks and labels.
fn frame(xmax: f64, ymax: f64, xlabel: &str, ylabel: &str) -> String {
    let (x, y) = scales(xmax, ymax);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"11\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#444\"/>",
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for t in ticks(xmax) {
        let _ = write!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{b}\" x2=\"{px:.1}\" y2=\"{b2}\" stroke=\"#444\"/><text x=\"{px:.1}\" y=\"{ty}\" text-anchor=\"middle\">{}</text>",
            label(t),
            px = x(t),
            b = H - BOTTOM,
            b2 = H - BOTTOM + 4.0,
            ty = H - BOTTOM + 16.0
        );
    }
    for t in ticks(ymax) {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{r}\" y2=\"{py:.1}\" stroke=\"#e4e4e4\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>",
            label(t),
            py = y(t),
            r = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y(t) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{cx}\" y=\"{by}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{cy}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {cy})\">{}</text>",
        escape(xlabel),
        escape(ylabel),
        cx = (LEFT + W - RIGHT) / 2.0,
        by = H - 6.0,
        cy = (TOP + H - BOTTOM) / 2.0
    );
    svg
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut x = LEFT + 10.0;
    for (color, text) in items {
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"{TOP}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            x + 14.0,
            TOP + 9.0,
            escape(text)
        );
        x += 24.0 + 6.5 * text.len() as f64;
    }
    out
}

/// The axis end: the value rounded up to a whole number of tick steps.
fn axis_end(v: f64) -> f64 {
    let step = nice_step(v / 5.0);
    ((v / step).ceil() * step).max(step)
}

fn ticks(v: f64) -> Vec<f64> {
    let step = nice_step(v / 5.0);
    let end = axis_end(v);
    (0..=((end / step).round() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn label(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::super::stats::summarize;
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let samples: Vec<Sample> = (0..500)
            .map(|i| Sample {
                size: 4096,
                uploaded: f64::from(i) * 0.01,
                arrived: (i % 100 != 0).then(|| f64::from(i) * 0.01 + 0.05),
            })
            .collect();
        let summary = summarize(&samples, 5.0, true);
        let info = RunInfo {
            run_id: "<x>",
            master: "10.0.0.1:22",
            standby: Some("10.0.0.2:22"),
            sessions: 4,
            size_spec: "4k",
            rate: Some(100.0),
        };
        let page = render(&info, &summary, &samples);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("&lt;x&gt;") && !page.contains("<x>"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(
            !page.contains("http://") || !page.contains("src="),
            "no external assets"
        );
        assert!(!page.contains("<script"));
        assert!(page.contains("495 arrived, 5 missing"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(120.0), 200.0);
        assert_eq!(ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(label(0.25), "0.25");
    }
}
