//! The `config` and `kernel` targets: the two parsers that read the host user's files.

use polyvisor_config::{BootProtocol, Config};
use polyvisor_personalities::HostFacts;
use polyvisor_vmm::run::choose_boot;
use polyvisor_vmm::{parse_kernel, BootKind};

/// The configuration parser: any text gives a config or an error located inside the text.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, "fuzz.toml") {
        Ok(config) => {
            // What `polyvisor config show` prints reads back as the same configuration.
            let shown = config.to_toml();
            match Config::parse(&shown, "shown.toml") {
                Ok(again) => assert_eq!(again, config, "config show changed it:\n{shown}"),
                Err(e) => panic!("config show printed what does not parse: {e}\n{shown}"),
            }
            // Building the engine either works or says why.
            let _ = polyvisor_personalities::build(&config, &HostFacts::nominal());
        }
        Err(e) => {
            let Some((line, column)) = e.location() else {
                panic!("a parse error without a location: {e}");
            };
            let lines = text.split('\n').count();
            assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
            let width = text.split('\n').nth(line - 1).map_or(0, |l| l.chars().count());
            assert!(column >= 1 && column <= width + 1, "column {column} of {width}: {e}");
            assert!(e.to_string().starts_with(&format!("fuzz.toml:{line}:{column}: ")), "{e}");
        }
    }
}

/// The kernel loaders (ELF64, ELF32, PVH notes) and the boot choice: the first 4 bytes are the RAM size in 4 KiB
/// pages (little-endian, clamped to 1 MiB..=4 GiB), the rest is the image.
pub fn kernel(data: &[u8]) {
    let (head, image) = data.split_at(data.len().min(4));
    let mut pages = [0u8; 4];
    for (d, s) in pages.iter_mut().zip(head) {
        *d = *s;
    }
    let ram = u64::from(u32::from_le_bytes(pages)).clamp(256, 1 << 20) * 4096;
    let Ok(k) = parse_kernel(image, ram) else {
        return;
    };
    let mut last_end = 0x10_0000;
    for s in &k.segments {
        let r = s.range();
        assert!(r.start >= last_end, "segment {:#x?} overlaps or is below 1 MiB", r);
        assert!(r.end <= ram, "segment {:#x?} outside {ram:#x} of RAM", r);
        assert!(s.data.len() as u64 <= s.memsz, "file bytes beyond p_memsz");
        last_end = r.end;
    }
    let entries = k.entry64.into_iter().chain(k.pvh_entry.map(u64::from));
    for entry in entries {
        let inside = k.segments.iter().any(|s| s.executable && s.range().contains(&entry));
        assert!(inside, "entry {entry:#x} outside the executable segments: {k:#x?}");
    }
    // The boot protocol: a choice with its entry, or an error that says why (an ELF32 image
    // without the PVH note parses, and is refused here).
    for wanted in [BootProtocol::Auto, BootProtocol::Elf64, BootProtocol::Pvh] {
        match choose_boot(&k, wanted, "fuzz.elf") {
            Ok(BootKind::Pvh) => assert!(k.pvh_entry.is_some()),
            Ok(BootKind::Elf64) => assert!(k.entry64.is_some()),
            Err(e) => assert!(e.to_string().starts_with("kernel fuzz.elf: "), "{e}"),
        }
    }
}
