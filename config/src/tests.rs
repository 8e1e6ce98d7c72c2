use super::*;

fn err(text: &str) -> (usize, usize, String) {
    match Config::parse(text, "t.toml") {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(ConfigError::Invalid { origin, line, column, message }) => {
            assert_eq!(origin, "t.toml");
            (line, column, message)
        }
        Err(other) => panic!("{other}"),
    }
}

/// Each bad config: its text, the expected line and column, and words the message must hold.
const BAD: &[(&str, &str, usize, usize, &[&str])] = &[
    (
        "unknown mode",
        "[hypervisor]\nmode = \"vmware\"\n",
        2,
        8,
        &["vmware", "bhyve", "kvm", "hyperv", "xen"],
    ),
    ("unknown key", "[vm]\nmemory_mib = 64\nmemroy = 3\n", 3, 1, &["memroy", "memory_mib"]),
    ("unknown section", "[hypervisr]\nmode = \"kvm\"\n", 1, 2, &["hypervisr", "hypervisor"]),
    ("wrong type", "[hypervisor]\nhypercalls_enabled = \"yes\"\n", 2, 22, &["bool"]),
    ("memory too small", "[vm]\nmemory_mib = 1\n", 2, 14, &["memory_mib", "between 2 and 65536"]),
    ("negative vcpus", "[vm]\nvcpus = -2\n", 2, 9, &["vcpus", "between 1 and 64"]),
    ("too many vcpus", "[vm]\nvcpus = 1000\n", 2, 9, &["between 1 and 64", "1000"]),
    (
        "console limit too large",
        "[vm]\nconsole_limit_kib = 5000000\n",
        2,
        21,
        &["console_limit_kib", "between 0 and 4194304 KiB"],
    ),
    ("negative console limit", "[vm]\nconsole_limit_kib = -1\n", 2, 21, &["console_limit_kib"]),
    ("bad boot", "[vm]\nboot = \"bios\"\n", 2, 8, &["bios", "auto", "elf64", "pvh"]),
    ("bad trap", "[host]\ntrap = \"magic\"\n", 2, 8, &["magic", "write-protect", "xen-intercept"]),
    (
        "bad instruction",
        "[host]\ninstruction = \"syscall\"\n",
        2,
        15,
        &["syscall", "vmcall", "vmmcall"],
    ),
    ("negative selector", "[hypervisor]\ndeny = [-1]\n", 2, 8, &["number", ">= 0"]),
    ("selector of wrong type", "[hypervisor]\nallow = [true]\n", 2, 9, &["name", "number"]),
    ("long vendor id", "[hyperv]\nvendor_id = \"Microsoft Hyper-V\"\n", 2, 13, &["1 to 12"]),
    ("bad xen version", "[xen]\nversion = \"four\"\n", 2, 11, &["MAJOR.MINOR"]),
    ("bad domid", "[xen]\ndomid = 0\n", 2, 9, &["domid", "32751"]),
    (
        "long xen extraversion",
        "[xen]\nextraversion = \"-0123456789abcdef\"\n",
        2,
        16,
        &["extraversion", "15"],
    ),
    ("xen version with no minor", "[xen]\nversion = \"4\"\n", 2, 11, &["MAJOR.MINOR", "\"4\""]),
    (
        "unknown kvm feature",
        "[kvm]\nfeatures = [\"warp_drive\"]\n",
        2,
        13,
        &["warp_drive", "clocksource2"],
    ),
    (
        "kvm map bound of zero",
        "[kvm]\nmax_gpa_ranges = 0\n",
        2,
        18,
        &["max_gpa_ranges", "between 1 and 1048576", "not 0"],
    ),
    (
        "kvm map bound too large",
        "[kvm]\nmax_gpa_ranges = 99999999999\n",
        2,
        18,
        &["max_gpa_ranges", "99999999999"],
    ),
    ("kvm feature of wrong type", "[kvm]\nfeatures = [16]\n", 2, 13, &["clocksource"]),
    (
        "bad bhyve leaf",
        "[bhyve]\ncpuid_leaf = \"freebsd14\"\n",
        2,
        14,
        &["freebsd14", "review", "freebsd15"],
    ),
    ("empty probe log", "[bhyve]\nprobe_log = \"\"\n", 2, 13, &["probe_log", "must name a file"]),
    ("probe log with NUL", "[bhyve]\nprobe_log = \"a\\u0000b\"\n", 2, 13, &["probe_log", "NUL"]),
    ("cmdline with NUL", "[vm]\ncmdline = \"a\\u0000b\"\n", 2, 11, &["NUL"]),
    ("negative hyperv recommendations", "[hyperv]\nrecommendations = -1\n", 2, 19, &["-1"]),
    ("hyperv privileges as text", "[hyperv]\nprivileges = \"all\"\n", 2, 14, &["all"]),
    ("syntax error", "[vm\nvcpus = 1\n", 1, 4, &[]),
    ("duplicate key", "[vm]\nvcpus = 1\nvcpus = 2\n", 3, 1, &["duplicate"]),
];

#[test]
fn every_bad_config_is_located_and_explained() {
    for (what, text, line, column, words) in BAD {
        let (l, c, message) = err(text);
        assert_eq!((l, c), (*line, *column), "{what}: {message}");
        for w in *words {
            assert!(message.contains(w), "{what}: {message:?} lacks {w:?}");
        }
    }
}

#[test]
fn long_cmdline_is_refused() {
    let text = format!("[vm]\ncmdline = \"{}\"\n", "x".repeat(range::MAX_CMDLINE));
    let (l, _, message) = err(&text);
    assert_eq!(l, 2);
    assert!(message.contains("at most 2047"), "{message}");
}

#[test]
fn empty_config_is_the_safe_default() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.hypervisor.mode, HypervisorMode::Bhyve);
    assert!(!c.hypervisor.hypercalls_enabled, "hypercalls are off unless turned on");
    assert_eq!(c.vm.memory_mib, 128);
    assert_eq!(c.vm.vcpus, 1);
    assert_eq!(c.host.trap, TrapStrategyChoice::Auto);
}

#[test]
fn a_full_config_parses() {
    let c = Config::parse(
        r#"
[hypervisor]
mode = "kvm"
hypercalls_enabled = true
allow = ["KVM_HC_SEND_IPI", 1]
deny = [5]
[vm]
memory_mib = 256
vcpus = 2
kernel = "guest.elf"
boot = "pvh"
cmdline = "console=hvc0"
[host]
trap = "write-protect"
instruction = "vmmcall"
[kvm]
features = ["clocksource2", "pv_unhalt"]
max_gpa_ranges = 64
[hyperv]
vendor_id = "Polyvisor"
privileges = 0x100000000060
features = 0x400
recommendations = 0x404
reset = "exit"
[xen]
version = "4.19"
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.hypervisor.mode, HypervisorMode::Kvm);
    let p = c.hypervisor.policy();
    assert!(p.hypercalls_enabled);
    assert_eq!(
        p.allow,
        Some(vec![CallSelector::Name("KVM_HC_SEND_IPI".into()), CallSelector::Number(1)])
    );
    assert_eq!(p.deny, vec![CallSelector::Number(5)]);
    assert_eq!(c.vm.boot, BootProtocol::Pvh);
    assert_eq!(c.host.instruction, InstructionChoice::Vmmcall);
    assert_eq!(c.kvm.features, Some(vec![KvmFeature::Clocksource2, KvmFeature::PvUnhalt]));
    assert_eq!(c.kvm.max_gpa_ranges, 64);
    assert_eq!(c.xen.version_numbers(), (4, 19));
    assert_eq!(c.hyperv.privileges, Some(0x1000_0000_0060));
    assert_eq!(c.hyperv.features, Some(0x400));
    assert_eq!(c.hyperv.recommendations, Some(0x404));
    // What `config show` prints parses back to the same config.
    assert_eq!(Config::parse(&c.to_toml(), "round-trip").unwrap(), c);
}

#[test]
fn relative_kernel_paths_follow_the_config_file() {
    let loaded = LoadedConfig { path: Some("/etc/pv/vm.toml".into()), ..LoadedConfig::builtin() };
    assert_eq!(loaded.resolve(Path::new("k.elf")), PathBuf::from("/etc/pv/k.elf"));
    assert_eq!(loaded.resolve(Path::new("/abs/k.elf")), PathBuf::from("/abs/k.elf"));
}

#[test]
fn missing_file_names_the_path() {
    let e = Config::load(Path::new("/nonexistent/polyvisor.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/polyvisor.toml: "), "{e}");
}

#[test]
fn later_checks_point_at_the_value() {
    let text = "[hypervisor]\nmode = \"kvm\"\ndeny = [\"A\", \"NOPE\"]\n";
    let loaded =
        LoadedConfig { path: Some("vm.toml".into()), ..LoadedConfig::parse_str(text).unwrap() };
    let e = loaded.error_at(&["hypervisor", "deny"], Some(1), "no such call");
    assert_eq!(e.to_string(), "vm.toml:3:14: no such call");
    let e = loaded.error_at(&["hypervisor", "allow"], Some(0), "x");
    assert_eq!(e.location(), Some((1, 2)), "falls back to the section");
    let e = loaded.error_at(&["kvm", "features"], None, "x");
    assert_eq!(e.location(), Some((1, 1)), "falls back to the start");
}
