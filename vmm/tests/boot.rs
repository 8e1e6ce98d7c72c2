//! Both boot protocols boot the test guests.

mod common;

use common::{run_guest, show};
use polyvisor_vmm::{BootKind, VmEnd};

fn boots(name: &str, kind: BootKind) {
    let (r, _) = run_guest(name, 1, "console=e9");
    assert_eq!(r.end, VmEnd::ExitPort(0), "{name}: {}", show(&r));
    assert_eq!(r.exit_status, 0);
    assert_eq!(r.boot, kind);
    let text = r.console_text();
    assert!(text.contains(&format!("{name}: ok")), "{name}: {}", show(&r));
}

#[test]
fn elf64_direct() {
    boots("smoke64", BootKind::Elf64);
}

#[test]
fn elf64_single_rwx_segment() {
    boots("smoke_rwx64", BootKind::Elf64);
}

#[test]
fn pvh_32bit() {
    boots("smoke_pvh32", BootKind::Pvh);
}

#[test]
fn pvh_to_long_mode() {
    boots("smoke_pvh64", BootKind::Pvh);
}

#[test]
fn a_pvh64_image_also_boots_elf64_direct_when_asked() {
    let image = polyvisor_guests::image("smoke_pvh64").unwrap();
    let mut cfg = common::config(1, "");
    cfg.config.vm.boot = polyvisor_config::BootProtocol::Elf64;
    let (r, _) = common::run_image(image, &cfg);
    assert_eq!(r.end, VmEnd::ExitPort(0), "{}", show(&r));
    assert_eq!(r.boot, BootKind::Elf64);
    assert!(r.console_text().contains("ELF64 direct boot"), "{}", show(&r));
    // And a 32-bit image cannot be booted as ELF64.
    let image = polyvisor_guests::image("smoke_pvh32").unwrap();
    let (_, engine) = polyvisor_vmm::testing::test_engine();
    let err = polyvisor_vmm::run(
        &cfg,
        polyvisor_vmm::RunOptions {
            kernel_override: Some(image.to_vec()),
            dispatch: Some(engine),
            ..Default::default()
        },
    )
    .expect_err("ELFCLASS32 is not ELF64 direct");
    assert!(err.to_string().contains("ELFCLASS64"), "{err}");
}
