//! The command lines of `tunsec` and `tunsecd`: their clap definitions
//! live here, in the library, so that `tunsec generate` can make the man
//! pages (clap_mangen) and shell completions (clap_complete) from the very
//! definitions the binaries parse with. The binaries only match on the
//! parsed values.
//!
//! `--socket` belongs to the commands that talk to tunsecd ([`DaemonArgs`]);
//! `pki`, `demo`, `bench` and `generate` have none.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::DEFAULT_CONTROL_SOCKET;

/// Inspect and control tunsecd, the tunsec daemon.
#[derive(Debug, Parser)]
#[command(name = "tunsec", version)]
pub struct TunsecArgs {
    /// Where tunsecd's control socket is, for the commands that talk to
    /// it: the older spelling `tunsec --socket PATH COMMAND`, still
    /// accepted; `COMMAND --socket PATH` wins over it.
    #[arg(long, value_name = "PATH", hide = true)]
    socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: TunsecCommand,
}

/// Where to reach tunsecd: the option of every command that talks to it.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// tunsecd's control socket [default: /run/tunsec/tunsecd.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// `tunsec`'s commands.
#[derive(Debug, Subcommand)]
pub enum TunsecCommand {
    /// Show the node, networks, peers, every SA with its counters, drops
    /// and the forwarding database.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Print the status as OpenMetrics text for Prometheus (per peer: IKE
    /// SA established, Child SAs; per SA: packets, bytes, drops; per
    /// network; data path drops), e.g. for node_exporter's textfile
    /// collector.
    Metrics {
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Take an IKE peer down: delete its IKE SA (telling the peer) and
    /// make no new one until `up`; its `require` traffic is dropped.
    Down {
        /// The peer's name.
        peer: String,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Bring an IKE peer up: negotiate at once.
    Up {
        /// The peer's name.
        peer: String,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Rekey an IKE peer's Child SA now: new keys and SPIs, make before
    /// break (the old SAs go once the new ones carry the traffic).
    Rekey {
        /// The peer's name.
        peer: String,
        /// Rekey the IKE SA instead (new IKE SPIs and keys; the Child SAs
        /// stay).
        #[arg(long)]
        ike: bool,
        /// Rekey only this network's Child SA (keys per network): the
        /// network's name, or in gateway mode its label (`vxlan/100`).
        #[arg(long, value_name = "NETWORK", conflicts_with = "ike")]
        network: Option<String>,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Re-authenticate an IKE peer now: a new IKE SA with the current
    /// credentials replaces the established one, make before break.
    Reauth {
        /// The peer's name.
        peer: String,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Make tunsecd read its configuration file again and take up new IKE
    /// credentials (certificate, key, CA, CRL, PSK) for new IKE SAs (as
    /// SIGHUP does).
    Reload {
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Manage SAs.
    Sa {
        /// What to do with them.
        #[command(subcommand)]
        command: SaCommand,
    },
    /// Export the keys of the live SAs, to debug with Wireshark.
    Keys {
        /// What to do with them.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Gateway mode's entries on this host.
    Gateway {
        /// What to do with them.
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Run the demo: three hosts and two virtual networks in network
    /// namespaces on this machine (needs root).
    Demo(DemoArgs),
    /// Measure TCP throughput and CPU cost per case (veth, the kernel's
    /// vxlan, tunsecd in clear and with each suite, WireGuard peers when
    /// installed) in network namespaces on this machine (needs root and
    /// iperf3).
    Bench(BenchArgs),
    /// A small CA: init-ca, issue, self-signed, crl, show, verify (PEM;
    /// keys mode 0600).
    Pki(crate::pki::PkiArgs),
    /// Write the man pages or the shell completions of tunsec and tunsecd
    /// (for packaging: scripts/deb.sh).
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[command(subcommand)]
        what: GenerateCommand,
    },
}

/// Options of `tunsec demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The ESP suite: aes128gcm16, aes256gcm16, chacha20poly1305 or
    /// aes256-sha256.
    #[arg(long, default_value = "aes128gcm16")]
    pub suite: String,
    /// The tunnel format of the blue network (red is always geneve).
    #[arg(long, default_value = "vxlan")]
    pub encapsulation: String,
    /// Key the SAs manually (random keys in files) instead of with IKEv2.
    #[arg(long, conflicts_with = "psk")]
    pub manual_keys: bool,
    /// Authenticate IKEv2 with a generated pre-shared key per host pair
    /// instead of CA-signed certificates.
    #[arg(long)]
    pub psk: bool,
}

/// Options of `tunsec bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// iperf3 runs per case; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Only these cases, comma-separated: veth, kernel-vxlan, tunsec-clear,
    /// tunsec-aes128gcm16, tunsec-aes256gcm16, tunsec-chacha20poly1305,
    /// tunsec-aes256-sha256, tunsec-aes128gcm16-noudpgro,
    /// tunsec-aes128gcm16-noudpgso,
    /// tunsec-aes128gcm16-nogro, tunsec-aes128gcm16-nooffload,
    /// tunsec-aes128gcm16-2workers, tunsec-gateway-aes128gcm16,
    /// tunsec-networks-1, tunsec-networks-1000 (keys per network),
    /// tunsec-encrypted-vxlan, wireguard-go, boringtun. Default: all.
    #[arg(long, value_delimiter = ',', value_name = "CASE,...")]
    pub cases: Vec<String>,
    /// Print the results as JSON instead of a table (progress still goes
    /// to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG bar chart of throughput and CPU per case.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Install the WireGuard peers if missing (wireguard-go and
    /// wireguard-tools with apt-get, boringtun-cli with cargo install).
    #[arg(long)]
    pub with_peers: bool,
    /// The underlay's MTU (the veth between the hosts, and tunsecd's
    /// `node.underlay_mtu`): 9000 for jumbo frames, as data centres run.
    /// The tenants get the TAP MTU that follows from it.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(1280..=9000))]
    pub underlay_mtu: u16,
    /// Parallel TCP streams per iperf3 run (`iperf3 -P`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub streams: u32,
    /// Also measure latency in each case: `sockperf ping-pong` over TCP
    /// (64-byte messages, `--seconds` long): median and 99th-percentile
    /// round-trip time, and round trips per second (needs the Debian
    /// package sockperf).
    #[arg(long)]
    pub latency: bool,
    /// The prefix of the namespaces' names (for running the smoke test
    /// beside a bench).
    #[arg(long, default_value = "tsbench", hide = true)]
    pub prefix: String,
}

/// `tunsec sa`'s commands.
#[derive(Debug, Subcommand)]
pub enum SaCommand {
    /// Delete a peer's SAs (both directions).
    Delete {
        /// The peer's name.
        peer: String,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// `tunsec keys`'s commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write the keys of every live IKE and ESP SA as Wireshark's
    /// decryption tables (files esp_sa and ikev2_decryption_table, mode
    /// 0600), so that Wireshark or tshark decrypts a capture of this
    /// host's IKE and ESP traffic. Whoever reads the files can decrypt
    /// that traffic: delete them after use. tunsecd logs a warning for
    /// each export.
    Export {
        /// The directory to write the two files to (made, mode 0700, if
        /// missing; files of the same names there are replaced). A
        /// Wireshark profile directory works, such as
        /// ~/.config/wireshark/profiles/tunsec.
        #[arg(long, value_name = "DIR", required = true)]
        wireshark: PathBuf,
        /// Where tunsecd is.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// `tunsec gateway`'s commands.
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Remove what a stopped tunsecd left in place to keep the protected
    /// traffic blocked (its steering rules, its route table, its nftables
    /// guard): from then on the kernel's tunnels send in the clear.
    /// Refused while tunsecd runs.
    Release {
        /// tunsecd's configuration file (for the table, priorities and
        /// guard to remove, and the control socket).
        #[arg(short, long, default_value = "/etc/tunsec/tunsec.toml")]
        config: PathBuf,
    },
}

/// `tunsec generate`'s commands.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Man pages: tunsec.1, one tunsec-COMMAND.1 per command (also
    /// tunsec-sa-delete.1, tunsec-pki-issue.1, ...) and tunsecd.8.
    Man {
        /// The directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Completions of tunsec and tunsecd for one shell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// The directory to write them to (created if missing).
        dir: PathBuf,
    },
}

impl TunsecArgs {
    /// Parses the process's arguments with [`tunsec_command`] (the
    /// derived command plus the list of nested commands in `--help`);
    /// exits with clap's message and status on an error, `--help` or
    /// `--version`.
    pub fn parse_args() -> Self {
        let mut matches = tunsec_command().get_matches();
        Self::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
    }

    /// The control socket a command talks to: its `--socket`, else the
    /// older `tunsec --socket`, else [`DEFAULT_CONTROL_SOCKET`].
    pub fn socket(&self) -> PathBuf {
        self.command
            .daemon()
            .and_then(|d| d.socket.clone())
            .or_else(|| self.socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }
}

impl TunsecCommand {
    /// The daemon options of a command that talks to tunsecd; `None` for
    /// the others.
    pub fn daemon(&self) -> Option<&DaemonArgs> {
        match self {
            Self::Status { daemon, .. }
            | Self::Metrics { daemon }
            | Self::Down { daemon, .. }
            | Self::Up { daemon, .. }
            | Self::Rekey { daemon, .. }
            | Self::Reauth { daemon, .. }
            | Self::Reload { daemon }
            | Self::Sa {
                command: SaCommand::Delete { daemon, .. },
            }
            | Self::Keys {
                command: KeysCommand::Export { daemon, .. },
            } => Some(daemon),
            Self::Demo(_)
            | Self::Bench(_)
            | Self::Pki(_)
            | Self::Gateway { .. }
            | Self::Generate { .. } => None,
        }
    }
}

/// The tunsec daemon: protects overlay tunnels between hosts with ESP
/// (IPsec) and negotiates their keys with IKEv2.
#[derive(Debug, Parser)]
#[command(name = "tunsecd", version, after_long_help = tunsecd_notes())]
pub struct TunsecdArgs {
    /// The configuration file (see docs/config.md).
    #[arg(short, long, default_value = "/etc/tunsec/tunsec.toml")]
    pub config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
    /// Logging (--log-level, --log-format).
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
}

/// What `tunsecd --help` says beyond the options, and tunsecd(8) in
/// sections of its own: (man page section, text).
const TUNSECD_NOTES: &[(&str, &str)] = &[
    (
        "SIGNALS",
        "SIGTERM and SIGINT stop tunsecd; SIGHUP reloads the configuration \
         (as `tunsec reload` does).",
    ),
    (
        "SYSTEMD",
        "Under systemd (tunsecd.service, Type=notify) tunsecd tells the service \
         manager when it is ready (configuration loaded, sockets bound, devices \
         up), pings the watchdog (WatchdogSec=) from its main loop, and reports \
         reloads and its stop. Without NOTIFY_SOCKET it sends nothing.",
    ),
    (
        "ENVIRONMENT",
        "RUST_LOG sets the log filter (default: info).",
    ),
    (
        "FILES",
        "/etc/tunsec/tunsec.toml: the configuration; /run/tunsec/tunsecd.sock: \
         the control socket (`[node] control_socket`); the configuration is \
         documented in /usr/share/doc/tunsec/config.md.",
    ),
    ("SEE ALSO", "tunsec(1)"),
];

/// [`TUNSECD_NOTES`] as help text: "Signals: ..." paragraphs.
fn tunsecd_notes() -> String {
    TUNSECD_NOTES
        .iter()
        .map(|(section, text)| {
            let mut heading = section.to_lowercase();
            heading[..1].make_ascii_uppercase();
            format!("{heading}: {text}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `tunsec`'s command as its binary parses it: the derived definition,
/// with the commands nested under `sa` and `pki` listed at the end of
/// `tunsec --help` (clap lists only the first level).
pub fn tunsec_command() -> clap::Command {
    let cmd = TunsecArgs::command();
    let nested = nested_commands(&cmd);
    cmd.after_help(nested)
}

/// `tunsecd`'s command.
pub fn tunsecd_command() -> clap::Command {
    TunsecdArgs::command()
}

/// A "Commands of the commands above" block: every visible command one
/// level down, `sa delete  Delete a peer's SAs`, aligned, with the gist of
/// its description.
fn nested_commands(cmd: &clap::Command) -> String {
    let mut rows = Vec::new();
    for parent in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        for child in parent.get_subcommands().filter(|c| !c.is_hide_set()) {
            let about = child.get_about().map(|a| a.to_string()).unwrap_or_default();
            // The gist, to fit a line: up to a colon or a parenthesis.
            let about = about
                .split([':', '('])
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_owned();
            rows.push((format!("{} {}", parent.get_name(), child.get_name()), about));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::from("Commands of the commands above:\n");
    for (name, about) in rows {
        out.push_str(&format!("  {name:width$}  {about}\n"));
    }
    out.push_str("\n`tunsec COMMAND --help` tells more about each.");
    out
}

/// `tunsec generate`: writes man pages or completions into the directory
/// named, and lists on `out` the files it wrote.
pub fn generate(what: &GenerateCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let written = match what {
        GenerateCommand::Man { dir } => man_pages(dir)?,
        GenerateCommand::Completions { shell, dir } => completions(*shell, dir)?,
    };
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes tunsec.1 with one page per visible command at every level
/// (tunsec-status.1, tunsec-sa-delete.1, ...), and tunsecd.8 (section 8:
/// a daemon). Returns the files written.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    // Without the list of nested commands: each has a page of its own,
    // which tunsec-sa(1) and tunsec-pki(1) list.
    let mut tunsec = TunsecArgs::command().disable_help_subcommand(true);
    tunsec.build();
    man_page_tree(&tunsec, "1", dir, &mut written)?;
    // The notes in sections of their own rather than clap's "EXTRA".
    let mut tunsecd = tunsecd_command().after_long_help(None::<&str>);
    tunsecd.build();
    let man = clap_mangen::Man::new(tunsecd)
        .section("8")
        .manual("tunsec manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    for (section, text) in TUNSECD_NOTES {
        page.extend_from_slice(format!(".SH {section}\n{}\n", roff_text(text)).as_bytes());
    }
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    Ok(written)
}

/// `text` as a roff paragraph: backslashes and minus signs escaped, and
/// no line that starts with a control character.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The page of `cmd` and of each visible command under it, in `section`.
fn man_page_tree(
    cmd: &clap::Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("tunsec manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        man_page_tree(sub, section, dir, written)?;
    }
    Ok(())
}

/// Writes the completions of tunsec and tunsecd for `shell` (bash:
/// `tunsec.bash`, zsh: `_tunsec`, fish: `tunsec.fish`, ...). Returns the
/// files written.
pub fn completions(shell: clap_complete::Shell, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for cmd in [tunsec_command(), tunsecd_command()] {
        // clap_complete offers hidden commands and options too (bash,
        // fish, zsh): complete only what the help shows.
        let mut cmd = visible_only(&cmd);
        let name = cmd.get_name().to_owned();
        written.push(
            clap_complete::generate_to(shell, &mut cmd, name, dir)
                .with_context(|| format!("cannot write completions to {}", dir.display()))?,
        );
    }
    Ok(written)
}

/// A copy of `cmd` without its hidden options and commands, at every
/// level: what the completions offer.
fn visible_only(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_owned())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(visible_only),
        );
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_owned());
    }
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(cmd: &mut clap::Command, args: &[&str]) -> String {
        match cmd.try_get_matches_from_mut(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.render().to_string(),
            other => panic!("{args:?}: expected help, got {other:?}"),
        }
    }

    #[test]
    fn commands_are_consistent() {
        tunsec_command().debug_assert();
        tunsecd_command().debug_assert();
        visible_only(&tunsec_command()).debug_assert();
    }

    #[test]
    fn help_lists_the_nested_commands() {
        let text = help(&mut tunsec_command(), &["tunsec", "--help"]);
        assert!(text.contains("sa delete"), "{text}");
        assert!(text.contains("Delete a peer's SAs"), "{text}");
        assert!(
            text.contains("Verify a certificate as IKE would\n"),
            "{text}"
        );
        assert!(text.contains("pki init-ca"), "{text}");
        assert!(text.contains("keys export"), "{text}");
        assert!(text.contains("pki verify"), "{text}");
        // The hidden command stays hidden.
        assert!(!text.contains("generate"), "{text}");
        let short = help(&mut tunsec_command(), &["tunsec", "-h"]);
        assert!(short.contains("sa delete"), "{short}");
    }

    #[test]
    fn socket_only_where_tunsecd_is_reached() {
        for args in [
            &["tunsec", "pki", "--help"][..],
            &["tunsec", "pki", "issue", "--help"],
            &["tunsec", "pki", "init-ca", "--help"],
            &["tunsec", "demo", "--help"],
            &["tunsec", "bench", "--help"],
            &["tunsec", "--help"],
        ] {
            let text = help(&mut tunsec_command(), args);
            assert!(!text.contains("--socket"), "{args:?}:\n{text}");
        }
        for args in [
            &["tunsec", "status", "--help"][..],
            &["tunsec", "reload", "--help"],
            &["tunsec", "sa", "delete", "--help"],
            &["tunsec", "rekey", "--help"],
            &["tunsec", "keys", "export", "--help"],
        ] {
            let text = help(&mut tunsec_command(), args);
            assert!(text.contains("--socket"), "{args:?}:\n{text}");
            assert!(text.contains(DEFAULT_CONTROL_SOCKET), "{args:?}:\n{text}");
        }
    }

    #[test]
    fn socket_resolution() {
        let parse = |args: &[&str]| {
            let mut m = tunsec_command().try_get_matches_from(args).unwrap();
            TunsecArgs::from_arg_matches_mut(&mut m).unwrap()
        };
        assert_eq!(
            parse(&["tunsec", "status"]).socket(),
            Path::new(DEFAULT_CONTROL_SOCKET)
        );
        assert_eq!(
            parse(&["tunsec", "status", "--socket", "/a"]).socket(),
            Path::new("/a")
        );
        // The older spelling, before the command.
        assert_eq!(
            parse(&["tunsec", "--socket", "/b", "rekey", "p", "--ike"]).socket(),
            Path::new("/b")
        );
        assert_eq!(
            parse(&[
                "tunsec", "--socket", "/b", "sa", "delete", "p", "--socket", "/c"
            ])
            .socket(),
            Path::new("/c")
        );
        let keys = parse(&[
            "tunsec",
            "keys",
            "export",
            "--wireshark",
            "/d",
            "--socket",
            "/e",
        ]);
        assert_eq!(keys.socket(), Path::new("/e"));
        assert!(matches!(
            keys.command,
            TunsecCommand::Keys {
                command: KeysCommand::Export { ref wireshark, .. }
            } if wireshark == Path::new("/d")
        ));
        // The directory is required.
        assert!(
            tunsec_command()
                .try_get_matches_from(["tunsec", "keys", "export"])
                .is_err()
        );
        // pki takes no --socket of its own.
        assert!(
            tunsec_command()
                .try_get_matches_from(["tunsec", "pki", "show", "x.pem", "--socket", "/a"])
                .is_err()
        );
    }

    #[test]
    fn tunsecd_defaults() {
        let args = TunsecdArgs::try_parse_from(["tunsecd"]).unwrap();
        assert_eq!(args.config, Path::new("/etc/tunsec/tunsec.toml"));
        assert!(!args.check);
        let args = TunsecdArgs::try_parse_from(["tunsecd", "-c", "x.toml", "--check"]).unwrap();
        assert_eq!(args.config, Path::new("x.toml"));
        assert!(args.check);
    }

    #[test]
    fn man_pages_one_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in [
            "tunsec.1",
            "tunsec-status.1",
            "tunsec-reload.1",
            "tunsec-sa.1",
            "tunsec-sa-delete.1",
            "tunsec-pki.1",
            "tunsec-pki-issue.1",
            "tunsec-demo.1",
            "tunsecd.8",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("tunsec-rekey.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("\\-\\-ike"), "{page}");
        let daemon = std::fs::read_to_string(dir.path().join("tunsecd.8")).unwrap();
        assert!(daemon.contains(".TH tunsecd 8"), "{daemon}");
        assert!(daemon.contains(".SH SIGNALS\nSIGTERM"), "{daemon}");
        assert!(daemon.contains(".SH SEE ALSO\ntunsec(1)"), "{daemon}");
        assert!(!daemon.contains("EXTRA"), "{daemon}");
        let top = std::fs::read_to_string(dir.path().join("tunsec.1")).unwrap();
        assert!(
            top.contains("tunsec\\-sa(1)") && !top.contains("EXTRA"),
            "{top}"
        );
    }

    #[test]
    fn completions_for_each_shell() {
        let dir = tempfile::tempdir().unwrap();
        for (shell, files) in [
            (clap_complete::Shell::Bash, ["tunsec.bash", "tunsecd.bash"]),
            (clap_complete::Shell::Zsh, ["_tunsec", "_tunsecd"]),
            (clap_complete::Shell::Fish, ["tunsec.fish", "tunsecd.fish"]),
        ] {
            completions(shell, dir.path()).unwrap();
            for file in files {
                let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
                // The nested commands complete, the hidden one does not.
                if file.starts_with("tunsecd") || file == "_tunsecd" {
                    assert!(text.contains("check"), "{file}");
                } else {
                    assert!(text.contains("init-ca"), "{file}");
                    assert!(text.contains("rekey"), "{file}");
                    assert!(text.contains("delete"), "{file}");
                    assert!(text.contains("socket"), "{file}");
                    if file == "tunsec.bash" {
                        // Top level: no hidden `tunsec --socket`.
                        let top = text.lines().find(|l| l.contains("opts=\"-h -V")).unwrap();
                        assert!(top.contains(" status ") && !top.contains("socket"), "{top}");
                    }
                    // "generate" only as part of "generated".
                    assert!(
                        text.match_indices("generate")
                            .all(|(i, _)| text[i..].starts_with("generated")),
                        "{file}"
                    );
                }
            }
        }
    }
}
