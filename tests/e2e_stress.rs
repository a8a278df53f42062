//! End-to-end test of `sftp-ha stress` on the test bed: it uploads to the
//! master as an ordinary user, watches the standby, finds every file there,
//! and writes JSON and an HTML report that headless Chromium renders. Also
//! its refusals: an unknown host key, a wrong password, a bad option.
//! Run by `tests/run-all`.

mod util;

use std::process::Output;

use util::{
    MASTER, STANDBY, Testbed, USERS, client_key, describe, replicating_pair, stderr, stdout,
    wait_for,
};

/// `sftp-ha stress 10.231.0.1 --user EPuser ARGS...` from the master's network
/// namespace, with `password` in the environment.
fn stress(tb: &Testbed, password: &str, args: &[&str]) -> Output {
    let mut all = vec![
        env!("CARGO_BIN_EXE_sftp-ha"),
        "stress",
        "10.231.0.1",
        "--user",
        "EPuser",
    ];
    all.extend_from_slice(args);
    tb.client_env(MASTER, &all, &[("SFTP_HA_PASSWORD", password)])
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn stress_uploads_to_the_master_and_times_every_file_onto_the_standby() {
    let tb = replicating_pair("");
    let scratch = tempfile::tempdir().unwrap();
    let known_hosts = scratch.path().join("known_hosts");
    let scan = tb.client(
        MASTER,
        &["ssh-keyscan", "-t", "ed25519", "10.231.0.1", "10.231.0.2"],
        None,
    );
    assert!(scan.status.success(), "{}", describe(&scan));
    std::fs::write(&known_hosts, stdout(&scan)).unwrap();
    let kh = known_hosts.to_str().unwrap();
    let report = scratch.path().join("report.html");
    let watched = ["--standby", "10.231.0.2", "--known-hosts", kh];

    // Full speed, mixed sizes, JSON and a report.
    let mut args = vec![
        "--files",
        "300",
        "--size",
        "1k..256k",
        "--sessions",
        "4",
        "--json",
    ];
    args.extend(["--report", report.to_str().unwrap()]);
    args.extend(watched);
    let out = stress(&tb, "1234", &args);
    assert!(out.status.success(), "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let summary = &json["outcome"]["summary"];
    assert_eq!(summary["files"], 300, "{json:#}");
    assert_eq!(summary["arrived"], 300, "{json:#}");
    assert_eq!(summary["missing"], 0, "{json:#}");
    assert!(summary["lag_seconds"]["p99"].as_f64().is_some(), "{json:#}");
    assert_eq!(json["files"].as_array().map(Vec::len), Some(300));
    let folder = json["outcome"]["folder"].as_str().unwrap().to_string();
    let on_standby = format!("ls /srv/sftp-ha/EPuser{folder} | wc -l");
    assert_eq!(tb.ok(STANDBY, &on_standby).trim(), "300");

    // The report is one self-contained page that a browser renders.
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("<svg") && !page.contains("<script") && !page.contains("src="));
    let shot = scratch.path().join("report.png");
    let chromium = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=900,1400",
            &format!("--screenshot={}", shot.display()),
        ])
        .arg(format!("file://{}", report.display()))
        .output()
        .expect("chromium (installed by tests/install-deps)");
    assert!(shot.exists(), "no screenshot:\n{}", describe(&chromium));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 20_000,
        "a blank page?"
    );
    if let Ok(dir) = std::env::var("SFTP_HA_KEEP_REPORT") {
        let _ = std::fs::copy(&report, format!("{dir}/stress-report.html"));
        let _ = std::fs::copy(&shot, format!("{dir}/stress-report.png"));
    }

    // At a fixed rate, as text, and cleaned up afterwards on both hosts.
    let mut args = vec!["--files", "50", "--rate", "25/s", "--cleanup"];
    args.extend(watched);
    let out = stress(&tb, "1234", &args);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("50 arrived, 0 missing"), "{text}");
    assert!(text.contains("lag:      p50"), "{text}");
    assert!(
        stderr(&out).contains("50/50 uploaded"),
        "{}",
        describe(&out)
    );
    let runs = "ls /srv/sftp-ha/EPuser/upload | grep -c '^stress-'";
    assert_eq!(tb.ok(MASTER, runs).trim(), "1", "--cleanup left a folder");
    wait_for("the cleanup on the standby", || {
        (tb.ok(STANDBY, runs).trim() == "1").then_some(())
    });

    // With a key instead of a password (a user whose users.yaml entry has one).
    let public = std::fs::read_to_string(format!("{}.pub", client_key())).unwrap();
    tb.write(
        MASTER,
        "/root/users.yaml",
        &format!(
            "{USERS}  2: {{name: keyuser, password: \"unused-5x\", public_keys: [\"{}\"]}}\n",
            public.trim()
        ),
    );
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    let out = tb.client_env(
        MASTER,
        &[
            env!("CARGO_BIN_EXE_sftp-ha"),
            "stress",
            "10.231.0.1",
            "--user",
            "keyuser",
            "--key",
            &client_key(),
            "--files",
            "20",
            "--known-hosts",
            kh,
            "--cleanup",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("upload:"), "{}", describe(&out));

    // Refusals: a host key not in known_hosts, a wrong password, a bad option.
    let empty = scratch.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let refusals: [(&str, Vec<&str>, i32, &str); 3] = [
        (
            "1234",
            vec!["--known-hosts", empty.to_str().unwrap()],
            1,
            "ssh-keyscan -t ed25519",
        ),
        (
            "wrong",
            vec!["--known-hosts", kh],
            1,
            "login as EPuser on 10.231.0.1:22 failed",
        ),
        (
            "1234",
            vec!["--known-hosts", kh, "--size", "4q"],
            64,
            "--size: `4q`: unknown unit",
        ),
    ];
    for (password, args, code, says) in refusals {
        let out = stress(&tb, password, &args);
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
        assert!(stderr(&out).contains(says), "{}", describe(&out));
    }
}
