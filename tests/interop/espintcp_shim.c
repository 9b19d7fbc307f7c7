/*
 * Test-only LD_PRELOAD library for libreswan's pluto: stands in for the two kernel parts pluto
 * needs for IKE and ESP over TCP and this kernel lacks (no CONFIG_INET_ESP, no espintcp ULP).
 * Never built into iketcp; the interop test (control/cli/tests/libreswan_interop.rs) compiles it
 * with cc and runs pluto with it.
 *
 * 1. The espintcp ULP (net/xfrm/espintcp.c): after setsockopt(TCP_ULP, "espintcp") succeeds
 *    (here: is accepted and remembered), each write() of an IKE message (pluto writes the 4-byte
 *    zero Non-ESP marker and the message) goes out as one RFC 9329 §3 frame, its 2-byte Length
 *    prefixed; each read() returns one frame's body. Frames with a non-zero marker are ESP: the
 *    kernel would hand them to XFRM, so they are logged ("rx-esp") for the test and not given to
 *    pluto. Keepalives (one 0xFF byte) are dropped, as the kernel does.
 *    Reads take only whole frames off the socket (peeked first) so that what is left stays in the
 *    kernel's buffer and pluto's level-triggered event loop sees the socket readable again.
 * 2. NETLINK_XFRM SA requests: NEWSA / UPDSA / DELSA / GETSA on pluto's request socket are answered
 *    here with success (the kernel would refuse an ESP SA: no ESP), and each SA's SPI, addresses,
 *    algorithm and key+salt are logged ("sa-add") so that the test can check both peers derived
 *    the same keys and can build and open ESP with them. Policies and ALLOCSPI go to the kernel.
 * 3. Injection: a FIFO (ESPINTCP_SHIM_FIFO) on which the test writes one hex-encoded ESP packet
 *    per line; each is sent as a frame on the newest ULP socket, as the kernel's ESP output would.
 *
 * Log: ESPINTCP_SHIM_LOG, one line per event, flushed at once. Keys are logged: test use only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/xfrm.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define MAX_FD 4096
#define MAX_FRAME 65535
#define MAX_SAS 256

enum fd_kind { FD_NONE = 0, FD_ULP = 1, FD_XFRM = 2 };

static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static int (*real_socket)(int, int, int);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
static int (*real_close)(int);

static unsigned char kinds[MAX_FD];
/* Every write onto a ULP socket holds this lock: pluto's thread and the injector share sockets. */
static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;
/* The read path's frame buffer and the SA table and fake replies. */
static pthread_mutex_t rlock = PTHREAD_MUTEX_INITIALIZER;
static int newest_ulp = -1;
static FILE *logf;

struct sa {
	int used;
	uint32_t spi;
	xfrm_address_t daddr;
	struct xfrm_usersa_info info;
};
static struct sa sas[MAX_SAS];

/* One pending reply per XFRM request socket (pluto asks and waits, one request at a time). */
static unsigned char reply[1024];
static size_t reply_len;
static int reply_fd = -1;

static void resolve(void)
{
	if (real_read != NULL)
		return;
	real_read = dlsym(RTLD_NEXT, "read");
	real_write = dlsym(RTLD_NEXT, "write");
	real_recv = dlsym(RTLD_NEXT, "recv");
	real_recvfrom = dlsym(RTLD_NEXT, "recvfrom");
	real_send = dlsym(RTLD_NEXT, "send");
	real_sendto = dlsym(RTLD_NEXT, "sendto");
	real_socket = dlsym(RTLD_NEXT, "socket");
	real_setsockopt = dlsym(RTLD_NEXT, "setsockopt");
	real_close = dlsym(RTLD_NEXT, "close");
}

static void logline(const char *fmt, ...)
{
	if (logf == NULL)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	flockfile(logf);
	fprintf(logf, "%ld.%06ld ", (long)ts.tv_sec, ts.tv_nsec / 1000);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(logf, fmt, ap);
	va_end(ap);
	fputc('\n', logf);
	fflush(logf);
	funlockfile(logf);
}

static void hex(char *out, const unsigned char *in, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = 0;
}

static int kind(int fd)
{
	return fd >= 0 && fd < MAX_FD ? kinds[fd] : FD_NONE;
}

/* Writes all of buf (the socket may be non-blocking). The caller holds wlock. */
static int write_all(int fd, const unsigned char *buf, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t w = real_write(fd, buf + done, n - done);
		if (w > 0) {
			done += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			if (poll(&p, 1, 5000) <= 0)
				return -1;
			continue;
		}
		return -1;
	}
	return 0;
}

/* RFC 9329 §3: one frame, the Length (including itself) before the body. */
static ssize_t send_frame(int fd, const void *body, size_t n, const char *what)
{
	if (n > MAX_FRAME - 2) {
		errno = EMSGSIZE;
		return -1;
	}
	unsigned char *frame = malloc(n + 2);
	if (frame == NULL) {
		errno = ENOMEM;
		return -1;
	}
	frame[0] = (unsigned char)((n + 2) >> 8);
	frame[1] = (unsigned char)(n + 2);
	memcpy(frame + 2, body, n);
	pthread_mutex_lock(&wlock);
	int r = write_all(fd, frame, n + 2);
	pthread_mutex_unlock(&wlock);
	int e = errno;
	free(frame);
	logline("%s fd=%d len=%zu%s", what, fd, n, r == 0 ? "" : " failed");
	errno = e;
	return r == 0 ? (ssize_t)n : -1;
}

/* Waits up to 5 s for at least `want` bytes to be queued on fd; 0 on EOF or error. */
static ssize_t peek_at_least(int fd, unsigned char *buf, size_t want)
{
	for (int tries = 0;; tries++) {
		ssize_t n = real_recv(fd, buf, want, MSG_PEEK | MSG_DONTWAIT);
		if (n == 0 || (size_t)n >= want)
			return n;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (n < 0 && tries == 0)
			return -1; /* nothing at all: EAGAIN to the caller */
		if (tries > 50)
			return 0; /* a frame cut off for 5 s: treat as a dead stream */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 100);
	}
}

/* espintcp's recvmsg: the body of the next IKE frame (marker included), ESP logged and dropped. */
static ssize_t ulp_read(int fd, void *buf, size_t cap)
{
	static unsigned char frame[MAX_FRAME];
	static char hexbuf[2 * MAX_FRAME + 1];
	pthread_mutex_lock(&rlock);
	ssize_t result;
	for (;;) {
		ssize_t n = peek_at_least(fd, frame, 2);
		if (n <= 0) {
			result = n;
			break;
		}
		size_t len = ((size_t)frame[0] << 8) | frame[1];
		if (len < 2) {
			/* Not a frame: the kernel's strparser would stop the stream. */
			logline("rx-bad-length fd=%d len=%zu", fd, len);
			errno = EPROTO;
			result = -1;
			break;
		}
		n = peek_at_least(fd, frame, len);
		if (n <= 0) {
			result = n;
			break;
		}
		if (real_read(fd, frame, len) != (ssize_t)len) {
			errno = EIO;
			result = -1;
			break;
		}
		unsigned char *body = frame + 2;
		size_t blen = len - 2;
		if (blen == 1 && body[0] == 0xff) {
			logline("rx-keepalive fd=%d", fd);
			continue;
		}
		if (blen <= 4) {
			logline("rx-short fd=%d len=%zu", fd, blen);
			continue;
		}
		if (body[0] | body[1] | body[2] | body[3]) {
			hex(hexbuf, body, blen);
			logline("rx-esp fd=%d %s", fd, hexbuf);
			continue;
		}
		size_t n_out = blen < cap ? blen : cap;
		memcpy(buf, body, n_out);
		logline("rx-ike fd=%d len=%zu", fd, blen);
		result = (ssize_t)n_out;
		break;
	}
	pthread_mutex_unlock(&rlock);
	return result;
}

static struct sa *sa_find(uint32_t spi, const xfrm_address_t *daddr)
{
	for (int i = 0; i < MAX_SAS; i++)
		if (sas[i].used && sas[i].spi == spi && memcmp(&sas[i].daddr, daddr, sizeof(*daddr)) == 0)
			return &sas[i];
	return NULL;
}

static void addr_str(char *out, size_t cap, int family, const xfrm_address_t *a)
{
	if (inet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, a, out, (socklen_t)cap) == NULL)
		snprintf(out, cap, "?");
}

/* A NEWSA / UPDSA: remember it and log its keys. */
static void sa_add(const struct nlmsghdr *h)
{
	const struct xfrm_usersa_info *p = NLMSG_DATA(h);
	if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*p)))
		return;
	char src[64], dst[64];
	addr_str(src, sizeof(src), p->family, &p->saddr);
	addr_str(dst, sizeof(dst), p->family, &p->id.daddr);
	char alg[80] = "none", key[2 * 512 + 1] = "", encap[64] = "none";
	unsigned icv = 0, keybits = 0;
	const struct rtattr *a = (const void *)((const char *)h + NLMSG_ALIGN(NLMSG_LENGTH(sizeof(*p))));
	int left = (int)h->nlmsg_len - (int)NLMSG_ALIGN(NLMSG_LENGTH(sizeof(*p)));
	for (; RTA_OK(a, left); a = RTA_NEXT(a, left)) {
		if (a->rta_type == XFRMA_ALG_AEAD) {
			const struct xfrm_algo_aead *g = RTA_DATA(a);
			snprintf(alg, sizeof(alg), "%.64s", g->alg_name);
			keybits = g->alg_key_len;
			icv = g->alg_icv_len;
			size_t kb = keybits / 8 <= 512 ? keybits / 8 : 512;
			hex(key, (const unsigned char *)g->alg_key, kb);
		} else if (a->rta_type == XFRMA_ALG_CRYPT) {
			const struct xfrm_algo *g = RTA_DATA(a);
			snprintf(alg, sizeof(alg), "%.64s", g->alg_name);
			keybits = g->alg_key_len;
			size_t kb = keybits / 8 <= 512 ? keybits / 8 : 512;
			hex(key, (const unsigned char *)g->alg_key, kb);
		} else if (a->rta_type == XFRMA_ENCAP) {
			const struct xfrm_encap_tmpl *e = RTA_DATA(a);
			snprintf(encap, sizeof(encap), "%u/%u/%u", e->encap_type, ntohs(e->encap_sport),
				 ntohs(e->encap_dport));
		}
	}
	uint32_t spi = ntohl(p->id.spi);
	logline("sa-add type=%s spi=%08x proto=%u src=%s dst=%s reqid=%u mode=%u esn=%d replay=%u "
		"alg=%s keybits=%u icvbits=%u encap=%s key=%s",
		h->nlmsg_type == XFRM_MSG_UPDSA ? "upd" : "new", spi, p->id.proto, src, dst, p->reqid,
		p->mode, (p->flags & XFRM_STATE_ESN) ? 1 : 0, p->replay_window, alg, keybits, icv,
		encap, key);
	struct sa *s = sa_find(p->id.spi, &p->id.daddr);
	for (int i = 0; s == NULL && i < MAX_SAS; i++)
		if (!sas[i].used)
			s = &sas[i];
	if (s == NULL)
		return;
	s->used = 1;
	s->spi = p->id.spi;
	s->daddr = p->id.daddr;
	s->info = *p;
	s->info.curlft.add_time = (uint64_t)time(NULL);
}

/* The reply the kernel would send to request h, written into `reply`. */
static void fake_reply(int fd, const struct nlmsghdr *h)
{
	struct nlmsghdr *r = (struct nlmsghdr *)reply;
	memset(reply, 0, sizeof(reply));
	int error = 0;
	if (h->nlmsg_type == XFRM_MSG_GETSA && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct xfrm_usersa_id))) {
		const struct xfrm_usersa_id *id = NLMSG_DATA(h);
		struct sa *s = sa_find(id->spi, &id->daddr);
		if (s != NULL) {
			r->nlmsg_len = NLMSG_LENGTH(sizeof(s->info));
			r->nlmsg_type = XFRM_MSG_NEWSA;
			r->nlmsg_seq = h->nlmsg_seq;
			r->nlmsg_pid = h->nlmsg_pid;
			memcpy(NLMSG_DATA(r), &s->info, sizeof(s->info));
			reply_len = r->nlmsg_len;
			reply_fd = fd;
			return;
		}
		error = -ENOENT;
	}
	if (h->nlmsg_type == XFRM_MSG_DELSA && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct xfrm_usersa_id))) {
		const struct xfrm_usersa_id *id = NLMSG_DATA(h);
		struct sa *s = sa_find(id->spi, &id->daddr);
		char dst[64];
		addr_str(dst, sizeof(dst), id->family, &id->daddr);
		logline("sa-del spi=%08x dst=%s known=%d", ntohl(id->spi), dst, s != NULL);
		if (s != NULL)
			s->used = 0;
	}
	struct nlmsgerr *e = NLMSG_DATA(r);
	r->nlmsg_len = NLMSG_LENGTH(sizeof(*e));
	r->nlmsg_type = NLMSG_ERROR;
	r->nlmsg_seq = h->nlmsg_seq;
	r->nlmsg_pid = h->nlmsg_pid;
	e->error = error;
	e->msg = *h;
	reply_len = r->nlmsg_len;
	reply_fd = fd;
}

/* 1 when the request was answered here. */
static int xfrm_request(int fd, const void *buf, size_t n)
{
	if (n < sizeof(struct nlmsghdr))
		return 0;
	const struct nlmsghdr *h = buf;
	switch (h->nlmsg_type) {
	case XFRM_MSG_NEWSA:
	case XFRM_MSG_UPDSA:
		pthread_mutex_lock(&rlock);
		sa_add(h);
		fake_reply(fd, h);
		pthread_mutex_unlock(&rlock);
		return 1;
	case XFRM_MSG_DELSA:
	case XFRM_MSG_GETSA:
		pthread_mutex_lock(&rlock);
		fake_reply(fd, h);
		pthread_mutex_unlock(&rlock);
		return 1;
	default:
		return 0;
	}
}

static ssize_t xfrm_reply(int fd, void *buf, size_t cap, struct sockaddr *from, socklen_t *fromlen)
{
	pthread_mutex_lock(&rlock);
	if (reply_fd != fd || reply_len == 0) {
		pthread_mutex_unlock(&rlock);
		return -2;
	}
	size_t n = reply_len < cap ? reply_len : cap;
	memcpy(buf, reply, n);
	reply_len = 0;
	reply_fd = -1;
	pthread_mutex_unlock(&rlock);
	if (from != NULL && fromlen != NULL && *fromlen >= sizeof(struct sockaddr_nl)) {
		struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
		memcpy(from, &nl, sizeof(nl));
		*fromlen = sizeof(nl);
	}
	return (ssize_t)n;
}

int socket(int domain, int type, int protocol)
{
	resolve();
	int fd = real_socket(domain, type, protocol);
	if (fd >= 0 && fd < MAX_FD)
		kinds[fd] = (domain == AF_NETLINK && protocol == NETLINK_XFRM) ? FD_XFRM : FD_NONE;
	return fd;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	resolve();
	if (level == IPPROTO_TCP && name == TCP_ULP && val != NULL && len >= 8 &&
	    strncmp(val, "espintcp", 8) == 0 && fd >= 0 && fd < MAX_FD) {
		kinds[fd] = FD_ULP;
		__atomic_store_n(&newest_ulp, fd, __ATOMIC_SEQ_CST);
		struct sockaddr_in l = { 0 }, p = { 0 };
		socklen_t ll = sizeof(l), pl = sizeof(p);
		getsockname(fd, (struct sockaddr *)&l, &ll);
		getpeername(fd, (struct sockaddr *)&p, &pl);
		char ls[32], ps[32];
		inet_ntop(AF_INET, &l.sin_addr, ls, sizeof(ls));
		inet_ntop(AF_INET, &p.sin_addr, ps, sizeof(ps));
		logline("ulp fd=%d local=%s:%u peer=%s:%u", fd, ls, ntohs(l.sin_port), ps, ntohs(p.sin_port));
		return 0;
	}
	return real_setsockopt(fd, level, name, val, len);
}

int close(int fd)
{
	resolve();
	if (kind(fd) == FD_ULP) {
		logline("ulp-close fd=%d", fd);
		int expected = fd; /* a failed exchange overwrites it, so not fd itself */
		__atomic_compare_exchange_n(&newest_ulp, &expected, -1, 0, __ATOMIC_SEQ_CST,
					    __ATOMIC_SEQ_CST);
	}
	if (fd >= 0 && fd < MAX_FD) {
		/* Hold the write lock so the injector never writes to a reused descriptor. */
		pthread_mutex_lock(&wlock);
		kinds[fd] = FD_NONE;
		int r = real_close(fd);
		pthread_mutex_unlock(&wlock);
		return r;
	}
	return real_close(fd);
}

ssize_t read(int fd, void *buf, size_t n)
{
	resolve();
	switch (kind(fd)) {
	case FD_ULP:
		return ulp_read(fd, buf, n);
	case FD_XFRM: {
		ssize_t r = xfrm_reply(fd, buf, n, NULL, NULL);
		if (r != -2)
			return r;
		break;
	}
	}
	return real_read(fd, buf, n);
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	resolve();
	if (kind(fd) == FD_ULP && !(flags & MSG_PEEK))
		return ulp_read(fd, buf, n);
	if (kind(fd) == FD_XFRM) {
		ssize_t r = xfrm_reply(fd, buf, n, NULL, NULL);
		if (r != -2)
			return r;
	}
	return real_recv(fd, buf, n, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from, socklen_t *fromlen)
{
	resolve();
	if (kind(fd) == FD_ULP && !(flags & MSG_PEEK))
		return ulp_read(fd, buf, n);
	if (kind(fd) == FD_XFRM) {
		ssize_t r = xfrm_reply(fd, buf, n, from, fromlen);
		if (r != -2)
			return r;
	}
	return real_recvfrom(fd, buf, n, flags, from, fromlen);
}

ssize_t write(int fd, const void *buf, size_t n)
{
	resolve();
	if (kind(fd) == FD_ULP)
		return send_frame(fd, buf, n, "tx-ike");
	if (kind(fd) == FD_XFRM && xfrm_request(fd, buf, n))
		return (ssize_t)n;
	return real_write(fd, buf, n);
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	resolve();
	if (kind(fd) == FD_ULP)
		return send_frame(fd, buf, n, "tx-ike");
	if (kind(fd) == FD_XFRM && xfrm_request(fd, buf, n))
		return (ssize_t)n;
	return real_send(fd, buf, n, flags);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to, socklen_t tolen)
{
	resolve();
	if (kind(fd) == FD_ULP)
		return send_frame(fd, buf, n, "tx-ike");
	if (kind(fd) == FD_XFRM && xfrm_request(fd, buf, n))
		return (ssize_t)n;
	return real_sendto(fd, buf, n, flags, to, tolen);
}

static int unhex(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reads hex lines from the FIFO; each is an ESP packet for the newest ULP socket. */
static void *injector(void *arg)
{
	const char *path = arg;
	/* O_RDWR: the open does not wait for a writer and reads never see EOF between writers. */
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		logline("inject-open-failed %s", strerror(errno));
		return NULL;
	}
	static char line[2 * MAX_FRAME + 2];
	static unsigned char pkt[MAX_FRAME];
	size_t have = 0;
	for (;;) {
		ssize_t r = real_read(fd, line + have, sizeof(line) - 1 - have);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			return NULL;
		}
		have += (size_t)r;
		char *nl;
		while ((nl = memchr(line, '\n', have)) != NULL) {
			size_t ll = (size_t)(nl - line), n = 0;
			int ok = ll % 2 == 0 && ll / 2 <= sizeof(pkt);
			for (size_t i = 0; ok && i < ll; i += 2) {
				int hi = unhex(line[i]), lo = unhex(line[i + 1]);
				ok = hi >= 0 && lo >= 0;
				pkt[n++] = (unsigned char)(hi << 4 | lo);
			}
			int target = __atomic_load_n(&newest_ulp, __ATOMIC_SEQ_CST);
			if (!ok || n < 8)
				logline("inject-bad-line len=%zu", ll);
			else if (target < 0)
				logline("inject-no-socket len=%zu", n);
			else
				send_frame(target, pkt, n, "tx-esp-injected");
			have -= ll + 1;
			memmove(line, nl + 1, have);
		}
		if (have == sizeof(line) - 1)
			have = 0;
	}
}

__attribute__((constructor)) static void shim_init(void)
{
	resolve();
	const char *log = getenv("ESPINTCP_SHIM_LOG");
	if (log != NULL) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (fd >= 0)
			logf = fdopen(fd, "a");
	}
	const char *fifo = getenv("ESPINTCP_SHIM_FIFO");
	/* Only in pluto itself, not in the helpers it may exec (they inherit the environment). */
	if (fifo != NULL && getenv("ESPINTCP_SHIM_STARTED") == NULL) {
		setenv("ESPINTCP_SHIM_STARTED", "1", 1);
		pthread_t t;
		if (pthread_create(&t, NULL, injector, (void *)fifo) == 0)
			pthread_detach(t);
	}
	logline("shim-loaded pid=%d", (int)getpid());
}
