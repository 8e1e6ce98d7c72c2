//! The bench guest's console lines (`tests/guests/guests/bench.c`), parsed and converted
//! from cycles.

use std::collections::BTreeMap;

use polyvisor_config::HypervisorMode;

use super::{ratio, BenchError, RoundTrip, GUEST};

/// What the guest printed, converted.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Round trips in the guest's order (floor first).
    pub round_trips: Vec<RoundTrip>,
    /// Operations per second by (kind, vCPU count), one per round.
    pub throughput: BTreeMap<(String, u32), Vec<f64>>,
    /// The guest TSC at the start of `guest_main`.
    pub tsc_main: Option<u64>,
    /// The guest TSC at the image's first instructions.
    pub tsc_start: Option<u64>,
}

/// `key=value` words of a line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

/// Parses the guest's console: `sample`, `answer`, `tput` and `error` lines (see bench.c).
pub fn parse_console(
    mode: HypervisorMode,
    console: &str,
    tsc_khz: u64,
    names: &[(&str, &str); 2],
) -> Result<Parsed, BenchError> {
    let fail = |what: String| BenchError::Guest { mode, what, console: console.to_string() };
    let ns = |cycles: f64| cycles * 1e6 / tsc_khz as f64;
    let mut out = Parsed::default();
    let prefix = format!("{GUEST}: ");
    for line in console.lines().filter_map(|l| l.strip_prefix(prefix.as_str())) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let f = fields(rest);
        let num = |k: &str| -> Result<f64, BenchError> {
            f.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| fail(format!("no number {k}= in \"{line}\"")))
        };
        match kind {
            "error:" => return Err(fail(format!("the guest says: {rest}"))),
            k if k.starts_with("tsc_main=") => {
                out.tsc_main = k.strip_prefix("tsc_main=").and_then(|v| v.parse().ok());
                out.tsc_start = f.get("tsc_start").and_then(|v| v.parse().ok());
            }
            "answer" if f.get("ok") != Some(&"1") => {
                return Err(fail(format!("a call gave the wrong answer: {rest}")))
            }
            "sample" => {
                let name = f.get("name").copied().unwrap_or("?").to_string();
                let what = match name.as_str() {
                    "port_io" => "port write, answered in the VMM (the floor)".to_string(),
                    "timing_only" => "the timing instructions alone, no exit".to_string(),
                    "call_ret" => "a call into a ret, no exit (what the page adds)".to_string(),
                    _ => names
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(String::new(), |(_, w)| (*w).to_string()),
                };
                out.round_trips.push(RoundTrip {
                    name,
                    what,
                    samples: num("n")? as u64,
                    min_ns: ns(num("min")?),
                    median_ns: ns(num("p50")?),
                    p90_ns: ns(num("p90")?),
                    p99_ns: ns(num("p99")?),
                    max_ns: ns(num("max")?),
                    mean_ns: ns(num("mean")?),
                    median_vs_floor: 0.0,
                    p99_vs_floor: 0.0,
                    net_median_vs_floor: 0.0,
                });
            }
            "tput" => {
                let kind = f.get("kind").copied().unwrap_or("?").to_string();
                let vcpus = num("vcpus")? as u32;
                let secs = num("cycles")? / (tsc_khz as f64 * 1e3);
                out.throughput.entry((kind, vcpus)).or_default().push(ratio(num("ops")?, secs));
            }
            _ => {}
        }
    }
    if let Some(floor) = out.round_trips.first().filter(|r| r.name == "port_io").cloned() {
        let timing =
            out.round_trips.iter().find(|r| r.name == "timing_only").map_or(0.0, |t| t.median_ns);
        for r in &mut out.round_trips {
            r.median_vs_floor = ratio(r.median_ns, floor.median_ns);
            r.p99_vs_floor = ratio(r.p99_ns, floor.p99_ns);
            r.net_median_vs_floor = ratio(r.median_ns - timing, floor.median_ns - timing);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::calls;

    #[test]
    fn parses_the_guests_lines() {
        let console = "bench64: tsc_main=1 mode=kvm\n\
            bench64: answer name=kvm_vapic_poll_irq value=0x0 ok=1\n\
            bench64: sample name=port_io n=10 min=1000 p50=2000 p90=3000 p99=4000 max=5000 mean=2100\n\
            bench64: sample name=kvm_vapic_poll_irq n=10 min=1100 p50=2200 p90=3300 p99=4400 max=5500 mean=2300\n\
            bench64: sample name=timing_only n=10 min=900 p50=1000 p90=1000 p99=1000 max=1000 mean=1000\n\
            bench64: tput kind=hypercall vcpus=1 round=1 ops=1000 cycles=1000000000\n";
        let p = parse_console(HypervisorMode::Kvm, console, 1_000_000, &calls(HypervisorMode::Kvm))
            .unwrap();
        assert_eq!(p.round_trips.len(), 3);
        assert_eq!(p.round_trips[0].median_ns, 2000.0, "1 GHz: a cycle is a nanosecond");
        assert!((p.round_trips[1].median_vs_floor - 1.1).abs() < 1e-9);
        assert!((p.round_trips[1].p99_vs_floor - 1.1).abs() < 1e-9);
        // (2200 - 1000) / (2000 - 1000): the timing instructions taken out of both.
        assert!((p.round_trips[1].net_median_vs_floor - 1.2).abs() < 1e-9);
        assert_eq!(p.round_trips[1].what, "KVM_HC_VAPIC_POLL_IRQ (rax=1)");
        assert_eq!(p.throughput.get(&("hypercall".to_string(), 1)), Some(&vec![1000.0]));
    }

    #[test]
    fn a_wrong_answer_or_an_error_line_fails() {
        let names = calls(HypervisorMode::Xen);
        let bad = "bench64: answer name=xen_version value=0xffffffffffffffda ok=0\n";
        assert!(parse_console(HypervisorMode::Xen, bad, 1, &names).is_err());
        let err = "bench64: error: the hypercall page was not filled\n";
        assert!(parse_console(HypervisorMode::Xen, err, 1, &names).is_err());
        let truncated = "bench64: sample name=port_io n=10 min=1\n";
        assert!(parse_console(HypervisorMode::Xen, truncated, 1, &names).is_err());
    }
}
