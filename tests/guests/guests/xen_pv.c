/* xen_pv: uses polyvisor's Xen PV platform from the inside (docs/abi/xen.md, "The PV
 * platform"): event channels with 2-level delivery into shared_info and an upcall vector, the
 * VMM's loopback backend, a loop in the guest, IPIs, masking, VIRQ_TIMER from the single-shot
 * timer and from set_timer_op waking SCHEDOP_block and SCHEDOP_poll; a XenStore exchange over
 * the ring (write, read, mkdir, directory, watches and their events, a transaction, rm,
 * get_domain_path, the introduced nodes); the PV console ring (output to the host, host input
 * in); an event after a timed-out poll not ending the next halt at once; and malformed rings:
 * indices past the ring and an oversized XenStore message end in the protocol's error (the
 * ring's `error` field), then a reconnection, and a console producer past the ring is dropped.
 * Sources: xen-project/xen xen/include/public/{event_channel.h,
 * xen.h, io/xs_wire.h, io/console.h}, docs/misc/xenstore-ring.txt.
 *
 * Built as xen_pv_pvh64 (PVH, then long mode), xen_pv64 (ELF64 direct) and xen_pv_pvh32
 * (compat layouts). One line per check; exit status (port 0xF4) 0 only if every check passed.
 *
 * Cmdline:
 *   domid=1            the [xen] domid configured
 *   input=TEXT         host console input the VMM was given: wait for it in the console ring
 */
#include "xen_hc.h"

/* event_channel.h */
#define EVTCHNOP_bind_interdomain 0
#define EVTCHNOP_bind_virq 1
#define EVTCHNOP_close 3
#define EVTCHNOP_send 4
#define EVTCHNOP_status 5
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_bind_ipi 7
#define EVTCHNOP_bind_vcpu 8
#define EVTCHNOP_unmask 9
#define EVTCHNOP_init_control 11
#define EVTCHNSTAT_unbound 1
#define EVTCHNSTAT_interdomain 2
#define EVTCHNSTAT_virq 4
#define VIRQ_TIMER 0
struct evtchn_alloc_unbound {
    u16 dom, remote_dom;
    u32 port;
};
struct evtchn_bind_interdomain {
    u16 remote_dom;
    u32 remote_port;
    u32 local_port;
};
struct evtchn_bind_virq {
    u32 virq, vcpu, port;
};
struct evtchn_bind_ipi {
    u32 vcpu, port;
};
struct evtchn_status {
    u16 dom;
    u32 port;
    u32 status;
    u32 vcpu;
    union {
        struct {
            u16 dom;
        } unbound;
        struct {
            u16 dom;
            u32 port;
        } interdomain;
        u32 virq;
    } u;
};
_Static_assert(sizeof(struct evtchn_status) == 24, "evtchn_status");
_Static_assert(sizeof(struct evtchn_bind_interdomain) == 12, "bind_interdomain");

/* io/xs_wire.h */
enum {
    XS_DIRECTORY = 1, XS_READ = 2, XS_WATCH = 4, XS_UNWATCH = 5, XS_TRANSACTION_START = 6,
    XS_TRANSACTION_END = 7, XS_GET_DOMAIN_PATH = 10, XS_WRITE = 11, XS_MKDIR = 12, XS_RM = 13,
    XS_WATCH_EVENT = 15, XS_ERROR = 16
};
struct xsd_sockmsg {
    u32 type, req_id, tx_id, len;
};
struct xenstore_domain_interface {
    char req[1024];
    char rsp[1024];
    volatile u32 req_cons, req_prod, rsp_cons, rsp_prod;
    volatile u32 server_features, connection, error;
};
#define XENSTORE_ERROR_RINGIDX 2
#define XENSTORE_ERROR_PROTO 3

/* io/console.h */
struct xencons_interface {
    char in[1024];
    char out[2048];
    volatile u32 in_cons, in_prod, out_cons, out_prod;
};

#define UPCALL_VECTOR 0xf3
#define BACKEND_LOOP_A 3
#define BACKEND_LOOP_B 4
#define NPORTS 1024

static u8 shinfo_page[4096] __aligned(4096);
static struct shared_info *const shinfo = (struct shared_info *)shinfo_page;
static volatile u32 seen[NPORTS];
static volatile u32 upcalls;
static u32 domid = 1;
static u32 store_port, console_port;
static struct xenstore_domain_interface *xs;
static struct xencons_interface *cons;

#define BITS (sizeof(unsigned long) * 8)

/* The upcall, as a Linux guest's: clear evtchn_upcall_pending, take the selector, then each
   pending and unmasked port of the selected words. */
static void upcall(struct trap_frame *f)
{
    (void)f;
    struct vcpu_info *vi = &shinfo->vcpu_info[0];
    upcalls++;
    vi->evtchn_upcall_pending = 0;
    unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        unsigned w = (unsigned)__builtin_ctzl(sel);
        sel &= sel - 1;
        unsigned long bits = shinfo->evtchn_pending[w] & ~shinfo->evtchn_mask[w];
        while (bits) {
            unsigned b = (unsigned)__builtin_ctzl(bits);
            bits &= bits - 1;
            __atomic_fetch_and(&shinfo->evtchn_pending[w], ~(1ul << b), __ATOMIC_SEQ_CST);
            unsigned port = w * (unsigned)BITS + b;
            if (port < NPORTS)
                seen[port]++;
        }
    }
}

static long evtchn(u32 cmd, void *arg)
{
    return HC2(__HYPERVISOR_event_channel_op, cmd, PTR(arg));
}

static long evt_send(u32 port)
{
    return evtchn(EVTCHNOP_send, &port);
}

/* Lets pending upcalls in: interrupts on until the handler has cleared
   evtchn_upcall_pending (at most 500 ms), then a short quiet window. */
static void take_interrupts(void)
{
    u32 khz = xen_tsc_khz();
    volatile u8 *pending = &shinfo->vcpu_info[0].evtchn_upcall_pending;
    u64 start = rdtsc();
    sti();
    while (*pending && rdtsc() - start < (u64)khz * 500)
        pause();
    start = rdtsc();
    while (rdtsc() - start < (u64)khz / 2)
        pause();
    cli();
}

static void clear_seen(void)
{
    for (unsigned i = 0; i < NPORTS; i++)
        seen[i] = 0;
}

static bool is_pending(u32 port)
{
    return (shinfo->evtchn_pending[port / BITS] >> (port % BITS)) & 1;
}

static u64 xen_now(void)
{
    u64 now = 0;
    HC2(__HYPERVISOR_hvm_op, HVMOP_get_time, PTR(&now));
    return now;
}

static void setup(void)
{
    /* The hypercall page latches the shared_info layout (compat for 32-bit callers). */
    u32 r[4];
    cpuid(0x40000002, 0, r);
    check(wrmsr_safe(r[1], PTR(xen_hypercall_page)) == 0, "hypercall page installed");
    xen_via = XEN_VIA_PAGE;
    struct xen_add_to_physmap map = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0,
                                     PTR(shinfo_page) >> 12};
    EXPECT(HC2(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, PTR(&map)), 0,
           "shared_info mapped");
    set_irq_handler(UPCALL_VECTOR, upcall);
    struct xen_hvm_evtchn_upcall_vector uv = {0, UPCALL_VECTOR};
    EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_set_evtchn_upcall_vector, PTR(&uv)), 0,
           "HVMOP_set_evtchn_upcall_vector 0x%x", UPCALL_VECTOR);
    take_interrupts();

    u64 v[4];
    static const u32 idx[4] = {HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN,
                               HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN};
    for (unsigned i = 0; i < 4; i++) {
        struct xen_hvm_param p = {DOMID_SELF, 0, idx[i], 0};
        EXPECT(HC2(__HYPERVISOR_hvm_op, HVMOP_get_param, PTR(&p)), 0, "get_param %u", idx[i]);
        v[i] = p.value;
    }
    check(v[0] && v[2] && v[0] != v[2] && v[1] && v[3] && v[1] != v[3],
          "XenStore at PFN 0x%llx port %llu, console at PFN 0x%llx port %llu", v[0], v[1], v[2],
          v[3]);
    xs = (struct xenstore_domain_interface *)(uptr)(v[0] << 12);
    cons = (struct xencons_interface *)(uptr)(v[2] << 12);
    store_port = (u32)v[1];
    console_port = (u32)v[3];
}

/* ------------------------------------------------------------ event channels */

static void check_loopback(void)
{
    struct evtchn_bind_interdomain a = {0, BACKEND_LOOP_A, 0}, b = {0, BACKEND_LOOP_B, 0};
    EXPECT(evtchn(EVTCHNOP_bind_interdomain, &a), 0, "bind_interdomain to backend port 3");
    EXPECT(evtchn(EVTCHNOP_bind_interdomain, &b), 0, "bind_interdomain to backend port 4");
    take_interrupts();
    clear_seen();
    u32 before = upcalls;
    EXPECT(evt_send(a.local_port), 0, "send on port %u (backend port 3)", a.local_port);
    take_interrupts();
    check(seen[b.local_port] == 1 && seen[a.local_port] == 0 && upcalls == before + 1,
          "the loopback backend raised port %u once through the upcall (seen %u/%u, %u upcalls)",
          b.local_port, seen[b.local_port], seen[a.local_port], upcalls - before);
    EXPECT(evt_send(b.local_port), 0, "send on port %u (backend port 4)", b.local_port);
    take_interrupts();
    check(seen[a.local_port] == 1, "and back: port %u raised", a.local_port);
    struct evtchn_status st = {DOMID_SELF, a.local_port, 0, 0, {{0}}};
    EXPECT(evtchn(EVTCHNOP_status, &st), 0, "EVTCHNOP_status");
    check(st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0 &&
              st.u.interdomain.port == BACKEND_LOOP_A,
          "status: interdomain to domain 0 port 3 (got %u, %u, %u)", st.status,
          st.u.interdomain.dom, st.u.interdomain.port);
    struct evtchn_bind_interdomain again = {0, BACKEND_LOOP_A, 0};
    EXPECT(evtchn(EVTCHNOP_bind_interdomain, &again), -XEN_EINVAL, "backend port 3 again");

    /* Masked: pending without an upcall; unmask delivers it. */
    u32 q = b.local_port;
    __atomic_fetch_or(&shinfo->evtchn_mask[q / BITS], 1ul << (q % BITS), __ATOMIC_SEQ_CST);
    clear_seen();
    before = upcalls;
    EXPECT(evt_send(a.local_port), 0, "send towards masked port %u", q);
    take_interrupts();
    check(is_pending(q) && seen[q] == 0 && upcalls == before,
          "a masked port is pending without an upcall");
    EXPECT(evtchn(EVTCHNOP_unmask, &q), 0, "EVTCHNOP_unmask %u", q);
    take_interrupts();
    check(seen[q] == 1 && !is_pending(q) && !((shinfo->evtchn_mask[q / BITS] >> (q % BITS)) & 1),
          "unmask cleared the mask and delivered it");

    EXPECT(evtchn(EVTCHNOP_close, &a.local_port), 0, "close port %u", a.local_port);
    EXPECT(evt_send(a.local_port), -XEN_EINVAL, "send on a closed port");
    EXPECT(evtchn(EVTCHNOP_close, &b.local_port), 0, "close port %u", b.local_port);
    u32 fifo[2] = {0, 0};
    EXPECT(evtchn(EVTCHNOP_init_control, fifo), -XEN_ENOSYS, "FIFO ABI not offered");
}

static void check_local_loop_and_ipi(void)
{
    struct evtchn_alloc_unbound au = {DOMID_SELF, DOMID_SELF, 0};
    EXPECT(evtchn(EVTCHNOP_alloc_unbound, &au), 0, "alloc_unbound for this domain");
    struct evtchn_bind_interdomain bi = {DOMID_SELF, au.port, 0};
    EXPECT(evtchn(EVTCHNOP_bind_interdomain, &bi), 0, "bind_interdomain to own port %u",
           au.port);
    take_interrupts();
    clear_seen();
    EXPECT(evt_send(au.port), 0, "send on %u", au.port);
    take_interrupts();
    check(seen[bi.local_port] == 1, "the loop in the guest raised port %u", bi.local_port);
    EXPECT(evtchn(EVTCHNOP_close, &bi.local_port), 0, "close one end");
    struct evtchn_status st = {DOMID_SELF, au.port, 0, 0, {{0}}};
    EXPECT(evtchn(EVTCHNOP_status, &st), 0, "status of the other end");
    check(st.status == EVTCHNSTAT_unbound, "the other end is unbound again (got %u)", st.status);

    struct evtchn_bind_ipi ipi = {0, 0};
    EXPECT(evtchn(EVTCHNOP_bind_ipi, &ipi), 0, "bind_ipi");
    clear_seen();
    EXPECT(evt_send(ipi.port), 0, "send on the IPI port");
    take_interrupts();
    check(seen[ipi.port] == 1, "the IPI port %u reached vCPU 0", ipi.port);
    u32 bv[2] = {ipi.port, 0};
    EXPECT(evtchn(EVTCHNOP_bind_vcpu, bv), -XEN_EINVAL, "bind_vcpu of an IPI");
}

static void check_timer(void)
{
    struct evtchn_bind_virq bv = {VIRQ_TIMER, 0, 0};
    EXPECT(evtchn(EVTCHNOP_bind_virq, &bv), 0, "bind_virq VIRQ_TIMER");
    struct evtchn_bind_virq dup = {VIRQ_TIMER, 0, 0};
    EXPECT(evtchn(EVTCHNOP_bind_virq, &dup), -XEN_EEXIST, "VIRQ_TIMER bound twice");
    u32 t = bv.port;
    struct evtchn_status st = {DOMID_SELF, t, 0, 0, {{0}}};
    EXPECT(evtchn(EVTCHNOP_status, &st), 0, "status of the timer port");
    check(st.status == EVTCHNSTAT_virq && st.u.virq == VIRQ_TIMER, "status: VIRQ_TIMER");

    clear_seen();
    u64 t0 = xen_now();
    struct vcpu_set_singleshot_timer sst = {t0 + 5000000, 0};
    EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&sst)), 0,
           "single-shot timer in 5 ms");
    long rc = xen_sti_hypercall2(__HYPERVISOR_sched_op, SCHEDOP_block, 0);
    u64 waited = xen_now() - t0;
    take_interrupts();
    check(rc == 0 && seen[t] == 1 && waited >= 4900000,
          "SCHEDOP_block woke on VIRQ_TIMER after %llu us (port %u seen %u times)",
          udiv64(waited, 1000, NULL), t, seen[t]);

    clear_seen();
    t0 = xen_now();
    EXPECT(HC2(__HYPERVISOR_set_timer_op, (ureg)(t0 + 3000000), (ureg)((t0 + 3000000) >> 32)),
           0, "set_timer_op in 3 ms");
    struct sched_poll p = {&t, 1, 0};
    rc = HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p));
    waited = xen_now() - t0;
    check(rc == 0 && is_pending(t) && waited >= 2900000,
          "SCHEDOP_poll on the timer port woke when it fired (%llu us)", udiv64(waited, 1000, NULL));
    EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), 0,
           "poll returns at once for a pending port");
    take_interrupts();
    check(seen[t] == 1, "and the upcall took it");
}

/* ---------------------------------------------------------------- XenStore */

static u32 req_id;
static char reply[4200];
static u32 reply_type, reply_len;
static char event[256];
static u32 events;

static void ring_put(const void *p, u32 n)
{
    const char *s = p;
    for (u32 i = 0; i < n; i++) {
        xs->req[(xs->req_prod + i) & 1023] = s[i];
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    xs->req_prod += n;
}

static bool ring_get(void *p, u32 n)
{
    char *d = p;
    if (xs->rsp_prod - xs->rsp_cons < n)
        return false;
    for (u32 i = 0; i < n; i++)
        d[i] = xs->rsp[(xs->rsp_cons + i) & 1023];
    xs->rsp_cons += n;
    return true;
}

/* One request; the answer is in reply/reply_type/reply_len, watch events in event/events. */
static bool xs_call(u32 type, u32 tx, const char *a, u32 alen, const char *b, u32 blen)
{
    struct xsd_sockmsg m = {type, ++req_id, tx, alen + blen};
    ring_put(&m, sizeof m);
    ring_put(a, alen);
    ring_put(b, blen);
    evt_send(store_port);
    for (;;) {
        struct xsd_sockmsg h;
        if (!ring_get(&h, sizeof h))
            return false;
        char *dst = h.type == XS_WATCH_EVENT ? event : reply;
        u32 room = h.type == XS_WATCH_EVENT ? sizeof event : sizeof reply;
        if (h.len >= room || !ring_get(dst, h.len))
            return false;
        dst[h.len] = 0;
        if (h.type == XS_WATCH_EVENT) {
            events++;
            continue;
        }
        reply_type = h.type;
        reply_len = h.len;
        u32 id = h.req_id;
        /* Watch events the request fired follow its answer. */
        while (xs->rsp_prod - xs->rsp_cons >= sizeof h) {
            if (!ring_get(&h, sizeof h) || h.type != XS_WATCH_EVENT || h.len >= sizeof event ||
                !ring_get(event, h.len))
                return false;
            event[h.len] = 0;
            events++;
        }
        return id == req_id;
    }
}

/* A request whose arguments are one NUL-terminated string. */
static bool xs1(u32 type, u32 tx, const char *s)
{
    return xs_call(type, tx, s, (u32)strlen(s) + 1, "", 0);
}

static bool reply_is(u32 type, const char *body, u32 len)
{
    return reply_type == type && reply_len == len && !memcmp(reply, body, len);
}

static void check_xenstore(void)
{
    char want[64];
    /* xenstored fills server_features when it introduces the domain, before any request. */
    check(xs->server_features == 3,
          "server_features before the first request: reconnection and error (got %u)",
          xs->server_features);
    check(xs1(XS_READ, 0, "domid") && reply_is(XS_READ, want, (u32)gsnprintf(want, sizeof want,
                                                                             "%u", domid)),
          "read domid -> \"%s\" (got %s)", want, reply);
    gsnprintf(want, sizeof want, "/local/domain/%u", domid);
    char idbuf[8];
    gsnprintf(idbuf, sizeof idbuf, "%u", domid);
    check(xs1(XS_GET_DOMAIN_PATH, 0, idbuf) && reply_is(XS_GET_DOMAIN_PATH, want,
                                                         (u32)strlen(want) + 1),
          "get_domain_path -> %s", want);
    check(xs1(XS_READ, 0, "name") && reply_type == XS_READ && reply_len > 0,
          "read name -> \"%s\"", reply);
    check(xs1(XS_READ, 0, "console/port") && reply_type == XS_READ && reply[0] - '0' ==
              (int)console_port, "console/port names the console's channel (%s)", reply);
    const char path[] = "data/key";
    check(xs_call(XS_WRITE, 0, path, sizeof path, "v1", 2) && reply_is(XS_WRITE, "OK", 3),
          "write data/key = v1");
    check(xs1(XS_READ, 0, path) && reply_is(XS_READ, "v1", 2), "read data/key -> v1");
    check(xs1(XS_MKDIR, 0, "data/dir") && reply_is(XS_MKDIR, "OK", 3), "mkdir data/dir");
    check(xs1(XS_DIRECTORY, 0, "data") && reply_is(XS_DIRECTORY, "dir\0key", 8),
          "directory data -> dir, key");
    events = 0;
    const char watch[] = "data/key\0tok";
    check(xs_call(XS_WATCH, 0, watch, sizeof watch, "", 0) && reply_is(XS_WATCH, "OK", 3),
          "watch data/key");
    check(events == 1 && !memcmp(event, watch, sizeof watch), "the watch fired on registration");
    u32 before_port = seen[store_port];
    check(xs_call(XS_WRITE, 0, path, sizeof path, "v2", 2) && reply_is(XS_WRITE, "OK", 3),
          "write data/key = v2");
    check(events == 2 && !memcmp(event, watch, sizeof watch),
          "the watch fired with path data/key and token tok (%u events)", events);
    take_interrupts();
    check(seen[store_port] > before_port, "the XenStore port was raised for the answers");

    check(xs1(XS_TRANSACTION_START, 0, "") && reply_type == XS_TRANSACTION_START,
          "transaction_start -> %s", reply);
    u64 tx = 0;
    parse_u64(reply, &tx);
    check(xs_call(XS_WRITE, (u32)tx, path, sizeof path, "v3", 2) && reply_is(XS_WRITE, "OK", 3),
          "write in the transaction");
    check(xs1(XS_READ, 0, path) && reply_is(XS_READ, "v2", 2), "not visible before commit");
    check(xs1(XS_TRANSACTION_END, (u32)tx, "T") && reply_is(XS_TRANSACTION_END, "OK", 3),
          "commit");
    check(xs1(XS_READ, 0, path) && reply_is(XS_READ, "v3", 2) && events == 3,
          "committed, and the watch fired");
    check(xs_call(XS_UNWATCH, 0, watch, sizeof watch, "", 0) && reply_is(XS_UNWATCH, "OK", 3),
          "unwatch");
    check(xs1(XS_RM, 0, "data/key") && reply_is(XS_RM, "OK", 3) && events == 3, "rm data/key");
    check(xs1(XS_READ, 0, path) && reply_is(XS_ERROR, "ENOENT", 7), "read after rm -> ENOENT");
    check(xs1(XS_READ, 0, "bad//path") && reply_is(XS_ERROR, "EINVAL", 7),
          "a malformed path -> EINVAL");
    /* Domain 0's nodes are "n0": no access for this domain. */
    static const char dom0[] = "/local/domain/0/name";
    check(xs_call(XS_WRITE, 0, dom0, sizeof dom0, "me", 2) && reply_is(XS_ERROR, "EACCES", 7),
          "write %s -> EACCES", dom0);
    check(xs1(XS_READ, 0, dom0) && reply_is(XS_ERROR, "EACCES", 7), "read %s -> EACCES", dom0);
}

/* Asks for a reconnection and checks the ring is back to its start. */
static void reconnect(const char *after)
{
    xs->connection = 1;
    evt_send(store_port);
    check(xs->connection == 0 && xs->error == 0 && xs->req_prod == 0 && xs->rsp_prod == 0,
          "reconnected after %s (connection %u, error %u)", after, xs->connection, xs->error);
    check(xs1(XS_READ, 0, "domid") && reply_type == XS_READ, "XenStore answers again");
}

static void check_bad_rings(void)
{
    /* A producer more than the ring's size ahead of the consumer. */
    u32 rsp = xs->rsp_prod;
    xs->req_prod = xs->req_cons + 2000;
    EXPECT(evt_send(store_port), 0, "send after a bad req_prod");
    check(xs->error == XENSTORE_ERROR_RINGIDX && xs->rsp_prod == rsp,
          "req_prod past the ring -> error XENSTORE_ERROR_RINGIDX, no answer (error %u)",
          xs->error);
    reconnect("a bad index");

    /* A message longer than XENSTORE_PAYLOAD_MAX. */
    struct xsd_sockmsg m = {XS_WRITE, 99, 0, 5000};
    rsp = xs->rsp_prod;
    ring_put(&m, sizeof m);
    ring_put("data/x", 7);
    evt_send(store_port);
    check(xs->error == XENSTORE_ERROR_PROTO && xs->rsp_prod == rsp,
          "a 5000-byte payload -> error XENSTORE_ERROR_PROTO, no answer (error %u)", xs->error);
    reconnect("an oversized message");

    /* The console: a producer past the ring is dropped, the ring still works. */
    cons->out_prod = cons->out_cons + 5000;
    EXPECT(evt_send(console_port), 0, "console send with out_prod past the ring");
    check(cons->out_cons == cons->out_prod, "the bad range was dropped (out_cons = out_prod)");
}

/* ----------------------------------------------------------------- console */

static void cons_write(const char *s)
{
    u32 n = (u32)strlen(s);
    for (u32 i = 0; i < n; i++)
        cons->out[(cons->out_prod + i) & 2047] = s[i];
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    cons->out_prod += n;
    evt_send(console_port);
}

static void check_console(const char *input)
{
    cons_write(GUEST_NAME ": hello through the PV console ring\n");
    check(cons->out_cons == cons->out_prod, "the console drained the ring (out_cons %u)",
          cons->out_cons);
    if (!*input)
        return;
    u32 len = (u32)strlen(input);
    u32 khz = xen_tsc_khz();
    u64 start = rdtsc();
    /* Wait up to 2 s, polling the console port (the VMM raises it when input arrives). */
    while (cons->in_prod - cons->in_cons < len && rdtsc() - start < (u64)khz * 2000) {
        struct sched_poll p = {&console_port, 1, xen_now() + 10000000};
        HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p));
    }
    char got[64];
    u32 n = cons->in_prod - cons->in_cons;
    if (n > sizeof got - 1)
        n = sizeof got - 1;
    for (u32 i = 0; i < n; i++)
        got[i] = cons->in[(cons->in_cons + i) & 1023];
    got[n] = 0;
    cons->in_cons += n;
    check(n == len && !memcmp(got, input, len), "host input arrived in the console ring: \"%s\"",
          got);
}

/* A halt that ends leaves nothing behind (docs/abi/xen.md, sched_op): after a poll ends by its
   timeout, an event (here on a masked IPI port: no upcall) must not end the next halt at once,
   neither a timed poll nor a SCHEDOP_block woken by the single-shot timer. Run after the
   console's input has arrived, so no other event can come in between. */
static void check_halt_end(void)
{
    struct evtchn_bind_ipi ipi = {0, 0};
    EXPECT(evtchn(EVTCHNOP_bind_ipi, &ipi), 0, "bind_ipi for the halt-end checks");
    u32 m = ipi.port;
    unsigned long bit = 1ul << (m % BITS);
    __atomic_fetch_or(&shinfo->evtchn_mask[m / BITS], bit, __ATOMIC_SEQ_CST);
    take_interrupts();
    for (int round = 0; round < 2; round++) {
        const char *what = round ? "SCHEDOP_block" : "SCHEDOP_poll";
        struct sched_poll p = {0, 0, xen_now() + 2000000};
        EXPECT(HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&p)), 0,
               "a 2 ms poll of no ports before %s", what);
        __atomic_fetch_and(&shinfo->evtchn_pending[m / BITS], ~bit, __ATOMIC_SEQ_CST);
        EXPECT(evt_send(m), 0, "then a send on masked port %u", m);
        u64 t0 = xen_now();
        long rc;
        if (round) {
            struct vcpu_set_singleshot_timer sst = {t0 + 10000000, 0};
            EXPECT(HC3(__HYPERVISOR_vcpu_op, VCPUOP_set_singleshot_timer, 0, PTR(&sst)), 0,
                   "single-shot timer in 10 ms");
            rc = xen_sti_hypercall2(__HYPERVISOR_sched_op, SCHEDOP_block, 0);
        } else {
            struct sched_poll q = {0, 0, t0 + 10000000};
            rc = HC2(__HYPERVISOR_sched_op, SCHEDOP_poll, PTR(&q));
        }
        u64 waited = xen_now() - t0;
        take_interrupts();
        check(rc == 0 && waited >= 9900000,
              "%s after the event slept until its 10 ms timer (%llu us, rc %ld)", what,
              udiv64(waited, 1000, NULL), rc);
    }
    __atomic_fetch_and(&shinfo->evtchn_pending[m / BITS], ~bit, __ATOMIC_SEQ_CST);
    __atomic_fetch_and(&shinfo->evtchn_mask[m / BITS], ~bit, __ATOMIC_SEQ_CST);
    EXPECT(evtchn(EVTCHNOP_close, &m), 0, "close port %u", m);
}

int guest_main(const struct hvm_start_info *si)
{
    (void)si;
    static char input[64];
    domid = (u32)cmdline_get_u64("domid", 1);
    if (cmdline_get("input", input, sizeof input) < 0)
        input[0] = 0;
    cli();
    gprintf("%s: the Xen PV platform from the inside (%s)\n", GUEST_NAME,
            RT_64BIT ? "64-bit" : "32-bit");
    setup();
    check_loopback();
    check_local_loop_and_ipi();
    check_timer();
    check_xenstore();
    check_console(input);
    check_halt_end();
    check_bad_rings();
    cons_write(GUEST_NAME ": the console ring still works\n");
    gprintf("%s: %u passed, %u failed\n", GUEST_NAME, xen_passed, xen_failed);
    exit_vm(xen_failed ? 1 : 0);
}
