//! The soak's report: the seed, one row per fault kind (count, worst
//! recovery against its bound, UDP datagrams and pings lost while it
//! lasted), the invariants with what was measured, and a verdict.

use std::fmt::Write as _;
use std::time::Duration;

use super::faults::Fault;

/// A sample sees a drop up to this long after it happened.
const SAMPLE: f64 = 0.6;

/// One fault as it happened: when (Unix seconds) it was applied and when
/// traffic was back, and how long recovery took (`None`: not within the
/// limit).
pub(crate) struct Outcome {
    pub(crate) fault: Fault,
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) recovery: Option<Duration>,
}

/// One invariant: its name, what was measured, and whether it held.
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) measured: String,
    pub(crate) held: bool,
}

/// Everything the report says.
pub(crate) struct Report {
    /// `overlay` or `gateway`.
    pub(crate) mode: &'static str,
    pub(crate) seed: u64,
    /// When the traffic started (Unix seconds).
    pub(crate) start: f64,
    pub(crate) seconds: u64,
    pub(crate) outcomes: Vec<Outcome>,
    /// Send times of the UDP datagrams and pings lost.
    pub(crate) udp_lost: Vec<f64>,
    pub(crate) pings_lost: Vec<f64>,
    /// Every rise of a data-path drop counter.
    pub(crate) drops: Vec<super::DropRise>,
    pub(crate) checks: Vec<Check>,
}

/// How long after a fault's recovery a lost packet still counts as the
/// fault's: the probe that ends recovery can pass just before a flow's
/// next packet does.
pub(crate) const GRACE: f64 = 1.0;

impl Report {
    /// Whether a packet sent at `t` was sent while a fault lasted.
    pub(crate) fn during_a_fault(&self, t: f64) -> bool {
        self.outcomes
            .iter()
            .any(|o| t >= o.from - 0.1 && t <= o.to + GRACE)
    }

    /// Whether every invariant held and every fault recovered in time.
    pub(crate) fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.held)
            && self
                .outcomes
                .iter()
                .all(|o| o.recovery.is_some_and(|r| r <= o.fault.bound()))
    }

    /// The report, in Markdown.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Soak report\n\n{} mode, seed {}, {} s, {} faults (replay: `TUNSEC_SOAK_SEED={} TUNSEC_SOAK_SECS={}`).\n",
            self.mode,
            self.seed,
            self.seconds,
            self.outcomes.len(),
            self.seed,
            self.seconds
        );
        let _ = writeln!(
            s,
            "| fault | count | worst recovery | bound | UDP lost | pings lost |\n|---|---:|---:|---:|---:|---:|"
        );
        for kind in Fault::KINDS {
            let of_kind: Vec<&Outcome> = self
                .outcomes
                .iter()
                .filter(|o| o.fault.kind() == kind)
                .collect();
            if of_kind.is_empty() {
                let _ = writeln!(s, "| {kind} | 0 | - | - | - | - |");
                continue;
            }
            let worst = of_kind
                .iter()
                .map(|o| o.recovery)
                .max_by_key(|r| r.unwrap_or(Duration::MAX))
                .flatten();
            let within = |t: f64| {
                of_kind
                    .iter()
                    .any(|o| t >= o.from - 0.1 && t <= o.to + GRACE)
            };
            let _ = writeln!(
                s,
                "| {kind} | {} | {} | {:.0} s | {} | {} |",
                of_kind.len(),
                worst.map_or("not recovered".to_owned(), |w| format!(
                    "{:.2} s",
                    w.as_secs_f64()
                )),
                of_kind[0].fault.bound().as_secs_f64(),
                self.udp_lost.iter().filter(|&&t| within(t)).count(),
                self.pings_lost.iter().filter(|&&t| within(t)).count(),
            );
        }
        let _ = writeln!(s, "\n| invariant | measured | held |\n|---|---|---|");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                c.name,
                c.measured,
                if c.held { "yes" } else { "**no**" },
            );
        }
        let outside = |lost: &[f64]| -> Vec<String> {
            let times: Vec<f64> = lost
                .iter()
                .copied()
                .filter(|&t| !self.during_a_fault(t))
                .collect();
            runs(&times)
                .into_iter()
                .map(|(from, to, n)| {
                    let after = self
                        .outcomes
                        .iter()
                        .enumerate()
                        .rfind(|(_, o)| o.to <= from)
                        .map_or("before the first fault".to_owned(), |(i, o)| {
                            format!("{:.1} s after fault {} ended", from - o.to, i + 1)
                        });
                    format!(
                        "{n} from {:.2} to {:.2} ({after})",
                        from - self.start,
                        to - self.start
                    )
                })
                .collect()
        };
        for (flow, lost) in [("UDP", &self.udp_lost), ("pings", &self.pings_lost)] {
            for run in outside(lost) {
                let _ = writeln!(
                    s,
                    "\n{flow} lost outside faults, seconds from the start: {run}"
                );
            }
        }
        let outside: Vec<&super::DropRise> = self
            .drops
            .iter()
            .filter(|d| !self.during_a_fault(d.at) && !self.during_a_fault(d.at - SAMPLE))
            .collect();
        let _ = writeln!(
            s,
            "\nData-path drops: {} counter rises in all, {} outside faults{}",
            self.drops.len(),
            outside.len(),
            if outside.is_empty() { "." } else { ":" }
        );
        for d in outside {
            let _ = writeln!(
                s,
                "- at {:.1} s, h{}: {} +{}",
                d.at - self.start,
                d.host,
                d.counter,
                d.by
            );
        }
        let _ = writeln!(s, "\nThe faults in order:\n");
        for (i, o) in self.outcomes.iter().enumerate() {
            let _ = writeln!(
                s,
                "{}. at {:.1} s, {} (held {:.1} s): back in {}",
                i + 1,
                o.from - self.start,
                o.fault,
                o.to - o.from - o.recovery.map_or(0.0, |r| r.as_secs_f64()),
                o.recovery
                    .map_or("-".to_owned(), |r| format!("{:.2} s", r.as_secs_f64()))
            );
        }
        let _ = writeln!(
            s,
            "\nVerdict: **{}**",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// Runs of `times` (sorted) no more than 0.05 s apart: (first, last,
/// how many).
fn runs(times: &[f64]) -> Vec<(f64, f64, usize)> {
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for &t in times {
        match out.last_mut() {
            Some(run) if t - run.1 <= 0.05 => {
                run.1 = t;
                run.2 += 1;
            }
            _ => out.push((t, t, 1)),
        }
    }
    out
}
