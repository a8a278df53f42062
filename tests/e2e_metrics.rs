//! End-to-end test of the Prometheus metrics on the test bed: the master
//! configured with `[metrics] textfile` and `listen`, scraped both ways from
//! inside the host (its textfile with `cat`, `GET /metrics` with bash's
//! /dev/tcp: the hosts have no curl), while its standby is cut off and back.
//! Run by `tests/run-all`.

mod util;

use util::{MASTER, STANDBY, Testbed, replicating_pair, stdout, wait_for};

const FOLDER: &str = "/var/lib/sftp-ha-metrics";
const TEXTFILE: &str = "/var/lib/sftp-ha-metrics/sftp-ha.prom";
const UPLOAD: &str = "/srv/sftp-ha/EPuser/upload";

/// `path` on 127.0.0.1:9781 from inside the master: the whole answer, or
/// `None` while nothing listens (the daemon restarting).
fn http_get(tb: &Testbed, path: &str) -> Option<String> {
    let out = tb.sh(
        MASTER,
        &format!(
            r#"bash -c 'exec 3<>/dev/tcp/127.0.0.1/9781; printf "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n" >&3; cat <&3'"#
        ),
    );
    out.status.success().then(|| stdout(&out))
}

/// The master's textfile, or `None` while there is none.
fn textfile(tb: &Testbed) -> Option<String> {
    let out = tb.sh(MASTER, &format!("cat {TEXTFILE}"));
    out.status.success().then(|| stdout(&out))
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The value of the unlabelled sample `name` in `text`.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until both the textfile and the HTTP endpoint show `line`; returns both.
fn both_show(tb: &Testbed, line: &str) -> (String, String) {
    wait_for(&format!("`{line}` in the textfile and over HTTP"), || {
        let file = textfile(tb).filter(|t| has_line(t, line))?;
        let http = http_get(tb, "/metrics").filter(|t| has_line(t, line))?;
        Some((file, http))
    })
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn the_metrics_show_the_standby_going_away_and_coming_back_both_ways() {
    let tb = replicating_pair("");
    let check = tb.ok(
        MASTER,
        &format!(
            "mkdir -p {FOLDER} && cat >> /etc/sftp-ha/config.toml <<'EOF'\n\
             [metrics]\n\
             textfile = \"{TEXTFILE}\"\n\
             listen = \"127.0.0.1:9781\"\n\
             EOF\n\
             sftp-ha check-config && systemctl restart sftp-ha"
        ),
    );
    assert!(
        check.contains(&format!(
            "metrics to {TEXTFILE} and http://127.0.0.1:9781/metrics"
        )),
        "{check}"
    );

    let (file, http) = both_show(&tb, "sftp_ha_standby_up 1");
    for text in [&file, &http] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("sftp_ha_info{version=\"")
                    && l.ends_with(",role=\"master\"} 1")),
            "{text}"
        );
        assert!(
            has_line(text, "# TYPE sftp_ha_sync_files_total counter"),
            "{text}"
        );
        assert!(has_line(text, "sftp_ha_sync_deletes_held_back 0"), "{text}");
    }
    assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
    assert!(
        http.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{http}"
    );
    // Only the file itself in the folder (no temporary left, nothing that the
    // collector would read twice), readable by node-exporter's user.
    assert_eq!(
        tb.ok(MASTER, &format!("ls -A {FOLDER}")).trim(),
        "sftp-ha.prom"
    );
    assert_eq!(
        tb.ok(MASTER, &format!("stat -c %a {TEXTFILE}")).trim(),
        "644"
    );
    let other = http_get(&tb, "/").expect("the endpoint answers");
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");

    // A file replicated: the counter goes up, in the file as over HTTP.
    let before = value(&file, "sftp_ha_sync_files_total").expect("files counter");
    tb.ok(
        MASTER,
        &format!("echo probe > {UPLOAD}/metrics-probe && chown EPuser: {UPLOAD}/metrics-probe"),
    );
    wait_for("the files counter to go up both ways", || {
        let file = value(&textfile(&tb)?, "sftp_ha_sync_files_total")?;
        let http = value(&http_get(&tb, "/metrics")?, "sftp_ha_sync_files_total")?;
        (file > before && http > before).then_some(())
    });

    // Cut off: an idle connection is not noticed before TCP gives up, so a
    // file to replicate makes the master try (and time out) at once.
    tb.cut(STANDBY);
    tb.ok(
        MASTER,
        &format!("echo cut > {UPLOAD}/while-cut && chown EPuser: {UPLOAD}/while-cut"),
    );
    let (file, _) = both_show(&tb, "sftp_ha_standby_up 0");
    let down_since = value(&file, "sftp_ha_standby_state_change_time_seconds")
        .expect("since when the standby is down");

    tb.uncut(STANDBY);
    let (file, _) = both_show(&tb, "sftp_ha_standby_up 1");
    assert!(
        value(&file, "sftp_ha_standby_state_change_time_seconds").is_some_and(|t| t >= down_since),
        "{file}"
    );
    wait_for("the file written while cut off on the standby", || {
        tb.sh(STANDBY, &format!("test -s {UPLOAD}/while-cut"))
            .status
            .success()
            .then_some(())
    });
}
