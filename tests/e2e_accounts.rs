//! End-to-end tests of the SFTP service on the test bed: an admin uploads
//! users.yaml with the stock `sftp` client, and those users log in with real
//! passwords (through the host's PAM) to chroot SFTP on the host's own OpenSSH.
//! Run by `tests/run-all` (needs root and the packages).

mod util;

use util::{MASTER, Testbed, describe, package, stdout, wait_for};

const ADDR: &str = "10.231.0.1";
const ADMIN_PASSWORD: &str = "35oi3g4l3he";

const FIRST_ADMIN: &str = "# managed with sftp-ha\nusers:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n";

/// A master with the package installed and the first admin created by `users apply`.
fn master_with_admin() -> Testbed {
    let tb = Testbed::up();
    tb.install(MASTER, &package("current", "deb"));
    wait_for("sftp-ha active", || {
        (tb.unit_property(MASTER, "sftp-ha", "ActiveState") == "active").then_some(())
    });
    tb.write(MASTER, "/root/users.yaml", FIRST_ADMIN);
    let out = tb.sh(MASTER, "sftp-ha users apply /root/users.yaml");
    assert!(out.status.success(), "users apply: {}", describe(&out));
    assert!(
        stdout(&out).contains("admin: created"),
        "{}",
        describe(&out)
    );
    tb
}

/// Uploads `text` as /admin/users.yaml (as `admin`), directly or WinSCP-style
/// (a temporary name, then rename), and waits for its users.yaml.status to
/// contain `expect`. Returns the status text.
fn upload_users(tb: &Testbed, text: &str, via_rename: bool, expect: &str) -> String {
    let local = tb.path(MASTER, "/var/tmp/upload-users.yaml");
    std::fs::write(&local, text).expect("write local users.yaml");
    // The client runs on this machine, in the master's network namespace.
    let local = local.display();
    let batch = if via_rename {
        format!(
            "put {local} /admin/users.yaml.filepart\nrename /admin/users.yaml.filepart /admin/users.yaml\n"
        )
    } else {
        format!("put {local} /admin/users.yaml\n")
    };
    // The previous outcome goes first, so the one read below is this upload's.
    let status_path = tb.path(MASTER, "/srv/sftp-ha/admin/admin/users.yaml.status");
    let _ = std::fs::remove_file(&status_path);
    let out = tb.sftp(MASTER, ADDR, "admin", ADMIN_PASSWORD, &batch);
    assert!(
        out.status.success(),
        "upload users.yaml: {}",
        describe(&out)
    );
    // An earlier apply may still finish after the upload (the daemon re-reads a
    // users.yaml it has not seen yet); wait for the outcome of this one.
    let start = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(&status_path).unwrap_or_default();
        if status.contains(expect) {
            return status;
        }
        assert!(
            start.elapsed() < util::PATIENCE,
            "users.yaml.status does not say {expect:?}:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn can_log_in(tb: &Testbed, user: &str, password: &str) -> bool {
    tb.sftp(MASTER, ADDR, user, password, "pwd\n")
        .status
        .success()
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn admin_uploads_users_yaml_and_users_work_in_their_chroot() {
    let tb = master_with_admin();

    // The admin logs in with the password and finds users.yaml and its status in /admin.
    let out = tb.sftp(
        MASTER,
        ADDR,
        "admin",
        ADMIN_PASSWORD,
        "pwd\nls -1 /\nls -1 /admin\n",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("Remote working directory: /upload"),
        "{listing}"
    );
    assert!(
        listing.contains("/admin/users.yaml\n") && listing.contains("/admin/users.yaml.status"),
        "{listing}"
    );

    // A direct put: EPuser is created within the debounce and apply time.
    let two = format!("{FIRST_ADMIN}  1: {{name: EPuser, password: \"1234\"}}\n");
    let status = upload_users(&tb, &two, false, "EPuser: created");
    assert!(status.contains("admin: unchanged"), "{status}");

    // WinSCP style: a temporary name, then rename.
    let three = format!("{two}  2: {{name: carol, password: \"c4r0l pass\"}}\n");
    upload_users(&tb, &three, true, "carol: created");

    // Both log in with their passwords, land in /upload and can work there.
    let local = tb.path(MASTER, "/var/tmp/payload.txt");
    std::fs::write(&local, "hello from EPuser\n").unwrap();
    let back = tb.path(MASTER, "/var/tmp/payload.back");
    let batch = format!(
        "pwd\nput {l} report.txt\nget report.txt {b}\nrename report.txt final.txt\nls -1\nput {l} gone.txt\nrm gone.txt\nmkdir sub\nrmdir sub\n",
        l = local.display(),
        b = back.display()
    );
    let out = tb.sftp(MASTER, ADDR, "EPuser", "1234", &batch);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("Remote working directory: /upload"));
    assert!(stdout(&out).contains("final.txt"));
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "hello from EPuser\n"
    );
    let on_disk = tb.ok(
        MASTER,
        "stat -c '%U %a' /srv/sftp-ha/EPuser/upload/final.txt",
    );
    assert!(on_disk.starts_with("EPuser "), "{on_disk}");
    assert!(can_log_in(&tb, "carol", "c4r0l pass"));

    // The journal has the login and each upload with its size, filterable by user.
    let journal = wait_for("EPuser's upload in the journal", || {
        let j = tb.journal(MASTER, "SFTP_HA_USER=EPuser -o verbose");
        j.contains("SFTP_HA_PATH=/upload/gone.txt").then_some(j)
    });
    assert!(
        journal.contains("MESSAGE=sftp login: EPuser from 10.231.0.1"),
        "{journal}"
    );
    assert!(
        journal.contains("MESSAGE=upload: EPuser wrote /upload/report.txt (18 bytes)"),
        "{journal}"
    );
    assert!(journal.contains("SFTP_HA_BYTES=18"), "{journal}");
    assert!(
        journal.contains("MESSAGE=rename: EPuser renamed /upload/report.txt to /upload/final.txt"),
        "{journal}"
    );
    assert!(
        journal.contains("MESSAGE=delete: EPuser removed /upload/gone.txt"),
        "{journal}"
    );

    // Confined: not above the chroot, not in /, not /admin, no shell, no forwarding.
    let out = tb.sftp(MASTER, ADDR, "EPuser", "1234", "cd ..\npwd\nls -1 /\n");
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("Remote working directory: /\n"), "{text}");
    assert!(
        !text.contains("admin") && !text.contains("carol"),
        "sees more than its own folder: {text}"
    );
    for forbidden in [
        "mkdir /x",
        &format!("put {} /evil.txt", local.display()),
        "ls /admin",
        "get /admin/users.yaml /dev/null",
    ] {
        let out = tb.sftp(MASTER, ADDR, "EPuser", "1234", &format!("{forbidden}\n"));
        assert!(
            !out.status.success(),
            "`{forbidden}` succeeded: {}",
            describe(&out)
        );
    }
    let out = tb.ssh(MASTER, ADDR, "EPuser", "1234", &["id"]);
    assert!(
        !stdout(&out).contains("uid="),
        "got a shell: {}",
        describe(&out)
    );
    let out = tb.ssh(MASTER, ADDR, "EPuser", "1234", &["-W", "127.0.0.1:22"]);
    assert!(
        !out.status.success(),
        "port forwarding worked: {}",
        describe(&out)
    );
    let out = tb.ssh(MASTER, ADDR, "EPuser", "1234", &["-tt", "/bin/sh"]);
    assert!(
        !stdout(&out).contains('#') && !stdout(&out).contains("$ "),
        "{}",
        describe(&out)
    );

    // No plaintext stays on disk; the hashes in the file are the ones PAM accepts.
    let users_yaml = tb.ok(MASTER, "cat /srv/sftp-ha/admin/admin/users.yaml");
    for secret in ["35oi3g4l3he", "1234\"", "c4r0l pass"] {
        assert!(
            !users_yaml.contains(secret),
            "plaintext {secret:?} left:\n{users_yaml}"
        );
    }
    assert_eq!(
        users_yaml.matches("password_hash:").count(),
        3,
        "{users_yaml}"
    );
    assert!(
        users_yaml.starts_with("# managed with sftp-ha\n"),
        "comment lost:\n{users_yaml}"
    );
    assert!(users_yaml.contains("uid: 1001"), "{users_yaml}");
    // Hashed with the method the host's login.defs names (SHA512 on bookworm, YESCRYPT on trixie).
    let method = tb.ok(
        MASTER,
        "awk '$1 == \"ENCRYPT_METHOD\" {print $2}' /etc/login.defs",
    );
    let prefix = match method.trim() {
        "YESCRYPT" => "$y$",
        _ => "$6$",
    };
    let shadow = tb.ok(MASTER, "getent shadow EPuser | cut -d: -f2");
    assert!(shadow.starts_with(prefix), "{method}: {shadow}");
    assert!(
        users_yaml.contains(&format!("password_hash: \"{prefix}")),
        "{users_yaml}"
    );
    // Uploading the rewritten file again changes nothing and re-hashes nothing.
    let status = upload_users(&tb, &users_yaml, false, "carol: unchanged");
    assert!(
        status.contains("EPuser: unchanged") && status.contains("admin: unchanged"),
        "{status}"
    );
    assert_eq!(
        tb.ok(MASTER, "cat /srv/sftp-ha/admin/admin/users.yaml"),
        users_yaml
    );
    assert!(tb.ok(MASTER, "sftp-ha status").contains("users.yaml:"));
    let list = tb.ok(MASTER, "sftp-ha users list");
    assert!(
        list.contains("EPuser") && list.contains("carol") && list.contains("admin"),
        "{list}"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn a_bad_users_yaml_changes_no_account() {
    let tb = master_with_admin();
    let good = format!("{FIRST_ADMIN}  1: {{name: EPuser, password: \"1234\"}}\n");
    upload_users(&tb, &good, false, "EPuser: created");
    tb.ok(MASTER, "useradd -m localuser");
    let shadow_before = tb.ok(MASTER, "cat /etc/shadow /etc/passwd /etc/group");

    let cases = [
        (
            "users:\n  1: {name: EPuser, password: \"x\"\n",
            "line 2, column 6: unclosed bracket '{'; fix:",
            "broken YAML",
        ),
        (
            &*format!("{FIRST_ADMIN}  1: {{name: \"bad name\", password: \"x\"}}\n"),
            "line 4, column 13: `bad name` is not a valid user name",
            "invalid name",
        ),
        (
            &*format!("{FIRST_ADMIN}  1: {{name: root, password: \"x\"}}\n"),
            "`root` is a system account name",
            "root",
        ),
        (
            &*format!("{FIRST_ADMIN}  1: {{name: localuser, password: \"x\"}}\n"),
            "`localuser` is an existing account",
            "unmanaged account",
        ),
        (
            &*format!(
                "{FIRST_ADMIN}  1: {{name: EPuser, password: \"x\"}}\n  2: {{name: EPuser, password: \"y\"}}\n"
            ),
            "the name `EPuser` is also used at line 4",
            "duplicate",
        ),
        (
            &*format!("{FIRST_ADMIN}  1: {{name: EPuser, password: \"x\", shell: /bin/sh}}\n"),
            "shell",
            "unknown field",
        ),
    ];
    for (text, expected, what) in cases {
        let status = upload_users(&tb, text, false, "Nothing was changed");
        assert!(
            status.contains(expected),
            "{what}: status lacks {expected:?}:\n{status}"
        );
        assert!(
            status.contains("fix:") || what == "broken YAML",
            "{what}:\n{status}"
        );
        assert_eq!(
            tb.ok(MASTER, "cat /etc/shadow /etc/passwd /etc/group"),
            shadow_before,
            "{what} changed accounts"
        );
        assert!(
            can_log_in(&tb, "EPuser", "1234"),
            "{what}: EPuser can no longer log in"
        );
    }
    let journal = tb.journal(MASTER, "");
    assert!(
        journal.contains("users.yaml not applied (written): refused, nothing changed"),
        "{journal}"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn password_change_removal_and_return() {
    let tb = master_with_admin();
    let with =
        |password: &str| format!("{FIRST_ADMIN}  1: {{name: EPuser, password: \"{password}\"}}\n");
    upload_users(&tb, &with("1234"), false, "EPuser: created");
    assert!(can_log_in(&tb, "EPuser", "1234"));
    tb.ok(MASTER, "echo kept > /srv/sftp-ha/EPuser/upload/file.txt");

    upload_users(
        &tb,
        &with("n3w pass"),
        false,
        "EPuser: updated: password changed",
    );
    assert!(
        !can_log_in(&tb, "EPuser", "1234"),
        "old password still works"
    );
    assert!(can_log_in(&tb, "EPuser", "n3w pass"));

    upload_users(&tb, FIRST_ADMIN, false, "EPuser: locked");
    assert!(
        !can_log_in(&tb, "EPuser", "n3w pass"),
        "removed user still logs in"
    );
    assert_eq!(
        tb.ok(MASTER, "cat /srv/sftp-ha/EPuser/upload/file.txt")
            .trim(),
        "kept"
    );

    upload_users(&tb, &with("n3w pass"), false, "EPuser: updated: unlocked");
    assert!(can_log_in(&tb, "EPuser", "n3w pass"));

    let disabled =
        format!("{FIRST_ADMIN}  1: {{name: EPuser, password: \"n3w pass\", disabled: true}}\n");
    upload_users(&tb, &disabled, false, "EPuser: updated: disabled");
    assert!(!can_log_in(&tb, "EPuser", "n3w pass"));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn public_keys_and_a_second_admin() {
    let tb = master_with_admin();
    let key = util::client_key();
    let public = std::fs::read_to_string(format!("{key}.pub")).expect("test bed client key");
    let with_key = format!(
        "{FIRST_ADMIN}  2: {{name: admin2, password: \"s3cond\", admin: true}}\n  3:\n    name: keyuser\n    password: \"k3yuser\"\n    public_keys:\n      - {}\n",
        public.trim()
    );
    upload_users(&tb, &with_key, false, "keyuser: created");

    let key_login = || {
        let options = util::key_options(&key);
        let mut args: Vec<&str> = vec!["sftp"];
        args.extend(options.iter().map(String::as_str));
        args.extend([
            "-o",
            "PasswordAuthentication=no",
            "-b",
            "-",
            "keyuser@10.231.0.1",
        ]);
        tb.client(MASTER, &args, Some(b"pwd\n"))
    };
    let out = key_login();
    assert!(out.status.success(), "key login: {}", describe(&out));
    let keys = tb.ok(
        MASTER,
        "stat -c '%U %a' /etc/sftp-ha/authorized_keys/keyuser",
    );
    assert_eq!(
        keys.trim(),
        "root 644",
        "keys must be root's, outside every chroot"
    );

    // The second admin sees the same users.yaml (rewritten, no plaintext) and the outcome.
    let got = tb.path(MASTER, "/var/tmp/admin2-got");
    let _ = std::fs::create_dir(&got);
    let batch = format!(
        "get /admin/users.yaml {g}/\nget /admin/users.yaml.status {g}/\n",
        g = got.display()
    );
    let out = tb.sftp(MASTER, ADDR, "admin2", "s3cond", &batch);
    assert!(out.status.success(), "{}", describe(&out));
    let seen = std::fs::read_to_string(got.join("users.yaml")).unwrap_or_default()
        + &std::fs::read_to_string(got.join("users.yaml.status")).unwrap_or_default();
    assert!(
        seen.contains("name: keyuser") && seen.contains("keyuser: created"),
        "{seen}"
    );
    assert!(
        !seen.contains("s3cond") && !seen.contains("k3yuser"),
        "plaintext published: {seen}"
    );

    // The second admin removes the key: key logins stop, the password still works.
    let without = with_key
        .lines()
        .take_while(|l| !l.contains("public_keys"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let local = tb.path(MASTER, "/var/tmp/admin2-users.yaml");
    std::fs::write(&local, &without).unwrap();
    let out = tb.sftp(
        MASTER,
        ADDR,
        "admin2",
        "s3cond",
        &format!("put {} /admin/users.yaml\n", local.display()),
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_for("keyuser's key to be removed", || {
        let status =
            std::fs::read_to_string(tb.path(MASTER, "/srv/sftp-ha/admin/admin/users.yaml.status"))
                .ok()?;
        status
            .contains("keyuser: updated: public keys changed")
            .then_some(())
    });
    assert!(
        !key_login().status.success(),
        "the removed key still logs in"
    );
    assert!(can_log_in(&tb, "keyuser", "k3yuser"));
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn sshd_refusing_the_drop_in_leaves_sshd_untouched() {
    let tb = master_with_admin();
    let drop_in = "/etc/ssh/sshd_config.d/50-sftp-ha.conf";
    let before = tb.ok(MASTER, &format!("cat {drop_in}"));
    let sshd_pid = tb.unit_property(MASTER, "ssh", "MainPID");

    // Another drop-in breaks sshd's config; then a new data_dir makes sftp-ha rewrite its own.
    tb.write(
        MASTER,
        "/etc/ssh/sshd_config.d/40-broken.conf",
        "NoSuchOption yes\n",
    );
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        "role = \"master\"\ndata_dir = \"/srv/other\"\n",
    );
    tb.ok(MASTER, "systemctl reload sftp-ha");
    let status = wait_for("the refused drop-in in sftp-ha status", || {
        let s = tb.ok(MASTER, "sftp-ha status");
        s.contains("sshd:        ERROR").then_some(s)
    });
    assert!(status.contains("sshd -t refused"), "{status}");
    assert!(
        status.contains("NoSuchOption"),
        "sshd's own words are kept: {status}"
    );
    assert_eq!(
        tb.ok(MASTER, &format!("cat {drop_in}")),
        before,
        "the previous drop-in was not put back"
    );
    assert_eq!(tb.unit_property(MASTER, "ssh", "MainPID"), sshd_pid);
    assert!(
        tb.journal(MASTER, "")
            .contains("the previous file was put back and sshd was not touched")
    );
    // Users still log in on the old config.
    assert!(can_log_in(&tb, "admin", ADMIN_PASSWORD));

    // A host whose sshd_config does not include the drop-in folder is told so at start.
    tb.ok(
        MASTER,
        "rm /etc/ssh/sshd_config.d/40-broken.conf && sed -i '/^Include/d' /etc/ssh/sshd_config",
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    let journal = tb.journal(MASTER, "");
    assert!(
        journal.contains("does not Include /etc/ssh/sshd_config.d/*.conf"),
        "{journal}"
    );
}

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn admin_flag_gives_and_takes_the_admin_folder_and_uids_stay_fixed() {
    let tb = master_with_admin();
    let with = |admin: bool| {
        format!(
            "{FIRST_ADMIN}  1: {{name: EPuser, password: \"1234\", uid: 2345, admin: {admin}}}\n"
        )
    };
    upload_users(&tb, &with(false), false, "EPuser: created");
    assert_eq!(tb.ok(MASTER, "id -u EPuser").trim(), "2345");
    assert_eq!(tb.ok(MASTER, "id -g EPuser").trim(), "2345");
    assert!(
        !tb.sftp(MASTER, ADDR, "EPuser", "1234", "ls /admin\n")
            .status
            .success()
    );

    upload_users(&tb, &with(true), false, "EPuser: updated: made admin");
    let out = tb.sftp(MASTER, ADDR, "EPuser", "1234", "ls -1 /admin\n");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("users.yaml"),
        "the new admin's folder lacks users.yaml: {}",
        describe(&out)
    );

    upload_users(&tb, &with(false), false, "EPuser: updated: no longer admin");
    assert!(
        !tb.sftp(MASTER, ADDR, "EPuser", "1234", "ls /admin\n")
            .status
            .success()
    );
    assert!(can_log_in(&tb, "EPuser", "1234"));
}

/// WinSCP's "transfer to temporary filename" with a plain SFTP v3 client
/// (paramiko): upload `users.yaml.filepart`, remove `users.yaml`, then
/// SSH_FXP_RENAME the temporary to `users.yaml` (which sftp-server does with
/// link() and unlink(), not rename()).
const REMOVE_THEN_RENAME: &str = r#"
import os, sys, paramiko
t = paramiko.Transport(("10.231.0.1", 22))
t.connect(username="admin", password=os.environ["SFTP_PASSWORD"])
s = paramiko.SFTPClient.from_transport(t)
s.put(sys.argv[1], "/admin/users.yaml.filepart")
s.remove("/admin/users.yaml")
s.rename("/admin/users.yaml.filepart", "/admin/users.yaml")
t.close()
"#;

#[test]
#[ignore = "end-to-end: needs root and tests/build-packages; run by tests/run-all"]
fn every_way_a_client_puts_users_yaml_in_place_is_applied_from_its_event() {
    let tb = master_with_admin();
    let with = |extra: &str| format!("{FIRST_ADMIN}  {extra}\n");
    // The status file is removed first, so the outcome read is this upload's.
    let status_path = tb.path(MASTER, "/srv/sftp-ha/admin/admin/users.yaml.status");
    // Applied, and from the event that style of upload makes (not found
    // later by the periodic look at the admin folders).
    let applied_from = |expect: &str, why: &str, mark: usize| {
        wait_for(expect, || {
            let s = std::fs::read_to_string(&status_path).unwrap_or_default();
            s.contains(expect).then_some(())
        });
        let journal = tb.journal(MASTER, "");
        let new = journal.get(mark..).unwrap_or_default();
        assert!(
            new.contains(&format!("users.yaml applied ({why})")),
            "not applied from `{why}`:\n{new}"
        );
    };
    let mark = || tb.journal(MASTER, "").len();
    // In place (FileZilla).
    let m = mark();
    upload_users(
        &tb,
        &with("1: {name: inplace, password: \"p1\"}"),
        false,
        "inplace: created",
    );
    applied_from("inplace: created", "written", m);
    // posix-rename over the old file (the stock client's `rename`, rsync-like tools).
    let local = tb.path(MASTER, "/var/tmp/users-new.yaml");
    std::fs::write(&local, with("1: {name: renamed, password: \"p2\"}")).unwrap();
    let _ = std::fs::remove_file(&status_path);
    let m = mark();
    let out = tb.sftp(
        MASTER,
        ADDR,
        "admin",
        ADMIN_PASSWORD,
        &format!(
            "put {} /admin/users.yaml.new\nrename /admin/users.yaml.new /admin/users.yaml\n",
            local.display()
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    applied_from("renamed: created", "renamed into place", m);
    // Remove, then a plain SFTP v3 rename (WinSCP).
    std::fs::write(&local, with("1: {name: winscp, password: \"p3\"}")).unwrap();
    let _ = std::fs::remove_file(&status_path);
    let m = mark();
    let local_arg = local.display().to_string();
    // Debian's python3, which has python3-paramiko (not another one first on PATH).
    let out = tb.client_env(
        MASTER,
        &["/usr/bin/python3", "-c", REMOVE_THEN_RENAME, &local_arg],
        &[("SFTP_PASSWORD", ADMIN_PASSWORD)],
    );
    assert!(out.status.success(), "{}", describe(&out));
    applied_from("winscp: created", "created", m);
    // The moment without users.yaml locked nobody.
    let journal = tb.journal(MASTER, "");
    assert!(!journal.contains(": disabled"), "{journal}");
    assert!(can_log_in(&tb, "admin", ADMIN_PASSWORD));
    assert!(can_log_in(&tb, "winscp", "p3"));
}
