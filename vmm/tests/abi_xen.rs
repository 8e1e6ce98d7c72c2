//! The xen personality seen from inside real guests (docs/abi/xen.md): `xen_abi` checks every
//! row, refusal and sub-operation and `xen_boot` starts like a small Xen test kernel, both
//! booted ELF64 direct and PVH (64-bit and 32-bit), calling through the hypercall page, raw
//! VMCALL and raw VMMCALL. The guests check each answer themselves and print one line per
//! check; these tests assert the guest's verdict (exit status 0, no `FAIL`, at least the
//! expected number of `ok` lines) and what the VMM saw (row counters, refusals, interrupts,
//! the console, how the VM ended).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polyvisor_config::LoadedConfig;
use polyvisor_core::ExitReason;
use polyvisor_vmm::host::host_check;
use polyvisor_vmm::trap::probe::CallFate;
use polyvisor_vmm::{run, BootKind, HostReport, RunOptions, RunReport, VmEnd};

const MEM_MIB: u32 = 64;

fn host() -> &'static HostReport {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    HOST.get_or_init(host_check)
}

/// Whether /dev/kvm is PVM (kvm_pvm loaded, no VMX/SVM module): it refuses paging outside long
/// mode (the write to CR0.PG raises #GP in a 32-bit guest), so 32-bit guests cannot map a
/// virtual address there.
fn pvm_host() -> bool {
    let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Whether the guest `image` can map a virtual address here (not a 32-bit guest on PVM).
fn translates(image: &str) -> bool {
    !(image.ends_with("pvh32") && pvm_host())
}

/// What a CPL-3 call with this fate gives the guest (`xen_abi`'s `r3vmcall=`/`r3vmmcall=`
/// tokens), and whether the personality sees it.
fn ring3_token(fate: CallFate, bits32: bool) -> (String, bool) {
    match fate {
        // The personality answers -EPERM.
        f if f.trapped() => ("a-1".into(), true),
        // Measured in 64-bit mode only; 32-bit code may fare otherwise (#GP): print only.
        _ if bits32 => ("any".into(), false),
        // The probe reports EAX (through a 32-bit port write); in long mode KVM writes its
        // answer sign-extended (`kvm_emulate_hypercall`).
        CallFate::AnsweredByHost(rax) => (format!("a{}", i64::from(rax as u32 as i32)), false),
        CallFate::InvalidOpcode => ("f6".into(), false),
        _ => ("any".into(), false),
    }
}

/// The host facts a guest cannot know, as `xen_abi` command-line words, and how many of its
/// three CPL-3 calls (VMCALL, VMMCALL, the page's instruction) reach the personality.
fn host_words(bits32: bool) -> (String, u64) {
    let h = host();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut words = format!("mem_mib={MEM_MIB} now={now} stable={}", u8::from(h.stable_tsc));
    if bits32 && pvm_host() {
        words.push_str(" paging32=refused");
    }
    if let Some(khz) = h.tsc_khz {
        words.push_str(&format!(" tsc_khz={khz}"));
    }
    let mut trapped = 0;
    if let Some(p) = &h.probe {
        let (vmcall, t1) = ring3_token(p.cpl3_vmcall, bits32);
        let (vmmcall, t2) = ring3_token(p.cpl3_vmmcall, bits32);
        let native = if h.vendor_instruction == "vmmcall" { t2 } else { t1 };
        trapped = u64::from(t1) + u64::from(t2) + u64::from(native);
        words.push_str(&format!(" r3vmcall={vmcall} r3vmmcall={vmmcall}"));
    }
    (words, trapped)
}

/// Runs `image` under the xen personality: `boot` ("pvh", "elf64", "auto"), `toml` added to
/// the `[hypervisor]`..`[xen]` configuration, `cmdline` for the guest.
fn run_xen(image: &str, boot: &str, vcpus: u32, toml: &str, cmdline: &str) -> RunReport {
    let text = format!(
        "[hypervisor]\nmode = \"xen\"\nhypercalls_enabled = true\n{toml}\n[vm]\nmemory_mib = \
         {MEM_MIB}\nvcpus = {vcpus}\nboot = \"{boot}\"\ncmdline = \"{cmdline}\"\n"
    );
    run_text(image, &text)
}

/// Runs `image` with the configuration `text`.
fn run_text(image: &str, text: &str) -> RunReport {
    let cfg = LoadedConfig::parse_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let bytes = polyvisor_guests::image(image).unwrap_or_else(|| panic!("no guest {image}"));
    let report = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(bytes.to_vec()),
            timeout: Some(Duration::from_secs(20)),
            host: Some(host().clone()),
            ..RunOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{image}: {e}"));
    println!("==== {image}\n{text}\n{}{report}", report.console_text());
    report
}

/// Runs `image` on one vCPU with `input` as host console input (a file given as
/// `[vm] console_input`) and `cmdline` for the guest.
fn run_with_input(image: &str, boot: &str, input: &str, cmdline: &str) -> RunReport {
    let dir = std::env::temp_dir().join(format!("polyvisor-xen-in-{}-{image}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.txt");
    std::fs::write(&path, input).unwrap();
    let text = format!(
        "[hypervisor]\nmode = \"xen\"\nhypercalls_enabled = true\n[vm]\nmemory_mib = \
         {MEM_MIB}\nvcpus = 1\nboot = \"{boot}\"\nconsole_input = \"{}\"\ncmdline = \
         \"{cmdline}\"\n",
        path.display()
    );
    let r = run_text(image, &text);
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn show(r: &RunReport) -> String {
    format!("--- console ---\n{}--- report ---\n{r}", r.console_text())
}

/// The guest's own verdict: no failed check, at least `min_ok` passed ones.
fn assert_checks(r: &RunReport, min_ok: usize) -> usize {
    let text = r.console_text();
    let failed: Vec<&str> =
        text.lines().filter(|l| l.contains("FAIL") || l.contains("PANIC")).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}\n{}", show(r));
    let ok = text.lines().filter(|l| l.contains(": ok   ")).count();
    assert!(ok >= min_ok, "only {ok} checks passed, want at least {min_ok}\n{}", show(r));
    ok
}

/// Exit through port 0xF4 with status 0: every check passed.
fn assert_passed(r: &RunReport, min_ok: usize) -> usize {
    let ok = assert_checks(r, min_ok);
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(r));
    assert_eq!(r.exit_status, 0, "{}", show(r));
    ok
}

fn row(r: &RunReport, number: u64) -> polyvisor_core::CounterSnapshot {
    r.rows.iter().find(|row| row.number == number).map(|row| row.counters).unwrap_or_default()
}

const XEN_VERSION: u64 = 17;
const CONSOLE_IO: u64 = 18;
const VCPU_OP: u64 = 24;

/// The text of xen_abi's 5000-byte CONSOLEIO_write.
fn big_write() -> String {
    (0..5000u32)
        .map(|i| if i % 100 == 99 { '\n' } else { char::from(b'a' + (i % 26) as u8) })
        .collect()
}

/// One `xen_abi` run with hypercalls enabled and two vCPUs, and everything the VMM saw.
fn abi_enabled(image: &str, boot: &str, via: &str, want_boot: BootKind) {
    let bits32 = image.ends_with("pvh32");
    let (words, cpl3_trapped) = host_words(bits32);
    let r = run_xen(image, boot, 2, "", &format!("via={via} vcpus=2 {words}"));
    let ok = assert_passed(&r, if bits32 { 250 } else { 260 });
    println!("{image} {boot} {via}: {ok} checks passed");
    assert_eq!(r.boot, want_boot);
    let text = r.console_text();
    let name = image;
    // What only the host sees: the console writes arrived whole and in order.
    assert!(text.contains(&format!("{name}: a line through CONSOLEIO_write\n")), "{}", show(&r));
    assert!(text.contains(&big_write()), "the 5000-byte write arrived whole\n{}", show(&r));
    if translates(image) {
        assert!(text.contains(&format!("{name}: console line from a high virtual address\n")));
        assert!(text.contains(&format!("{name}: console line from a read-only page\n")));
    }
    // vCPU 0: one upcall on its own, one waking SCHEDOP_block, one waking the untimed poll;
    // vCPU 1: woken twice by its own upcall vector. Each injected exactly once.
    assert!(text.contains(&format!("{name}: 5 upcall interrupts raised")), "{}", show(&r));
    assert_eq!(r.stats.interrupts, 5, "{}", show(&r));
    // Halts: vCPU 0's timed poll, block and untimed poll, vCPU 1's two timed polls (and its
    // HLTs).
    assert!(r.stats.halts >= 5, "{}", show(&r));
    // CPL 3: every call that reached the personality was refused for its ring.
    assert_eq!(row(&r, XEN_VERSION).wrong_ring, cpl3_trapped, "{}", show(&r));
    // Calls through the page and raw instructions trapped: hundreds of them.
    assert!(r.stats.hypercalls > 200, "{}", show(&r));
    for nr in [12, 17, 18, 24, 29, 34] {
        let c = row(&r, nr);
        assert!(c.calls > 0 && c.denied == 0, "row {nr}: {c:?}\n{}", show(&r));
    }
    // Not-HVM, unknown and unimplemented numbers were refused without a row.
    assert!(r.refusals.1 >= 40, "{:?}\n{}", r.refusals, show(&r));
    assert_eq!(r.refusals.0, 0);
}

#[test]
fn abi_pvh64_booted_pvh() {
    for via in ["page", "vmcall", "vmmcall"] {
        abi_enabled("xen_abi_pvh64", "pvh", via, BootKind::Pvh);
    }
}

#[test]
fn abi_pvh64_booted_elf64_direct() {
    for via in ["page", "vmcall", "vmmcall"] {
        abi_enabled("xen_abi_pvh64", "elf64", via, BootKind::Elf64);
    }
}

#[test]
fn abi_elf64() {
    for via in ["page", "vmcall", "vmmcall"] {
        abi_enabled("xen_abi64", "auto", via, BootKind::Elf64);
    }
}

#[test]
fn abi_pvh32() {
    for via in ["page", "vmcall", "vmmcall"] {
        abi_enabled("xen_abi_pvh32", "pvh", via, BootKind::Pvh);
    }
}

#[test]
fn abi_one_vcpu() {
    // Without a second vCPU the block and poll wake-ups are skipped; the upcall on vCPU 0 is
    // the only interrupt.
    let (words, _) = host_words(false);
    let r = run_xen("xen_abi_pvh64", "pvh", 1, "", &words);
    assert_passed(&r, 240);
    assert!(r.console_text().contains("xen_abi_pvh64: 1 upcall interrupts raised"));
    assert_eq!(r.stats.interrupts, 1, "{}", show(&r));
}

#[test]
fn console_input_reaches_the_guest() {
    let (words, _) = host_words(false);
    let cmdline = format!("{words} console_in=host-says-hello");
    let r = run_with_input("xen_abi_pvh64", "pvh", "host-says-hello", &cmdline);
    assert_passed(&r, 240);
    let console = r.console_text();
    assert!(console.contains("ok   CONSOLEIO_read returns the host's input"), "{}", show(&r));
    assert!(console.contains("ok   CONSOLEIO_read wrote exactly the host's bytes"), "{}", show(&r));
}

#[test]
fn abi_disabled_is_enosys() {
    for (image, boot) in [
        ("xen_abi_pvh64", "pvh"),
        ("xen_abi_pvh64", "elf64"),
        ("xen_abi64", "auto"),
        ("xen_abi_pvh32", "pvh"),
    ] {
        let (words, _) = host_words(image.ends_with("pvh32"));
        let text = format!(
            "[hypervisor]\nmode = \"xen\"\nhypercalls_enabled = false\n[vm]\nmemory_mib = \
             {MEM_MIB}\nboot = \"{boot}\"\ncmdline = \"expect=disabled {words}\"\n"
        );
        let cfg = LoadedConfig::parse_str(&text).unwrap();
        let r = run(
            &cfg,
            RunOptions {
                capture_console: true,
                kernel_override: Some(polyvisor_guests::image(image).unwrap().to_vec()),
                timeout: Some(Duration::from_secs(20)),
                host: Some(host().clone()),
                ..RunOptions::default()
            },
        )
        .unwrap();
        println!("==== {image} {boot} disabled\n{}{r}", r.console_text());
        // CPUID and the page are the personality's even with hypercalls off.
        assert_passed(&r, 45);
        assert!(r.console_text().contains(&format!("{image}: 27 calls made while disabled")));
        assert_eq!(r.refusals.0, 27, "every call refused as disabled\n{}", show(&r));
        assert!(r.rows.iter().all(|row| row.counters.calls == 0), "{}", show(&r));
    }
}

#[test]
fn abi_denied_by_config_is_eperm() {
    let deny = "deny = [\"__HYPERVISOR_console_io\", 24]";
    for (image, boot) in [("xen_abi_pvh64", "pvh"), ("xen_abi_pvh32", "pvh"), ("xen_abi64", "auto")]
    {
        let (words, _) = host_words(image.ends_with("pvh32"));
        let r = run_xen(image, boot, 1, deny, &format!("expect=deny {words}"));
        assert_passed(&r, 200);
        // 3 console_io calls in the console checks, 2 from the high mapping; 3 vcpu_op calls.
        let (console, vcpu) = (row(&r, CONSOLE_IO), row(&r, VCPU_OP));
        let want = if translates(image) { 5 } else { 3 };
        assert_eq!((console.denied, console.calls), (want, 0), "{}", show(&r));
        assert_eq!((vcpu.denied, vcpu.calls), (3, 0), "{}", show(&r));
        assert!(!r.console_text().contains("a line through CONSOLEIO_write"));
    }
}

#[test]
fn abi_other_release_extraversion_and_domid() {
    let xen = "[xen]\nversion = \"4.20\"\nextraversion = \"-poly\"\ndomid = 9";
    for (image, boot) in [("xen_abi_pvh64", "pvh"), ("xen_abi_pvh32", "pvh")] {
        let (words, _) = host_words(image.ends_with("pvh32"));
        let r = run_xen(
            image,
            boot,
            2,
            xen,
            &format!("version=4.20 extra=-poly domid=9 vcpus=2 {words}"),
        );
        assert_passed(&r, 260);
    }
}

/// Boots `xen_boot` and checks how it ended.
fn boot(image: &str, boot: &str, cmdline: &str) -> RunReport {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let r = run_xen(image, boot, 1, "", &format!("now={now} {cmdline}"));
    assert_checks(&r, 38);
    let text = r.console_text();
    assert!(text.contains(&format!("hello from {image} through console_io\n")), "{}", show(&r));
    for nr in [12, 17, 18, 24, 29, 34] {
        assert!(row(&r, nr).calls > 0, "row {nr}\n{}", show(&r));
    }
    r
}

#[test]
fn boot_like_a_xen_kernel_poweroff() {
    // Every image and boot protocol through the page; the raw instructions in both widths.
    let runs = [
        ("xen_boot_pvh64", "pvh", "page"),
        ("xen_boot_pvh64", "elf64", "page"),
        ("xen_boot64", "auto", "page"),
        ("xen_boot_pvh32", "pvh", "page"),
        ("xen_boot_pvh64", "pvh", "vmcall"),
        ("xen_boot_pvh64", "elf64", "vmmcall"),
        ("xen_boot_pvh32", "pvh", "vmcall"),
        ("xen_boot_pvh32", "pvh", "vmmcall"),
    ];
    for (image, kind, via) in runs {
        {
            let r = boot(image, kind, &format!("via={via}"));
            assert_eq!(r.end, VmEnd::Guest(ExitReason::Poweroff(0)), "{}", show(&r));
            assert_eq!(r.exit_status, 0);
            assert!(r.message.contains("powered off with status 0"), "{}", r.message);
        }
    }
}

#[test]
fn boot_shutdown_reasons_end_the_vm() {
    for image in ["xen_boot_pvh64", "xen_boot_pvh32"] {
        let cases: [(&str, VmEnd, i32, &str); 7] = [
            ("reason=reboot", VmEnd::Guest(ExitReason::Reboot), 248, "reboot"),
            (
                "reason=crash",
                VmEnd::Guest(ExitReason::Crash(
                    "Xen SHUTDOWN_crash: the guest reported a crash".into(),
                )),
                250,
                "Xen SHUTDOWN_crash",
            ),
            (
                "reason=suspend",
                VmEnd::Guest(ExitReason::Other(
                    "Xen SHUTDOWN_suspend: the guest suspended itself".into(),
                )),
                249,
                "Xen SHUTDOWN_suspend",
            ),
            (
                "reason=watchdog",
                VmEnd::Guest(ExitReason::Other("Xen SHUTDOWN_watchdog".into())),
                249,
                "Xen SHUTDOWN_watchdog",
            ),
            (
                "reason=soft_reset",
                VmEnd::Guest(ExitReason::Other("Xen SHUTDOWN_soft_reset".into())),
                249,
                "Xen SHUTDOWN_soft_reset",
            ),
            (
                "reason=7",
                VmEnd::Guest(ExitReason::Other("Xen shutdown with unknown reason 7".into())),
                249,
                "unknown reason 7",
            ),
            // The latched code wins over the poweroff that follows.
            (
                "code=crash reason=poweroff",
                VmEnd::Guest(ExitReason::Crash(
                    "Xen SHUTDOWN_crash: the guest reported a crash".into(),
                )),
                250,
                "Xen SHUTDOWN_crash",
            ),
        ];
        // Every reason from the 64-bit guest; the 32-bit one (compat structures) needs fewer.
        let wanted =
            |c: &str| image.ends_with("pvh64") || c.contains("crash") || c.contains("reboot");
        for (cmdline, end, status, said) in cases.into_iter().filter(|c| wanted(c.0)) {
            let r = boot(image, "pvh", cmdline);
            assert_eq!(r.end, end, "{cmdline}\n{}", show(&r));
            assert_eq!(r.exit_status, status, "{cmdline}\n{}", show(&r));
            assert!(r.message.contains(said), "{cmdline}: {}", r.message);
            assert!(r.to_string().contains(&format!("exit status {status}")), "{r}");
        }
    }
}

const EVENT_CHANNEL_OP: u64 = 32;
const SET_TIMER_OP: u64 = 15;

/// The PV platform used from the inside: event channels through the VMM's loopback backend
/// and a loop in the guest, VIRQ_TIMER waking block and poll, a XenStore exchange with a
/// watch, the console ring both ways, and malformed rings answered with the protocol's error.
fn pv_platform(image: &str, boot: &str) {
    let r = run_with_input(image, boot, "typed-on-the-host", "input=typed-on-the-host");
    assert_passed(&r, 91);
    let text = r.console_text();
    // Only the ring carries these lines: the VMM drained them to its console.
    assert!(
        text.contains(&format!("{image}: hello through the PV console ring\n")),
        "{}",
        show(&r)
    );
    assert!(text.contains(&format!("{image}: the console ring still works\n")), "{}", show(&r));
    assert!(text.contains("ok   host input arrived in the console ring: \"typed-on-the-host\""));
    assert!(text.contains("XENSTORE_ERROR_RINGIDX") && text.contains("XENSTORE_ERROR_PROTO"));
    let evtchn = row(&r, EVENT_CHANNEL_OP);
    assert!(evtchn.calls >= 40 && evtchn.denied == 0, "{evtchn:?}\n{}", show(&r));
    assert_eq!(row(&r, SET_TIMER_OP).calls, 1, "{}", show(&r));
    // Upcalls: the vector once at set-up, then every delivery the guest counted.
    assert!(r.stats.interrupts >= 10, "{}", show(&r));
}

#[test]
fn pv_platform_pvh64() {
    pv_platform("xen_pv_pvh64", "pvh");
}

#[test]
fn pv_platform_elf64() {
    pv_platform("xen_pv64", "auto");
}

#[test]
fn pv_platform_pvh32_compat_layouts() {
    pv_platform("xen_pv_pvh32", "pvh");
}

#[test]
fn pv_ring_pages_are_reserved_in_the_e820_map() {
    use polyvisor_personalities::xen::pv::{CONSOLE_PFN, XENSTORE_PFN};
    let map = polyvisor_vmm::boot::e820_map(u64::from(MEM_MIB) << 20);
    for pfn in [XENSTORE_PFN, CONSOLE_PFN] {
        let (start, end) = (pfn << 12, (pfn << 12) + 4096);
        assert!(
            map.iter().any(|&(a, len, kind)| kind == 2 && a <= start && end <= a + len),
            "PFN {pfn:#x} is not inside a reserved range of {map:?}"
        );
        // Nothing the VMM writes at boot lives there: the boot stacks end at 0xA0000.
        assert!(start >= 0xA_0000, "PFN {pfn:#x}");
    }
}
