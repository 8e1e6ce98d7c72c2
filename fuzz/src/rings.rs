//! The `xenstore` and `console_ring` targets: the Xen PV rings a guest shares with the VMM
//! (`xen/include/public/io/xs_wire.h`, `io/console.h`), driven with arbitrary page contents
//! and, in between, by a well-behaved guest whose every answer is checked.
//!
//! Both inputs are a sequence of operations, each an opcode byte and its operands (missing
//! bytes read as zero). The seed generator (vmm/tests/fuzz_seeds.rs) writes the same format:
//!
//! - `0`, `u16` offset, `u16` length, bytes: the bytes are written into the page at the offset
//!   (cut at the page's end) — any ring contents, indices included;
//! - the other opcodes are per target (see [`xenstore`] and [`console_ring`]).

use std::collections::{BTreeSet, VecDeque};

use polyvisor_personalities::xen::pv::{cons, drain_output, input_room, push_input};
use polyvisor_personalities::xen::ring::RingError;
use polyvisor_personalities::xen::xenstore::{
    encode, layout, msg, XenStore, HEADER_LEN, MAX_NODES, MAX_STORE_BYTES, MAX_TRANSACTIONS,
    MAX_WATCHES, OUT_MAX, XENSTORE_CONNECTED, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
    XENSTORE_PAYLOAD_MAX, XENSTORE_RECONNECT, XENSTORE_RING_SIZE,
};

const PAGE: usize = 4096;
/// Rounds a well-behaved guest waits for its request to be taken before that is a hang.
const MAX_ROUNDS: usize = 256;

/// The operation reader: bytes run out as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Opcode `0`: arbitrary bytes at an arbitrary offset.
fn poke(input: &mut Input<'_>, page: &mut [u8]) {
    let offset = usize::from(input.u16()) % PAGE;
    let len = usize::from(input.u16());
    let bytes = input.bytes(len);
    let n = bytes.len().min(PAGE - offset);
    page[offset..offset + n].copy_from_slice(&bytes[..n]);
}

fn word(page: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(page[offset..offset + 4].try_into().unwrap())
}

fn set_word(page: &mut [u8], offset: usize, value: u32) {
    page[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn le(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The `xsd_errors` names XenStore answers with.
const ERRORS: &[&str] = &[
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
];

/// What the guest knows of the connection: watches and transactions it opened, the requests
/// waiting for their answer, the response bytes read so far.
#[derive(Default)]
struct Guest {
    /// False once the page was written behind the guest's back; a reconnection restores it.
    clean: bool,
    watches: BTreeSet<(String, String)>,
    transactions: BTreeSet<u32>,
    pending: VecDeque<(u32, u32, u32, Vec<u8>)>,
    /// The ring error that stopped the connection, until a reconnection.
    stopped: Option<RingError>,
    received: Vec<u8>,
    next_req: u32,
}

impl Guest {
    /// Checks one whole answer to `(kind, req_id, tx_id, payload)` (header + body, without
    /// the watch events behind it) and follows what it did to the connection.
    fn answered(&mut self, request: (u32, u32, u32, &[u8]), answer: &[u8]) {
        let (kind, req_id, tx_id, payload) = request;
        let (akind, areq, atx, len) = (le(answer, 0), le(answer, 4), le(answer, 8), le(answer, 12));
        assert_eq!(answer.len(), HEADER_LEN + len as usize);
        assert_eq!((areq, atx), (req_id, tx_id), "the answer to {kind} names another request");
        let body = &answer[HEADER_LEN..];
        if akind == msg::XS_ERROR {
            let name = body.strip_suffix(&[0]).map(String::from_utf8_lossy);
            assert!(
                name.as_deref().is_some_and(|n| ERRORS.contains(&n)),
                "XS_ERROR with {body:?} for {kind}"
            );
            if self.clean && kind == msg::XS_TRANSACTION_END && body == b"EAGAIN\0" {
                self.transactions.remove(&tx_id);
            }
            return;
        }
        assert_eq!(akind, kind, "an answer of another type");
        if !self.clean {
            return; // requests the guest did not see were served: its bookkeeping is off
        }
        let args: Vec<String> = payload
            .strip_suffix(&[0])
            .unwrap_or(payload)
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        match kind {
            msg::XS_WATCH => {
                assert!(self.watches.insert((args[0].clone(), args[1].clone())));
            }
            msg::XS_UNWATCH => {
                assert!(self.watches.remove(&(args[0].clone(), args[1].clone())));
            }
            msg::XS_RESET_WATCHES => self.watches.clear(),
            msg::XS_TRANSACTION_START => {
                let id: u32 = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("transaction id {body:?}"));
                assert!(id != 0 && self.transactions.insert(id), "transaction id {id} reused");
            }
            msg::XS_TRANSACTION_END => {
                assert!(self.transactions.remove(&tx_id), "ended an unknown transaction");
            }
            _ => {}
        }
        assert!(self.watches.len() <= MAX_WATCHES, "{} watches", self.watches.len());
        assert!(
            self.transactions.len() <= MAX_TRANSACTIONS,
            "{} transactions",
            self.transactions.len()
        );
    }

    /// Splits `bytes` (what XenStore wrote back) into messages: answers in request order,
    /// watch events (`req_id` and `tx_id` 0, "path\0token\0") in between.
    fn receive(&mut self, bytes: &[u8]) {
        self.received.extend_from_slice(bytes);
        while self.received.len() >= HEADER_LEN {
            let len = le(&self.received, 12) as usize;
            assert!(len <= XENSTORE_PAYLOAD_MAX, "a {len}-byte payload");
            if self.received.len() < HEADER_LEN + len {
                return;
            }
            let message: Vec<u8> = self.received.drain(..HEADER_LEN + len).collect();
            if le(&message, 0) == msg::XS_WATCH_EVENT {
                assert_eq!((le(&message, 4), le(&message, 8)), (0, 0));
                let body = &message[HEADER_LEN..];
                assert_eq!(body.iter().filter(|&&b| b == 0).count(), 2, "event {body:?}");
                assert_eq!(body.last(), Some(&0));
                continue;
            }
            let (kind, req_id, tx_id, payload) =
                self.pending.pop_front().expect("an answer nobody asked for");
            self.answered((kind, req_id, tx_id, &payload), &message);
        }
    }
}

/// Path components the generated requests draw from, so that they meet.
const NAMES: &[&str] = &["a", "b", "device", "vif", "0", "1", "control", "data", "x_y-z", "@w"];

fn path(input: &mut Input<'_>) -> String {
    let shape = input.u8();
    let mut p = match shape & 3 {
        0 => String::new(),
        1 => "/".into(),
        2 => "/local/domain/1/".into(),
        _ => "/local/domain/0/".into(),
    };
    let depth = (shape >> 2) & 3;
    for i in 0..=depth {
        if i > 0 {
            p.push('/');
        }
        p.push_str(NAMES[usize::from(input.u8()) % NAMES.len()]);
    }
    if shape & 0x80 != 0 {
        p = "/".into();
    }
    p
}

/// A well-formed request of the kind the next byte names: `(type, tx_id, payload)`.
fn request(input: &mut Input<'_>, guest: &Guest) -> (u32, u32, Vec<u8>) {
    let choice = input.u8();
    let tx = input.u8();
    let tx_id = if tx & 1 == 0 {
        0
    } else {
        let open: Vec<u32> = guest.transactions.iter().copied().collect();
        open.get(usize::from(tx >> 1) % open.len().max(1)).copied().unwrap_or(u32::from(tx))
    };
    let z = |s: String| {
        let mut v = s.into_bytes();
        v.push(0);
        v
    };
    let (kind, payload) = match choice % 14 {
        0 => (msg::XS_READ, z(path(input))),
        1 => (msg::XS_DIRECTORY, z(path(input))),
        2 => (msg::XS_GET_PERMS, z(path(input))),
        3 | 4 => {
            let mut p = path(input).into_bytes();
            p.push(0);
            let n = usize::from(input.u16()) % (XENSTORE_PAYLOAD_MAX - p.len() + 1);
            let fill = input.u8();
            p.extend(std::iter::repeat_n(fill, n));
            (msg::XS_WRITE, p)
        }
        5 => (msg::XS_MKDIR, z(path(input))),
        6 => (msg::XS_RM, z(path(input))),
        7 => {
            let mut p = z(path(input));
            for _ in 0..=input.u8() % 8 {
                p.extend(z(format!(
                    "{}{}",
                    ['n', 'r', 'w', 'b'][usize::from(input.u8() % 4)],
                    input.u16()
                )));
            }
            (msg::XS_SET_PERMS, p)
        }
        8 => {
            let mut p = z(path(input));
            p.extend(z(format!("t{}", input.u8())));
            (msg::XS_WATCH, p)
        }
        9 => {
            // An existing watch when there is one.
            let w: Vec<_> = guest.watches.iter().cloned().collect();
            let (p, t) = w
                .get(usize::from(input.u8()) % w.len().max(1))
                .cloned()
                .unwrap_or_else(|| ("a".into(), "t".into()));
            let mut v = z(p);
            v.extend(z(t));
            (msg::XS_UNWATCH, v)
        }
        10 => (msg::XS_TRANSACTION_START, vec![0]),
        11 => (msg::XS_TRANSACTION_END, z(if input.u8() & 1 == 0 { "T" } else { "F" }.into())),
        12 => (msg::XS_RESET_WATCHES, vec![]),
        _ => (msg::XS_GET_DOMAIN_PATH, z(input.u8().to_string())),
    };
    let tx_id = if kind == msg::XS_TRANSACTION_START { 0 } else { tx_id };
    (kind, tx_id, payload)
}

/// One `process_ring` call, with the checks that hold for any page: the ring stays in the
/// page, at most a ring's worth of answers is written, the producer indices written back are
/// consistent, and an error is the documented one and sticks until a reconnection.
fn serve(store: &mut XenStore, page: &mut [u8], guest: &mut Guest) -> bool {
    let before = page.to_vec();
    let reconnect = word(&before, layout::CONNECTION) == XENSTORE_RECONNECT;
    let stopped = if reconnect { None } else { guest.stopped };
    let out = store.process_ring(page);
    if let Some(e) = stopped {
        // Stopped: the same error, nothing taken or given.
        assert_eq!(out.error, Some(e));
        let mut want = before;
        set_word(&mut want, layout::SERVER_FEATURES, word(page, layout::SERVER_FEATURES));
        assert!(want == page, "a stopped connection touched the ring");
        return false;
    }
    guest.stopped = None;
    assert!(out.error != Some(RingError::Fault), "a 4 KiB page faulted");
    let (rc, rp) = (word(page, layout::RSP_CONS), word(page, layout::RSP_PROD));
    let (qc, qp) = (word(page, layout::REQ_CONS), word(page, layout::REQ_PROD));
    if reconnect {
        assert_eq!(word(page, layout::CONNECTION), XENSTORE_CONNECTED);
    }
    let start = if reconnect { 0 } else { word(&before, layout::RSP_PROD) };
    let written = rp.wrapping_sub(start);
    assert!(written <= XENSTORE_RING_SIZE, "{written} response bytes in one call");
    assert_eq!(qp, if reconnect { 0 } else { word(&before, layout::REQ_PROD) }, "req_prod moved");
    assert_eq!(rc, if reconnect { 0 } else { word(&before, layout::RSP_CONS) }, "rsp_cons moved");
    match out.error {
        Some(e) => {
            let code = word(page, layout::ERROR);
            let want = if e == RingError::Protocol {
                XENSTORE_ERROR_PROTO
            } else {
                XENSTORE_ERROR_RINGIDX
            };
            assert_eq!(code, want, "{e:?} with error = {code}");
            guest.stopped = Some(e);
            return false;
        }
        None => {
            // Either every request was looked at with valid indices, or answers wait for room.
            let rsp_full = rp.wrapping_sub(rc) == XENSTORE_RING_SIZE;
            assert!(qp.wrapping_sub(qc) <= XENSTORE_RING_SIZE || rsp_full, "bad req indices");
            assert!(written <= XENSTORE_RING_SIZE);
        }
    }
    true
}

/// Reads what XenStore wrote into the response ring and frees it.
fn take_answers(page: &mut [u8]) -> Vec<u8> {
    let (c, p) = (word(page, layout::RSP_CONS), word(page, layout::RSP_PROD));
    let n = p.wrapping_sub(c).min(XENSTORE_RING_SIZE);
    let bytes: Vec<u8> = (0..n)
        .map(|i| page[layout::RSP + (c.wrapping_add(i) % XENSTORE_RING_SIZE) as usize])
        .collect();
    set_word(page, layout::RSP_CONS, c.wrapping_add(n));
    bytes
}

/// The guest sends `message` through the ring, as a frontend does: as much as fits, then a
/// notification, then it reads answers; every answer is checked while the connection is clean.
fn send(store: &mut XenStore, page: &mut [u8], guest: &mut Guest, message: &[u8]) {
    let mut sent = 0;
    for _ in 0..MAX_ROUNDS {
        let (c, p) = (word(page, layout::REQ_CONS), word(page, layout::REQ_PROD));
        let room = XENSTORE_RING_SIZE.saturating_sub(p.wrapping_sub(c)) as usize;
        let n = room.min(message.len() - sent);
        for (i, b) in message[sent..sent + n].iter().enumerate() {
            page[layout::REQ + (p.wrapping_add(i as u32) % XENSTORE_RING_SIZE) as usize] = *b;
        }
        set_word(page, layout::REQ_PROD, p.wrapping_add(n as u32));
        sent += n;
        let alive = serve(store, page, guest);
        let answers = take_answers(page);
        if guest.clean {
            assert!(alive, "a well-behaved guest's ring was refused");
            guest.receive(&answers);
        }
        if !alive {
            return;
        }
        let consumed = word(page, layout::REQ_CONS) == word(page, layout::REQ_PROD);
        if sent == message.len() && consumed {
            return;
        }
    }
    assert!(!guest.clean, "a request was not taken in {MAX_ROUNDS} notifications");
}

/// Asks for a reconnection (`connection = XENSTORE_RECONNECT`) and serves it.
fn reconnect(store: &mut XenStore, page: &mut [u8], guest: &mut Guest) {
    set_word(page, layout::CONNECTION, XENSTORE_RECONNECT);
    serve(store, page, guest);
    for at in
        [layout::REQ_CONS, layout::REQ_PROD, layout::RSP_CONS, layout::RSP_PROD, layout::ERROR]
    {
        assert_eq!(word(page, at), 0, "reconnection left offset {at} set");
    }
    *guest = Guest { clean: true, next_req: guest.next_req, ..Guest::default() };
}

/// The store's size as a guest sees it: every node reachable by XS_DIRECTORY from `/`, with
/// its path, value and permissions.
fn walk(store: &mut XenStore) -> (usize, usize) {
    let mut ask = |kind: u32, path: &str| {
        let mut body = path.as_bytes().to_vec();
        body.push(0);
        let a = store.request(&encode(kind, 0, 0, &body));
        (le(&a, 0), a[HEADER_LEN..HEADER_LEN + le(&a, 12) as usize].to_vec())
    };
    let (mut nodes, mut bytes) = (0, 0);
    let mut todo = vec!["/".to_string()];
    while let Some(p) = todo.pop() {
        nodes += 1;
        assert!(nodes <= MAX_NODES, "more than {MAX_NODES} nodes");
        let (_, value) = ask(msg::XS_READ, &p);
        let (_, perms) = ask(msg::XS_GET_PERMS, &p);
        bytes += p.len() + value.len() + perms.len();
        let (kind, names) = ask(msg::XS_DIRECTORY, &p);
        if kind != msg::XS_DIRECTORY {
            continue; // E2BIG: the children's names do not fit one answer
        }
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = String::from_utf8_lossy(name);
            todo.push(if p == "/" { format!("/{name}") } else { format!("{p}/{name}") });
        }
    }
    (nodes, bytes)
}

/// XenStore over its ring. Opcodes after `0` (a page write, which leaves the guest's
/// bookkeeping unchecked until the next reconnection):
///
/// - `1`, `u16` length, bytes: one raw message through [`XenStore::request`];
/// - `2`: a reconnection;
/// - `3`: a notification (`process_ring`) without new requests;
/// - anything else: a well-formed request (read, directory, get/set perms, write, mkdir, rm,
///   watch, unwatch, transaction start/end, reset watches, get domain path, inside an open
///   transaction or not) sent through the ring by a well-behaved guest.
///
/// Checked: no panic; every call keeps the ring indices consistent and writes at most one
/// ring of answers; a bad index or an oversized message ends in `XENSTORE_ERROR_RINGIDX` /
/// `_PROTO` and a stopped connection; while the guest behaves, every answer is a
/// well-formed `xsd_sockmsg` with its request's type (or XS_ERROR with an `xsd_errors`
/// name), `req_id` and `tx_id`, in order, and a request is always taken; watches,
/// transactions, nodes and store bytes stay within their limits; one raw message's answer
/// is bounded by the payload limit plus the queued-output limit.
pub fn xenstore(data: &[u8]) {
    let mut input = Input(data);
    let mut store = XenStore::introduce(1, 2, 256 * 1024);
    let mut page = vec![0u8; PAGE];
    let mut guest = Guest { clean: true, ..Guest::default() };
    let mut ops = 0;
    while !input.done() && ops < 512 {
        ops += 1;
        match input.u8() {
            0 => {
                poke(&mut input, &mut page);
                guest.clean = false;
                serve(&mut store, &mut page, &mut guest);
            }
            1 => {
                let len = usize::from(input.u16());
                let message = input.bytes(len).to_vec();
                let answer = store.request(&message);
                assert!(answer.len() <= HEADER_LEN + XENSTORE_PAYLOAD_MAX + OUT_MAX + HEADER_LEN);
                let head =
                    |i: usize| message.get(i * 4..i * 4 + 4).map_or(0, |_| le(&message, i * 4));
                let first = HEADER_LEN + le(&answer, 12) as usize;
                assert!(first <= answer.len());
                let request = (head(0), head(1), head(2), message.get(HEADER_LEN..).unwrap_or(&[]));
                // A message shorter than its header reads as zeros past its end.
                guest.answered(request, &answer[..first]);
                // Watch events behind the answer are whole messages.
                let mut events = Guest::default();
                events.receive(&answer[first..]);
                assert!(events.received.is_empty(), "a cut watch event");
            }
            2 => reconnect(&mut store, &mut page, &mut guest),
            3 => {
                if serve(&mut store, &mut page, &mut guest) {
                    let answers = take_answers(&mut page);
                    if guest.clean {
                        guest.receive(&answers);
                    }
                }
            }
            _ => {
                let (kind, tx_id, payload) = request(&mut input, &guest);
                guest.next_req = guest.next_req.wrapping_add(1);
                let req_id = guest.next_req;
                if guest.clean {
                    guest.pending.push_back((kind, req_id, tx_id, payload.clone()));
                }
                send(&mut store, &mut page, &mut guest, &encode(kind, req_id, tx_id, &payload));
            }
        }
    }
    let (nodes, bytes) = walk(&mut store);
    assert!(nodes <= MAX_NODES && bytes <= MAX_STORE_BYTES, "{nodes} nodes, {bytes} bytes");
}

/// The PV console ring through [`drain_output`], [`push_input`] and [`input_room`]. Opcodes
/// after `0` (a page write):
///
/// - `1`: the VMM drains the guest's output;
/// - `2`, `u16` length, bytes: the VMM pushes host input;
/// - `3`, `u16` count: the guest writes that many output bytes as a frontend does (as many as
///   fit) and consumes all its input.
///
/// Checked: no panic; a drain takes at most `sizeof(out)` bytes, exactly those between
/// `out_cons` and `out_prod` in ring order, and sets `out_cons` to `out_prod` (also when the
/// indices are bad, which is `RingError::Index`); a push writes `min(room, len)` bytes at
/// `in_prod` and advances it by as many, and with bad indices writes nothing; `input_room`
/// agrees with the indices; nothing else in the page changes.
pub fn console_ring(data: &[u8]) {
    let mut input = Input(data);
    let mut page = vec![0u8; PAGE];
    let mut drained = Vec::new();
    let mut ops = 0;
    while !input.done() && ops < 512 {
        ops += 1;
        let before = page.clone();
        let (oc, op) = (word(&page, cons::OUT_CONS), word(&page, cons::OUT_PROD));
        let (ic, ip) = (word(&page, cons::IN_CONS), word(&page, cons::IN_PROD));
        let in_used = ip.wrapping_sub(ic);
        match input.u8() % 4 {
            0 => poke(&mut input, &mut page),
            1 => {
                let len = drained.len();
                let r = drain_output(&mut page[..], &mut drained);
                assert_eq!(word(&page, cons::OUT_CONS), op, "out_cons not at out_prod");
                let used = op.wrapping_sub(oc);
                match r {
                    Ok(n) => {
                        assert!(n <= cons::OUT_SIZE as usize && n == used as usize);
                        assert_eq!(drained.len(), len + n);
                        for (i, b) in drained[len..].iter().enumerate() {
                            let at =
                                cons::OUT + (oc.wrapping_add(i as u32) % cons::OUT_SIZE) as usize;
                            assert_eq!(*b, before[at], "drained byte {i}");
                        }
                    }
                    Err(e) => {
                        assert_eq!(e, RingError::Index);
                        assert!(used > cons::OUT_SIZE);
                        assert_eq!(drained.len(), len);
                    }
                }
                set_word(&mut page, cons::OUT_CONS, oc);
                assert_eq!(page, before, "a drain wrote more than out_cons");
                set_word(&mut page, cons::OUT_CONS, op);
            }
            2 => {
                let len = usize::from(input.u16());
                let bytes = input.bytes(len).to_vec();
                let room = input_room(&page[..]);
                match push_input(&mut page[..], &bytes) {
                    Ok(n) => {
                        assert!(in_used <= cons::IN_SIZE);
                        assert_eq!(room, Ok((cons::IN_SIZE - in_used) as usize));
                        assert_eq!(n, bytes.len().min((cons::IN_SIZE - in_used) as usize));
                        assert_eq!(word(&page, cons::IN_PROD), ip.wrapping_add(n as u32));
                        let mut want = before.clone();
                        for (i, b) in bytes[..n].iter().enumerate() {
                            want[cons::IN + (ip.wrapping_add(i as u32) % cons::IN_SIZE) as usize] =
                                *b;
                        }
                        set_word(&mut want, cons::IN_PROD, ip.wrapping_add(n as u32));
                        assert_eq!(page, want, "a push wrote outside its bytes and in_prod");
                    }
                    Err(e) => {
                        assert_eq!((e, room), (RingError::Index, Err(RingError::Index)));
                        assert!(in_used > cons::IN_SIZE);
                        assert_eq!(page, before, "a refused push wrote");
                    }
                }
            }
            _ => {
                let count = u32::from(input.u16());
                let used = op.wrapping_sub(oc);
                if used <= cons::OUT_SIZE {
                    let n = count.min(cons::OUT_SIZE - used);
                    for i in 0..n {
                        let at = cons::OUT + (op.wrapping_add(i) % cons::OUT_SIZE) as usize;
                        page[at] = i as u8;
                    }
                    set_word(&mut page, cons::OUT_PROD, op.wrapping_add(n));
                }
                set_word(&mut page, cons::IN_CONS, ip);
            }
        }
    }
}
