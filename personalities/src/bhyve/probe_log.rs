//! Probe events as JSON lines, for the VMM's `[bhyve] probe_log` sink.

use polyvisor_core::ProbeEvent;

/// One probe event as one line of JSON (no trailing newline): its fields are `probe_id`,
/// `name`, `args` (five numbers), `thread`, `vcpu` and `timestamp_ns` (nanoseconds since the
/// VM started). Numbers are exact u64; readers that parse JSON numbers as doubles lose
/// precision above 2^53 (pointer-sized arguments).
pub fn probe_event_json(event: &ProbeEvent<'_>) -> String {
    serde_json::json!({
        "probe_id": event.probe_id,
        "name": event.name,
        "args": event.args,
        "thread": event.thread,
        "vcpu": event.vcpu,
        "timestamp_ns": event.timestamp_ns,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_of_json_with_every_field() {
        let event = ProbeEvent {
            probe_id: 3,
            name: "io:::start \"quoted\"\u{e9}",
            args: [1, 2, 3, u64::MAX, 0],
            thread: 100_017,
            vcpu: 1,
            timestamp_ns: 123_456_789,
        };
        let line = probe_event_json(&event);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["probe_id"], 3);
        assert_eq!(v["name"], "io:::start \"quoted\"\u{e9}");
        assert_eq!(v["args"], serde_json::json!([1, 2, 3, u64::MAX, 0]));
        assert_eq!(v["args"][3].as_u64(), Some(u64::MAX), "exact");
        assert_eq!(v["thread"], 100_017);
        assert_eq!(v["vcpu"], 1);
        assert_eq!(v["timestamp_ns"], 123_456_789);
        assert_eq!(v.as_object().unwrap().len(), 6);
    }
}
