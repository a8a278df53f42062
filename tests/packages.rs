//! Checks of the built .deb and .rpm that need no test bed: lintian, file and
//! config lists, and the glibc symbol versions that decide where the binary runs.
//! Ignored by plain `cargo test`: they need `tests/build-packages` first.

mod util;

use std::process::Command;

use util::{describe, package, stdout};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        describe(&out)
    );
    stdout(&out)
}

#[test]
#[ignore = "needs tests/build-packages; run by tests/run-all"]
fn deb_is_lintian_clean_and_ships_the_expected_files() {
    let deb = package("current", "deb");
    let deb = deb.to_str().expect("UTF-8 path");
    // Errors fail the test; warnings are printed for the record.
    let out = Command::new("lintian")
        .args(["--allow-root", "--no-tag-display-limit", deb])
        .output()
        .expect("run lintian");
    let report = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    eprintln!("lintian:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")),
        "lintian reports errors:\n{report}"
    );

    let files = run("dpkg-deb", &["-c", deb]);
    for path in [
        "./usr/bin/sftp-ha",
        "./usr/lib/systemd/system/sftp-ha.service",
        "./etc/sftp-ha/config.toml",
        "./usr/share/doc/sftp-ha/copyright",
        "./usr/share/doc/sftp-ha/changelog.Debian.gz",
        "./usr/share/man/man8/sftp-ha.8.gz",
        "./usr/share/man/man8/sftp-ha-users-apply.8.gz",
    ] {
        assert!(
            files.contains(path),
            "{path} missing from the .deb:\n{files}"
        );
    }
    let control = run("dpkg-deb", &["-f", deb, "Depends"]);
    assert!(control.contains("openssh-server"), "{control}");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("UTF-8 path");
    run("dpkg-deb", &["-e", deb, dir_str]);
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/sftp-ha/config.toml");
}

#[test]
#[ignore = "needs tests/build-packages; run by tests/run-all"]
fn rpm_lists_files_config_and_scriptlets() {
    let rpm = package("current", "rpm");
    let rpm = rpm.to_str().expect("UTF-8 path");
    let files = run("rpm", &["-qpl", rpm]);
    let expected = [
        "/etc/sftp-ha/config.toml",
        "/usr/bin/sftp-ha",
        "/usr/lib/systemd/system/sftp-ha.service",
        "/usr/share/doc/sftp-ha/README.md",
    ];
    let (man, other): (Vec<&str>, Vec<&str>) = files
        .lines()
        .partition(|l| l.starts_with("/usr/share/man/man8/"));
    assert_eq!(other, expected, "rpm -qpl");
    for page in [
        "sftp-ha.8.gz",
        "sftp-ha-run.8.gz",
        "sftp-ha-users-apply.8.gz",
    ] {
        assert!(
            man.iter().any(|m| m.ends_with(page)),
            "{page} missing: {man:?}"
        );
    }
    assert_eq!(
        run("rpm", &["-qpc", rpm]).trim(),
        "/etc/sftp-ha/config.toml"
    );
    // noreplace: an edited config survives an upgrade.
    let flags = run(
        "rpm",
        &["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm],
    );
    assert!(flags.contains("/etc/sftp-ha/config.toml cn"), "{flags}");
    let requires = run("rpm", &["-qpR", rpm]);
    assert!(
        requires.lines().any(|l| l.trim() == "openssh-server"),
        "{requires}"
    );
    let scripts = run("rpm", &["-qp", "--scripts", rpm]);
    for part in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
    ] {
        assert!(scripts.contains(part), "{part} missing:\n{scripts}");
    }
}

#[test]
#[ignore = "needs tests/build-packages; run by tests/run-all"]
fn binary_needs_no_glibc_newer_than_2_34() {
    // Debian 12 has glibc 2.36 and RHEL 9 has 2.34: the binary must run on both.
    let symbols = run("objdump", &["-T", "target/release/sftp-ha"]);
    let newest = symbols
        .split_whitespace()
        .filter_map(|w| {
            w.trim_matches(|c| c == '(' || c == ')')
                .strip_prefix("GLIBC_")
        })
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the binary links glibc");
    assert!(newest <= (2, 34), "needs GLIBC_{}.{}", newest.0, newest.1);
}
