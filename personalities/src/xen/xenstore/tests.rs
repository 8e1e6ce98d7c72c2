//! The wire protocol message by message, and the ring with arbitrary contents.

use super::*;

fn xs() -> XenStore {
    XenStore::introduce(3, 2, 65536)
}

fn ask(xs: &mut XenStore, kind: u32, tx: u32, body: &[u8]) -> (u32, Vec<u8>) {
    let out = xs.request(&encode(kind, 5, tx, body));
    let k = u32::from_le_bytes(out[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(out[12..16].try_into().unwrap()) as usize;
    (k, out[16..16 + len].to_vec())
}

#[test]
fn introduced_nodes_and_paths() {
    let mut x = xs();
    assert_eq!(
        ask(&mut x, XS_READ, 0, b"/local/domain/3/name\0"),
        (XS_READ, b"polyvisor-3".to_vec())
    );
    assert_eq!(ask(&mut x, XS_READ, 0, b"memory/target\0").1, b"65536");
    assert_eq!(ask(&mut x, XS_GET_DOMAIN_PATH, 0, b"3\0").1, b"/local/domain/3\0");
    assert_eq!(ask(&mut x, XS_GET_PERMS, 0, b"domid\0").1, b"n3\0");
    let (_, dir) = ask(&mut x, XS_DIRECTORY, 0, b"cpu\0");
    assert_eq!(dir, b"0\x001\0");
    assert_eq!(ask(&mut x, XS_READ, 0, b"nope\0"), (XS_ERROR, b"ENOENT\0".to_vec()));
    for bad in [&b"a//b\0"[..], b"a/\0", b"sp ace\0", b"noterm"] {
        assert_eq!(ask(&mut x, XS_READ, 0, bad), (XS_ERROR, b"EINVAL\0".to_vec()), "{bad:?}");
    }
    let long = format!("/{}\0", "a".repeat(XENSTORE_ABS_PATH_MAX));
    assert_eq!(ask(&mut x, XS_WRITE, 0, long.as_bytes()).0, XS_ERROR);
    assert_eq!(ask(&mut x, XS_INTRODUCE, 0, b"1\x002\x003\0"), (XS_ERROR, b"EACCES\0".to_vec()));
    assert_eq!(ask(&mut x, 99, 0, b""), (XS_ERROR, b"ENOSYS\0".to_vec()));
}

#[test]
fn write_mkdir_rm_and_watches() {
    let mut x = xs();
    let out = x.request(&encode(XS_WATCH, 1, 0, b"/local/domain/3/data\0t\0"));
    assert_eq!(out.len(), 16 + 3 + 16 + "/local/domain/3/data\0t\0".len());
    assert_eq!(ask(&mut x, XS_WATCH, 0, b"/local/domain/3/data\0t\0").1, b"EEXIST\0");
    let out = x.request(&encode(XS_WRITE, 2, 0, b"data/a/b\0xy"));
    assert!(out.ends_with(b"/local/domain/3/data/a/b\0t\0"));
    assert_eq!(x.read("/local/domain/3/data/a/b"), Some(&b"xy"[..]));
    assert_eq!(x.read("/local/domain/3/data/a"), Some(&b""[..]));
    let out = x.request(&encode(XS_RM, 3, 0, b"data/a\0"));
    assert!(out.ends_with(b"/local/domain/3/data/a\0t\0"));
    assert_eq!(x.read("/local/domain/3/data/a/b"), None);
    assert_eq!(ask(&mut x, XS_RM, 0, b"data/a\0").1, b"OK\0", "parent exists");
    assert_eq!(ask(&mut x, XS_RM, 0, b"data/a/b/c\0").1, b"ENOENT\0");
    assert_eq!(ask(&mut x, XS_UNWATCH, 0, b"/local/domain/3/data\0t\0").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_UNWATCH, 0, b"/local/domain/3/data\0t\0").1, b"ENOENT\0");
    for i in 0..MAX_WATCHES {
        let w = format!("w{i}\0t\0");
        assert_eq!(ask(&mut x, XS_WATCH, 0, w.as_bytes()).0, XS_WATCH);
    }
    assert_eq!(ask(&mut x, XS_WATCH, 0, b"more\0t\0").1, b"E2BIG\0");
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let mut x = xs();
    let (_, id) = ask(&mut x, XS_TRANSACTION_START, 0, b"\0");
    let tx: u32 = std::str::from_utf8(&id[..id.len() - 1]).unwrap().parse().unwrap();
    assert_eq!(ask(&mut x, XS_WRITE, tx, b"data/t\0in").1, b"OK\0");
    assert_eq!(x.read("/local/domain/3/data/t"), None, "not before commit");
    assert_eq!(ask(&mut x, XS_TRANSACTION_END, tx, b"T\0").1, b"OK\0");
    assert_eq!(x.read("/local/domain/3/data/t"), Some(&b"in"[..]));
    assert_eq!(ask(&mut x, XS_TRANSACTION_END, tx, b"T\0").1, b"ENOENT\0");
    let (_, id) = ask(&mut x, XS_TRANSACTION_START, 0, b"\0");
    let tx: u32 = std::str::from_utf8(&id[..id.len() - 1]).unwrap().parse().unwrap();
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/u\0out").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_TRANSACTION_END, tx, b"T\0").1, b"EAGAIN\0");
    for _ in 0..MAX_TRANSACTIONS {
        assert_eq!(ask(&mut x, XS_TRANSACTION_START, 0, b"\0").0, XS_TRANSACTION_START);
    }
    assert_eq!(ask(&mut x, XS_TRANSACTION_START, 0, b"\0").1, b"ENOSPC\0");
}

#[test]
fn the_node_limit_holds() {
    let mut x = xs();
    let mut refused = false;
    for i in 0..MAX_NODES + 10 {
        let w = format!("data/n{i}\0v");
        if ask(&mut x, XS_WRITE, 0, w.as_bytes()).1 == b"ENOSPC\0" {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[test]
fn the_byte_limit_holds() {
    let mut x = xs();
    let value = vec![b'v'; 4000];
    let mut refused = false;
    for i in 0..400 {
        let mut w = format!("data/big{i}\0").into_bytes();
        w.extend_from_slice(&value);
        if ask(&mut x, XS_WRITE, 0, &w).1 == b"ENOSPC\0" {
            refused = i > 200;
            break;
        }
    }
    assert!(refused, "about 1 MiB of values is accepted, then ENOSPC");
}

#[test]
fn permissions_count_towards_the_byte_limit() {
    // Found by the `xenstore` fuzz target: a store filled to its byte limit with values grew
    // past it through XS_SET_PERMS.
    let mut x = xs();
    let value = vec![b'v'; 4000];
    let mut i = 0;
    loop {
        let mut w = format!("data/big{i}\0").into_bytes();
        w.extend_from_slice(&value);
        if ask(&mut x, XS_WRITE, 0, &w).1 == b"ENOSPC\0" {
            break;
        }
        i += 1;
    }
    // The guest owns the nodes it wrote and may only keep them: its own id first.
    let perms: String = (0..8).map(|_| format!("n{}\0", x.domid)).collect();
    let mut refused = false;
    for n in 0..i {
        let (kind, body) = ask(&mut x, XS_SET_PERMS, 0, format!("data/big{n}\0{perms}").as_bytes());
        let held: usize = x.tree.iter().map(|(k, n)| k.len() + n.value.len() + n.perms.len()).sum();
        assert!(held <= MAX_STORE_BYTES, "{held} bytes after setting data/big{n}'s permissions");
        if (kind, body.as_slice()) == (XS_ERROR, b"ENOSPC\0".as_slice()) {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[test]
fn arbitrary_ring_contents_end_without_a_hang() {
    // Pseudo-random pages: whatever they hold, one call returns and stays in the page.
    let mut seed = 0x1234_5678u32;
    for _ in 0..200 {
        let mut page = vec![0u8; 4096];
        for b in page.iter_mut() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (seed >> 16) as u8;
        }
        // Keep the indices sane half of the time, so messages get parsed.
        if seed & 1 == 0 {
            page[2048..2052].copy_from_slice(&0u32.to_le_bytes());
            page[2052..2056].copy_from_slice(&((seed >> 8) % 1025).to_le_bytes());
            page[2068..2072].copy_from_slice(&0u32.to_le_bytes());
        }
        let mut x = xs();
        let _ = x.process_ring(&mut page[..]);
        let _ = x.process_ring(&mut page[..]);
    }
    // A short buffer is a fault, not an out-of-bounds access.
    let mut short = [0u8; 100];
    assert_eq!(xs().process_ring(&mut short[..]).error, Some(RingError::Fault));
}

/// The watch events in a response, as `(path, token)`.
fn events(out: &[u8]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= out.len() {
        let word =
            |i: usize| u32::from_le_bytes(out[at + i * 4..at + i * 4 + 4].try_into().unwrap());
        let len = word(3) as usize;
        let body = &out[at + HEADER_LEN..at + HEADER_LEN + len];
        if word(0) == XS_WATCH_EVENT {
            let parts: Vec<_> = body.split(|&b| b == 0).collect();
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            found.push((text(parts[0]), text(parts[1])));
        }
        at += HEADER_LEN + len;
    }
    found
}

#[test]
fn removing_a_directory_fires_watches_below_it_with_their_own_path() {
    let mut x = xs();
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/a/b/c/d\0v").1, b"OK\0");
    x.request(&encode(XS_WATCH, 1, 0, b"/local/domain/3/data/a/b/c\0abs\0"));
    x.request(&encode(XS_WATCH, 1, 0, b"data/a/b\0rel\0"));
    x.request(&encode(XS_WATCH, 1, 0, b"data\0above\0"));
    // xenstored's fire_watches(recurse): a watch below the removed node reports its own
    // node (the node it watches is gone), a watch above reports the removed node.
    let mut got = events(&x.request(&encode(XS_RM, 2, 0, b"data/a\0")));
    got.sort();
    assert_eq!(
        got,
        [
            ("/local/domain/3/data/a/b/c".to_string(), "abs".to_string()),
            ("data/a".to_string(), "above".to_string()),
            ("data/a/b".to_string(), "rel".to_string()),
        ]
    );
}

#[test]
fn watches_are_the_same_relative_or_absolute() {
    let mut x = xs();
    assert_eq!(ask(&mut x, XS_WATCH, 0, b"data\0t\0").1, b"OK\0");
    // xenstored canonicalizes the path: the same node and token is the same watch.
    assert_eq!(ask(&mut x, XS_WATCH, 0, b"/local/domain/3/data\0t\0").1, b"EEXIST\0");
    assert_eq!(ask(&mut x, XS_UNWATCH, 0, b"/local/domain/3/data\0t\0").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_UNWATCH, 0, b"data\0t\0").1, b"ENOENT\0");
}

#[test]
fn permissions_are_enforced_for_the_guest() {
    let mut x = xs();
    // Domain 0's nodes ("n0": nobody else may read or write).
    assert_eq!(ask(&mut x, XS_GET_PERMS, 0, b"/local/domain/0/name\0").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_READ, 0, b"/local/domain/0/name\0").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_DIRECTORY, 0, b"/local\0").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"/local/domain/0/name\0me").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"/top/x\0v").1, b"EACCES\0", "a new node under /");
    assert_eq!(x.read("/top"), None);
    assert_eq!(ask(&mut x, XS_MKDIR, 0, b"/local\0").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_RM, 0, b"/local/domain/0\0").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_SET_PERMS, 0, b"/local\0n3\0").1, b"EACCES\0");
    assert!(x.read("/local/domain/0/name").is_some());
    // The domain's own nodes: it may give others access but not the node away.
    assert_eq!(ask(&mut x, XS_SET_PERMS, 0, b"data\0n3\0r5\0").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_SET_PERMS, 0, b"data\0n0\0").1, b"EPERM\0");
    // Created parents inherit their parent's permissions, owned by their creator.
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/x/y\0v").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_GET_PERMS, 0, b"data/x\0").1, b"n3\0r5\0");
    assert_eq!(ask(&mut x, XS_GET_PERMS, 0, b"data/x/y\0").1, b"n3\0r5\0");
    // A node another domain owns, readable by this one: read yes, write no.
    x.tree.get_mut("/local/domain/3/data/x").unwrap().perms = b"n0\0r3\0".to_vec();
    assert_eq!(ask(&mut x, XS_READ, 0, b"data/x\0").1, b"");
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/x\0v").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/x/new\0v").1, b"EACCES\0");
    assert_eq!(ask(&mut x, XS_WRITE, 0, b"data/x/y\0w").1, b"OK\0", "its own child");
}

#[test]
fn a_missing_node_under_one_the_domain_may_not_read_is_eacces() {
    // xenstored's errno_from_parents: the nearest node above decides ENOENT or EACCES.
    let mut x = xs();
    let eacces = b"EACCES\0".to_vec();
    for kind in [XS_READ, XS_GET_PERMS, XS_DIRECTORY] {
        assert_eq!(ask(&mut x, kind, 0, b"/local/domain/0/nope\0").1, eacces, "{kind}");
        assert_eq!(ask(&mut x, kind, 0, b"/local/domain/0/a/b\0").1, eacces, "{kind}");
        assert_eq!(ask(&mut x, kind, 0, b"data/nope\0").1, b"ENOENT\0", "{kind}");
    }
    // Write access is what counts for rm and set_perms.
    assert_eq!(ask(&mut x, XS_RM, 0, b"/local/domain/0/nope\0").1, eacces);
    assert_eq!(ask(&mut x, XS_RM, 0, b"/local/domain/0/a/b\0").1, eacces);
    assert_eq!(ask(&mut x, XS_SET_PERMS, 0, b"/local/domain/0/nope\0n3\0").1, eacces);
    assert_eq!(ask(&mut x, XS_SET_PERMS, 0, b"data/nope\0n3\0").1, b"ENOENT\0");
    // Readable but not writable: a read is ENOENT, an rm EACCES.
    x.tree.get_mut("/local/domain/3/data").unwrap().perms = b"n0\0r3\0".to_vec();
    assert_eq!(ask(&mut x, XS_READ, 0, b"data/nope\0").1, b"ENOENT\0");
    assert_eq!(ask(&mut x, XS_RM, 0, b"data/nope\0").1, eacces);
}

#[test]
fn watch_tokens_are_echoed_byte_for_byte() {
    let mut x = xs();
    // A token is opaque to xenstored: any bytes but NUL come back as they were given.
    let out = x.request(&encode(XS_WATCH, 1, 0, b"data\0\xff\xfe tok\0"));
    assert!(out.ends_with(b"data\0\xff\xfe tok\0"), "{out:?}");
    let out = x.request(&encode(XS_WRITE, 2, 0, b"data/k\0v"));
    assert!(out.ends_with(b"data/k\0\xff\xfe tok\0"), "{out:?}");
    assert_eq!(ask(&mut x, XS_UNWATCH, 0, b"data\0\xff\xfe tok\0").1, b"OK\0");
}

#[test]
fn a_transaction_that_changed_nothing_does_not_conflict_with_others() {
    let mut x = xs();
    let start = |x: &mut XenStore| {
        let (_, id) = ask(x, XS_TRANSACTION_START, 0, b"\0");
        std::str::from_utf8(&id[..id.len() - 1]).unwrap().parse::<u32>().unwrap()
    };
    let (reader, writer) = (start(&mut x), start(&mut x));
    assert_eq!(ask(&mut x, XS_READ, reader, b"domid\0").1, b"3");
    assert_eq!(ask(&mut x, XS_TRANSACTION_END, reader, b"T\0").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_WRITE, writer, b"data/w\0v").1, b"OK\0");
    assert_eq!(ask(&mut x, XS_TRANSACTION_END, writer, b"T\0").1, b"OK\0");
    assert_eq!(x.read("/local/domain/3/data/w"), Some(&b"v"[..]));
}
