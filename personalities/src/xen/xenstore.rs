//! XenStore served in the VMM (`xen/include/public/io/xs_wire.h`, `docs/misc/xenstore.txt`,
//! `docs/misc/xenstore-ring.txt`), as QEMU's `hw/i386/kvm/xen_xenstore.c` serves it: one
//! client, the guest, speaking the wire protocol over the `xenstore_domain_interface` ring.
//!
//! Entry point for the ring: [`XenStore::process_ring`] over any [`RingAccess`] (guest memory
//! or a byte buffer, so a fuzzer can drive it with arbitrary contents); [`XenStore::request`]
//! answers one message. Everything is bounded: payloads ([`XENSTORE_PAYLOAD_MAX`]), paths
//! ([`XENSTORE_ABS_PATH_MAX`]), nodes ([`MAX_NODES`]) and their bytes ([`MAX_STORE_BYTES`]),
//! watches ([`MAX_WATCHES`]),
//! transactions ([`MAX_TRANSACTIONS`]), queued output ([`OUT_MAX`]) and the bytes one call
//! consumes. A ring index past the ring sets `error = XENSTORE_ERROR_RINGIDX`, an oversized
//! message `XENSTORE_ERROR_PROTO`; the connection then stops until the guest asks for a
//! reconnection (`connection = XENSTORE_RECONNECT`, offered in `server_features`).

use std::collections::{BTreeMap, VecDeque};

use super::evtchn::{CONSOLE_PORT, XENSTORE_PORT};
use super::guest::le;
use super::pv::CONSOLE_PFN;
use super::ring::{self, RingAccess, RingError};

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: u32 = 1024;
/// `XENSTORE_PAYLOAD_MAX`.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Nodes the store holds at most (`ENOSPC` past it).
pub const MAX_NODES: usize = 1024;
/// Bytes of paths, values and permissions the store holds at most (`ENOSPC` past it), so
/// that a transaction's snapshot stays small.
pub const MAX_STORE_BYTES: usize = 1 << 20;
/// Watches at most (`E2BIG` past it).
pub const MAX_WATCHES: usize = 128;
/// Open transactions at most (`ENOSPC` past it).
pub const MAX_TRANSACTIONS: usize = 16;
/// Response bytes waiting for room in the ring; requests are not read while more wait, and
/// watch events past it are dropped.
pub const OUT_MAX: usize = 64 * 1024;
/// Request bytes one [`XenStore::process_ring`] call consumes at most.
const BUDGET: usize = 64 * 1024;

/// `struct xsd_sockmsg` size.
pub const HEADER_LEN: usize = 16;

/// `struct xenstore_domain_interface` offsets.
pub mod layout {
    /// `req[XENSTORE_RING_SIZE]`.
    pub const REQ: usize = 0;
    /// `rsp[XENSTORE_RING_SIZE]`.
    pub const RSP: usize = 1024;
    /// `req_cons`.
    pub const REQ_CONS: usize = 2048;
    /// `req_prod`.
    pub const REQ_PROD: usize = 2052;
    /// `rsp_cons`.
    pub const RSP_CONS: usize = 2056;
    /// `rsp_prod`.
    pub const RSP_PROD: usize = 2060;
    /// `server_features`.
    pub const SERVER_FEATURES: usize = 2064;
    /// `connection`.
    pub const CONNECTION: usize = 2068;
    /// `error`.
    pub const ERROR: usize = 2072;
}

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`.
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `enum xsd_sockmsg_type`.
#[allow(missing_docs)]
pub mod msg {
    pub const XS_CONTROL: u32 = 0;
    pub const XS_DIRECTORY: u32 = 1;
    pub const XS_READ: u32 = 2;
    pub const XS_GET_PERMS: u32 = 3;
    pub const XS_WATCH: u32 = 4;
    pub const XS_UNWATCH: u32 = 5;
    pub const XS_TRANSACTION_START: u32 = 6;
    pub const XS_TRANSACTION_END: u32 = 7;
    pub const XS_INTRODUCE: u32 = 8;
    pub const XS_RELEASE: u32 = 9;
    pub const XS_GET_DOMAIN_PATH: u32 = 10;
    pub const XS_WRITE: u32 = 11;
    pub const XS_MKDIR: u32 = 12;
    pub const XS_RM: u32 = 13;
    pub const XS_SET_PERMS: u32 = 14;
    pub const XS_WATCH_EVENT: u32 = 15;
    pub const XS_ERROR: u32 = 16;
    pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const XS_RESUME: u32 = 18;
    pub const XS_SET_TARGET: u32 = 19;
    pub const XS_RESET_WATCHES: u32 = 21;
}
use msg::*;

/// One node: its value and its permissions (`n<dom>\0r<dom>\0...`, as XS_GET_PERMS shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The value.
    pub value: Vec<u8>,
    /// The permission strings, each NUL-terminated.
    pub perms: Vec<u8>,
}

type Tree = BTreeMap<String, Node>;

#[derive(Debug, Clone)]
struct Watch {
    /// The watched node made absolute (xenstored's `canonicalize`), or an `@` special path.
    node: String,
    /// Given relative: events report paths relative to the domain's home.
    relative: bool,
    /// Opaque bytes, echoed as given.
    token: Vec<u8>,
}

/// Watch events to send: `(path, token)`.
type Fired = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug)]
struct Transaction {
    tree: Tree,
    generation: u64,
    changed: Vec<(String, bool)>,
}

/// What one [`XenStore::process_ring`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingOutcome {
    /// Requests were consumed or responses produced (or an error set): notify the guest.
    pub notify: bool,
    /// The ring was malformed (the connection is stopped; the `error` field says why).
    pub error: Option<RingError>,
}

/// The store and its one connection.
#[derive(Debug)]
pub struct XenStore {
    domid: u16,
    tree: Tree,
    generation: u64,
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
    partial: Vec<u8>,
    out: VecDeque<u8>,
    broken: Option<RingError>,
    /// Watch events dropped because [`OUT_MAX`] bytes were waiting.
    pub dropped_events: u64,
}

/// An error answer (`XS_ERROR` with the `xsd_errors` name).
type XsResult = Result<Vec<u8>, &'static str>;

const OK: &[u8] = b"OK\0";

fn perms(owner: u16) -> Vec<u8> {
    format!("n{owner}\0").into_bytes()
}

impl XenStore {
    /// The store a toolstack leaves for domain `domid` when it introduces it: `/local/domain/
    /// <domid>` with `name`, `domid`, `memory/target`, `cpu/<n>/availability`, the console's
    /// and the store's `ring-ref` and `port`, and empty `device`, `control`, `data`.
    pub fn introduce(domid: u16, vcpus: u32, memory_kib: u64) -> Self {
        let mut xs = XenStore {
            domid,
            tree: Tree::new(),
            generation: 0,
            watches: Vec::new(),
            transactions: BTreeMap::new(),
            next_tx: 1,
            partial: Vec::new(),
            out: VecDeque::new(),
            broken: None,
            dropped_events: 0,
        };
        let home = xs.home();
        // What is above the domain belongs to domain 0, which alone may read or write it.
        xs.tree.insert("/".into(), Node { value: Vec::new(), perms: perms(0) });
        for (path, value) in [("/local/domain/0/name", "Domain-0"), ("/local/domain/0/domid", "0")]
        {
            let _ = write_node(&mut xs.tree, path, value.as_bytes().to_vec(), 0);
        }
        let mut put = |path: String, value: String| {
            let _ = write_node(&mut xs.tree, &path, value.into_bytes(), domid);
        };
        put(format!("{home}/name"), format!("polyvisor-{domid}"));
        put(format!("{home}/domid"), domid.to_string());
        put(format!("{home}/memory/target"), memory_kib.to_string());
        for n in 0..vcpus.min(64) {
            put(format!("{home}/cpu/{n}/availability"), "online".into());
        }
        put(format!("{home}/console/ring-ref"), CONSOLE_PFN.to_string());
        put(format!("{home}/console/port"), CONSOLE_PORT.to_string());
        put(format!("{home}/console/type"), "xenconsoled".into());
        put(format!("{home}/store/ring-ref"), super::pv::XENSTORE_PFN.to_string());
        put(format!("{home}/store/port"), XENSTORE_PORT.to_string());
        for dir in ["device", "control", "data"] {
            put(format!("{home}/{dir}"), String::new());
        }
        xs
    }

    /// `/local/domain/<domid>`.
    fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// The value of `path` (absolute), for tests and the VMM.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        self.tree.get(path).map(|n| n.value.as_slice())
    }

    /// Resets the connection (a reconnection): partial input, queued output, watches and
    /// transactions are dropped; the store stays.
    pub fn reset_connection(&mut self) {
        self.partial.clear();
        self.out.clear();
        self.watches.clear();
        self.transactions.clear();
        self.broken = None;
    }

    /// Serves the ring: honours a reconnection request, writes queued responses, reads and
    /// answers complete requests. Never reads or writes outside the page and never loops
    /// without consuming.
    pub fn process_ring(&mut self, ring: &mut (impl RingAccess + ?Sized)) -> RingOutcome {
        let mut outcome = RingOutcome::default();
        match self.serve(ring, &mut outcome) {
            Ok(()) => {}
            Err(e) => {
                let code = if e == RingError::Protocol {
                    XENSTORE_ERROR_PROTO
                } else {
                    XENSTORE_ERROR_RINGIDX
                };
                if e != RingError::Fault {
                    let _ = ring.write_u32(layout::ERROR, code);
                }
                self.broken = Some(e);
                outcome.error = Some(e);
                outcome.notify = true;
            }
        }
        outcome
    }

    fn serve(
        &mut self,
        ring: &mut (impl RingAccess + ?Sized),
        outcome: &mut RingOutcome,
    ) -> Result<(), RingError> {
        announce(ring)?;
        if ring.read_u32(layout::CONNECTION)? == XENSTORE_RECONNECT {
            self.reset_connection();
            for off in [layout::REQ_CONS, layout::REQ_PROD, layout::RSP_CONS, layout::RSP_PROD] {
                ring.write_u32(off, 0)?;
            }
            ring.write_u32(layout::ERROR, 0)?;
            ring.write_u32(layout::CONNECTION, XENSTORE_CONNECTED)?;
            outcome.notify = true;
        }
        if let Some(e) = self.broken {
            outcome.error = Some(e);
            return Ok(());
        }
        let mut budget = BUDGET;
        loop {
            outcome.notify |= self.flush(ring)?;
            if self.out.len() >= OUT_MAX || budget == 0 {
                return Ok(());
            }
            let c = ring.read_u32(layout::REQ_CONS)?;
            let p = ring.read_u32(layout::REQ_PROD)?;
            let avail = ring::used(c, p, XENSTORE_RING_SIZE)? as usize;
            if avail == 0 {
                return Ok(());
            }
            let need = if self.partial.len() < HEADER_LEN {
                HEADER_LEN - self.partial.len()
            } else {
                HEADER_LEN + self.payload_len() - self.partial.len()
            };
            let take = avail.min(need).min(budget);
            let start = self.partial.len();
            self.partial.resize(start + take, 0);
            let dst = self.partial.get_mut(start..).ok_or(RingError::Fault)?;
            ring::copy_out(ring, layout::REQ, XENSTORE_RING_SIZE, c, dst)?;
            ring.write_u32(layout::REQ_CONS, c.wrapping_add(take as u32))?;
            budget -= take;
            outcome.notify = true;
            if self.partial.len() == HEADER_LEN && self.payload_len() > XENSTORE_PAYLOAD_MAX {
                return Err(RingError::Protocol);
            }
            if self.partial.len() >= HEADER_LEN
                && self.partial.len() == HEADER_LEN + self.payload_len()
            {
                let message = std::mem::take(&mut self.partial);
                let answer = self.request(&message);
                self.out.extend(answer);
            }
        }
    }

    fn payload_len(&self) -> usize {
        let len = le::u32_at(&self.partial, 12);
        usize::try_from(len).unwrap_or(usize::MAX)
    }

    /// Moves queued output into the response ring; whether anything moved.
    fn flush(&mut self, ring: &mut (impl RingAccess + ?Sized)) -> Result<bool, RingError> {
        if self.out.is_empty() {
            return Ok(false);
        }
        let c = ring.read_u32(layout::RSP_CONS)?;
        let p = ring.read_u32(layout::RSP_PROD)?;
        let room = (XENSTORE_RING_SIZE - ring::used(c, p, XENSTORE_RING_SIZE)?) as usize;
        let n = room.min(self.out.len());
        if n == 0 {
            return Ok(false);
        }
        let bytes: Vec<u8> = self.out.drain(..n).collect();
        ring::copy_in(ring, layout::RSP, XENSTORE_RING_SIZE, p, &bytes)?;
        ring.write_u32(layout::RSP_PROD, p.wrapping_add(n as u32))?;
        Ok(true)
    }

    /// Answers one whole message (header and payload): the response, followed by any watch
    /// events it fired, as wire bytes.
    pub fn request(&mut self, message: &[u8]) -> Vec<u8> {
        let word = |i: usize| le::u32_at(message, i * 4);
        let (kind, req_id, tx_id) = (word(0), word(1), word(2));
        let payload = message.get(HEADER_LEN..).unwrap_or(&[]);
        let mut fired = Vec::new();
        let answer = if payload.len() > XENSTORE_PAYLOAD_MAX || payload.len() != word(3) as usize {
            Err("EINVAL")
        } else {
            self.operation(kind, tx_id, payload, &mut fired)
        };
        let mut out = match answer {
            Ok(body) if body.len() <= XENSTORE_PAYLOAD_MAX => encode(kind, req_id, tx_id, &body),
            Ok(_) => encode(XS_ERROR, req_id, tx_id, b"E2BIG\0"),
            Err(e) => {
                let mut body = e.as_bytes().to_vec();
                body.push(0);
                encode(XS_ERROR, req_id, tx_id, &body)
            }
        };
        for (path, token) in fired {
            let mut body = path;
            body.push(0);
            body.extend_from_slice(&token);
            body.push(0);
            if self.out.len() + out.len() + body.len() > OUT_MAX {
                self.dropped_events += 1;
                continue;
            }
            out.extend(encode(XS_WATCH_EVENT, 0, 0, &body));
        }
        out
    }

    fn operation(&mut self, kind: u32, tx_id: u32, payload: &[u8], fired: &mut Fired) -> XsResult {
        let args = strings(payload);
        let one = || -> Result<String, &'static str> {
            match args.as_slice() {
                [a] => Ok(a.clone()),
                _ => Err("EINVAL"),
            }
        };
        match kind {
            XS_DIRECTORY | XS_READ | XS_GET_PERMS => {
                let path = self.absolute(&one()?)?;
                let tree = self.tree_for(tx_id)?;
                let node =
                    tree.get(&path).ok_or_else(|| missing(tree, &path, self.domid, false))?;
                if !access(&node.perms, self.domid).read {
                    return Err("EACCES");
                }
                Ok(match kind {
                    XS_READ => node.value.clone(),
                    XS_GET_PERMS => node.perms.clone(),
                    _ => children(tree, &path),
                })
            }
            XS_WRITE => {
                // "path\0value": the value is not NUL-terminated and may hold NULs.
                let cut = payload.iter().position(|&b| b == 0).ok_or("EINVAL")?;
                let raw = payload.get(..cut).ok_or("EINVAL")?;
                let path = self.absolute(std::str::from_utf8(raw).map_err(|_| "EINVAL")?)?;
                let value = payload.get(cut + 1..).unwrap_or(&[]).to_vec();
                let domid = self.domid;
                let tree = self.tree_mut(tx_id)?;
                may_write(tree, &path, domid)?;
                write_node(tree, &path, value, domid)?;
                self.changed(tx_id, path, false, fired);
                Ok(OK.to_vec())
            }
            XS_MKDIR => {
                let path = self.absolute(&one()?)?;
                let domid = self.domid;
                let tree = self.tree_mut(tx_id)?;
                // An existing node must be writable too (xenstored's do_mkdir).
                may_write(tree, &path, domid)?;
                if !tree.contains_key(&path) {
                    write_node(tree, &path, Vec::new(), domid)?;
                    self.changed(tx_id, path, false, fired);
                }
                Ok(OK.to_vec())
            }
            XS_RM => {
                let path = self.absolute(&one()?)?;
                if path == "/" {
                    return Err("EINVAL");
                }
                let domid = self.domid;
                let tree = self.tree_mut(tx_id)?;
                if let Some(node) = tree.get(&path) {
                    if !access(&node.perms, domid).write {
                        return Err("EACCES");
                    }
                } else {
                    // xenstored: removing a missing node whose parent exists is fine, unless
                    // the node above it may not be written (do_rm after get_node's errno).
                    let e = missing(tree, &path, domid, true);
                    return if e == "ENOENT" && tree.contains_key(&parent(&path)) {
                        Ok(OK.to_vec())
                    } else {
                        Err(e)
                    };
                }
                let below = format!("{path}/");
                tree.retain(|k, _| k != &path && !k.starts_with(&below));
                self.changed(tx_id, path, true, fired);
                Ok(OK.to_vec())
            }
            XS_SET_PERMS => {
                let (first, rest) = args.split_first().ok_or("EINVAL")?;
                if rest.is_empty() || !rest.iter().all(|p| valid_perm(p)) {
                    return Err("EINVAL");
                }
                let path = self.absolute(first)?;
                let domid = self.domid;
                let perms: Vec<u8> = rest.iter().flat_map(|p| p.bytes().chain([0])).collect();
                let tree = self.tree_mut(tx_id)?;
                let node = tree.get(&path).ok_or_else(|| missing(tree, &path, domid, true))?;
                // Only the owner may; it may not give the node away (xenstored's
                // do_set_perms for an unprivileged domain).
                if owner(&node.perms) != Some(domid) {
                    return Err("EACCES");
                }
                if rest.first().and_then(|p| p.get(1..)).and_then(|id| id.parse().ok())
                    != Some(domid)
                {
                    return Err("EPERM");
                }
                // Permissions count towards the store's bytes as values do.
                if held(tree) - node.perms.len() + perms.len() > MAX_STORE_BYTES {
                    return Err("ENOSPC");
                }
                let node = tree.get_mut(&path).ok_or("ENOENT")?;
                node.perms = perms;
                self.changed(tx_id, path, false, fired);
                Ok(OK.to_vec())
            }
            XS_WATCH => {
                let raw = raw_strings(payload);
                let (Some(raw_path), [path, _]) = (raw.first(), args.as_slice()) else {
                    return Err("EINVAL");
                };
                let token = watch_token(payload);
                let node = self.watch_node(path)?;
                if self.watches.iter().any(|w| w.node == node && w.token == token) {
                    return Err("EEXIST");
                }
                if self.watches.len() >= MAX_WATCHES {
                    return Err("E2BIG");
                }
                let relative = !path.starts_with('/') && !path.starts_with('@');
                self.watches.push(Watch { node, relative, token: token.clone() });
                // A new watch fires once at once (docs/misc/xenstore.txt), with the path as
                // given.
                fired.push((raw_path.to_vec(), token));
                Ok(OK.to_vec())
            }
            XS_UNWATCH => {
                let [path, _] = args.as_slice() else {
                    return Err("EINVAL");
                };
                let token = watch_token(payload);
                let node = self.watch_node(path)?;
                let before = self.watches.len();
                self.watches.retain(|w| !(w.node == node && w.token == token));
                if self.watches.len() == before {
                    return Err("ENOENT");
                }
                Ok(OK.to_vec())
            }
            XS_RESET_WATCHES => {
                self.watches.clear();
                Ok(OK.to_vec())
            }
            XS_TRANSACTION_START => {
                if tx_id != 0 {
                    return Err("EBUSY");
                }
                if !matches!(payload, [] | [0]) {
                    return Err("EINVAL");
                }
                if self.transactions.len() >= MAX_TRANSACTIONS {
                    return Err("ENOSPC");
                }
                let id = self.next_tx;
                self.next_tx = self.next_tx.wrapping_add(1).max(1);
                let t = Transaction {
                    tree: self.tree.clone(),
                    generation: self.generation,
                    changed: Vec::new(),
                };
                self.transactions.insert(id, t);
                Ok(format!("{id}\0").into_bytes())
            }
            XS_TRANSACTION_END => {
                let commit = match one()?.as_str() {
                    "T" => true,
                    "F" => false,
                    _ => return Err("EINVAL"),
                };
                let t = self.transactions.remove(&tx_id).ok_or("ENOENT")?;
                if commit {
                    if t.generation != self.generation {
                        return Err("EAGAIN");
                    }
                    // One that changed nothing changes nothing: others still commit.
                    if t.changed.is_empty() {
                        return Ok(OK.to_vec());
                    }
                    self.tree = t.tree;
                    self.generation += 1;
                    for (path, recursive) in t.changed {
                        self.fire(&path, recursive, fired);
                    }
                }
                Ok(OK.to_vec())
            }
            XS_GET_DOMAIN_PATH => {
                let id: u16 = one()?.parse().map_err(|_| "EINVAL")?;
                Ok(format!("/local/domain/{id}\0").into_bytes())
            }
            XS_IS_DOMAIN_INTRODUCED => {
                let id: u16 = one()?.parse().map_err(|_| "EINVAL")?;
                Ok(if id == self.domid || id == 0 { b"T\0".to_vec() } else { b"F\0".to_vec() })
            }
            // Toolstack operations: only a privileged domain may (xenstored's answer).
            XS_CONTROL | XS_INTRODUCE | XS_RELEASE | XS_RESUME | XS_SET_TARGET => Err("EACCES"),
            XS_WATCH_EVENT | XS_ERROR => Err("EINVAL"),
            _ => Err("ENOSYS"),
        }
    }

    fn tree_for(&self, tx_id: u32) -> Result<&Tree, &'static str> {
        if tx_id == 0 {
            return Ok(&self.tree);
        }
        self.transactions.get(&tx_id).map(|t| &t.tree).ok_or("ENOENT")
    }

    fn tree_mut(&mut self, tx_id: u32) -> Result<&mut Tree, &'static str> {
        if tx_id == 0 {
            return Ok(&mut self.tree);
        }
        self.transactions.get_mut(&tx_id).map(|t| &mut t.tree).ok_or("ENOENT")
    }

    /// Notes a change: outside a transaction watches fire now, inside at commit.
    fn changed(&mut self, tx_id: u32, path: String, recursive: bool, fired: &mut Fired) {
        if tx_id == 0 {
            self.generation += 1;
            self.fire(&path, recursive, fired);
        } else if let Some(t) = self.transactions.get_mut(&tx_id) {
            if t.changed.len() < MAX_NODES {
                t.changed.push((path, recursive));
            }
        }
    }

    /// Watches on `path` or on a node above it fire with `path`; for a removal, watches
    /// below it fire with their own node (xenstored's `fire_watches`). A relative watch's
    /// event path is relative to the domain's home.
    fn fire(&self, path: &str, recursive: bool, fired: &mut Fired) {
        let home = self.home();
        for w in &self.watches {
            if w.node.starts_with('@') {
                continue;
            }
            let name = if is_within(path, &w.node) {
                path
            } else if recursive && is_within(&w.node, path) {
                w.node.as_str()
            } else {
                continue;
            };
            let shown = match name.strip_prefix(&home) {
                Some(rest) if w.relative => rest.strip_prefix('/').unwrap_or(rest),
                _ => name,
            };
            fired.push((shown.as_bytes().to_vec(), w.token.clone()));
        }
    }

    /// A watch's node: an `@` special path as it is, any other made absolute.
    fn watch_node(&self, path: &str) -> Result<String, &'static str> {
        if path.starts_with('@') {
            if path.len() > XENSTORE_REL_PATH_MAX {
                return Err("EINVAL");
            }
            Ok(path.to_string())
        } else {
            self.absolute(path)
        }
    }

    /// A guest path made absolute and checked (`EINVAL` when malformed or too long).
    fn absolute(&self, path: &str) -> Result<String, &'static str> {
        let abs = if path.starts_with('/') {
            path.to_string()
        } else {
            if path.len() > XENSTORE_REL_PATH_MAX {
                return Err("EINVAL");
            }
            format!("{}/{path}", self.home())
        };
        let chars_ok = abs.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
        if abs.len() > XENSTORE_ABS_PATH_MAX
            || !chars_ok
            || abs.contains("//")
            || (abs.len() > 1 && abs.ends_with('/'))
        {
            return Err("EINVAL");
        }
        Ok(abs)
    }
}

/// Whether `path` is `base` or below it.
fn is_within(path: &str, base: &str) -> bool {
    path == base || base == "/" || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path.get(..i).unwrap_or("/").to_string(),
    }
}

/// Bytes of paths, values and permissions the tree holds.
fn held(tree: &Tree) -> usize {
    tree.iter().map(|(k, n)| k.len() + n.value.len() + n.perms.len()).sum()
}

/// What a domain may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    read: bool,
    write: bool,
}

/// The permission entries of `perms` (`n<dom>\0r<dom>\0...`) as `(letter, domain)`.
fn entries(perms: &[u8]) -> impl Iterator<Item = (u8, Option<u16>)> + '_ {
    perms.split(|&b| b == 0).filter(|e| !e.is_empty()).map(|e| {
        let id = std::str::from_utf8(e.get(1..).unwrap_or(&[])).ok().and_then(|s| s.parse().ok());
        (e.first().copied().unwrap_or(b'n'), id)
    })
}

/// The node's owner: the first entry's domain.
fn owner(perms: &[u8]) -> Option<u16> {
    entries(perms).next().and_then(|(_, id)| id)
}

/// xenstored's `perm_for_conn` for an unprivileged domain: the owner may do anything; else
/// the entry naming the domain applies, else the first entry's letter (everyone else).
fn access(perms: &[u8], domid: u16) -> Access {
    let mut all = entries(perms);
    let Some((default, first)) = all.next() else {
        return Access { read: false, write: false };
    };
    if first == Some(domid) {
        return Access { read: true, write: true };
    }
    let letter = all.find(|&(_, id)| id == Some(domid)).map_or(default, |(l, _)| l);
    Access { read: matches!(letter, b'r' | b'b'), write: matches!(letter, b'w' | b'b') }
}

/// The error for a node that is not there (xenstored's `errno_from_parents`): `ENOENT` if
/// the nearest node above it grants `domid` the access asked for (`write`, else read), else
/// `EACCES`, so a failure tells nothing about a part of the tree the domain may not see.
fn missing(tree: &Tree, path: &str, domid: u16, write: bool) -> &'static str {
    let mut p = path.to_string();
    // Bounded: each step is one component shorter, and "/" ends it.
    while p != "/" {
        p = parent(&p);
        if let Some(node) = tree.get(&p) {
            let a = access(&node.perms, domid);
            let granted = if write { a.write } else { a.read };
            return if granted { "ENOENT" } else { "EACCES" };
        }
    }
    // No root: xenstored finds no permissions at all.
    "EACCES"
}

/// Whether `domid` may write `path`: the node if it exists, else the nearest node above it
/// (where the new nodes would be created); `EACCES` if not.
fn may_write(tree: &Tree, path: &str, domid: u16) -> Result<(), &'static str> {
    let mut p = path.to_string();
    // Bounded: each step is one component shorter, and "/" ends it.
    loop {
        if let Some(node) = tree.get(&p) {
            return if access(&node.perms, domid).write { Ok(()) } else { Err("EACCES") };
        }
        if p == "/" {
            return Ok(());
        }
        p = parent(&p);
    }
}

/// The permissions of a node `owner` creates below one with `above`: a copy, owned by
/// `owner` (xenstored: "Domains own what they create").
fn inherited(above: Option<&[u8]>, owner: u16) -> Vec<u8> {
    let mut out = perms(owner);
    for e in above.unwrap_or(&[]).split(|&b| b == 0).filter(|e| !e.is_empty()).skip(1) {
        out.extend_from_slice(e);
        out.push(0);
    }
    out
}

/// Writes `path` (creating missing parents with empty values, with the permissions of the
/// node above them, owned by `owner`); `ENOSPC` past [`MAX_NODES`].
fn write_node(tree: &mut Tree, path: &str, value: Vec<u8>, owner: u16) -> Result<(), &'static str> {
    let mut missing = Vec::new();
    let mut p = path.to_string();
    while !tree.contains_key(&p) {
        missing.push(p.clone());
        if p == "/" {
            break;
        }
        p = parent(&p);
    }
    if tree.len() + missing.len() > MAX_NODES {
        return Err("ENOSPC");
    }
    let above = tree.get(&p).map(|n| n.perms.clone());
    let new_perms = inherited(above.as_deref(), owner);
    let adding: usize =
        missing.iter().map(|m| m.len() + new_perms.len()).sum::<usize>() + value.len();
    if held(tree) + adding > MAX_STORE_BYTES {
        return Err("ENOSPC");
    }
    for m in missing {
        tree.insert(m, Node { value: Vec::new(), perms: new_perms.clone() });
    }
    if let Some(n) = tree.get_mut(path) {
        n.value = value;
    }
    Ok(())
}

/// The names of `path`'s children, each NUL-terminated.
fn children(tree: &Tree, path: &str) -> Vec<u8> {
    let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
    let mut out = Vec::new();
    for key in tree.range(prefix.clone()..).map(|(k, _)| k).take_while(|k| k.starts_with(&prefix)) {
        let name = key.get(prefix.len()..).unwrap_or("");
        if !name.is_empty() && !name.contains('/') {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
    }
    out
}

/// A permission string: `n`, `r`, `w` or `b` and a domain id.
fn valid_perm(p: &str) -> bool {
    let mut chars = p.chars();
    matches!(chars.next(), Some('n' | 'r' | 'w' | 'b')) && chars.as_str().parse::<u16>().is_ok()
}

/// The NUL-terminated strings of a payload, as bytes; a trailing unterminated piece makes the
/// payload malformed (no strings).
fn raw_strings(payload: &[u8]) -> Vec<&[u8]> {
    if payload.last() != Some(&0) {
        return Vec::new();
    }
    let body = payload.get(..payload.len() - 1).unwrap_or(&[]);
    body.split(|&b| b == 0).collect()
}

/// The NUL-terminated strings of a payload as text (paths, which must be ASCII anyway).
fn strings(payload: &[u8]) -> Vec<String> {
    raw_strings(payload).into_iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// The token of a `path\0token\0` payload, as its bytes.
fn watch_token(payload: &[u8]) -> Vec<u8> {
    raw_strings(payload).get(1).map_or_else(Vec::new, |t| t.to_vec())
}

/// Writes the ring's `server_features`: reconnection and the error field are offered.
/// xenstored does it when it introduces the domain, so a guest sees them before its first
/// request (docs/misc/xenstore-ring.txt: check the feature, then ask for a reconnection).
pub fn announce(ring: &mut (impl RingAccess + ?Sized)) -> Result<(), RingError> {
    ring.write_u32(
        layout::SERVER_FEATURES,
        XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR,
    )
}

/// A wire message.
pub fn encode(kind: u32, req_id: u32, tx_id: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    for w in [kind, req_id, tx_id, body.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests;
