use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::status::{Phase, ReloadOutcome, UsersApply};
use crate::sync::SyncStatus;

fn base(role: Role) -> DaemonStatus {
    DaemonStatus {
        pid: 42,
        version: "0.1.0".into(),
        role,
        phase: Phase::Running,
        activity: "serving".into(),
        started_at: 1_700_000_000,
        updated_at: 1_700_000_100,
        config_path: "/etc/sftp-ha/config.toml".into(),
        config_loaded_at: 1_700_000_000,
        data_dir: "/srv/sftp-ha".into(),
        standby: None,
        fallback_interval: "1m40s".into(),
        shared: false,
        last_reload: None,
        sshd: String::new(),
        users_apply: None,
        sync: None,
        standbys: Vec::new(),
        epoch: 1,
        role_since: 1_700_000_000,
        role_reason: String::new(),
        node: "m1".into(),
        peer: None,
        caught_up: None,
        last_request: None,
        answers: Vec::new(),
        failover: None,
        witness: false,
    }
}

fn busy_sync() -> SyncStatus {
    SyncStatus {
        standby: "10.231.0.2:22".into(),
        connected: true,
        since: 1_700_000_010,
        last_error: None,
        pending: 7,
        last_sync: Some(1_700_000_090),
        last_scan: Some(1_700_000_020),
        files_synced: 1234,
        bytes_synced: 9_876_543_210,
        deletes_held_back: false,
        last_audit: Some(1_700_000_030),
        last_audit_repairs: 3,
        last_lag_ms: Some(1234),
        refused: 2,
        last_refused: Some("upload/x: permission denied".into()),
        ..SyncStatus::default()
    }
}

/// Every shape of status the daemon can be in, as far as the metrics go.
fn statuses() -> Vec<(&'static str, DaemonStatus)> {
    let mut all = Vec::new();
    all.push(("a fresh standby", base(Role::Standby)));
    all.push(("a master without a standby", base(Role::Master)));
    let mut s = base(Role::Master);
    s.standby = Some("10.231.0.2:22".into());
    all.push(("a master whose replication is not running", s.clone()));
    s.sync = Some(SyncStatus {
        standby: "10.231.0.2:22".into(),
        since: 1_700_000_000,
        ..SyncStatus::default()
    });
    all.push(("a master that has not reached its standby yet", s.clone()));
    s.sync = Some(busy_sync());
    s.sshd = "drop-in installed, sshd reloaded (/etc/ssh/sshd_config.d/50-sftp-ha.conf)".into();
    s.users_apply = Some(UsersApply {
        at: 1_700_000_050,
        file: "/srv/sftp-ha/admin/users.yaml".into(),
        ok: true,
        summary: "2 users".into(),
    });
    s.last_reload = Some(ReloadOutcome {
        at: 1_700_000_060,
        ok: true,
        message: "no change".into(),
    });
    all.push(("a busy master", s.clone()));
    let mut down = s.clone();
    down.sync = Some(SyncStatus {
        connected: false,
        last_error: Some("connect: timed out".into()),
        deletes_held_back: true,
        last_lag_ms: Some(5),
        ..busy_sync()
    });
    down.sshd = "ERROR: sshd -t refused the drop-in".into();
    down.users_apply = Some(UsersApply {
        ok: false,
        ..s.users_apply.clone().unwrap()
    });
    down.last_reload = Some(ReloadOutcome {
        at: 1_700_000_070,
        ok: false,
        message: "config error".into(),
    });
    all.push(("a master in trouble", down.clone()));
    let mut two = s.clone();
    two.standbys = vec![
        busy_sync(),
        SyncStatus {
            standby: "10.231.0.3:22".into(),
            connected: false,
            last_error: Some("connect: timed out".into()),
            ..busy_sync()
        },
    ];
    all.push(("a master with two standbys, one away", two));
    let mut odd = base(Role::Standby);
    odd.version = "1.0\\beta \"quoted\"\nnext line".into();
    odd.sshd = "drop-in up to date".into();
    all.push(("a version with characters to escape", odd));
    all
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A sample value as Prometheus parses it: a decimal float, `+Inf`, `-Inf` or `NaN`.
fn valid_value(text: &str) -> bool {
    if matches!(text, "+Inf" | "-Inf" | "NaN") {
        return true;
    }
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && digits(frac)
        && (!mantissa.contains('.') || !frac.is_empty())
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        })
        && text.parse::<f64>().is_ok()
}

/// Parses `{a="b",c="d"}` (escapes `\\`, `\"`, `\n` only) into pairs.
fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut pairs = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if pairs.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(format!("label {name} twice"));
        }
        pairs.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            if next.is_empty() {
                return Err("trailing comma".into());
            }
            rest = next;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label value: {rest:?}"));
        }
    }
    Ok(pairs)
}

/// Checks `text` line by line against the text exposition format 0.0.4 and
/// Prometheus' naming rules, as strictly as sftp-ha means to follow them:
/// every family has `# HELP` then `# TYPE` before its samples, and its samples
/// together; valid metric and label names; escaped label values; numeric
/// values; no series twice; counters (and only counters) end in `_total`.
fn check_exposition(text: &str) -> Result<(), String> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err("empty, or no newline at the end".into());
    }
    let mut help: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    let mut finished: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| Err(format!("line {}: {why}: {line:?}", n + 1));
        if line.is_empty() || line.contains('\r') || line.trim() != line {
            return fail("empty line, carriage return or stray space".into());
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_name(name) {
                return fail(format!("bad metric name {name:?}"));
            }
            if sampled.contains(name) || finished.contains(name) {
                return fail("HELP or TYPE after the family's samples".into());
            }
            if current.as_deref().is_some_and(|c| c != name) {
                finished.extend(current.take());
            }
            match keyword {
                "HELP" => {
                    if !help.insert(name.to_string()) {
                        return fail("second HELP".into());
                    }
                    if arg.trim().is_empty() {
                        return fail("empty HELP".into());
                    }
                    let mut chars = arg.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return fail("bad escape in HELP".into());
                        }
                    }
                }
                "TYPE" => {
                    if !help.contains(name) {
                        return fail("TYPE before HELP".into());
                    }
                    if !matches!(
                        arg,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return fail(format!("unknown type {arg:?}"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return fail("second TYPE".into());
                    }
                }
                _ => return fail("a comment other than HELP or TYPE".into()),
            }
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            return fail("malformed comment".into());
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_name(name) {
            return fail(format!("bad metric name {name:?}"));
        }
        if !name.starts_with("sftp_ha_") {
            return fail("no sftp_ha_ prefix".into());
        }
        let Some(kind) = types.get(name) else {
            return fail("sample without TYPE".into());
        };
        if !help.contains(name) {
            return fail("sample without HELP".into());
        }
        if finished.contains(name) {
            return fail("the family's samples are not together".into());
        }
        if current.as_deref() != Some(name) {
            finished.extend(current.take());
            current = Some(name.to_string());
        }
        let rest = &line[name_end..];
        let (labels, value) = if rest.starts_with('{') {
            let close = rest.rfind('}').ok_or("no closing brace")?;
            (parse_labels(&rest[..=close])?, &rest[close + 1..])
        } else {
            (Vec::new(), rest)
        };
        let Some(value) = value.strip_prefix(' ') else {
            return fail("no space before the value".into());
        };
        if value.contains(' ') {
            return fail("a timestamp or junk after the value".into());
        }
        if !valid_value(value) {
            return fail(format!("value {value:?} is not a number"));
        }
        match kind.as_str() {
            "counter" if !name.ends_with("_total") => {
                return fail("counter not named _total".into());
            }
            "counter" if value.starts_with('-') => return fail("negative counter".into()),
            "counter" => {}
            _ if name.ends_with("_total") => return fail("_total on a non-counter".into()),
            _ => {}
        }
        let mut sorted = labels;
        sorted.sort();
        if !series.insert(format!("{name}{sorted:?}")) {
            return fail("duplicate series".into());
        }
        sampled.insert(name.to_string());
    }
    let unsampled: Vec<_> = types.keys().filter(|n| !sampled.contains(*n)).collect();
    if !unsampled.is_empty() {
        return Err(format!("families without samples: {unsampled:?}"));
    }
    Ok(())
}

#[test]
fn every_status_renders_valid_exposition_text() {
    for (what, status) in statuses() {
        let text = render(&status);
        if let Err(err) = check_exposition(&text) {
            panic!("{what}: {err}\n{text}");
        }
    }
}

#[test]
fn the_format_check_catches_what_it_is_meant_to() {
    let good = "# HELP sftp_ha_a_total A.\n# TYPE sftp_ha_a_total counter\nsftp_ha_a_total 1\n";
    check_exposition(good).unwrap();
    for bad in [
        "",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1",
        "sftp_ha_a 1\n",
        "# TYPE sftp_ha_a gauge\n# HELP sftp_ha_a A.\nsftp_ha_a 1\n",
        "# HELP sftp_ha_a A.\nsftp_ha_a 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1\n# HELP sftp_ha_a A.\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1\nsftp_ha_a 2\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a one\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1 1700000000\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a .5\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a counter\nsftp_ha_a 1\n",
        "# HELP sftp_ha_a_total A.\n# TYPE sftp_ha_a_total gauge\nsftp_ha_a_total 1\n",
        "# HELP sftp_ha_a_total A.\n# TYPE sftp_ha_a_total counter\nsftp_ha_a_total -1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"1\"} 1\n\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\"b\"} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\\tb\"} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{1x=\"a\"} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{__x=\"a\"} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\",x=\"b\"} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\",} 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\"}1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a{x=\"a\"} 1\nsftp_ha_a{x=\"a\"} 2\n",
        "# HELP sftp-ha_a A.\n# TYPE sftp-ha_a gauge\nsftp-ha_a 1\n",
        "# HELP other_a A.\n# TYPE other_a gauge\nother_a 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\n",
        "# HELP sftp_ha_a A\\x.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1\n",
        "# HELP sftp_ha_a A.\n# TYPE sftp_ha_a gauge\nsftp_ha_a 1\n# HELP sftp_ha_b B.\n# TYPE sftp_ha_b gauge\nsftp_ha_b 1\nsftp_ha_a{x=\"y\"} 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn a_busy_master_shows_every_number() {
    let (_, status) = statuses()
        .into_iter()
        .find(|(w, _)| *w == "a busy master")
        .unwrap();
    let text = render(&status);
    for line in [
        "sftp_ha_info{version=\"0.1.0\",role=\"master\"} 1",
        "sftp_ha_start_time_seconds 1700000000",
        "sftp_ha_config_load_time_seconds 1700000000",
        "sftp_ha_last_reload_ok 1",
        "sftp_ha_last_reload_time_seconds 1700000060",
        "sftp_ha_sshd_config_ok 1",
        "sftp_ha_users_apply_ok 1",
        "sftp_ha_users_apply_last_time_seconds 1700000050",
        "sftp_ha_standby_up 1",
        "sftp_ha_standby_state_change_time_seconds 1700000010",
        "sftp_ha_sync_pending_operations 7",
        "sftp_ha_sync_files_total 1234",
        "sftp_ha_sync_bytes_total 9876543210",
        "sftp_ha_sync_last_success_time_seconds 1700000090",
        "sftp_ha_sync_lag_seconds 1.234",
        "sftp_ha_sync_last_full_scan_time_seconds 1700000020",
        "sftp_ha_sync_deletes_held_back 0",
        "sftp_ha_sync_refused_operations 2",
        "sftp_ha_audit_last_time_seconds 1700000030",
        "sftp_ha_audit_last_repairs 3",
        "# TYPE sftp_ha_sync_files_total counter",
        "# TYPE sftp_ha_standby_up gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}

#[test]
fn trouble_shows_as_zeros_and_ones() {
    let (_, status) = statuses()
        .into_iter()
        .find(|(w, _)| *w == "a master in trouble")
        .unwrap();
    let text = render(&status);
    for line in [
        "sftp_ha_standby_up 0",
        "sftp_ha_sync_deletes_held_back 1",
        "sftp_ha_sync_lag_seconds 0.005",
        "sftp_ha_sshd_config_ok 0",
        "sftp_ha_users_apply_ok 0",
        "sftp_ha_last_reload_ok 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}

#[test]
fn what_has_no_value_yet_is_left_out() {
    let standby = render(&base(Role::Standby));
    for absent in [
        "sftp_ha_standby_up",
        "sftp_ha_sync_",
        "sftp_ha_audit_",
        "sftp_ha_users_apply_",
        "sftp_ha_last_reload_time_seconds",
        "sftp_ha_sshd_config_ok",
    ] {
        assert!(!standby.contains(absent), "{absent} in\n{standby}");
    }
    assert!(standby.contains("sftp_ha_info{version=\"0.1.0\",role=\"standby\"} 1\n"));
    assert!(standby.contains("sftp_ha_last_reload_ok 1\n"));
    assert!(!render(&base(Role::Master)).contains("sftp_ha_standby_up"));

    let (_, not_running) = statuses()
        .into_iter()
        .find(|(w, _)| *w == "a master whose replication is not running")
        .unwrap();
    let text = render(&not_running);
    assert!(text.contains("\nsftp_ha_standby_up 0\n"), "{text}");
    assert!(!text.contains("sftp_ha_sync_"), "{text}");

    let (_, fresh) = statuses()
        .into_iter()
        .find(|(w, _)| *w == "a master that has not reached its standby yet")
        .unwrap();
    let text = render(&fresh);
    assert!(text.contains("\nsftp_ha_standby_up 0\n"), "{text}");
    assert!(text.contains("\nsftp_ha_sync_files_total 0\n"), "{text}");
    for absent in [
        "sftp_ha_sync_last_success_time_seconds",
        "sftp_ha_sync_lag_seconds",
        "sftp_ha_audit_",
    ] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
}

#[test]
fn label_values_are_escaped() {
    let (_, odd) = statuses()
        .into_iter()
        .find(|(w, _)| *w == "a version with characters to escape")
        .unwrap();
    let text = render(&odd);
    let line = text
        .lines()
        .find(|l| l.starts_with("sftp_ha_info{"))
        .unwrap();
    assert_eq!(
        line,
        r#"sftp_ha_info{version="1.0\\beta \"quoted\"\nnext line",role="standby"} 1"#
    );
    let labels = parse_labels(
        line.trim_start_matches("sftp_ha_info")
            .trim_end_matches(" 1"),
    );
    assert_eq!(
        labels.unwrap(),
        vec![
            ("version".to_string(), odd.version.clone()),
            ("role".to_string(), "standby".to_string())
        ]
    );
    assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
}

/// promtool (Debian's `prometheus` package) checks the output too where it is installed.
#[test]
fn promtool_accepts_the_output_where_installed() {
    use std::process::{Command, Stdio};
    for (what, status) in statuses() {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: the format is checked by check_exposition only");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(render(&status).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{what}: promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn textfile_settings(path: &Path) -> Settings {
    Settings {
        textfile: Some(path.to_path_buf()),
        listen: None,
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn nothing_runs_when_both_ways_are_off() {
    let off = Settings {
        textfile: None,
        listen: None,
    };
    assert!(off.is_off());
    assert!(Metrics::start(off, &base(Role::Master)).is_none());
}

#[test]
fn the_textfile_is_written_at_once_then_at_most_once_a_second_and_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sftp-ha.prom");
    let mut status = base(Role::Master);
    let mut m = Metrics::start(textfile_settings(&path), &status).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), render(&status));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(names_in(dir.path()), vec!["sftp-ha.prom"]);
    let t0 = m.last_attempt.unwrap();

    // A change right away waits for the next second; HTTP would serve it at once.
    status.config_loaded_at += 5;
    m.update(&status);
    assert_ne!(fs::read_to_string(&path).unwrap(), render(&status));
    assert_eq!(*m.latest.lock().unwrap(), render(&status));
    m.flush(t0 + MIN_INTERVAL);
    assert_eq!(fs::read_to_string(&path).unwrap(), render(&status));

    // Nothing changed: not rewritten until REFRESH has passed.
    fs::remove_file(&path).unwrap();
    m.flush(t0 + MIN_INTERVAL * 5);
    assert!(!path.exists());
    m.flush(t0 + MIN_INTERVAL + REFRESH);
    assert_eq!(fs::read_to_string(&path).unwrap(), render(&status));

    // A plain stop keeps the file (the stale alert then notices); a retired one removes it.
    m.stop(false);
    assert!(path.exists());
    let m = Metrics::start(textfile_settings(&path), &status).unwrap();
    m.stop(true);
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn a_failing_write_is_reported_once_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("node-exporter");
    let path = folder.join("sftp-ha.prom");
    let status = base(Role::Standby);
    let mut m = Metrics::start(textfile_settings(&path), &status).unwrap();
    assert!(m.failing);
    let t0 = m.last_attempt.unwrap();
    m.flush(t0 + MIN_INTERVAL);
    assert!(m.failing && m.written.is_none());
    fs::create_dir(&folder).unwrap();
    m.flush(t0 + MIN_INTERVAL * 2);
    assert!(!m.failing);
    assert_eq!(fs::read_to_string(&path).unwrap(), render(&status));
    // Never wrote it: a retired writer leaves someone else's file alone.
    let other = dir.path().join("other.prom");
    fs::write(&other, "x").unwrap();
    let never = Metrics {
        settings: textfile_settings(&other),
        latest: Arc::new(Mutex::new(String::new())),
        http: None,
        written: None,
        last_attempt: None,
        failing: false,
    };
    never.stop(true);
    assert!(other.exists());
    m.stop(false);
}

#[test]
fn the_temporary_never_ends_in_prom_and_never_stays() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a folder with something in it: the rename fails.
    let path = dir.path().join("sftp-ha.prom");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), "x").unwrap();
    assert!(write_textfile(&path, b"a 1\n").is_err());
    assert_eq!(names_in(dir.path()), vec!["sftp-ha.prom"]);
    // A symlink planted at the temporary's name is replaced, not written through.
    let target = dir.path().join("elsewhere");
    fs::write(&target, "keep").unwrap();
    let file = dir.path().join("x.prom");
    std::os::unix::fs::symlink(&target, dir.path().join(".x.prom.sftp-ha-tmp")).unwrap();
    write_textfile(&file, b"a 1\n").unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    assert_eq!(fs::read_to_string(&file).unwrap(), "a 1\n");
    assert!(!dir.path().join(".x.prom.sftp-ha-tmp").exists());
    assert!(!".x.prom.sftp-ha-tmp".ends_with(".prom"));
}

#[test]
fn the_http_endpoint_serves_the_latest_status() {
    use std::io::Read;
    let mut status = base(Role::Master);
    let mut m = Metrics::start(
        Settings {
            textfile: None,
            listen: Some("127.0.0.1:0".parse().unwrap()),
        },
        &status,
    )
    .unwrap();
    let addr = m.http.as_ref().unwrap().local_addr();
    let get = || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get().ends_with(&render(&status)));
    status.standby = Some("10.231.0.2:22".into());
    m.update(&status);
    let out = get();
    assert!(out.contains("\nsftp_ha_standby_up 0\n"), "{out}");
    // A second daemon on the same address: logged, and no endpoint, but no failure.
    let clash = Metrics::start(
        Settings {
            textfile: None,
            listen: Some(addr),
        },
        &status,
    )
    .unwrap();
    assert!(clash.http.is_none());
    clash.stop(false);
    m.stop(false);
}

#[test]
fn several_standbys_give_a_labelled_sample_each_under_one_help_and_the_walk_once() {
    let (_, two) = statuses()
        .into_iter()
        .find(|(name, _)| name.starts_with("a master with two standbys"))
        .unwrap();
    let text = render(&two);
    assert_eq!(
        text.matches("# HELP sftp_ha_standby_up ").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("sftp_ha_standby_up{standby=\"10.231.0.2:22\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("sftp_ha_standby_up{standby=\"10.231.0.3:22\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("sftp_ha_sync_pending_operations{standby=\"10.231.0.3:22\"} 7\n"));
    // The master's own side is said once, without a label.
    assert!(
        text.contains("\nsftp_ha_sync_last_full_scan_time_seconds 1700000020\n"),
        "{text}"
    );
    assert_eq!(
        text.matches("sftp_ha_sync_last_full_scan_time_seconds")
            .count(),
        3
    );
    // The samples of a family stand together, right after its HELP and TYPE.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("# TYPE sftp_ha_standby_up "))
        .unwrap();
    assert!(
        lines[at + 1].starts_with("sftp_ha_standby_up{")
            && lines[at + 2].starts_with("sftp_ha_standby_up{")
    );
    // One standby: no label, as before.
    let (_, busy) = statuses()
        .into_iter()
        .find(|(name, _)| *name == "a busy master")
        .unwrap();
    assert!(render(&busy).contains("\nsftp_ha_standby_up 1\n"));
}
