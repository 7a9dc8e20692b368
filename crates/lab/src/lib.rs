//! Network namespaces for tunsec's demo, bench and end-to-end tests:
//! hosts, an underlay bridge, veth pairs. A crate of its own, so that the
//! daemon's library does not carry it: the `tunsec` binary (`demo`,
//! `bench`) and the tests use it, `tunsecd` does not. Everything made here
//! is removed when the [`Lab`] is dropped, also after a failure or a
//! panic, and stale namespaces of the same prefix from a crashed run are
//! removed first. Namespace names carry
//! the process id (`prefix-PID-short`), so that two runs at once (two test
//! suites on one machine) never delete each other's.
//!
//! Addresses live only inside the namespaces; nothing is added to the root
//! namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs a command and fails with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A set of namespaces and processes, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    /// The prefix the lab was made with.
    base: String,
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    /// A scratch directory (configs, keys, sockets, captures).
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A new lab whose namespaces are all named `prefix-PID-...`.
    /// Leftovers with that prefix from processes that are gone are
    /// deleted; those of a live process are left alone.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("network namespaces need root: run as root (sudo)");
        }
        run("ip", &["-V"]).context("the ip tool from iproute2 is needed")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()?;
        // Two labs of one prefix in one process would share namespace
        // names, and the second would delete the first's as stale.
        if !LIVE_PREFIXES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(prefix.to_owned())
        {
            bail!("lab prefix {prefix:?} is already in use in this process: give each lab its own");
        }
        let lab = Self {
            base: prefix.to_owned(),
            prefix: format!("{prefix}-{}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
        };
        lab.remove_stale(prefix)?;
        Ok(lab)
    }

    /// Deletes namespaces `prefix-PID-...` whose process is gone (or is
    /// this one), and old-style `prefix-short` ones.
    fn remove_stale(&self, prefix: &str) -> anyhow::Result<()> {
        let out = run("ip", &["netns", "list"])?;
        let own = std::process::id();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(&format!("{prefix}-")) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let stale = match pid {
                Some(pid) => pid == own || !Path::new(&format!("/proc/{pid}")).exists(),
                // `prefix-short` from before process ids; a longer name
                // belongs to another prefix that starts with this one.
                None => !rest.contains('-'),
            };
            if stale {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
        Ok(())
    }

    /// The full name of namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Creates namespace `short` with loopback up and IPv6 off (so that
    /// captures show only what the test sends).
    pub fn add_ns(&mut self, short: &str) -> anyhow::Result<String> {
        let name = self.ns(short);
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        self.exec(&name, "ip", &["link", "set", "lo", "up"])?;
        self.exec(
            &name,
            "sysctl",
            &["-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        )?;
        self.exec(
            &name,
            "sysctl",
            &["-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        )?;
        Ok(name)
    }

    /// The shared underlay: namespace `ul` with bridge `br0`, without
    /// multicast snooping (its IGMP queries would be noise in captures).
    /// Hosts join it with [`Lab::veth`] and `ip link set PORT master br0`.
    pub fn add_underlay(&mut self) -> anyhow::Result<String> {
        let ul = self.add_ns("ul")?;
        self.add_bridge(&ul, "br0")?;
        Ok(ul)
    }

    /// Creates bridge `name` in namespace `ns`, up, without multicast
    /// snooping (its IGMP queries would be noise in captures).
    pub fn add_bridge(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.exec(
            ns,
            "ip",
            &["link", "add", name, "type", "bridge", "mcast_snooping", "0"],
        )?;
        self.exec(ns, "ip", &["link", "set", name, "up"])?;
        Ok(())
    }

    /// The log files (`*.log`) in the lab's directory, sorted by name:
    /// where [`Lab::spawn`]'s processes write.
    pub fn logs(&self) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        let mut logs: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        logs
    }

    /// Runs a command inside a namespace and fails with its stderr.
    pub fn exec(&self, ns: &str, cmd: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["netns", "exec", ns, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside a namespace; returns whether it succeeded.
    pub fn try_exec(&self, ns: &str, cmd: &str, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Connects two namespaces with a veth pair named `a_if` / `b_if`.
    pub fn veth(&self, a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) -> anyhow::Result<()> {
        self.exec(
            a_ns,
            "ip",
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b_ns,
            ],
        )?;
        self.exec(a_ns, "ip", &["link", "set", a_if, "up"])?;
        self.exec(b_ns, "ip", &["link", "set", b_if, "up"])?;
        Ok(())
    }

    /// Starts a long-running process inside a namespace, with its output
    /// in `dir/<label>.log`; it is stopped (SIGTERM, then SIGKILL) when the
    /// lab is dropped.
    pub fn spawn(
        &mut self,
        label: &str,
        ns: &str,
        cmd: &Path,
        args: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let log = self.dir.path().join(format!("{label}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.display()))?;
        self.children.push((label.to_owned(), child));
        Ok(log)
    }

    /// Stops the process started under `label` with SIGTERM and waits for
    /// it (SIGKILL after 5 s). Returns whether it exited cleanly.
    pub fn stop(&mut self, label: &str) -> bool {
        let Some(i) = self.children.iter().position(|(l, _)| l == label) else {
            return false;
        };
        let (_, child) = self.children.remove(i);
        terminate(child)
    }

    /// The process id of the process started under `label`, while the lab
    /// holds it (`ip netns exec` execs, so it is the command's own pid).
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, child)| child.id())
    }

    /// Waits until `check` holds, or fails after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out waiting for {what}")
    }
}

fn terminate(mut child: Child) -> bool {
    // `ip netns exec` execs the command, so the pid is the daemon's.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in self.children.drain(..) {
            terminate(child);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        LIVE_PREFIXES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.base);
    }
}

/// The prefixes of this process's live labs.
static LIVE_PREFIXES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether this process runs as root (the real user id is 0): building
/// namespaces needs it.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod test {
    use super::*;

    /// A prefix serves one live lab at a time in a process (as root, like
    /// every test that builds namespaces).
    #[test]
    fn one_lab_per_prefix() {
        let first = Lab::new("tslabp").unwrap();
        let err = Lab::new("tslabp").unwrap_err().to_string();
        assert!(err.contains("\"tslabp\" is already in use"), "{err}");
        let other = Lab::new("tslabq").unwrap();
        drop(first);
        let again = Lab::new("tslabp").unwrap();
        drop((other, again));
    }
}
