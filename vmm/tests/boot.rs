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
