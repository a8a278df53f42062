//! Helpers for the end-to-end tests: a [`Testbed`] of three booted Debian
//! containers on one link (see `tests/testbed/testbed`), commands inside them, and waiting
//! for a condition with a generous deadline (a wait, never a timed assertion).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MASTER: &str = "master";
pub const STANDBY: &str = "standby";
/// The third host on the link, 10.231.0.3: a tie-breaker for automatic
/// failover, so that any one host can be cut off from the other two.
pub const WITNESS: &str = "witness";
/// A fourth host, 10.231.0.4, only in a test bed made by [`Testbed::up_four`].
pub const STANDBY2: &str = "standby2";

/// How long any wait may last before the test fails: far above what each step
/// needs, so a slow CI machine is never mistaken for a bug.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("tests/testbed/testbed")
}

/// The package of `kind` ("deb" or "rpm") built by `tests/build-packages`:
/// `which` is "current" or "next" (the same code with a higher version).
pub fn package(which: &str, kind: &str) -> PathBuf {
    let dir = std::env::var_os("SFTP_HA_PACKAGES")
        .map_or_else(|| repo_root().join("target/packages"), PathBuf::from)
        .join(which);
    let found = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "no packages in {} ({e}): run tests/build-packages",
                dir.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == kind));
    found.unwrap_or_else(|| panic!("no .{kind} in {}: run tests/build-packages", dir.display()))
}

/// The client got nothing but a closed connection: no login, no command run
/// (sshd dropped the connection while it re-executed itself on a reload).
fn dropped_before_login(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    out.status.code() == Some(255)
        && out.stdout.is_empty()
        && !err.trim().is_empty()
        && err.lines().filter(|l| !l.trim().is_empty()).all(|l| {
            l.starts_with("Connection closed")
                || l.starts_with("kex_exchange_identification")
                || l.contains("Connection reset by peer")
        })
}

/// Text of a command's output, for messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `probe` until it returns `Some`, or fails the test after [`PATIENCE`].
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, probe)
        .unwrap_or_else(|| panic!("gave up waiting for {what} after {PATIENCE:?}"))
}

/// Polls `probe` until it returns `Some`; `None` after [`PATIENCE`].
pub fn wait_for_or<T>(_what: &str, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if start.elapsed() >= PATIENCE {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The test bed's client key for root on every host.
pub fn client_key() -> String {
    let dir =
        std::env::var("SFTP_HA_TESTBED_DIR").unwrap_or_else(|_| "/var/tmp/sftp-ha-testbed".into());
    format!("{dir}/client/id_ed25519")
}

/// Options for key logins with the stock clients: `key`, non-interactive,
/// trusting the test hosts' fresh host keys.
pub fn key_options(key: &str) -> Vec<String> {
    let mut options = vec!["-i".to_string(), key.to_string()];
    for o in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "ConnectTimeout=5",
    ] {
        options.extend(["-o".to_string(), o.to_string()]);
    }
    options
}

/// Password logins, non-interactive, trusting the test hosts' fresh host keys.
const PASSWORD_SSH_OPTIONS: [&str; 14] = [
    "-o",
    "BatchMode=no",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "PubkeyAuthentication=no",
    "-o",
    "PreferredAuthentications=password",
    "-o",
    "ConnectTimeout=5",
];

/// Three booted hosts (master, standby, witness); powered off and removed when
/// dropped, even when the test fails.
pub struct Testbed {
    _private: (),
}

impl Testbed {
    /// Boots master, standby and witness (tearing down any leftovers of an interrupted run first).
    pub fn up() -> Testbed {
        Testbed::up_env(&[])
    }

    /// Like [`Testbed::up`], with shared storage: one folder of this machine
    /// is `/srv/sftp-ha` on both master and standby (`SFTP_HA_TESTBED_SHARED=1`).
    pub fn up_shared() -> Testbed {
        Testbed::up_env(&[("SFTP_HA_TESTBED_SHARED", "1")])
    }

    /// Like [`Testbed::up`], with a fourth host, [`STANDBY2`] at 10.231.0.4
    /// (`SFTP_HA_TESTBED_FOURTH=1`).
    pub fn up_four() -> Testbed {
        Testbed::up_env(&[("SFTP_HA_TESTBED_FOURTH", "1")])
    }

    fn up_env(env: &[(&str, &str)]) -> Testbed {
        let out = Command::new(script())
            .arg("up")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run tests/testbed/testbed up");
        assert!(
            out.status.success(),
            "testbed up failed:\n{}",
            describe(&out)
        );
        Testbed { _private: () }
    }

    fn testbed(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        self.testbed_env(args, input, &[])
    }

    fn testbed_env(&self, args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(script());
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run tests/testbed/testbed");
        // Input is written on a thread of its own while the output is read:
        // a command that echoes its input (sftp -b -) would otherwise fill
        // its output pipe and wait for us while we wait for it.
        std::thread::scope(|s| {
            if let Some(data) = input {
                let mut stdin = child.stdin.take().expect("piped stdin");
                s.spawn(move || {
                    use std::io::Write;
                    // A command that exits early closes its stdin: not our error.
                    let _ = stdin.write_all(data);
                });
            }
            child.wait_with_output().expect("wait for testbed")
        })
    }

    /// Runs a shell script inside `host` (as root, all of its namespaces).
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.testbed(&["exec", host, "sh", "-c", script], None)
    }

    /// Like [`Testbed::sh`], and the script must succeed; returns its stdout.
    pub fn ok(&self, host: &str, script: &str) -> String {
        let out = self.sh(host, script);
        assert!(
            out.status.success(),
            "on {host}: `{script}` failed:\n{}",
            describe(&out)
        );
        stdout(&out)
    }

    /// Runs a command on this machine inside `host`'s network namespace,
    /// e.g. the stock `ssh`/`sftp` clients.
    pub fn client(&self, host: &str, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut all = vec!["client", host];
        all.extend_from_slice(args);
        self.testbed(&all, input)
    }

    /// Like [`Testbed::client`], with environment variables set for the command.
    pub fn client_env(&self, host: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all = vec!["client", host];
        all.extend_from_slice(args);
        self.testbed_env(&all, None, env)
    }

    /// The stock `sftp` client, from `host`'s network namespace, logging in to
    /// `addr` as `user` with `password` (through sshpass, from the environment,
    /// never on a command line) and running `batch` (`sftp -b`). Each command
    /// must succeed unless prefixed with `-`, as in sftp's batch mode.
    ///
    /// A connection that sshd drops before the login even starts is tried
    /// again, twice, as a user's client would: sshd re-executes itself on
    /// every reload and drops the connections waiting to be accepted then,
    /// and the daemon reloads it at start and at every role change.
    pub fn sftp(&self, host: &str, addr: &str, user: &str, password: &str, batch: &str) -> Output {
        let target = format!("{user}@{addr}");
        let mut args = vec!["client", host, "sshpass", "-e", "sftp"];
        // Before -b: sftp turns -b into BatchMode=yes, and ssh keeps the first value given.
        args.extend(PASSWORD_SSH_OPTIONS);
        args.extend(["-b", "-", &target]);
        let mut tries = 0;
        loop {
            let out = self.testbed_env(&args, Some(batch.as_bytes()), &[("SSHPASS", password)]);
            tries += 1;
            if tries >= 3 || !dropped_before_login(&out) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The stock `ssh` client with a password, like [`Testbed::sftp`].
    pub fn ssh(
        &self,
        host: &str,
        addr: &str,
        user: &str,
        password: &str,
        extra: &[&str],
    ) -> Output {
        let target = format!("{user}@{addr}");
        let mut args = vec!["client", host, "sshpass", "-e", "ssh"];
        args.extend(PASSWORD_SSH_OPTIONS);
        args.extend_from_slice(extra);
        args.push(&target);
        self.testbed_env(&args, None, &[("SSHPASS", password)])
    }

    /// Writes a file inside `host` (through its root file system on this machine).
    pub fn write(&self, host: &str, path: &str, contents: &str) {
        let target = self.path(host, path);
        std::fs::write(&target, contents)
            .unwrap_or_else(|e| panic!("write {} on {host}: {e}", path));
    }

    /// Where `path` inside `host` is on this machine.
    pub fn path(&self, host: &str, path: &str) -> PathBuf {
        let out = self.testbed(&["root", host], None);
        assert!(out.status.success(), "{}", describe(&out));
        Path::new(stdout(&out).trim()).join(path.trim_start_matches('/'))
    }

    /// Installs a .deb (apt-get) or .rpm (rpm -i --nodeps) into `host`.
    pub fn install(&self, host: &str, package: &Path) {
        let pkg = package.to_str().expect("package path is UTF-8");
        let out = self.testbed(&["install", host, pkg], None);
        assert!(
            out.status.success(),
            "installing {pkg} on {host} failed:\n{}",
            describe(&out)
        );
    }

    pub fn cut(&self, host: &str) {
        let out = self.testbed(&["cut", host], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    pub fn uncut(&self, host: &str) {
        let out = self.testbed(&["uncut", host], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// Drops the IP traffic between `host` and `peer`'s own address, in
    /// `host`'s network namespace: `dir` "in" (from `peer` to `host`), "out"
    /// (from `host` to `peer`) or "both". ARP still passes, so a one-way
    /// block stays one-way. Blocks add up until [`Testbed::unblock`].
    pub fn block(&self, host: &str, peer: &str, dir: &str) {
        let out = self.testbed(&["block", host, peer, dir], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// Removes every block of `host` (a cut stays).
    pub fn unblock(&self, host: &str) {
        let out = self.testbed(&["unblock", host], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// The host-side PID of `host`'s systemd (PID 1 inside it).
    pub fn pid(&self, host: &str) -> String {
        self.pid_or_none(host)
            .unwrap_or_else(|| panic!("host {host} is not running"))
    }

    /// Like [`Testbed::pid`]; `None` when the host is not running.
    pub fn pid_or_none(&self, host: &str) -> Option<String> {
        let out = self.testbed(&["pid", host], None);
        out.status
            .success()
            .then(|| stdout(&out).trim().to_string())
    }

    pub fn poweroff(&self, host: &str) {
        let out = self.testbed(&["poweroff", host], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    pub fn boot(&self, host: &str) {
        let out = self.testbed(&["boot", host], None);
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// `systemctl show -p PROP --value UNIT` inside `host`.
    pub fn unit_property(&self, host: &str, unit: &str, prop: &str) -> String {
        self.ok(host, &format!("systemctl show -p {prop} --value {unit}"))
            .trim()
            .to_string()
    }

    /// The unit's journal inside `host`, as text, with `args` added to journalctl.
    pub fn journal(&self, host: &str, args: &str) -> String {
        self.ok(host, &format!("journalctl -u sftp-ha --no-pager {args}"))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // For a look at a failure: SFTP_HA_KEEP_TESTBED=1 leaves the hosts up
        // (`tests/testbed/testbed down` ends them).
        if std::env::var_os("SFTP_HA_KEEP_TESTBED").is_some() {
            eprintln!("SFTP_HA_KEEP_TESTBED: the test bed stays up");
            return;
        }
        let out = self.testbed(&["down"], None);
        if !out.status.success() {
            eprintln!("testbed down failed:\n{}", describe(&out));
        }
    }
}

/// A listing of a host's whole data dir to compare master and standby: every
/// file and folder with type, owner, group and mode; every file with size,
/// mtime (seconds) and SHA-256. Folder sizes are left out: they depend on a
/// folder's history, not its contents; so is the standby's own folder of
/// temporaries. "changing" while `find` races with
/// the tree (the caller's wait tries again).
pub fn listing(tb: &Testbed, host: &str) -> String {
    let files = "find . -type f ! -name 'users.yaml.status' ! -path './*/dev/*' ! -path './.sftp-ha-tmp/*' ! -path './.sftp-ha-ctl/*' -print0 | sort -z";
    let out = tb.sh(
        host,
        &format!(
            "cd /srv/sftp-ha && find . \\( -type f -o -type d \\) ! -name 'users.yaml.status' ! -path './*/dev*' ! -path './.sftp-ha-tmp*' ! -path './.sftp-ha-ctl*' -print0 | sort -z | \
             xargs -0 stat -c '%n|%F|%u|%g|%a' && {files} | xargs -0 -r stat -c '%n|%s|%Y' && {files} | xargs -0 -r sha256sum"
        ),
    );
    if out.status.success() {
        stdout(&out)
    } else {
        format!("{host}: changing")
    }
}

/// `sftp-ha status --json` on `host`.
pub fn status_json(tb: &Testbed, host: &str) -> serde_json::Value {
    let text = tb.ok(host, "sftp-ha status --json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `host`'s live role and epoch, as its status says.
pub fn role_of(tb: &Testbed, host: &str) -> (String, u64) {
    let s = status_json(tb, host);
    let s = &s["status"];
    (
        s["role"].as_str().unwrap_or_default().to_string(),
        s["epoch"].as_u64().unwrap_or_default(),
    )
}

/// In automatic failover: users may write on `host` now (its status says
/// so; false while it does not answer).
pub fn writable(tb: &Testbed, host: &str) -> bool {
    let out = tb.sh(host, "sftp-ha status --json");
    serde_json::from_str::<serde_json::Value>(&stdout(&out))
        .is_ok_and(|s| s["status"]["failover"]["writable"].as_bool() == Some(true))
}

/// `host`'s interfaces hold the address `addr`/24 (asked of the kernel, not the daemon).
pub fn holds_address(tb: &Testbed, host: &str, addr: &str) -> bool {
    let out = tb.sh(host, "ip -o addr show");
    out.status.success() && stdout(&out).contains(&format!("inet {addr}/24"))
}

/// Waits until master and standby list the same tree.
pub fn converged(tb: &Testbed, what: &str) {
    converged_with(tb, STANDBY, what)
}

/// Waits until the master and `host` list the same tree.
pub fn converged_with(tb: &Testbed, host: &str, what: &str) {
    let mut last = (String::new(), String::new());
    let same = wait_for_or(what, || {
        last = (listing(tb, MASTER), listing(tb, host));
        (last.0 == last.1).then_some(())
    });
    if same.is_none() {
        let only = |a: &str, b: &str| -> Vec<String> {
            let theirs: std::collections::HashSet<&str> = b.lines().collect();
            a.lines()
                .filter(|l| !theirs.contains(l))
                .take(10)
                .map(String::from)
                .collect()
        };
        let master = tb.sh(
            MASTER,
            "sftp-ha status; journalctl -u sftp-ha --no-pager -n 40 -o short-precise",
        );
        panic!(
            "gave up waiting for {what} after {PATIENCE:?}\nonly on the master:\n{}\nonly on {host}:\n{}\n\
             the master's status and journal:\n{}",
            only(&last.0, &last.1).join("\n"),
            only(&last.1, &last.0).join("\n"),
            stdout(&master)
        );
    }
}

/// Waits until `test CHECK PATH` (`-f`, `-d`, ...) holds on the standby.
pub fn wait_on_standby(tb: &Testbed, check: &str, path: &str) {
    wait_for(&format!("{path} on the standby"), || {
        tb.sh(STANDBY, &format!("test {check} {path}"))
            .status
            .success()
            .then_some(())
    });
}

/// Uploads `content` as EPuser to `/upload/NAME` on the host at `addr`, from
/// a client in `from`'s network namespace.
pub fn upload(
    tb: &Testbed,
    from: &str,
    addr: &str,
    name: &str,
    content: &str,
) -> std::process::Output {
    let local = tb.path(from, &format!("/var/tmp/{name}.{}", std::process::id()));
    std::fs::write(&local, content).unwrap();
    tb.sftp(
        from,
        addr,
        "EPuser",
        "1234",
        &format!("put {} /upload/{name}\n", local.display()),
    )
}

pub fn upload_ok(tb: &Testbed, from: &str, addr: &str, name: &str, content: &str) {
    let out = upload(tb, from, addr, name, content);
    assert!(
        out.status.success(),
        "upload of {name} to {addr}: {}",
        describe(&out)
    );
}

/// The users.yaml the replication tests apply on the master.
pub const USERS: &str = "users:\n  ADMIN: {name: admin, password: \"35oi3g4l3he\", admin: true}\n  1: {name: EPuser, password: \"1234\"}\n";

/// A paired master and standby, both with the current package, users.yaml
/// applied on the master and arrived on the standby; `sync_extra` goes into
/// the master's `[sync]` table.
pub fn replicating_pair(sync_extra: &str) -> Testbed {
    let tb = Testbed::up();
    for host in [MASTER, STANDBY] {
        tb.install(host, &package("current", "deb"));
    }
    tb.write(
        STANDBY,
        "/etc/sftp-ha/config.toml",
        "role = \"standby\"\n[sync]\npeer = \"10.231.0.1\"\n",
    );
    tb.ok(STANDBY, "systemctl restart sftp-ha");
    // Both ways, as the README says: either host can be the master.
    let key = tb.ok(MASTER, "sftp-ha pair show-key").trim().to_string();
    tb.ok(STANDBY, &format!("sftp-ha pair accept-peer '{key}'"));
    tb.ok(MASTER, "sftp-ha pair trust-peer 10.231.0.2");
    let key = tb.ok(STANDBY, "sftp-ha pair show-key").trim().to_string();
    tb.ok(MASTER, &format!("sftp-ha pair accept-peer '{key}'"));
    tb.ok(STANDBY, "sftp-ha pair trust-peer 10.231.0.1");
    tb.write(
        MASTER,
        "/etc/sftp-ha/config.toml",
        &format!("role = \"master\"\n[sync]\nstandby = \"10.231.0.2\"\n{sync_extra}"),
    );
    tb.ok(MASTER, "systemctl restart sftp-ha");
    tb.write(MASTER, "/root/users.yaml", USERS);
    tb.ok(MASTER, "sftp-ha users apply /root/users.yaml");
    wait_for("EPuser on the standby", || {
        tb.sh(STANDBY, "id EPuser").status.success().then_some(())
    });
    tb
}
