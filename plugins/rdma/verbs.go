package main

// The verbs and RDMA CM calls, each a small C function so that Go never
// touches the libraries' structures beyond a few fields.

/*
#cgo LDFLAGS: -lrdmacm -libverbs
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <rdma/rdma_cma.h>
#include <infiniband/verbs.h>

static int gr_nonblock(int fd) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
	return 0;
}

static int gr_num_devices(void) {
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (l == NULL) return -errno;
	ibv_free_device_list(l);
	return n;
}

static struct rdma_event_channel *gr_channel(int *err) {
	struct rdma_event_channel *ch = rdma_create_event_channel();
	if (ch == NULL) { *err = errno; return NULL; }
	int r = gr_nonblock(ch->fd);
	if (r) { *err = -r; rdma_destroy_event_channel(ch); return NULL; }
	return ch;
}

static int gr_channel_fd(struct rdma_event_channel *ch) { return ch->fd; }

static struct rdma_cm_id *gr_create_id(struct rdma_event_channel *ch, int *err) {
	struct rdma_cm_id *id = NULL;
	if (rdma_create_id(ch, &id, NULL, RDMA_PS_TCP)) { *err = errno; return NULL; }
	return id;
}

// gr_sockaddr fills ss from an IPv4 (4 bytes) or IPv6 (16 bytes) address.
static void gr_sockaddr(struct sockaddr_storage *ss, const unsigned char *ip, int iplen, int port) {
	memset(ss, 0, sizeof *ss);
	if (iplen == 4) {
		struct sockaddr_in *s = (struct sockaddr_in *)ss;
		s->sin_family = AF_INET;
		s->sin_port = htons(port);
		memcpy(&s->sin_addr, ip, 4);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons(port);
		memcpy(&s->sin6_addr, ip, 16);
	}
}

static int gr_bind_listen(struct rdma_cm_id *id, const unsigned char *ip, int iplen, int backlog) {
	struct sockaddr_storage ss;
	gr_sockaddr(&ss, ip, iplen, 0);
	if (rdma_bind_addr(id, (struct sockaddr *)&ss)) return errno;
	if (rdma_listen(id, backlog)) return errno;
	return 0;
}

static int gr_port(struct rdma_cm_id *id) { return ntohs(rdma_get_src_port(id)); }

static int gr_resolve_addr(struct rdma_cm_id *id, const unsigned char *src, const unsigned char *dst, int iplen, int port, int ms) {
	struct sockaddr_storage s, d;
	gr_sockaddr(&s, src, iplen, 0);
	gr_sockaddr(&d, dst, iplen, port);
	if (rdma_resolve_addr(id, (struct sockaddr *)&s, (struct sockaddr *)&d, ms)) return errno;
	return 0;
}

static int gr_resolve_route(struct rdma_cm_id *id, int ms) {
	return rdma_resolve_route(id, ms) ? errno : 0;
}

static void gr_param(struct rdma_conn_param *p, const void *pd, int pdlen) {
	memset(p, 0, sizeof *p);
	p->private_data = pd;
	p->private_data_len = pdlen;
	// Send/receive only: no RDMA reads to serve. The transport retries
	// lost packets, and a receiver out of posted receives (RNR) is waited
	// for: it reposts as soon as it copied a message out.
	p->retry_count = 7;
	p->rnr_retry_count = 7;
}

static int gr_connect(struct rdma_cm_id *id, const void *pd, int pdlen) {
	struct rdma_conn_param p;
	gr_param(&p, pd, pdlen);
	return rdma_connect(id, &p) ? errno : 0;
}

static int gr_accept(struct rdma_cm_id *id) {
	struct rdma_conn_param p;
	gr_param(&p, NULL, 0);
	return rdma_accept(id, &p) ? errno : 0;
}

static void gr_reject(struct rdma_cm_id *id) { rdma_reject(id, NULL, 0); }

static int gr_migrate(struct rdma_cm_id *id, struct rdma_event_channel *ch) {
	return rdma_migrate_id(id, ch) ? errno : 0;
}

// grev is what the Go side needs of a CM event: the event is acked
// before gr_cm_event returns.
struct grev {
	int type, status;
	struct rdma_cm_id *id, *listen_id;
	unsigned char pd[64];
	int pdlen;
};

static int gr_cm_event(struct rdma_event_channel *ch, struct grev *out) {
	struct rdma_cm_event *ev;
	if (rdma_get_cm_event(ch, &ev)) return errno;
	out->type = ev->event;
	out->status = ev->status;
	out->id = ev->id;
	out->listen_id = ev->listen_id;
	out->pdlen = 0;
	if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST && ev->param.conn.private_data != NULL) {
		int n = ev->param.conn.private_data_len;
		if (n > (int)sizeof out->pd) n = sizeof out->pd;
		memcpy(out->pd, ev->param.conn.private_data, n);
		out->pdlen = n;
	}
	rdma_ack_cm_event(ev);
	return 0;
}

// grq is one connection's verbs resources: a protection domain, a
// completion queue with its channel, the queue pair on the CM id, and one
// registered buffer holding every receive and send slot.
struct grq {
	struct rdma_cm_id *id;
	struct ibv_pd *pd;
	struct ibv_comp_channel *cc;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	unsigned char *buf;
	size_t len, slot;
	int nrecv;
};

enum { GR_STAGE_PD = 1, GR_STAGE_CHANNEL, GR_STAGE_CQ, GR_STAGE_MEM, GR_STAGE_MR, GR_STAGE_QP };

static void gr_destroy(struct grq *q) {
	if (q->id != NULL && q->id->qp != NULL) rdma_destroy_qp(q->id);
	if (q->mr) ibv_dereg_mr(q->mr);
	free(q->buf);
	if (q->cq) ibv_destroy_cq(q->cq);
	if (q->cc) ibv_destroy_comp_channel(q->cc);
	if (q->pd) ibv_dealloc_pd(q->pd);
	free(q);
}

// gr_setup creates q's resources on id (whose device is known: after
// route resolution, or a connect request). On failure it returns the
// stage that failed and sets *err, having freed what it made.
static int gr_setup(struct rdma_cm_id *id, int nrecv, int nsend, size_t slot, struct grq **out, int *err) {
	struct grq *q = calloc(1, sizeof *q);
	int stage = 0;
	if (q == NULL) { *err = ENOMEM; return GR_STAGE_MEM; }
	q->id = id;
	q->slot = slot;
	q->nrecv = nrecv;
	q->len = slot * (size_t)(nrecv + nsend);
	if ((q->pd = ibv_alloc_pd(id->verbs)) == NULL) { stage = GR_STAGE_PD; goto fail; }
	if ((q->cc = ibv_create_comp_channel(id->verbs)) == NULL) { stage = GR_STAGE_CHANNEL; goto fail; }
	int r = gr_nonblock(q->cc->fd);
	if (r) { errno = -r; stage = GR_STAGE_CHANNEL; goto fail; }
	if ((q->cq = ibv_create_cq(id->verbs, nrecv + nsend + 16, NULL, q->cc, 0)) == NULL) { stage = GR_STAGE_CQ; goto fail; }
	if (posix_memalign((void **)&q->buf, 4096, q->len)) { errno = ENOMEM; q->buf = NULL; stage = GR_STAGE_MEM; goto fail; }
	memset(q->buf, 0, q->len);
	if ((q->mr = ibv_reg_mr(q->pd, q->buf, q->len, IBV_ACCESS_LOCAL_WRITE)) == NULL) { stage = GR_STAGE_MR; goto fail; }
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = q->cq;
	a.recv_cq = q->cq;
	a.qp_type = IBV_QPT_RC;
	a.cap.max_send_wr = nsend + 16;
	a.cap.max_recv_wr = nrecv;
	a.cap.max_send_sge = 1;
	a.cap.max_recv_sge = 1;
	if (rdma_create_qp(id, q->pd, &a)) { stage = GR_STAGE_QP; goto fail; }
	*out = q;
	return 0;
fail:
	*err = errno;
	q->id = NULL; // no QP on it to destroy
	gr_destroy(q);
	return stage;
}

static int gr_cc_fd(struct grq *q) { return q->cc->fd; }

static int gr_post_recv(struct grq *q, int i) {
	struct ibv_sge sge = { .addr = (uintptr_t)(q->buf + (size_t)i * q->slot), .length = q->slot, .lkey = q->mr->lkey };
	struct ibv_recv_wr wr = { .wr_id = (uint64_t)i, .sg_list = &sge, .num_sge = 1 }, *bad;
	return ibv_post_recv(q->id->qp, &wr, &bad);
}

// gr_post_send sends len bytes of send slot i (slot nrecv+i of the
// buffer), with a completion if signaled.
static int gr_post_send(struct grq *q, int i, uint32_t len, int signaled) {
	struct ibv_sge sge = { .addr = (uintptr_t)(q->buf + (size_t)(q->nrecv + i) * q->slot), .length = len, .lkey = q->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = ((uint64_t)1 << 32) | (uint64_t)i, .sg_list = &sge, .num_sge = 1,
		.opcode = IBV_WR_SEND, .send_flags = signaled ? IBV_SEND_SIGNALED : 0 }, *bad;
	return ibv_post_send(q->id->qp, &wr, &bad);
}

struct grwc { uint64_t wr_id; uint32_t status, byte_len; };

static int gr_poll(struct grq *q, struct grwc *out, int n) {
	struct ibv_wc wc[32];
	if (n > 32) n = 32;
	int got = ibv_poll_cq(q->cq, n, wc);
	for (int i = 0; i < got; i++) {
		out[i].wr_id = wc[i].wr_id;
		out[i].status = wc[i].status;
		out[i].byte_len = wc[i].byte_len;
	}
	return got;
}

static int gr_arm(struct grq *q) { return ibv_req_notify_cq(q->cq, 0); }

// gr_cq_event consumes one completion event, if there is one: 0, or
// EAGAIN.
static int gr_cq_event(struct grq *q) {
	struct ibv_cq *cq;
	void *ctx;
	if (ibv_get_cq_event(q->cc, &cq, &ctx)) return errno;
	ibv_ack_cq_events(cq, 1);
	return 0;
}

static const char *gr_wc_status(int s) { return ibv_wc_status_str(s); }

static long long gr_memlock(void) {
	struct rlimit r;
	if (getrlimit(RLIMIT_MEMLOCK, &r)) return -2;
	return r.rlim_cur == RLIM_INFINITY ? -1 : (long long)r.rlim_cur;
}
*/
import "C"

import (
	"fmt"
	"net"
	"syscall"
	"unsafe"
)

// Sizes of a connection's registered memory: recvSlots receives the
// peer's data messages may use (its slot credits), extraRecv more for
// credit messages, which take no slot credit; sendSlots messages in flight.
const (
	recvSlots = 32
	extraRecv = 16
	sendSlots = 16
	numRecv   = recvSlots + extraRecv
	// registeredBytes is what one connection registers (locks) with the
	// device: every slot of its buffer.
	registeredBytes = slotSize * (numRecv + sendSlots)
)

// eventType is an RDMA CM event's type.
type eventType = C.int

// cmID is an RDMA CM id.
type cmID = *C.struct_rdma_cm_id

// wcFlushErr is the status of the work requests a queue pair in the
// error state gives back: after a disconnect.
const wcFlushErr = C.IBV_WC_WR_FLUSH_ERR

// wc is one work completion.
type wc struct {
	wrID    uint64
	status  uint32
	byteLen uint32
}

const sendFlag = 1 << 32

func (w wc) isSend() bool { return w.wrID&sendFlag != 0 }
func (w wc) slot() int    { return int(uint32(w.wrID)) }

func wcStatus(s uint32) string { return C.GoString(C.gr_wc_status(C.int(s))) }

// verbs is one connection's queue pair and its buffer.
type verbs struct {
	q   *C.struct_grq
	buf []byte // the registered buffer: receive slots, then send slots
}

func setupVerbs(id *C.struct_rdma_cm_id) (*verbs, error) {
	var q *C.struct_grq
	var errno C.int
	if stage := C.gr_setup(id, numRecv, sendSlots, slotSize, &q, &errno); stage != 0 {
		return nil, setupError(int(stage), syscall.Errno(errno))
	}
	return &verbs{q: q, buf: unsafe.Slice((*byte)(unsafe.Pointer(q.buf)), int(q.len))}, nil
}

func setupError(stage int, err syscall.Errno) error {
	switch stage {
	case C.GR_STAGE_MR:
		return fmt.Errorf("register %d bytes of buffers with the RDMA device: %w%s", registeredBytes, err, memlockAdvice())
	case C.GR_STAGE_PD:
		return fmt.Errorf("allocate an RDMA protection domain: %w", err)
	case C.GR_STAGE_CHANNEL:
		return fmt.Errorf("create an RDMA completion channel: %w", err)
	case C.GR_STAGE_CQ:
		return fmt.Errorf("create an RDMA completion queue: %w%s", err, memlockAdvice())
	case C.GR_STAGE_QP:
		return fmt.Errorf("create an RDMA queue pair: %w%s", err, memlockAdvice())
	default:
		return fmt.Errorf("allocate %d bytes of buffers: %w", registeredBytes, err)
	}
}

// memlockAdvice names the limit that makes registration fail, when it is
// low enough to be the cause.
func memlockAdvice() string {
	limit := int64(C.gr_memlock())
	if limit < 0 {
		return ""
	}
	return fmt.Sprintf(" (RLIMIT_MEMLOCK, the locked-memory limit, is %d bytes and each rdma connection registers %d: raise it with LimitMEMLOCK=infinity in georepl's systemd unit, `ulimit -l unlimited` in the shell that starts georepl, or a memlock line in /etc/security/limits.conf)", limit, registeredBytes+64<<10)
}

func (v *verbs) recvSlot(i int) []byte { return v.buf[i*slotSize : (i+1)*slotSize] }
func (v *verbs) sendSlot(i int) []byte {
	return v.buf[(numRecv+i)*slotSize : (numRecv+i+1)*slotSize]
}

func (v *verbs) postRecv(i int) error {
	if r := C.gr_post_recv(v.q, C.int(i)); r != 0 {
		return fmt.Errorf("post an RDMA receive: %w", syscall.Errno(r))
	}
	return nil
}

func (v *verbs) postSend(i, n int, signaled bool) error {
	sig := C.int(0)
	if signaled {
		sig = 1
	}
	if r := C.gr_post_send(v.q, C.int(i), C.uint32_t(n), sig); r != 0 {
		return fmt.Errorf("post an RDMA send: %w", syscall.Errno(r))
	}
	return nil
}

func (v *verbs) poll(out []wc) int {
	var c [32]C.struct_grwc
	n := int(C.gr_poll(v.q, &c[0], C.int(min(len(out), len(c)))))
	for i := range max(n, 0) {
		out[i] = wc{uint64(c[i].wr_id), uint32(c[i].status), uint32(c[i].byte_len)}
	}
	return n
}

func (v *verbs) arm() error {
	if r := C.gr_arm(v.q); r != 0 {
		return fmt.Errorf("arm the RDMA completion queue: %w", syscall.Errno(r))
	}
	return nil
}

// cqEvent consumes a completion event; false when there is none yet.
func (v *verbs) cqEvent() (bool, error) {
	switch r := C.gr_cq_event(v.q); r {
	case 0:
		return true, nil
	case C.EAGAIN:
		return false, nil
	default:
		return false, fmt.Errorf("read the RDMA completion channel: %w", syscall.Errno(r))
	}
}

func (v *verbs) channelFD() int { return int(C.gr_cc_fd(v.q)) }

// destroy frees the queue pair and the buffer; the CM id stays.
func (v *verbs) destroy() { C.gr_destroy(v.q) }

// cmChannel is an RDMA CM event channel (non-blocking).
type cmChannel struct{ ch *C.struct_rdma_event_channel }

func newCMChannel() (cmChannel, error) {
	var errno C.int
	ch := C.gr_channel(&errno)
	if ch == nil {
		return cmChannel{}, fmt.Errorf("open the RDMA connection manager (/dev/infiniband/rdma_cm): %w%s", syscall.Errno(errno), cmAdvice(syscall.Errno(errno)))
	}
	return cmChannel{ch}, nil
}

func (c cmChannel) fd() int  { return int(C.gr_channel_fd(c.ch)) }
func (c cmChannel) destroy() { C.rdma_destroy_event_channel(c.ch) }

func (c cmChannel) newID() (*C.struct_rdma_cm_id, error) {
	var errno C.int
	id := C.gr_create_id(c.ch, &errno)
	if id == nil {
		return nil, fmt.Errorf("create an RDMA CM id: %w", syscall.Errno(errno))
	}
	return id, nil
}

// cmEvent is an acked CM event.
type cmEvent struct {
	typ         eventType
	status      int
	id, listen  *C.struct_rdma_cm_id
	privateData []byte
}

// event returns the next event; ok false when there is none yet.
func (c cmChannel) event() (ev cmEvent, ok bool, err error) {
	var e C.struct_grev
	switch r := C.gr_cm_event(c.ch, &e); r {
	case 0:
	case C.EAGAIN:
		return ev, false, nil
	default:
		return ev, false, fmt.Errorf("read an RDMA CM event: %w", syscall.Errno(r))
	}
	ev = cmEvent{typ: e._type, status: int(e.status), id: e.id, listen: e.listen_id}
	ev.privateData = C.GoBytes(unsafe.Pointer(&e.pd[0]), e.pdlen)
	return ev, true, nil
}

func eventName(t C.int) string { return C.GoString(C.rdma_event_str(uint32(t))) }

const (
	evAddrResolved   = C.RDMA_CM_EVENT_ADDR_RESOLVED
	evRouteResolved  = C.RDMA_CM_EVENT_ROUTE_RESOLVED
	evConnectRequest = C.RDMA_CM_EVENT_CONNECT_REQUEST
	evEstablished    = C.RDMA_CM_EVENT_ESTABLISHED
	evRejected       = C.RDMA_CM_EVENT_REJECTED
	evUnreachable    = C.RDMA_CM_EVENT_UNREACHABLE
	evAddrError      = C.RDMA_CM_EVENT_ADDR_ERROR
	evRouteError     = C.RDMA_CM_EVENT_ROUTE_ERROR
)

// ipBytes returns ip as 4 bytes (IPv4) or 16.
func ipBytes(ip net.IP) []byte {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip.To16()
}

func bindListen(id *C.struct_rdma_cm_id, ip net.IP, backlog int) (port int, err error) {
	b := ipBytes(ip)
	if r := C.gr_bind_listen(id, (*C.uchar)(&b[0]), C.int(len(b)), C.int(backlog)); r != 0 {
		return 0, syscall.Errno(r)
	}
	return int(C.gr_port(id)), nil
}

func resolveAddr(id *C.struct_rdma_cm_id, src, dst net.IP, port int, timeoutMS int) error {
	s, d := ipBytes(src), ipBytes(dst)
	if len(s) != len(d) {
		return fmt.Errorf("local address %s and peer %s are of different families", src, dst)
	}
	if r := C.gr_resolve_addr(id, (*C.uchar)(&s[0]), (*C.uchar)(&d[0]), C.int(len(d)), C.int(port), C.int(timeoutMS)); r != 0 {
		return syscall.Errno(r)
	}
	return nil
}

func resolveRoute(id *C.struct_rdma_cm_id, timeoutMS int) error {
	if r := C.gr_resolve_route(id, C.int(timeoutMS)); r != 0 {
		return syscall.Errno(r)
	}
	return nil
}

func connectID(id *C.struct_rdma_cm_id, privateData []byte) error {
	if r := C.gr_connect(id, unsafe.Pointer(&privateData[0]), C.int(len(privateData))); r != 0 {
		return syscall.Errno(r)
	}
	return nil
}

func acceptID(id *C.struct_rdma_cm_id) error {
	if r := C.gr_accept(id); r != 0 {
		return syscall.Errno(r)
	}
	return nil
}

func rejectID(id *C.struct_rdma_cm_id)     { C.gr_reject(id) }
func disconnectID(id *C.struct_rdma_cm_id) { C.rdma_disconnect(id) }
func destroyID(id *C.struct_rdma_cm_id)    { C.rdma_destroy_id(id) }

func migrateID(id *C.struct_rdma_cm_id, ch cmChannel) error {
	if r := C.gr_migrate(id, ch.ch); r != 0 {
		return fmt.Errorf("move the connection's RDMA CM id to its own channel: %w", syscall.Errno(r))
	}
	return nil
}

// numDevices is the count of RDMA devices libibverbs sees.
func numDevices() (int, error) {
	n := int(C.gr_num_devices())
	if n < 0 {
		return 0, syscall.Errno(-n)
	}
	return n, nil
}
