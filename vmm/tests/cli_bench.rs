//! `polyvisor bench` as a user runs it, with a small N: it runs and prints JSON with every
//! field. A smoke test of the benchmark, not a benchmark: no duration is asserted.

use std::process::Command;

use serde_json::Value;

/// The value at `path` (object keys; array elements by index), or a panic naming the path.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("no {path} (stopped at {key}) in {v:#}"));
    }
    cur
}

/// A measured number: present, not null (NaN becomes null), finite.
fn number(v: &Value, path: &str) -> f64 {
    at(v, path).as_f64().unwrap_or_else(|| panic!("{path} is not a number: {}", at(v, path)))
}

fn time_stats(v: &Value, path: &str) {
    for k in ["count", "mean_ns", "median_ns", "p99_ns"] {
        number(v, &format!("{path}.{k}"));
    }
}

#[test]
fn bench_prints_json_with_every_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_polyvisor"))
        .args(["bench", "--mode", "bhyve", "--iterations", "200", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    for k in ["cpu_model", "kernel", "kvm_flavour", "trap"] {
        assert!(at(&v, &format!("host.{k}")).is_string(), "host.{k}");
    }
    for k in ["cpus", "kvm_api", "tsc_khz", "load_average.0", "load_average.2"] {
        number(&v, &format!("host.{k}"));
    }
    for k in ["iterations", "throughput_calls", "dispatch_iterations"] {
        number(&v, &format!("parameters.{k}"));
    }
    assert_eq!(at(&v, "parameters.iterations"), 200);
    assert_eq!(at(&v, "parameters.compare_eager"), true);

    let modes = at(&v, "modes").as_array().unwrap();
    assert_eq!(modes.len(), 1);
    let m = &modes[0];
    assert_eq!(at(m, "mode"), "bhyve");
    for list in ["round_trips", "eager_round_trips"] {
        let trips = at(m, list).as_array().unwrap();
        let names: Vec<&str> = trips.iter().map(|t| at(t, "name").as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["port_io", "bhyve_prototype", "bhyve_dtrace_probe", "timing_only"],
            "{list}"
        );
        for t in trips {
            assert!(at(t, "what").is_string());
            assert_eq!(at(t, "samples"), 200);
            for k in ["min_ns", "median_ns", "p90_ns", "p99_ns", "max_ns", "mean_ns"] {
                number(t, k);
            }
            for k in ["median_vs_floor", "p99_vs_floor", "net_median_vs_floor"] {
                number(t, k);
            }
        }
    }
    for run in ["vmm_time", "eager_vmm_time"] {
        for kind in ["io", "hypercall", "other"] {
            time_stats(m, &format!("{run}.exits.{kind}.kvm_run"));
            time_stats(m, &format!("{run}.exits.{kind}.user"));
        }
        time_stats(m, &format!("{run}.exits.completion"));
        number(m, &format!("{run}.completions_per_hypercall"));
        number(m, &format!("{run}.page_returns_per_hypercall"));
    }
    assert_eq!(number(m, "vmm_time.completions_per_hypercall"), 0.0, "deferred by default");
    assert!(number(m, "eager_vmm_time.completions_per_hypercall") >= 1.0, "eager");
    let dispatch = at(m, "dispatch_only").as_array().unwrap();
    assert_eq!(dispatch.len(), 2);
    for d in dispatch {
        assert!(at(d, "name").is_string());
        number(d, "median_ns");
        number(d, "p99_ns");
    }
    number(m, "throughput.calls_per_vcpu");
    for run in ["one_vcpu_run_cpu", "two_vcpu_run_cpu"] {
        for k in ["wall_ms", "this_process_cpus", "other_processes_cpus", "steal_cpus"] {
            number(m, &format!("throughput.{run}.{k}"));
        }
    }
    for kind in ["hypercall", "port_io", "spin"] {
        for k in ["one_vcpu_per_sec", "two_vcpus_per_sec", "scaling"] {
            number(m, &format!("throughput.{kind}.{k}"));
        }
        for k in ["one_vcpu_rounds", "two_vcpus_rounds"] {
            let rounds = at(m, &format!("throughput.{kind}.{k}")).as_array().unwrap();
            assert_eq!(rounds.len(), 3, "{kind}.{k}");
        }
    }
    for k in [
        "host_check_ms",
        "first_entry_ms",
        "first_instruction_ms",
        "guest_setup_ms",
        "first_port_write_ms",
    ] {
        number(m, &format!("startup.{k}"));
    }
    assert!(!at(m, "startup.steps_ms").as_array().unwrap().is_empty());
    for k in [
        "guest_ram_mib",
        "rss_before_kib",
        "peak_rss_kib",
        "guest_resident_kib",
        "beyond_guest_kib",
        "added_beyond_guest_kib",
    ] {
        number(m, &format!("memory.{k}"));
    }
    assert!(at(m, "memory.peak_reset").is_boolean());

    let targets = at(&v, "targets").as_array().unwrap();
    assert_eq!(targets.len(), 6, "{targets:#?}");
    for t in targets {
        for k in ["what", "target", "measured"] {
            assert!(at(t, k).is_string());
        }
        assert!(at(t, "met").is_boolean());
    }
}

#[test]
fn bench_writes_the_table_and_a_json_file() {
    let file = std::env::temp_dir().join(format!("polyvisor-bench-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_polyvisor"))
        .args(["bench", "--mode", "xen", "--iterations", "50", "--no-compare"])
        .args(["--dispatch-iterations", "1000", "--json-file"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in ["round trips", "xen_version", "xen_extraversion", "dispatch only", "targets"] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(at(&v, "modes.0.mode"), "xen");
    assert!(at(&v, "modes.0.eager_round_trips").as_array().unwrap().is_empty());
    assert!(at(&v, "modes.0.eager_vmm_time").is_null());
}
