//! The fuzzers' seed corpora, derived from the test guests' real calls (docs/fuzzing.md).
//!
//! The test guests run under their personalities with a recording [`Dispatch`] in front of
//! the real engine: every hypercall snapshot and routed MSR access is kept, with the guest
//! memory its argument registers point at (512 bytes each) as it was just before the call.
//! The recordings are cut into [`CallLog`]s, the `dispatch` fuzzer's input format.
//!
//! By default the test checks that every mode's guests made real calls and that each log
//! reads back as written. With `POLYVISOR_FUZZ_SEEDS=1` it also rewrites `fuzz/corpus/`:
//! `dispatch/` from the recordings, `kernel/` from the smoke images (cut after their last
//! segment's file bytes, behind the RAM size), `config/` from `examples/` and a few broken
//! files.
//!
//! ```sh
//! POLYVISOR_FUZZ_SEEDS=1 cargo test -p polyvisor-vmm --test fuzz_seeds
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use polyvisor_core::call_log::{CallLog, Op, MAX_OPS, MAX_VCPUS};
use polyvisor_core::{
    CpuMode, Dispatch, DispatchLayer, Gpr, GuestMemoryMmap, HypervisorMode, MsrContext, MsrRead,
    MsrWrite, Outcome, Platform, VcpuSnapshot,
};
use polyvisor_personalities::xen::pv::{cons, CONSOLE_PFN, XENSTORE_PFN};
use polyvisor_personalities::xen::xenstore::{encode, layout, msg};
use polyvisor_vmm::host::host_check;
use polyvisor_vmm::{run, HostReport, RunOptions};
use strum::IntoEnumIterator;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes kept behind each pointer-like argument.
const WINDOW: usize = 512;
/// Pointer-like arguments kept per call.
const POINTERS: usize = 3;
/// Seed files per guest run.
const FILES_PER_RUN: usize = 4;
/// Operations per seed file (memory contents included).
const OPS_PER_FILE: usize = 48;

/// The real engine with every input recorded.
struct Recorder {
    inner: Arc<dyn Dispatch>,
    ops: Mutex<Vec<Op>>,
    /// What was last recorded at each address, so unchanged memory is not repeated.
    seen: Mutex<HashMap<u64, Vec<u8>>>,
    /// Each new state of the Xen PV ring pages, by frame, seen before a hypercall.
    rings: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl Recorder {
    fn memory_behind(&self, vcpu: &VcpuSnapshot, memory: &GuestMemoryMmap, ops: &mut Vec<Op>) {
        let end = memory.last_addr().0;
        let regs = [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi, Gpr::R8, Gpr::R10];
        let mut seen = self.seen.lock().unwrap();
        let mut kept = 0;
        for reg in regs {
            let at = vcpu.arg(reg);
            if kept == POINTERS || !(0x1000..end).contains(&at) {
                continue;
            }
            let len = WINDOW.min(usize::try_from(end - at + 1).unwrap_or(WINDOW));
            let mut bytes = vec![0u8; len];
            if memory.read_slice(&mut bytes, GuestAddress(at)).is_err() {
                continue;
            }
            kept += 1;
            if seen.get(&at) != Some(&bytes) {
                seen.insert(at, bytes.clone());
                ops.push(Op::Memory { gpa: at, bytes });
            }
        }
    }
}

impl Recorder {
    /// Keeps the XenStore and console pages when the guest changed them: the rings' real
    /// contents, for the `xenstore` and `console_ring` seeds.
    fn ring_pages(&self, memory: &GuestMemoryMmap) {
        let mut rings = self.rings.lock().unwrap();
        for pfn in [XENSTORE_PFN, CONSOLE_PFN] {
            let mut page = vec![0u8; 4096];
            if memory.read_slice(&mut page, GuestAddress(pfn << 12)).is_err() {
                continue;
            }
            let last = rings.iter().rev().find(|(p, _)| *p == pfn).map(|(_, b)| b);
            if last != Some(&page) && page.iter().any(|&b| b != 0) {
                rings.push((pfn, page));
            }
        }
    }
}

impl DispatchLayer for Recorder {
    fn inner(&self) -> &dyn Dispatch {
        &*self.inner
    }
    fn layer_hypercall(
        &self,
        vcpu: &VcpuSnapshot,
        memory: &GuestMemoryMmap,
        platform: &dyn Platform,
    ) -> Outcome {
        let mut ops = Vec::new();
        self.memory_behind(vcpu, memory, &mut ops);
        if self.inner.mode() == HypervisorMode::Xen {
            self.ring_pages(memory);
        }
        ops.push(Op::Hypercall(*vcpu));
        self.ops.lock().unwrap().extend(ops);
        self.inner.hypercall(vcpu, memory, platform)
    }
    fn layer_read_msr(&self, ctx: &MsrContext<'_>, msr: u32) -> MsrRead {
        self.ops.lock().unwrap().push(Op::ReadMsr { vcpu: ctx.vcpu, msr });
        self.inner.read_msr(ctx, msr)
    }
    fn layer_write_msr(&self, ctx: &MsrContext<'_>, msr: u32, value: u64) -> MsrWrite {
        self.ops.lock().unwrap().push(Op::WriteMsr { vcpu: ctx.vcpu, msr, value });
        self.inner.write_msr(ctx, msr, value)
    }
}

/// The guests recorded: image, mode, vCPUs, command line.
fn guests() -> Vec<(&'static str, HypervisorMode, u32, String)> {
    let mut g: Vec<_> =
        HypervisorMode::iter().map(|m| ("bench64", m, 1, format!("mode={m} n=8 tput=0"))).collect();
    use HypervisorMode::*;
    for (image, mode, vcpus) in [
        ("bhyve64", Bhyve, 1),
        ("bhyve_pvh32", Bhyve, 1),
        ("kvm_abi64", Kvm, 1),
        ("kvm_abi_pvh32", Kvm, 1),
        ("kvm_smp64", Kvm, 2),
        ("hyperv_linux64", Hyperv, 1),
        ("hyperv_linux_pvh32", Hyperv, 1),
        ("xen_abi_pvh64", Xen, 1),
        ("xen_abi_pvh32", Xen, 1),
        ("xen_boot64", Xen, 1),
        ("xen_pv64", Xen, 1),
    ] {
        g.push((image, mode, vcpus, String::new()));
    }
    g
}

/// What one guest run left: its calls cut into logs, and its ring pages' states.
struct Recording {
    logs: Vec<CallLog>,
    rings: Vec<(u64, Vec<u8>)>,
}

/// Runs `image` and returns its recording cut into logs.
fn record(image: &str, mode: HypervisorMode, vcpus: u32, cmdline: String) -> Recording {
    static HOST: OnceLock<HostReport> = OnceLock::new();
    let host = HOST.get_or_init(host_check);
    let cfg = polyvisor_vmm::bench::vm_config(mode, vcpus, cmdline, host);
    let inner = polyvisor_personalities::build(&cfg.config, &host.facts()).unwrap();
    let recorder = Arc::new(Recorder {
        inner,
        ops: Mutex::new(Vec::new()),
        seen: Mutex::new(HashMap::new()),
        rings: Mutex::new(Vec::new()),
    });
    let report = run(
        &cfg,
        RunOptions {
            capture_console: true,
            kernel_override: Some(polyvisor_guests::image(image).unwrap().to_vec()),
            dispatch: Some(recorder.clone()),
            timeout: Some(Duration::from_secs(20)),
            host: Some(host.clone()),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_ne!(report.exit_status, 124, "{image} timed out:\n{}", report.console_text());
    println!("{image}: {:?}, status {}", report.elapsed, report.exit_status);
    let ops = std::mem::take(&mut *recorder.ops.lock().unwrap());
    let pages = cfg.config.vm.memory_mib * 256;
    let rings = std::mem::take(&mut *recorder.rings.lock().unwrap());
    let logs = ops
        .chunks(OPS_PER_FILE)
        .take(FILES_PER_RUN)
        .enumerate()
        .map(|(i, chunk)| CallLog {
            mode,
            policy: 0,
            // Later files name other rows for the policy variants the fuzzer derives.
            row: u8::try_from(i).unwrap(),
            vcpus: vcpus.min(MAX_VCPUS),
            pages,
            ops: chunk.to_vec(),
        })
        .collect();
    Recording { logs, rings }
}

/// ELF images cut after the last program header's file bytes (the section headers and
/// debug information the loader never reads), behind the RAM size in pages.
fn kernel_seed(image: &[u8], pages: u32) -> Vec<u8> {
    let u = |at: usize, n: usize| {
        image[at..at + n].iter().rev().fold(0u64, |v, b| (v << 8) | u64::from(*b)) as usize
    };
    let elf64 = image[4] == 2;
    let (phoff, phentsize, phnum) =
        if elf64 { (u(32, 8), u(54, 2), u(56, 2)) } else { (u(28, 4), u(42, 2), u(44, 2)) };
    let mut end = phoff + phentsize * phnum;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (offset, filesz) =
            if elf64 { (u(ph + 8, 8), u(ph + 32, 8)) } else { (u(ph + 4, 4), u(ph + 16, 4)) };
        end = end.max(offset + filesz);
    }
    let mut seed = pages.to_le_bytes().to_vec();
    seed.extend_from_slice(&image[..end.min(image.len())]);
    seed
}

/// The ring targets' page write (fuzz/src/rings.rs): opcode 0, `u16` offset, `u16` length,
/// bytes.
fn poke(offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut op = vec![0];
    op.extend_from_slice(&u16::try_from(offset).unwrap().to_le_bytes());
    op.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
    op.extend_from_slice(bytes);
    op
}

/// Ring page states kept per seed.
const RING_STATES: usize = 24;

/// `xenstore` seeds: the guest's ring states as page writes, each followed by a
/// notification (opcode 3); `console_ring` seeds: the console page's states, each followed by
/// a drain (1) and a push of host input (2).
fn ring_seeds(image: &str, rings: &[(u64, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let (mut store, mut console) = (Vec::new(), Vec::new());
    let states = |pfn| rings.iter().filter(move |(p, _)| *p == pfn).take(RING_STATES);
    for (_, page) in states(XENSTORE_PFN) {
        store.extend(poke(0, &page[..layout::ERROR + 4]));
        store.push(3);
    }
    for (_, page) in states(CONSOLE_PFN) {
        console.extend(poke(0, &page[..cons::OUT_PROD + 4]));
        console.push(1);
        console.extend([2, 5, 0]);
        console.extend_from_slice(&image.as_bytes()[..5]);
    }
    (store, console)
}

/// Well-formed XenStore requests (read, write, mkdir, rm, directory, perms, watches, a
/// committed and an aborted transaction) as `xenstore` seeds: once as raw messages (opcode 1),
/// once through the ring after a reconnection (2), each placed at the start of the request
/// ring with its indices and followed by a notification (3), which also reads the answers.
fn xenstore_message_seeds() -> Vec<(String, Vec<u8>)> {
    use msg::*;
    let requests: &[(u32, u32, &[u8])] = &[
        (XS_READ, 0, b"name\0"),
        (XS_GET_DOMAIN_PATH, 0, b"1\0"),
        (XS_WATCH, 0, b"device\0dev\0"),
        (XS_WATCH, 0, b"@releaseDomain\0rel\0"),
        (XS_MKDIR, 0, b"device/vif\0"),
        (XS_WRITE, 0, b"device/vif/0/state\x004"),
        (XS_DIRECTORY, 0, b"/local/domain/1\0"),
        (XS_GET_PERMS, 0, b"device/vif/0\0"),
        (XS_SET_PERMS, 0, b"device/vif/0\0n1\0r0\0"),
        (XS_TRANSACTION_START, 0, b"\0"),
        (XS_WRITE, 1, b"data/x\0in a transaction"),
        (XS_READ, 1, b"data/x\0"),
        (XS_TRANSACTION_END, 1, b"T\0"),
        (XS_TRANSACTION_START, 0, b"\0"),
        (XS_RM, 2, b"data\0"),
        (XS_TRANSACTION_END, 2, b"F\0"),
        (XS_RM, 0, b"device/vif\0"),
        (XS_UNWATCH, 0, b"device\0dev\0"),
        (XS_RESET_WATCHES, 0, b""),
        (XS_READ, 0, b"/local/domain/1/no/such/node\0"),
    ];
    let (mut raw, mut ring) = (Vec::new(), vec![2]);
    for (i, (kind, tx_id, body)) in requests.iter().enumerate() {
        let m = encode(*kind, i as u32 + 1, *tx_id, body);
        raw.push(1);
        raw.extend_from_slice(&u16::try_from(m.len()).unwrap().to_le_bytes());
        raw.extend_from_slice(&m);
        ring.extend(poke(layout::REQ, &m));
        let mut indices = 0u32.to_le_bytes().to_vec();
        indices.extend_from_slice(&u32::try_from(m.len()).unwrap().to_le_bytes());
        ring.extend(poke(layout::REQ_CONS, &indices));
        ring.push(3);
    }
    vec![("messages-raw".into(), raw), ("messages-ring".into(), ring)]
}

const BROKEN_CONFIGS: &[&str] = &[
    "[hypervisor]\nmode = \"vmware\"\n",
    "[vm]\nmemory_mib = 1\n",
    "[hypervisor]\nmode = \"kvm\"\nhypercalls_enabled = true\ndeny = [\"KVM_HC_NOPE\", 99]\n",
    "[vm]\ncmdline = \"a\\u0000b\"\n",
    "[hyperv]\nfeatures = [\"frequency-msrs\"]\n[hypervisor\n",
];

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn seeds_come_from_real_calls() {
    let mut dispatch = Vec::new();
    let mut calls_per_mode: HashMap<HypervisorMode, usize> = HashMap::new();
    let (mut xenstore, mut console_ring) = (xenstore_message_seeds(), Vec::new());
    for (image, mode, vcpus, cmdline) in guests() {
        let recording = record(image, mode, vcpus, cmdline);
        if image == "xen_pv64" {
            let (store, console) = ring_seeds(image, &recording.rings);
            // The guest's XenStore exchange and console output went through the rings.
            assert!(store.len() > 4 * 4096 && console.len() > 4096, "{image}: few ring states");
            xenstore.push((image.to_string(), store));
            console_ring.push((image.to_string(), console));
        }
        for (i, log) in recording.logs.into_iter().enumerate() {
            let bytes = log.encode();
            assert!(log.ops.len() <= MAX_OPS);
            assert_eq!(CallLog::decode(&bytes), log, "{image} log {i} reads back as written");
            let calls = log.ops.iter().filter(|o| matches!(o, Op::Hypercall(_))).count();
            *calls_per_mode.entry(mode).or_default() += calls;
            // 32-bit guests' snapshots say so.
            if image.ends_with("pvh32") {
                assert!(log.ops.iter().all(|o| match o {
                    Op::Hypercall(s) => s.mode != CpuMode::Long64,
                    _ => true,
                }));
            }
            dispatch.push((format!("{image}-{mode}-{i}"), bytes));
        }
    }
    for mode in HypervisorMode::iter() {
        let n = calls_per_mode.get(&mode).copied().unwrap_or(0);
        assert!(n >= 20, "{mode}: only {n} calls recorded");
    }
    if std::env::var_os("POLYVISOR_FUZZ_SEEDS").is_none() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = root.join("fuzz/corpus");
    write_dir(&corpus.join("dispatch"), &dispatch);
    write_dir(&corpus.join("xenstore"), &xenstore);
    write_dir(&corpus.join("console_ring"), &console_ring);
    let kernels: Vec<_> = ["smoke64", "smoke_pvh32", "smoke_pvh64", "smoke_rwx64"]
        .iter()
        .map(|name| (name.to_string(), kernel_seed(polyvisor_guests::image(name).unwrap(), 16384)))
        .collect();
    write_dir(&corpus.join("kernel"), &kernels);
    let mut configs: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    configs.extend(
        BROKEN_CONFIGS
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("broken{i}.toml"), t.as_bytes().to_vec())),
    );
    write_dir(&corpus.join("config"), &configs);
}
