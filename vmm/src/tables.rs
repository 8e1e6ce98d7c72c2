//! What a mode shows a guest, as text: the CPUID leaves and the hypercall table that
//! `polyvisor cpuid` and `polyvisor hypercalls` print, and that the golden files under
//! `tests/golden/` hold (docs/testing.md).

use std::fmt::Write as _;

use polyvisor_core::{CpuidLeaf, Dispatch, RowInfo};

/// The printable part of a signature, or None when it is not text.
fn signature_text(leaf: &CpuidLeaf) -> Option<String> {
    let bytes = leaf.signature_bytes();
    bytes.iter().all(|b| *b == 0 || b.is_ascii_graphic() || *b == b' ').then(|| {
        bytes
            .iter()
            .map(|b| if *b == 0 { "\\0".to_string() } else { char::from(*b).to_string() })
            .collect()
    })
}

/// The hypervisor CPUID leaves `engine` shows vCPU `vcpu`, one line per leaf with its
/// meaning underneath.
pub fn cpuid_table(engine: &dyn Dispatch, vcpu: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "CPUID leaves shown in mode {} (vCPU {vcpu}):", engine.mode());
    let _ = writeln!(out, "{:<14} {:<10} {:<10} {:<10} {:<10}", "leaf", "eax", "ebx", "ecx", "edx");
    for leaf in &engine.cpuid(vcpu) {
        let name = if leaf.indexed {
            format!("{:#010x}.{}", leaf.function, leaf.index)
        } else {
            format!("{:#010x}", leaf.function)
        };
        let _ = writeln!(
            out,
            "{name:<14} {:#010x} {:#010x} {:#010x} {:#010x}",
            leaf.eax, leaf.ebx, leaf.ecx, leaf.edx
        );
        let mut meaning = engine.explain_cpuid(leaf);
        if meaning.is_empty() && leaf.function & 0xff == 0 {
            if let Some(text) = signature_text(leaf) {
                meaning.push(format!("signature \"{text}\", highest leaf {:#010x}", leaf.eax));
            }
        }
        for line in meaning {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// The hypercall table: number, name, rings, implemented, enabled, summary.
pub fn hypercall_table(engine: &dyn Dispatch) -> String {
    let rows: Vec<RowInfo> = engine.rows();
    let mut out = String::new();
    let _ = writeln!(out, "Hypercalls of mode {}:", engine.mode());
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:<8} {:<width$} {:<6} {:<12} {:<8} summary",
        "number", "name", "rings", "implemented", "enabled"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<8} {:<width$} {:<6} {:<12} {:<8} {}",
            format!("{:#x}", r.number),
            r.name,
            r.rings,
            if r.implemented { "yes" } else { "no" },
            if r.permitted { "yes" } else { "no" },
            r.summary
        );
    }
    if !rows.iter().any(|r| r.permitted) {
        let _ = writeln!(
            out,
            "(hypercalls are disabled: set [hypervisor] hypercalls_enabled = true, or pass \
             --enable-hypercalls)"
        );
    }
    out
}
