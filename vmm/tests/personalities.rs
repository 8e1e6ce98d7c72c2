//! The default guest under every personality that is built (real engines, not the test one).

use std::time::Duration;

use polyvisor_config::{Config, LoadedConfig};
use polyvisor_core::HypervisorMode;
use polyvisor_vmm::{run, RunOptions, VmEnd};
use strum::IntoEnumIterator;

#[test]
fn default_guest_under_each_personality() {
    for mode in HypervisorMode::iter() {
        let mut c = Config::default();
        c.hypervisor.mode = mode;
        c.hypervisor.hypercalls_enabled = true;
        c.vm.memory_mib = 64;
        let cfg = LoadedConfig { config: c, path: None, source: String::new() };
        let r = run(
            &cfg,
            RunOptions {
                capture_console: true,
                timeout: Some(Duration::from_secs(20)),
                ..RunOptions::default()
            },
        );
        match r {
            Ok(r) => {
                println!("== {mode}: {}\n{}", r.message, r.console_text());
                assert_eq!(
                    r.end,
                    VmEnd::ExitPort(0),
                    "{mode}: {}\n{}",
                    r.message,
                    r.console_text()
                );
            }
            Err(e) => panic!("{mode}: {e}"),
        }
    }
}
