//! The command line: parsed once by clap into [`Cli`], then dispatched.
//! Every command returns an [`Exit`]; nothing below `main` calls `exit()`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, DEFAULT_PATH};
use crate::exit::{self, Exit};
use crate::logging;
use crate::status::{self, Observed};
use crate::timefmt::unix_now;

const ABOUT: &str = "Highly available chroot SFTP on two hosts: master and standby";

const LONG_ABOUT: &str = "\
sftp-ha turns two ordinary Linux hosts, a master and a standby, into one highly
available SFTP service on the hosts' own OpenSSH. It runs as the systemd service
sftp-ha.service (`sftp-ha run`); the other commands inspect and manage it.";

const AFTER_HELP: &str = "\
FILES:
    /etc/sftp-ha/config.toml   the configuration (see the comments in it)
    /run/sftp-ha/status.json   what the running daemon is doing (sftp-ha status)
    /var/lib/sftp-ha           the daemon's state (default state_dir)
    /srv/sftp-ha               one chroot per user (default data_dir)

ENVIRONMENT:
    SFTP_HA_CONFIG       config file, like --config
    SFTP_HA_RUNTIME_DIR  folder of status.json (default /run/sftp-ha)
    RUST_LOG             log filter (e.g. debug); overrides log_level in the config

SIGNALS (sftp-ha run):
    SIGHUP          reload the config; a broken one is refused and the old one kept
    SIGUSR1         carry out the request `sftp-ha promote` / `demote` left in the runtime dir
    SIGTERM, SIGINT stop cleanly

";

#[derive(Debug, Parser)]
#[command(
    name = "sftp-ha",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = format!("{AFTER_HELP}{}", exit::HELP),
    propagate_version = true
)]
pub struct Cli {
    /// Config file to use
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        default_value = DEFAULT_PATH,
        env = "SFTP_HA_CONFIG"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what sftp-ha.service starts)
    ///
    /// Loads the config, prepares the data and state folders, tells systemd it
    /// is ready (Type=notify) and serves until SIGTERM. SIGHUP reloads the config.
    /// Logs go to the journal when there is one, else to stderr.
    Run,

    /// Check a config file and print what it means
    ///
    /// Exits 0 if the file is valid (warnings go to stderr), 78 if not, with a
    /// message naming the file, line, column and key and how to fix it.
    CheckConfig {
        /// The file to check (default: --config)
        path: Option<PathBuf>,
    },

    /// Manage the SFTP accounts (users.yaml)
    #[command(subcommand)]
    Users(UsersCommand),

    /// Pair master and standby with pinned keys
    #[command(subcommand)]
    Pair(PairCommand),

    /// Make this host the master (planned switchover, or failover)
    ///
    /// On a standby. If the master answers, it is asked to hand over: it ends
    /// its users' sessions (new ones are read-only), sends its last changes,
    /// and this host becomes master with a higher epoch; the old master
    /// becomes its standby. Uploads are refused for a few seconds at most, and
    /// none acknowledged before is lost. With replicated storage, if the
    /// master does not answer (it is down, or the link is), this host becomes
    /// master at once (failover); when the old master comes back it sees the
    /// higher epoch, stops taking uploads, and is reconciled: whatever it has
    /// that this host lacks is brought back, and a file changed on both sides
    /// is kept as a NAME.sftp-ha-conflict-HOST-TIME copy. Nothing is deleted.
    /// With several standbys ([sync] peer lists the master first, then the
    /// other standbys), a failover first asks the other standbys how far
    /// each is caught up (what the master last told it) and refuses, naming
    /// it, if one is further than this host or was promoted already: promote
    /// that one instead; the others follow it once its [sync] peer lists
    /// them. --force skips the comparison. With shared storage ([sync] storage = "shared") both hosts write into
    /// one tree and nothing can be reconciled, so a master that does not
    /// answer is not taken over without --force: make sure it is down
    /// (powered off, or its sftp-ha stopped and its sshd fenced) first. With
    /// --force it takes over even while the master answers (both take uploads
    /// until they meet again: then the older epoch follows and, with
    /// replication, reconciles; on shared storage the last writer wins).
    /// Idempotent: on a master it says so and exits 0. Exits 0 when this host
    /// is the master, 1 if not (the message says why), 3 if the daemon is not
    /// running.
    Promote {
        /// Take over even if the master answers but does not hand over (or,
        /// with shared storage, does not answer, or another standby is
        /// further caught up)
        #[arg(long)]
        force: bool,
    },

    /// Hand the master role to the standby (planned switchover)
    ///
    /// On a master with its standby connected: the role is offered to the
    /// standby, whose daemon accepts it (a standby nobody runs never gets
    /// it; after 20 s without an answer nothing changes). Then users'
    /// sessions end, new ones are read-only, the last changes go to the
    /// standby, and the standby becomes master with a higher epoch; this host
    /// becomes its standby. If the changes do not reach the standby within
    /// 30 s, this host stays the master and users may write again. Idempotent: on a standby it says
    /// so and exits 0. Exits 0 when done, 1 if not, 3 if the daemon is not running.
    Demote,

    /// Automatic failover: the shared key
    #[command(subcommand)]
    Failover(FailoverCommand),

    /// Show what the running daemon is doing
    ///
    /// Exits 0 if it runs, 3 if it does not.
    Status {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },

    /// Upload masses of generated files to the master and time their replication
    ///
    /// Logs in to the master's SFTP as USER (password from the environment
    /// variable named by --password-env, else asked on the terminal; or --key),
    /// makes DIR/stress-RUN_ID and uploads --files generated files into it over
    /// --sessions sessions, at full speed or at --rate. With --standby it logs
    /// in there as the same user and records when each file is there complete:
    /// the replication lag. Prints files/s, MiB/s and lag p50/p95/p99/max.
    /// Host keys are checked against --known-hosts; nothing is accepted blindly.
    /// Exits 0 when every file arrived (or no standby was watched), 1 if some
    /// were missing after --timeout or an upload failed, 64 on a bad option.
    Stress(Box<StressArgs>),

    /// Make users read-only here and give up the virtual IP, in automatic failover (the unit's ExecStopPost)
    ///
    /// Run by systemd after the daemon ended, however it ended: a daemon that
    /// crashed renews no lease, so the standby may take over. Does nothing
    /// with mode = "manual" or on the witness. Exits 0.
    #[command(hide = true)]
    Fence,

    /// Write the manual pages (sftp-ha.8 and one per command) into DIR; used when building the packages
    #[command(hide = true)]
    Manpage {
        /// Folder to write the pages into
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum FailoverCommand {
    /// Write a new shared key for the three hosts of automatic failover
    ///
    /// Writes 256 random bits as hex to FILE (default /etc/sftp-ha/failover.key),
    /// owned by root, mode 0600. Copy the file to the other file host and to
    /// the witness (scp -p), as with corosync's authkey; every failover message
    /// is signed with it, and one without a valid signature is ignored and
    /// logged. An existing key is kept unless --force is given (exit 0 when a
    /// key was written, 73 when one exists and nothing changed).
    Keygen {
        /// Replace an existing key (then copy it to the other two hosts again)
        #[arg(long)]
        force: bool,
        /// Where to write the key
        #[arg(long, value_name = "FILE", default_value = crate::failover::key::DEFAULT_KEY_FILE)]
        key_file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// The master's SFTP service, HOST[:PORT]
    #[arg(value_name = "HOST[:PORT]")]
    pub master: String,
    /// SFTP user to log in as (on the master and the standby)
    #[arg(short, long)]
    pub user: String,
    /// Environment variable holding the password
    #[arg(long, value_name = "VAR", default_value = "SFTP_HA_PASSWORD")]
    pub password_env: String,
    /// Log in with this private key instead of a password
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// known_hosts file with the servers' ed25519 host keys (default ~/.ssh/known_hosts)
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// How many files to upload
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub files: usize,
    /// File sizes: fixed (4k), a range (1k..1m), `mix`, or weighted (4k:90,1m:10)
    #[arg(short, long, default_value = "4k")]
    pub size: String,
    /// Concurrent SFTP sessions to the master
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Upload at a fixed rate (100/s, 600/m) instead of full speed
    #[arg(long)]
    pub rate: Option<String>,
    /// Also watch the standby, HOST[:PORT], and measure the replication lag
    #[arg(long, value_name = "HOST[:PORT]")]
    pub standby: Option<String>,
    /// Folder (as the user sees it) to make the run's folder in
    #[arg(long, default_value = "/upload")]
    pub dir: String,
    /// How long to wait for the standby after the last upload (e.g. 30s, 2m)
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// Print the outcome as JSON (with per-file timings) instead of text
    #[arg(long)]
    pub json: bool,
    /// Write a self-contained HTML report with charts to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Remove the uploaded files from the master afterwards (the standby follows)
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// On the master: print the master's sync key (made on first use)
    ///
    /// Paste the printed line into `sftp-ha pair accept-master` on the standby.
    ShowKey,
    /// Let the peer's sync key do SFTP into the data dir, and nothing else
    ///
    /// On the standby with the master's key, and on the master with the
    /// standby's (so either can replicate to the other after a switchover).
    /// Creates the account sftp-ha-sync (uid 0, so files keep their owners),
    /// installs the key with `restrict`, and makes sshd confine the account to
    /// the data dir with internal-sftp; on the current master the account may
    /// only read. Keys add up, one per peer: with several standbys, every
    /// file host accepts every other one's key, so whichever is promoted can
    /// replicate to the rest. Idempotent: the same key is kept once. A host
    /// that made a new key: `forget-peer` its old one. The keys are in
    /// /etc/sftp-ha/sync_authorized_keys (`list-peers` shows them).
    #[command(visible_alias = "accept-peer")]
    AcceptMaster {
        /// The public key line printed by `sftp-ha pair show-key` on the master
        key: String,
    },
    /// Print the peers' sync keys this host accepts, one a line
    ///
    /// `TYPE DATA COMMENT`; the comment is `sftp-ha-sync@HOST` of the host
    /// that made the key. Exits 0 (also with none).
    ListPeers,
    /// Stop accepting a peer's sync key
    ///
    /// WHICH is the key data, the whole key line, or the comment (every key
    /// with that comment, e.g. `sftp-ha-sync@oldmaster`). New sessions with
    /// it are refused; one already open ends when it ends. For a host
    /// decommissioned, or one that made a new key (then `accept-peer` the new
    /// one). Exits 0 if a key was removed, 1 if none matched.
    ForgetPeer {
        /// The key data, the key line or the comment of the key(s) to forget
        which: String,
    },
    /// Fetch, pin and print the peer's ed25519 host key
    ///
    /// On the master for the standby, and on the standby for the master.
    /// Compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`
    /// on the peer. A different key later is refused unless --replace is given.
    #[command(visible_alias = "trust-peer")]
    TrustStandby {
        /// HOST[:PORT] of the peer (default: [sync] peer from the config)
        standby: Option<String>,
        /// Replace a pinned key that differs (after a reinstall of the standby)
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Validate a users.yaml and print what applying it would change
    ///
    /// Changes nothing. Exits 0 if the file is valid, 65 if not, with every
    /// problem's line, column and fix. Runs on any machine: without a config
    /// file it checks against the defaults, and without root against what it
    /// can read of the accounts.
    Check {
        /// The users.yaml to check
        file: PathBuf,
    },
    /// Apply a users.yaml now (as root); how the first admin is created
    ///
    /// Creates, updates and locks accounts to match the file, then rewrites the
    /// file with password hashes in place of plaintext and every user's uid.
    /// A file with any error changes nothing. Exits 0, 65 (invalid file) or 1.
    Apply {
        /// The users.yaml to apply
        file: PathBuf,
    },
    /// List the accounts sftp-ha manages
    List,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Exit::Ok,
                _ => Exit::Usage,
            }
            .into();
        }
    };
    run(cli).into()
}

fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Run => run_daemon(&cli.config),
        Command::CheckConfig { path } => check_config(path.as_deref().unwrap_or(&cli.config)),
        Command::Status { json } => show_status(json),
        Command::Promote { force } => role_request(crate::daemon::Action::Promote, force),
        Command::Demote => role_request(crate::daemon::Action::Demote, false),
        Command::Users(cmd) => users(&cli.config, cmd),
        Command::Pair(cmd) => pair(&cli.config, cmd),
        Command::Stress(args) => stress(*args),
        Command::Fence => fence(&cli.config),
        Command::Failover(FailoverCommand::Keygen { force, key_file }) => {
            failover_keygen(&key_file, force)
        }
        Command::Manpage { dir } => manpage(&dir),
    }
}

fn stress(args: StressArgs) -> Exit {
    logging::init_cli();
    let plan = match stress_plan(args) {
        Ok(p) => p,
        Err(message) => {
            eprintln!("sftp-ha stress: {message}");
            return Exit::Usage;
        }
    };
    let outcome = match crate::stress::run(&plan) {
        Ok(o) => o,
        Err(err) => {
            eprintln!("sftp-ha stress: {err}");
            return Exit::Failure;
        }
    };
    if plan.json {
        let value = serde_json::json!({
            "outcome": &outcome,
            "files": &outcome.samples,
        });
        println!("{value:#}");
    } else {
        print!("{}", crate::stress::render_summary(&outcome));
        if let Some(report) = &plan.report {
            println!("  report:   {}", report.display());
        }
    }
    match outcome.summary.missing {
        Some(missing) if missing > 0 => {
            eprintln!(
                "sftp-ha stress: {missing} file(s) not on the standby {} after the last upload; see sftp-ha status and journalctl -u sftp-ha on the master",
                crate::timefmt::format_duration(plan.timeout)
            );
            Exit::Failure
        }
        _ => Exit::Ok,
    }
}

/// Checks the stress options and turns them into a plan; the error says what to fix.
fn stress_plan(args: StressArgs) -> Result<crate::stress::Plan, String> {
    use crate::stress::{client, spec};
    let endpoint = |what: &str, text: &str| {
        config::Endpoint::parse(text).map_err(|e| format!("{what} `{text}`: {e}"))
    };
    let master = endpoint("master", &args.master)?;
    let standby = args
        .standby
        .as_deref()
        .map(|s| endpoint("--standby", s))
        .transpose()?;
    let size = spec::SizeSpec::parse(&args.size).map_err(|e| format!("--size: {e}"))?;
    let rate = args
        .rate
        .as_deref()
        .map(spec::parse_rate)
        .transpose()
        .map_err(|e| format!("--rate: {e}"))?;
    if args.sessions == 0 || args.sessions > 64 {
        return Err("--sessions: give 1 to 64".into());
    }
    if args.files == 0 || args.files > 10_000_000 {
        return Err("--files: give 1 to 10000000".into());
    }
    let timeout = crate::timefmt::parse_duration(&args.timeout)
        .map_err(|e| format!("--timeout `{}`: {e}", args.timeout))?;
    let known_hosts = match args.known_hosts {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
            .ok_or("--known-hosts: HOME is not set; give the file")?,
    };
    let auth = match args.key {
        Some(k) => client::Auth::Key(k),
        None => match std::env::var(&args.password_env) {
            Ok(p) => client::Auth::Password(p),
            Err(_) => client::prompt_password(&format!("{}@{}'s password: ", args.user, master))
                .map(client::Auth::Password)
                .map_err(|e| {
                    format!("no password: set {} or use --key ({e})", args.password_env)
                })?,
        },
    };
    Ok(crate::stress::Plan {
        master,
        standby,
        login: client::Login {
            user: args.user,
            auth,
            known_hosts,
        },
        files: args.files,
        size,
        sessions: args.sessions,
        rate,
        dir: args.dir,
        timeout,
        json: args.json,
        report: args.report,
        cleanup: args.cleanup,
    })
}

fn run_daemon(config_path: &Path) -> Exit {
    let log = logging::init_daemon(config::LogLevel::Info);
    match crate::daemon::run(config_path, log) {
        Ok(()) => Exit::Ok,
        Err(err) => {
            tracing::error!(config = %config_path.display(), "{err}");
            err.exit()
        }
    }
}

fn check_config(path: &Path) -> Exit {
    logging::init_cli();
    match config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: OK ({})", path.display(), config.summary());
            Exit::Ok
        }
        Err(err) => {
            eprintln!("sftp-ha: {err}");
            Exit::Config
        }
    }
}

fn fence(config_path: &Path) -> Exit {
    logging::init_cli();
    // Only for a daemon that is gone: a running one fences by itself, and
    // would not know that its drop-in was changed behind its back.
    if let Ok(Observed::Running(s)) = status::read(&status::runtime_dir())
        && s.pid != std::process::id()
    {
        eprintln!(
            "sftp-ha fence: the daemon is running (pid {}); it fences by itself when it loses its lease; nothing changed",
            s.pid
        );
        return Exit::Failure;
    }
    // A config that no longer loads (edited since the start, a key made
    // unreadable): what the daemon saved at start still says what to fence.
    let config = config::load(config_path).ok();
    for line in crate::failover::fence_after_stop(config.as_ref(), &status::runtime_dir()) {
        eprintln!("sftp-ha fence: {line}");
    }
    Exit::Ok
}

fn failover_keygen(path: &Path, force: bool) -> Exit {
    logging::init_cli();
    match crate::failover::key::generate(path, force) {
        Ok(()) => {
            println!(
                "{}: new failover key written (root, 0600); copy it to the other file host and the witness, e.g. scp -p {} root@HOST:{}",
                path.display(),
                path.display(),
                path.display()
            );
            Exit::Ok
        }
        Err(err @ crate::failover::key::KeyError::Exists { .. }) => {
            eprintln!("sftp-ha: {err}");
            Exit::CantCreate
        }
        Err(err) => {
            eprintln!("sftp-ha: {err}");
            Exit::Failure
        }
    }
}

fn show_status(json: bool) -> Exit {
    logging::init_cli();
    let dir = status::runtime_dir();
    let observed = match status::read(&dir) {
        Ok(o) => o,
        Err(err) => {
            eprintln!(
                "sftp-ha: cannot read the status in {}: {err}",
                dir.display()
            );
            return Exit::Failure;
        }
    };
    let now = unix_now();
    if json {
        let value = match &observed {
            Observed::Running(s) => serde_json::json!({
                "running": true,
                "uptime_secs": now.saturating_sub(s.started_at),
                "status": s,
            }),
            Observed::Stale(s) => serde_json::json!({ "running": false, "stale_status": s }),
            Observed::NotRunning => serde_json::json!({ "running": false }),
        };
        println!("{value:#}");
    } else {
        match &observed {
            Observed::Running(s) => print!("{}", s.render(now)),
            Observed::Stale(s) => println!(
                "sftp-ha is not running: pid {} (started {}) ended without cleaning up; see journalctl -u sftp-ha",
                s.pid,
                crate::timefmt::format_utc(s.started_at)
            ),
            Observed::NotRunning => println!(
                "sftp-ha is not running (no status in {}); start it with systemctl start sftp-ha",
                dir.display()
            ),
        }
    }
    match observed {
        Observed::Running(_) => Exit::Ok,
        _ => Exit::NotRunning,
    }
}

fn users(config_path: &Path, cmd: UsersCommand) -> Exit {
    logging::init_cli();
    let (file, dry_run) = match cmd {
        UsersCommand::List => {
            return match crate::accounts::list() {
                Ok(lines) if lines.is_empty() => {
                    println!("no accounts managed by sftp-ha yet");
                    Exit::Ok
                }
                Ok(lines) => {
                    lines.iter().for_each(|l| println!("{l}"));
                    Exit::Ok
                }
                Err(err) => {
                    eprintln!("sftp-ha: {err}");
                    Exit::NoPermission
                }
            };
        }
        UsersCommand::Check { file } => (file, true),
        UsersCommand::Apply { file } => (file, false),
    };
    let root = nix::unistd::Uid::effective().is_root();
    if !dry_run && !root {
        eprintln!("sftp-ha: users apply changes accounts: run it as root");
        return Exit::NoPermission;
    }
    let (data_dir, hash_method) = match config::load(config_path) {
        // With shared storage the admin folders and the published users.yaml
        // are the master's: a standby follows them and never writes there.
        Ok(c)
            if !dry_run
                && c.shared()
                && crate::role::load(&c.state_dir)
                    .ok()
                    .flatten()
                    .map_or(c.role, |live| live.role)
                    == config::Role::Standby =>
        {
            eprintln!(
                "sftp-ha: this host is a standby on shared storage: apply users.yaml on the master (sftp-ha users apply there, or an admin's upload); this host follows the master's file by itself. Nothing changed"
            );
            return Exit::Failure;
        }
        Ok(c) => (c.data_dir, c.hash_method),
        // Checking a users.yaml is what an admin does on any machine before
        // uploading it, daemon or not; only applying needs this host's config.
        // A config that exists but cannot be read or is broken stays an error.
        Err(config::ConfigError::Read { source, .. })
            if dry_run && source.kind() == std::io::ErrorKind::NotFound =>
        {
            eprintln!(
                "sftp-ha: no {}; checking against the defaults (data_dir {}, hash method from /etc/login.defs)",
                config_path.display(),
                config::DEFAULT_DATA_DIR
            );
            (PathBuf::from(config::DEFAULT_DATA_DIR), None)
        }
        Err(err) => {
            eprintln!("sftp-ha: {err}");
            return Exit::Config;
        }
    };
    if dry_run && !root {
        eprintln!(
            "sftp-ha: not root, so /etc/shadow may be unreadable: the file is checked in full, but unchanged passwords, keys and locks may show as changed"
        );
    }
    let how = if dry_run {
        crate::accounts::Apply::Check
    } else {
        crate::accounts::Apply::Apply
    };
    let report = crate::accounts::apply_file(&file, &data_dir, hash_method, how);
    print!("{}", report.render());
    if !dry_run && report.ok() {
        // The admins find the file they manage users with in /admin.
        let text = crate::accounts::read_users_file(&file).ok().map(|(t, _)| t);
        let dirs = crate::accounts::admin_dirs(&data_dir);
        crate::accounts::publish(&data_dir, &dirs, &file, text.as_deref(), &report.render());
    }
    match report.outcome {
        Ok(_) => Exit::Ok,
        Err(crate::accounts::Failure::Invalid(_)) => Exit::DataError,
        Err(crate::accounts::Failure::System(_)) => Exit::Failure,
    }
}

fn pair(config_path: &Path, cmd: PairCommand) -> Exit {
    logging::init_cli();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("sftp-ha: pairing reads and writes the daemon's keys: run it as root");
        return Exit::NoPermission;
    }
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let result = match cmd {
        PairCommand::ShowKey => crate::pair::show_key(&config.state_dir).map(|key| {
            println!("{key}");
            eprintln!("On the peer, run: sftp-ha pair accept-peer '{key}'");
        }),
        PairCommand::AcceptMaster { key } => {
            // The drop-in for the role this host has now, not the first one.
            let role = crate::role::load(&config.state_dir)
                .ok()
                .flatten()
                .map_or(config.role, |live| live.role);
            crate::pair::accept_master(&key, &config.data_dir, &config.sync_root(), role).map(
                |()| {
                    println!(
                        "accepted: the peer may now do SFTP into {} as {}, and nothing else",
                        config.sync_root().display(),
                        crate::pair::SYNC_USER
                    );
                },
            )
        }
        PairCommand::ListPeers => crate::pair::accepted_peers().map(|keys| {
            for key in keys {
                println!("{key}");
            }
        }),
        PairCommand::ForgetPeer { which } => match crate::pair::forget_peer(&which) {
            Ok(0) => {
                eprintln!(
                    "sftp-ha: no accepted key matches `{which}`; nothing changed (see sftp-ha pair list-peers)"
                );
                return Exit::Failure;
            }
            Ok(n) => {
                println!("forgot {n} key(s): new sessions with them are refused");
                Ok(())
            }
            Err(err) => Err(err),
        },
        PairCommand::TrustStandby { standby, replace } => {
            let endpoint = match standby.as_deref().map(config::Endpoint::parse) {
                Some(Ok(e)) => e,
                Some(Err(why)) => {
                    eprintln!("sftp-ha: not a standby address: {why}");
                    return Exit::Usage;
                }
                None => match config.sync.peer.clone() {
                    Some(e) => e,
                    None => {
                        eprintln!(
                            "sftp-ha: no standby given and none in {}; fix: sftp-ha pair trust-standby HOST[:PORT]",
                            config.path.display()
                        );
                        return Exit::Usage;
                    }
                },
            };
            // The first standby (or the only one) keeps the one-standby pin
            // file; any other host, listed yet or not, gets one of its own.
            // With none listed yet, the first host paired is the first.
            let first = match config.sync.standbys.first() {
                Some(listed) => *listed == endpoint,
                None => crate::pair::one_standby_pin_free_for(&config.state_dir, &endpoint),
            };
            crate::pair::trust_standby(&endpoint, &config.state_dir, replace, first).map(|fp| {
                println!("pinned the ed25519 host key of {endpoint}: {fp}");
                eprintln!(
                    "Compare it on the standby with: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
                );
            })
        }
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(err) => {
            eprintln!("sftp-ha: {err}");
            Exit::Failure
        }
    }
}

/// `promote` / `demote`: leaves the request for the daemon, signals it, and
/// waits for its answer in the status file.
fn role_request(action: crate::daemon::Action, force: bool) -> Exit {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(90);
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("sftp-ha: changing the role needs root");
        return Exit::NoPermission;
    }
    let dir = status::runtime_dir();
    let pid = match status::read(&dir) {
        Ok(Observed::Running(s)) => s.pid,
        Ok(_) => {
            eprintln!("sftp-ha: the daemon is not running; fix: systemctl start sftp-ha");
            return Exit::NotRunning;
        }
        Err(err) => {
            eprintln!(
                "sftp-ha: cannot read the status in {}: {err}",
                dir.display()
            );
            return Exit::Failure;
        }
    };
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let request = crate::daemon::CommandRequest {
        id: id.clone(),
        action,
        force,
    };
    let path = dir.join(format!("{}{id}.json", crate::daemon::REQUEST_PREFIX));
    let written = serde_json::to_vec(&request)
        .map_err(std::io::Error::other)
        .and_then(|text| crate::fsutil::write_atomic(&path, &text, 0o600, None));
    if let Err(err) = written {
        eprintln!("sftp-ha: cannot write {}: {err}", path.display());
        return Exit::Failure;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1) {
        eprintln!("sftp-ha: cannot signal the daemon (pid {pid}): {err}");
        return Exit::Failure;
    }
    let start = std::time::Instant::now();
    let mut said = String::new();
    while start.elapsed() < PATIENCE {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(Observed::Running(s)) = status::read(&dir) else {
            continue;
        };
        let Some(r) = s.answers.into_iter().find(|r| r.id == id) else {
            continue;
        };
        if !r.done {
            if r.message != said {
                eprintln!("sftp-ha: {}", r.message);
                said = r.message;
            }
            continue;
        }
        return if r.ok {
            println!("{}", r.message);
            Exit::Ok
        } else {
            eprintln!("sftp-ha: {}", r.message);
            Exit::Failure
        };
    }
    eprintln!(
        "sftp-ha: no answer from the daemon within {} s; see `sftp-ha status` and journalctl -u sftp-ha",
        PATIENCE.as_secs()
    );
    Exit::Failure
}

/// The config for a one-shot command; an error is printed and becomes exit 78.
fn load_config(path: &Path) -> Result<config::Config, Exit> {
    config::load(path).map_err(|err| {
        eprintln!("sftp-ha: {err}");
        Exit::Config
    })
}

/// The man pages, section 8, from the same definitions as `--help`:
/// `sftp-ha.8` and one page per command (`sftp-ha-users-apply.8`, ...), as
/// `sftp-ha.8` refers to them.
fn manpage(dir: &Path) -> Exit {
    use clap::CommandFactory;
    fn write_pages(cmd: clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
        let subcommands: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .cloned()
            .collect();
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.name(name.to_string()))
            .section("8")
            .render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.8")), out)?;
        for sub in subcommands {
            let sub_name = format!("{name}-{}", sub.get_name());
            write_pages(sub, &sub_name, dir)?;
        }
        Ok(())
    }
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| write_pages(Cli::command().disable_help_subcommand(true), "sftp-ha", dir));
    match result {
        Ok(()) => Exit::Ok,
        Err(err) => {
            eprintln!(
                "sftp-ha: cannot write the manual pages to {}: {err}",
                dir.display()
            );
            Exit::CantCreate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks these only in debug builds, when a command is first used.
        Cli::command().debug_assert();
    }

    #[test]
    fn stress_options_are_checked_before_anything_connects() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "sftp-ha",
                "stress",
                "10.0.0.1",
                "-u",
                "bob",
                "--known-hosts",
                "/dev/null",
            ];
            args.extend_from_slice(extra);
            let Command::Stress(a) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not stress");
            };
            // PATH is always set: it stands in for the password variable.
            stress_plan(StressArgs {
                password_env: "PATH".into(),
                ..*a
            })
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--size", "4q"]).unwrap_err().contains("--size"));
        assert!(parse(&["--rate", "0/s"]).unwrap_err().contains("--rate"));
        assert!(
            parse(&["--sessions", "0"])
                .unwrap_err()
                .contains("--sessions")
        );
        assert!(parse(&["--files", "0"]).unwrap_err().contains("--files"));
        assert!(
            parse(&["--timeout", "soon"])
                .unwrap_err()
                .contains("--timeout")
        );
        assert!(parse(&["--standby", "a:b:c:d"]).is_err());
    }
}
