//! Bad kernel files give clear errors from `run` (before any VM starts), and tiny
//! hand-assembled guests exercise the backend without the C runtime.

mod common;

use std::time::Instant;

use common::{config, run_image, show};
use polyvisor_vmm::loader::{ElfClass, EM_X86_64};
use polyvisor_vmm::testing::{elf, test_engine};
use polyvisor_vmm::{run, LoadError, RunOptions, VmEnd, VmmError};

fn load_error(image: Vec<u8>) -> (LoadError, String) {
    let (_, engine) = test_engine();
    let err = run(
        &config(1, ""),
        RunOptions { kernel_override: Some(image), dispatch: Some(engine), ..Default::default() },
    )
    .expect_err("a bad kernel must not run");
    let text = err.to_string();
    match err {
        VmmError::Load { source, .. } => (source, text),
        other => panic!("expected a load error, got {other}"),
    }
}

/// `mov eax, 0; out 0xf4, eax` at 1 MiB.
fn exit0() -> Vec<u8> {
    vec![0xb8, 0, 0, 0, 0, 0xe7, 0xf4]
}

#[test]
fn bad_kernel_files_give_clear_errors() {
    let (e, t) = load_error(Vec::new());
    assert_eq!(e, LoadError::Empty, "{t}");
    assert!(t.contains("empty"), "{t}");

    let good =
        elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(0x10_0000, 0x1000, &exit0(), 5)], None);
    let (e, t) = load_error(good[..good.len() - 3].to_vec());
    assert!(matches!(e, LoadError::SegmentOutsideFile { .. }), "{t}");
    assert!(t.contains("outside the"), "{t}");
    let (e, t) = load_error(good[..40].to_vec());
    assert!(matches!(e, LoadError::Truncated { .. }), "{t}");
    assert!(t.contains("truncated"), "{t}");

    let arm = elf(ElfClass::Elf64, 183, 0x10_0000, &[(0x10_0000, 0x1000, &exit0(), 5)], None);
    let (e, t) = load_error(arm);
    assert!(matches!(e, LoadError::WrongMachine { machine: 183, .. }), "{t}");
    assert!(t.contains("not x86"), "{t}");

    // 64 MiB of RAM in the test config.
    let outside =
        elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(0x3ff_f000, 0x2000, &exit0(), 5)], None);
    let (e, t) = load_error(outside);
    assert!(matches!(e, LoadError::SegmentOutsideRam { .. }), "{t}");
    assert!(t.contains("outside guest RAM"), "{t}");

    let low = elf(ElfClass::Elf64, EM_X86_64, 0x8_0000, &[(0x8_0000, 0x1000, &exit0(), 5)], None);
    let (e, t) = load_error(low);
    assert!(matches!(e, LoadError::SegmentInLowMemory { .. }), "{t}");

    let overlap = elf(
        ElfClass::Elf64,
        EM_X86_64,
        0x10_0000,
        &[(0x10_0000, 0x2000, &exit0(), 5), (0x10_1000, 0x1000, &[1, 2, 3], 6)],
        None,
    );
    let (e, t) = load_error(overlap);
    assert!(matches!(e, LoadError::SegmentsOverlap { .. }), "{t}");
    assert!(t.contains("overlap"), "{t}");
}

#[test]
fn a_hand_assembled_guest_runs() {
    let image =
        elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(0x10_0000, 0x1000, &exit0(), 5)], None);
    let (r, _) = run_image(&image, &config(1, ""));
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
}

/// A loop of `n` test hypercalls (inc) or `n` port writes, then exit with the last result.
fn loop_guest(n: u32, hypercall: bool) -> Vec<u8> {
    let mut c = vec![0xb9];
    c.extend_from_slice(&n.to_le_bytes()); // mov ecx, n
    let top = c.len();
    c.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax (call 0: inc)
    c.extend_from_slice(&[0x89, 0xcb]); // mov ebx, ecx
    if hypercall {
        c.extend_from_slice(&[0x0f, 0x01, 0xc1]); // vmcall
    } else {
        c.extend_from_slice(&[0x66, 0xba, 0xff, 0x03, 0xee]); // mov dx, 0x3ff; out dx, al
        c.extend_from_slice(&[0x8d, 0x43, 0x01]); // lea eax, [rbx + 1]
    }
    c.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    let back = top as i64 - (c.len() as i64 + 2);
    c.extend_from_slice(&[0x75, back as i8 as u8]); // jnz top
    c.extend_from_slice(&[0xe7, 0xf4]); // out 0xf4, eax  (eax = 1 + 1 = 2)
    c
}

#[test]
fn hypercall_and_port_io_round_trips() {
    let n = 2000;
    let mut per = Vec::new();
    for hypercall in [true, false] {
        let image = elf(
            ElfClass::Elf64,
            EM_X86_64,
            0x10_0000,
            &[(0x10_0000, 0x1000, &loop_guest(n, hypercall), 5)],
            None,
        );
        let t0 = Instant::now();
        let (r, _) = run_image(&image, &config(1, ""));
        let took = t0.elapsed();
        assert_eq!(r.end, VmEnd::ExitPort(2), "{}", show(&r));
        per.push(r.elapsed.as_secs_f64() * 1e6 / f64::from(n));
        println!(
            "{}: {n} round trips in {:?} ({:.1} us each; whole run incl. setup {:?})",
            if hypercall { "hypercall (write-protect trap)" } else { "port I/O" },
            r.elapsed,
            r.elapsed.as_secs_f64() * 1e6 / f64::from(n),
            took
        );
    }
}

#[test]
fn a_panicking_handler_ends_the_vm_instead_of_hanging() {
    // mov eax, 19 (PANIC); vmcall; out 0xf4, eax
    let code = [0xb8, 19, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xe7, 0xf4];
    let image = elf(ElfClass::Elf64, EM_X86_64, 0x10_0000, &[(0x10_0000, 0x1000, &code, 5)], None);
    let (r, _) = run_image(&image, &config(1, ""));
    assert!(matches!(r.end, VmEnd::VmmFailure(_)), "{}", show(&r));
    assert!(r.message.contains("panicked"), "{}", r.message);
    assert_eq!(r.exit_status, 255);
}
