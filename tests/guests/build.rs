//! Builds the freestanding C test guests (see README.md) with the system C compiler.
//!
//! Every guest is compiled with `$CC` (default `gcc`) into `$OUT_DIR/<name>.elf`, and
//! `$OUT_DIR/guests.rs` / `$OUT_DIR/names.rs` are generated for `src/lib.rs`.
//! A missing compiler or a failed compile/link panics with the compiler's output.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a guest image boots.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavour {
    /// ELF64, entered in 64-bit long mode (ELF64 direct boot), separate segments.
    Elf64,
    /// As `Elf64` but linked as one RWX `PT_LOAD` segment.
    Elf64Rwx,
    /// ELF64 with a PVH note: 32-bit PVH entry that switches to long mode.
    Pvh64,
    /// ELF32 with a PVH note: stays in 32-bit protected mode.
    Pvh32,
}

impl Flavour {
    fn is_32bit(self) -> bool {
        self == Flavour::Pvh32
    }

    fn is_pvh(self) -> bool {
        matches!(self, Flavour::Pvh32 | Flavour::Pvh64)
    }

    fn linker_script(self) -> &'static str {
        match self {
            Flavour::Elf64Rwx => "rt/link_rwx.ld",
            _ => "rt/link.ld",
        }
    }

    /// Runtime sources that are specific to this flavour (beyond `RT_COMMON_C`).
    fn runtime_sources(self) -> &'static [&'static str] {
        match self {
            Flavour::Elf64 | Flavour::Elf64Rwx => {
                &["rt/entry64.S", "rt/isr64.S", "rt/pagetables64.S"]
            }
            Flavour::Pvh64 => {
                &["rt/entry64.S", "rt/entry_pvh64.S", "rt/isr64.S", "rt/pagetables64.S"]
            }
            Flavour::Pvh32 => &["rt/entry_pvh32.S", "rt/isr32.S"],
        }
    }
}

/// One guest image: `name` is what `polyvisor_guests::image(name)` takes.
struct Guest {
    name: &'static str,
    flavour: Flavour,
    /// The guest's own C files (relative to this crate); the runtime is added.
    sources: &'static [&'static str],
}

/// Every guest built by this crate. To add one: put its C file in `guests/` and add a line.
const GUESTS: &[Guest] = &[
    Guest { name: "default", flavour: Flavour::Elf64, sources: &["guests/default.c"] },
    Guest { name: "smoke64", flavour: Flavour::Elf64, sources: &["guests/smoke.c"] },
    Guest { name: "smoke_pvh32", flavour: Flavour::Pvh32, sources: &["guests/smoke.c"] },
    Guest { name: "smoke_pvh64", flavour: Flavour::Pvh64, sources: &["guests/smoke.c"] },
    Guest { name: "smoke_rwx64", flavour: Flavour::Elf64Rwx, sources: &["guests/smoke.c"] },
    Guest { name: "rtcheck64", flavour: Flavour::Elf64, sources: &["guests/rtcheck.c"] },
    Guest { name: "rtcheck_pvh32", flavour: Flavour::Pvh32, sources: &["guests/rtcheck.c"] },
    Guest { name: "rtcheck_pvh64", flavour: Flavour::Pvh64, sources: &["guests/rtcheck.c"] },
    Guest { name: "rtcheck_rwx64", flavour: Flavour::Elf64Rwx, sources: &["guests/rtcheck.c"] },
    Guest { name: "vmmtest64", flavour: Flavour::Elf64, sources: &["guests/vmmtest.c"] },
    Guest { name: "vmmtest_rwx64", flavour: Flavour::Elf64Rwx, sources: &["guests/vmmtest.c"] },
    Guest { name: "vmmtest_pvh32", flavour: Flavour::Pvh32, sources: &["guests/vmmtest.c"] },
    Guest { name: "bhyve64", flavour: Flavour::Elf64, sources: &["guests/bhyve.c"] },
    Guest { name: "bhyve_pvh32", flavour: Flavour::Pvh32, sources: &["guests/bhyve.c"] },
    Guest { name: "kvm_abi64", flavour: Flavour::Elf64, sources: &["guests/kvm_abi.c"] },
    Guest { name: "kvm_abi_pvh32", flavour: Flavour::Pvh32, sources: &["guests/kvm_abi.c"] },
    Guest { name: "kvm_clock64", flavour: Flavour::Elf64, sources: &["guests/kvm_clock.c"] },
    Guest { name: "kvm_smp64", flavour: Flavour::Elf64, sources: &["guests/kvm_smp.c"] },
    Guest { name: "kvm_clock_pvh32", flavour: Flavour::Pvh32, sources: &["guests/kvm_clock.c"] },
    Guest { name: "kvm_smp_pvh32", flavour: Flavour::Pvh32, sources: &["guests/kvm_smp.c"] },
    Guest {
        name: "hyperv_features64",
        flavour: Flavour::Elf64,
        sources: &["guests/hyperv_features.c"],
    },
    Guest {
        name: "hyperv_features_pvh32",
        flavour: Flavour::Pvh32,
        sources: &["guests/hyperv_features.c"],
    },
    Guest { name: "hyperv_linux64", flavour: Flavour::Elf64, sources: &["guests/hyperv_linux.c"] },
    Guest {
        name: "hyperv_linux_pvh32",
        flavour: Flavour::Pvh32,
        sources: &["guests/hyperv_linux.c"],
    },
    Guest { name: "xen_boot_pvh64", flavour: Flavour::Pvh64, sources: &["guests/xen_boot.c"] },
    Guest { name: "xen_boot_pvh32", flavour: Flavour::Pvh32, sources: &["guests/xen_boot.c"] },
    Guest { name: "xen_boot64", flavour: Flavour::Elf64, sources: &["guests/xen_boot.c"] },
    Guest { name: "xen_abi_pvh64", flavour: Flavour::Pvh64, sources: &["guests/xen_abi.c"] },
    Guest { name: "xen_abi_pvh32", flavour: Flavour::Pvh32, sources: &["guests/xen_abi.c"] },
    Guest { name: "xen_abi64", flavour: Flavour::Elf64, sources: &["guests/xen_abi.c"] },
    Guest { name: "xen_pv_pvh64", flavour: Flavour::Pvh64, sources: &["guests/xen_pv.c"] },
    Guest { name: "xen_pv_pvh32", flavour: Flavour::Pvh32, sources: &["guests/xen_pv.c"] },
    Guest { name: "xen_pv64", flavour: Flavour::Elf64, sources: &["guests/xen_pv.c"] },
    Guest { name: "bench64", flavour: Flavour::Elf64, sources: &["guests/bench.c"] },
    Guest { name: "matrix_bhyve64", flavour: Flavour::Elf64, sources: &["guests/matrix_bhyve.c"] },
    Guest {
        name: "matrix_bhyve_pvh32",
        flavour: Flavour::Pvh32,
        sources: &["guests/matrix_bhyve.c"],
    },
    Guest { name: "matrix_kvm64", flavour: Flavour::Elf64, sources: &["guests/matrix_kvm.c"] },
    Guest { name: "matrix_kvm_pvh32", flavour: Flavour::Pvh32, sources: &["guests/matrix_kvm.c"] },
    Guest {
        name: "matrix_hyperv64",
        flavour: Flavour::Elf64,
        sources: &["guests/matrix_hyperv.c"],
    },
    Guest {
        name: "matrix_hyperv_pvh32",
        flavour: Flavour::Pvh32,
        sources: &["guests/matrix_hyperv.c"],
    },
    Guest { name: "matrix_xen64", flavour: Flavour::Elf64, sources: &["guests/matrix_xen.c"] },
    Guest { name: "matrix_xen_pvh32", flavour: Flavour::Pvh32, sources: &["guests/matrix_xen.c"] },
    Guest { name: "misbehave64", flavour: Flavour::Elf64, sources: &["guests/misbehave.c"] },
];

/// Runtime C files linked into every guest.
const RT_COMMON_C: &[&str] = &["rt/lib.c", "rt/cpu.c", "rt/check.c"];

/// Flags for every C and assembly file.
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-ffreestanding",
    "-nostdinc",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-strict-aliasing",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-O2",
    "-Wall",
    "-Wextra",
];

/// Linker output lines that are expected and not worth a cargo warning.
const BENIGN_LINKER_OUTPUT: &[&str] = &["LOAD segment with RWX permissions"];

struct Builder {
    cc: Vec<String>,
    root: PathBuf,
    out: PathBuf,
}

impl Builder {
    fn arch_flags(flavour: Flavour) -> &'static [&'static str] {
        if flavour.is_32bit() {
            &["-m32", "-march=i686"]
        } else {
            &["-m64"]
        }
    }

    fn run(&self, what: &str, args: &[String]) {
        let mut cmd = Command::new(&self.cc[0]);
        cmd.args(&self.cc[1..]).args(args);
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!(
                "polyvisor-guests: cannot run the C compiler `{}` ({e}); install gcc (Debian: \
                 apt-get install gcc) or set CC",
                self.cc.join(" ")
            ),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "polyvisor-guests: {what} failed ({}):\n$ {} {}\n{stdout}{stderr}",
            output.status,
            self.cc.join(" "),
            args.join(" ")
        );
        for line in stderr.lines().chain(stdout.lines()) {
            if !line.trim().is_empty() && !BENIGN_LINKER_OUTPUT.iter().any(|b| line.contains(b)) {
                println!("cargo:warning={what}: {line}");
            }
        }
    }

    fn compile(&self, src: &str, obj: &Path, flavour: Flavour, defines: &[String]) {
        let mut args: Vec<String> = CFLAGS.iter().map(|s| (*s).to_string()).collect();
        args.extend(Self::arch_flags(flavour).iter().map(|s| (*s).to_string()));
        args.push(format!("-I{}", self.root.join("rt/include").display()));
        args.extend(defines.iter().cloned());
        args.push("-c".into());
        args.push(self.root.join(src).display().to_string());
        args.push("-o".into());
        args.push(obj.display().to_string());
        self.run(&format!("compiling {src}"), &args);
    }

    /// Writes the flavour's linker script (PVH-only lines dropped for other flavours).
    fn linker_script(&self, flavour: Flavour) -> PathBuf {
        let src = self.root.join(flavour.linker_script());
        let text = fs::read_to_string(&src)
            .unwrap_or_else(|e| panic!("polyvisor-guests: reading {}: {e}", src.display()));
        let mut script = String::new();
        for line in text.lines().filter(|l| flavour.is_pvh() || !l.contains("/* PVH */")) {
            script.push_str(line);
            script.push('\n');
        }
        let path = self.out.join(format!("link-{flavour:?}.ld"));
        fs::write(&path, script)
            .unwrap_or_else(|e| panic!("polyvisor-guests: writing {}: {e}", path.display()));
        path
    }

    fn build_guest(&self, g: &Guest) -> PathBuf {
        let objdir = self.out.join("obj").join(g.name);
        fs::create_dir_all(&objdir)
            .unwrap_or_else(|e| panic!("polyvisor-guests: mkdir {}: {e}", objdir.display()));
        let defines = vec![format!("-DGUEST_NAME=\"{}\"", g.name)];
        let mut objs = Vec::new();
        let sources = RT_COMMON_C.iter().chain(g.flavour.runtime_sources()).chain(g.sources.iter());
        for (i, src) in sources.enumerate() {
            let stem = Path::new(src).file_stem().and_then(|s| s.to_str()).unwrap_or("src");
            let obj = objdir.join(format!("{i:02}-{stem}.o"));
            self.compile(src, &obj, g.flavour, &defines);
            objs.push(obj);
        }
        let elf = self.out.join(format!("{}.elf", g.name));
        let script = self.linker_script(g.flavour);
        let mut args: Vec<String> =
            Self::arch_flags(g.flavour).iter().map(|s| (*s).to_string()).collect();
        args.extend(
            [
                "-nostdlib",
                "-static",
                "-no-pie",
                "-Wl,--build-id=none",
                "-Wl,-z,max-page-size=0x1000",
                "-Wl,-z,noexecstack",
            ]
            .iter()
            .map(|s| (*s).to_string()),
        );
        args.push(format!("-Wl,-T,{}", script.display()));
        args.push("-o".into());
        args.push(elf.display().to_string());
        args.extend(objs.iter().map(|o| o.display().to_string()));
        self.run(&format!("linking {}", g.name), &args);
        elf
    }
}

fn rerun_if_changed(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            rerun_if_changed(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    rerun_if_changed(&root.join("rt"));
    rerun_if_changed(&root.join("guests"));

    let cc_var = env::var("CC").ok().filter(|s| !s.trim().is_empty());
    let cc: Vec<String> =
        cc_var.as_deref().unwrap_or("gcc").split_whitespace().map(str::to_string).collect();
    let builder = Builder { cc, root, out: out.clone() };

    let mut table = String::from("&[\n");
    let mut names = String::from("&[\n");
    for g in GUESTS {
        let elf = builder.build_guest(g);
        let _ = writeln!(
            table,
            "    ({:?}, include_bytes!({:?}) as &[u8]),",
            g.name,
            elf.display().to_string()
        );
        let _ = writeln!(names, "    {:?},", g.name);
    }
    table.push(']');
    names.push(']');
    fs::write(out.join("guests.rs"), table).expect("writing guests.rs");
    fs::write(out.join("names.rs"), names).expect("writing names.rs");
}
