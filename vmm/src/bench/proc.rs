//! What /proc says about the machine and this process: CPU model, KVM flavour, load, CPU
//! time, resident memory.

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(super) fn kvm_flavour() -> String {
    let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        "PVM (kvm_pvm)".into()
    } else if loaded("kvm_intel") {
        "VMX (kvm_intel)".into()
    } else if loaded("kvm_amd") {
        "SVM (kvm_amd)".into()
    } else {
        "unknown".into()
    }
}

pub(super) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().unwrap_or(f64::NAN));
    [it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN)]
}

/// `USER_HZ`, the unit of /proc/stat and /proc/self/stat (fixed at 100 on x86 Linux).
pub(super) const TICKS_PER_SEC: f64 = 100.0;

/// User + system time of this process so far (every thread, finished ones included), ticks.
pub(super) fn own_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// CPU time every CPU of the host spent running work so far, and the time stolen by the
/// hypervisor under it (/proc/stat `cpu` line: user nice system idle iowait irq softirq
/// steal; guest time is inside user), ticks.
pub(super) fn host_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|w| w.parse().unwrap_or(0)).collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (get(0) + get(1) + get(2) + get(5) + get(6), get(7))
}

/// A `kB` field of /proc/self/status, in KiB.
pub(super) fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
