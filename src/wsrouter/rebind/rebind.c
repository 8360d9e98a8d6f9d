/*
 * rebind.so: an LD_PRELOAD shim that moves a TCP (or UDP) server's socket
 * to loopback on a port the kernel chooses, and tells wsrouter where it went.
 *
 * wsrouter runs an unmodified server (telnetd, x11vnc, ...) with this shim
 * preloaded, listens on the server's original port itself and proxies
 * WebSocket sessions to the moved address. The kernel picks the new port
 * (a bind to port 0), so no port is ever chosen by bind-then-close.
 *
 * Environment (the same names are constants in wsrouter/rebind/__init__.py):
 *
 *   WSROUTER_REBIND_PORTS  comma-separated TCP ports to move, or "*" for
 *                          every bind of a SOCK_STREAM AF_INET/AF_INET6
 *                          socket to a non-zero port.
 *   WSROUTER_REBIND_FD     decimal number of an inherited, writable fd (a
 *                          pipe). Each moved bind writes one line to it with
 *                          a single write(2), so lines from several
 *                          processes never interleave:
 *                            bound <requested_port> <host> <port>\n
 *                            failed <requested_port> <errno name or number>\n
 *                          where host is 127.0.0.1 or ::1. A failed bind
 *                          still returns its error to the program. The line
 *                          is written when bind() returns, before the
 *                          program calls listen(): connections to the new
 *                          address may be refused for a moment after it.
 *   WSROUTER_REBIND_DIR    optional (empty: unset): an absolute path of a directory only the
 *                          router's user can enter (mode 0700). When set, a
 *                          moved socket becomes a Unix stream socket there
 *                          instead of a loopback port (private mode, below),
 *                          and the line for it is
 *                            bound <requested_port> unix <path>\n
 *   WSROUTER_REBIND_PROTO  optional: "udp" moves the binds of SOCK_DGRAM
 *                          sockets instead of SOCK_STREAM ones (a UDP
 *                          server): to a loopback port, or with DIR to a
 *                          Unix datagram socket (private UDP, below). Any
 *                          other value, or unset: TCP.
 *   WSROUTER_REBIND_KEEP   "1": leave the variables, LD_PRELOAD and the fd
 *                          to programs this one execs (scripts such as
 *                          vncserver exec the real server). Otherwise the
 *                          constructor removes the three variables and this
 *                          shim's LD_PRELOAD entry from the environment and
 *                          marks the fd close-on-exec, so exec'd programs are
 *                          not wrapped. Forked children still are: they share
 *                          the state the constructor read.
 *
 * The shim moves nothing unless both PORTS and FD are valid. It moves:
 *   AF_INET  any address             -> 127.0.0.1 port 0
 *   AF_INET6 any address (incl. ::)  -> ::1 port 0
 *   AF_INET6 IPv4-mapped address     -> ::ffff:127.0.0.1 port 0
 * and, when ::1 is unavailable (IPv6 disabled) on a dual-stack socket,
 * falls back to ::ffff:127.0.0.1, reported as 127.0.0.1. Every other bind
 * (other ports, families, the other socket type, unix sockets, addresses shorter than their
 * family needs) passes through untouched.
 *
 * getsockname() on a moved socket returns the address the program asked
 * for, so servers that print or advertise their port show the one they
 * asked for.
 *
 * Private mode (WSROUTER_REBIND_DIR set): a bind to move creates an AF_UNIX
 * stream socket bound to DIR/<tag>-<port>-<pid>-<n>.sock (tag: 4 for
 * AF_INET, 6 for AF_INET6, m for an IPv4-mapped AF_INET6 address) and puts
 * it in place of the program's socket with dup3() onto the same fd number,
 * keeping the file status flags (O_NONBLOCK) and FD_CLOEXEC; the TCP socket
 * is closed. Options set before bind (SO_REUSEADDR, IPV6_V6ONLY, TCP_*) have
 * no Unix meaning and are dropped. Only processes that can enter DIR (the
 * router's user, and root) can connect. So that the program still sees TCP:
 *   - getsockname() on the listening socket returns the address asked for;
 *     on an accepted connection, the loopback address of the requested
 *     family with the requested port;
 *   - accept()/accept4() and getpeername() on an accepted connection return
 *     the WebSocket client's address when the router bound its end of the
 *     connection to the abstract name "\0wsrouter-peer <ip> <port> <nonce>"
 *     (an IPv4 client as ::ffff:a.b.c.d on an IPv6 socket; an IPv6 client
 *     on an IPv4 socket cannot be shown), else a loopback address of the
 *     socket's family with a port made from the connection's inode;
 *   - setsockopt() at the IP, IPv6 and TCP levels succeeds doing nothing,
 *     getsockopt() there reads 0, and SO_DOMAIN/SO_PROTOCOL read the TCP
 *     family and IPPROTO_TCP.
 * Private UDP (PROTO=udp and DIR): the moved socket is an AF_UNIX datagram
 * socket in DIR. recvfrom() and recvmsg() show each sender as an IP address:
 * the WebSocket client's when the router bound its socket to the abstract
 * name above, else loopback with a port made from the sender's name; the
 * shim remembers the MAX_PEERS most recently heard or answered senders, so
 * that sendto() and sendmsg() to such an address go to that sender's Unix
 * name (to an address never seen, or forgotten: EHOSTUNREACH, and one line
 * on stderr the first time). recvmmsg() and sendmmsg() are done as a loop of
 * recvmsg() and sendmsg() with the same translation (MSG_WAITFORONE and the
 * timeout, checked after each datagram as the kernel does, are kept).
 * connect() to a sender's IP address connects to its Unix name, so send(),
 * write(), recv() and read() then work with that sender; getpeername() shows
 * the WebSocket client (another sender: loopback, with a port that may differ
 * from the one recvfrom() showed). SO_PROTOCOL reads IPPROTO_UDP.
 * A socket is recognised by its Unix name lying in DIR, so this also holds
 * for sockets inherited across fork and exec. Other calls (recvmsg's
 * address, /proc/net) still show a Unix socket. The shim never unlinks the
 * socket files: the router removes DIR when the program has stopped.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define ENV_PORTS "WSROUTER_REBIND_PORTS"
#define ENV_FD "WSROUTER_REBIND_FD"
#define ENV_KEEP "WSROUTER_REBIND_KEEP"
#define ENV_DIR "WSROUTER_REBIND_DIR"
#define ENV_PROTO "WSROUTER_REBIND_PROTO"
/* The abstract socket name prefix under which the router passes the client. */
#define PEER_PREFIX "wsrouter-peer "
#define ENV_PRELOAD "LD_PRELOAD"

/* The kernel's shortest accepted AF_INET6 address (RFC 2133, no scope id). */
#define SIN6_MIN_LEN offsetof(struct sockaddr_in6, sin6_scope_id)

/* How many moved sockets getsockname() can recognise at once. */
#define MAX_MOVED 64

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getsockname_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*recvmmsg_fn)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);
typedef int (*sockopt_set_fn)(int, int, int, const void *, socklen_t);
typedef int (*sockopt_get_fn)(int, int, int, void *, socklen_t *);

/* Written only by the constructor, read-only afterwards. */
static int active;
static int all_ports;
static unsigned char port_set[65536 / 8];
static int report_fd = -1;
static dev_t report_dev;
static ino_t report_ino;
/* Private mode: the directory, with a trailing '/', and its length. */
static char private_dir[sizeof ((struct sockaddr_un *)0)->sun_path];
static size_t private_dir_len;
static unsigned long private_serial;
/* The socket type whose binds are moved: SOCK_STREAM, or SOCK_DGRAM for "udp". */
static int moved_type = SOCK_STREAM;

union address {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
};

/* Moved sockets, identified by fd and socket inode, for getsockname(). */
struct moved {
    int used;
    int fd;
    dev_t dev;
    ino_t ino;
    union address requested;
    socklen_t requested_len;
};
static struct moved moved_table[MAX_MOVED];
static int any_moved;
static pthread_mutex_t moved_lock = PTHREAD_MUTEX_INITIALIZER;

/* A planned replacement bind. */
struct plan {
    union address original; /* as requested, flow label cleared */
    union address addr;     /* what is bound instead */
    socklen_t len;          /* of both */
    unsigned short requested;
    const char *host;
};

/* The next definition of NAME (libc's), looked up once and cached; a
 * race only looks it up twice. */
#define NEXT_SYMBOL(type, name)                                          \
    static type next_##name(void)                                        \
    {                                                                    \
        static type cached;                                              \
        type fn = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);            \
        if (fn == NULL) {                                                \
            fn = (type)dlsym(RTLD_NEXT, #name);                          \
            __atomic_store_n(&cached, fn, __ATOMIC_RELEASE);             \
        }                                                                \
        return fn;                                                       \
    }

/* The next definition of a wrapped call in the variable VAR, or fail the
 * call with ENOSYS, as a call the C library lacks would. */
#define REAL_OR_ENOSYS(type, var, next) \
    type var = next();                   \
    if (var == NULL) {                   \
        errno = ENOSYS;                  \
        return -1;                       \
    }

NEXT_SYMBOL(bind_fn, bind)
NEXT_SYMBOL(getsockname_fn, getsockname)
NEXT_SYMBOL(getsockname_fn, getpeername)
NEXT_SYMBOL(accept4_fn, accept4)
NEXT_SYMBOL(sockopt_set_fn, setsockopt)
NEXT_SYMBOL(sockopt_get_fn, getsockopt)
NEXT_SYMBOL(recvfrom_fn, recvfrom)
NEXT_SYMBOL(sendto_fn, sendto)
NEXT_SYMBOL(recvmsg_fn, recvmsg)
NEXT_SYMBOL(sendmsg_fn, sendmsg)
NEXT_SYMBOL(connect_fn, connect)
NEXT_SYMBOL(recvmmsg_fn, recvmmsg)
NEXT_SYMBOL(sendmmsg_fn, sendmmsg)

static void port_add(unsigned long port)
{
    port_set[port / 8] |= (unsigned char)(1u << (port % 8));
}

static int port_listed(unsigned short port)
{
    return all_ports || (port_set[port / 8] & (1u << (port % 8))) != 0;
}

/* Parse "*" or "P[,P...]" with 1 <= P <= 65535; 0 on any malformed entry. */
static int parse_ports(const char *text)
{
    if (strcmp(text, "*") == 0) {
        all_ports = 1;
        return 1;
    }
    const char *p = text;
    for (;;) {
        char *end;
        if (*p < '0' || *p > '9')
            return 0;
        errno = 0;
        unsigned long port = strtoul(p, &end, 10);
        if (errno != 0 || port == 0 || port > 65535)
            return 0;
        port_add(port);
        if (*end == '\0')
            return 1;
        if (*end != ',')
            return 0;
        p = end + 1;
    }
}

/* Parse the report fd; it must be open for writing. Returns -1 if unusable. */
static int parse_report_fd(const char *text)
{
    char *end;
    if (*text < '0' || *text > '9')
        return -1;
    errno = 0;
    long fd = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || fd > INT_MAX)
        return -1;
    int flags = fcntl((int)fd, F_GETFL);
    if (flags < 0)
        return -1;
    int mode = flags & O_ACCMODE;
    if (mode != O_WRONLY && mode != O_RDWR)
        return -1;
    struct stat st;
    if (fstat((int)fd, &st) != 0)
        return -1;
    report_dev = st.st_dev;
    report_ino = st.st_ino;
    return (int)fd;
}

/*
 * Take the private directory: an absolute path leaving room in sun_path for
 * a socket name ("m-65535-<pid>-<n>.sock", at most 40 bytes). 0 if unusable.
 */
static int parse_private_dir(const char *text)
{
    size_t len = strlen(text);
    while (len > 1 && text[len - 1] == '/')
        len--;
    if (text[0] != '/' || len + 1 + 40 >= sizeof private_dir)
        return 0;
    memcpy(private_dir, text, len);
    private_dir[len] = '/';
    private_dir_len = len + 1;
    return 1;
}

/* Whether an LD_PRELOAD entry names this shim (same path or same file). */
static int is_self(const char *entry, const char *self, const struct stat *self_st)
{
    if (self != NULL && strcmp(entry, self) == 0)
        return 1;
    struct stat st;
    return self_st != NULL && stat(entry, &st) == 0
        && st.st_dev == self_st->st_dev && st.st_ino == self_st->st_ino;
}

/* Remove this shim from LD_PRELOAD, keeping every other entry in order. */
static void drop_self_from_preload(void)
{
    const char *value = getenv(ENV_PRELOAD);
    if (value == NULL)
        return;
    Dl_info info;
    const char *self = NULL;
    struct stat self_st;
    const struct stat *self_stp = NULL;
    if (dladdr(&report_fd, &info) != 0 && info.dli_fname != NULL) {
        self = info.dli_fname;
        if (stat(self, &self_st) == 0)
            self_stp = &self_st;
    }
    size_t len = strlen(value);
    char *copy = malloc(len + 1);
    char *kept = malloc(len + 1);
    if (copy == NULL || kept == NULL) {
        free(copy);
        free(kept);
        return;
    }
    memcpy(copy, value, len + 1);
    kept[0] = '\0';
    size_t used = 0;
    char *saveptr = NULL;
    /* ld.so separates LD_PRELOAD entries with spaces or colons. */
    for (char *entry = strtok_r(copy, " :", &saveptr); entry != NULL;
         entry = strtok_r(NULL, " :", &saveptr)) {
        if (is_self(entry, self, self_stp))
            continue;
        size_t n = strlen(entry);
        if (used > 0)
            kept[used++] = ':';
        memcpy(kept + used, entry, n + 1);
        used += n;
    }
    if (used == 0)
        unsetenv(ENV_PRELOAD);
    else
        setenv(ENV_PRELOAD, kept, 1);
    free(copy);
    free(kept);
}

__attribute__((constructor)) static void rebind_init(void)
{
    const char *ports = getenv(ENV_PORTS);
    const char *fd_text = getenv(ENV_FD);
    const char *keep_text = getenv(ENV_KEEP);
    const char *dir_text = getenv(ENV_DIR);
    const char *proto_text = getenv(ENV_PROTO);
    if (proto_text != NULL && strcmp(proto_text, "udp") == 0)
        moved_type = SOCK_DGRAM;
    int keep = keep_text != NULL && strcmp(keep_text, "1") == 0;

    if (ports != NULL && fd_text != NULL) {
        if (!parse_ports(ports))
            dprintf(2, "wsrouter rebind: %s=%s is not \"*\" or a list of ports; "
                       "binds are not moved\n", ENV_PORTS, ports);
        else if ((report_fd = parse_report_fd(fd_text)) < 0)
            dprintf(2, "wsrouter rebind: %s=%s is not an open writable fd; "
                       "binds are not moved\n", ENV_FD, fd_text);
        else if (dir_text != NULL && dir_text[0] != '\0' && !parse_private_dir(dir_text))
            dprintf(2, "wsrouter rebind: %s=%s is not an absolute path short enough "
                       "for a Unix socket name; binds are not moved\n", ENV_DIR, dir_text);
        else
            active = 1;
    }
    /* Prime the lookups before the program can start threads. */
    next_bind();
    next_getsockname();
    next_getpeername();
    next_accept4();
    next_setsockopt();
    next_getsockopt();
    next_recvfrom();
    next_sendto();
    next_recvmsg();
    next_sendmsg();

    if (keep)
        return;
    if (active)
        fcntl(report_fd, F_SETFD, fcntl(report_fd, F_GETFD) | FD_CLOEXEC);
    unsetenv(ENV_PORTS);
    unsetenv(ENV_FD);
    unsetenv(ENV_KEEP);
    unsetenv(ENV_DIR);
    unsetenv(ENV_PROTO);
    drop_self_from_preload();
}

static int is_moved_type(int fd)
{
    int type = 0;
    socklen_t len = sizeof type;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == moved_type;
}

static int is_v6only(int fd)
{
    int on = 0;
    socklen_t len = sizeof on;
    return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len) == 0 && on;
}

static void set_v4mapped_loopback(struct sockaddr_in6 *in6)
{
    memset(&in6->sin6_addr, 0, sizeof in6->sin6_addr);
    in6->sin6_addr.s6_addr[10] = 0xff;
    in6->sin6_addr.s6_addr[11] = 0xff;
    in6->sin6_addr.s6_addr[12] = 127;
    in6->sin6_addr.s6_addr[15] = 1;
}

/*
 * Decide whether this bind is one to move and, if so, fill in the loopback
 * address to bind instead. Reads at most len bytes of addr.
 */
static int plan_move(int fd, const struct sockaddr *addr, socklen_t len, struct plan *plan)
{
    sa_family_t family;
    if (addr == NULL || len < sizeof family)
        return 0;
    memcpy(&family, (const char *)addr + offsetof(struct sockaddr, sa_family), sizeof family);
    memset(plan, 0, sizeof *plan);
    if (family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        memcpy(&plan->original.in4, addr, sizeof(struct sockaddr_in));
        plan->addr = plan->original;
        plan->requested = ntohs(plan->addr.in4.sin_port);
        plan->addr.in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        plan->addr.in4.sin_port = 0;
        plan->len = sizeof(struct sockaddr_in);
        plan->host = "127.0.0.1";
    } else if (family == AF_INET6 && len >= SIN6_MIN_LEN) {
        size_t n = len < sizeof(struct sockaddr_in6) ? len : sizeof(struct sockaddr_in6);
        memcpy(&plan->original.in6, addr, n);
        plan->original.in6.sin6_flowinfo = 0;
        plan->addr = plan->original;
        plan->requested = ntohs(plan->addr.in6.sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&plan->addr.in6.sin6_addr)) {
            set_v4mapped_loopback(&plan->addr.in6);
            plan->host = "127.0.0.1";
        } else {
            plan->addr.in6.sin6_addr = in6addr_loopback;
            plan->host = "::1";
        }
        plan->addr.in6.sin6_port = 0;
        plan->addr.in6.sin6_flowinfo = 0;
        plan->addr.in6.sin6_scope_id = 0;
        plan->len = sizeof(struct sockaddr_in6);
    } else {
        return 0;
    }
    return plan->requested != 0 && port_listed(plan->requested) && is_moved_type(fd);
}

static const char *errno_name(int err)
{
    switch (err) {
    case EACCES: return "EACCES";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOBUFS: return "ENOBUFS";
    case ENOMEM: return "ENOMEM";
    case ENOTSOCK: return "ENOTSOCK";
    case EPERM: return "EPERM";
    case EMFILE: return "EMFILE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOENT: return "ENOENT";
    default: return NULL;
    }
}

/*
 * Write one report line with a single write(2). Nothing is written if the
 * program has closed the fd or reused its number for something else; a
 * reader that has gone away yields EPIPE here, never a SIGPIPE that would
 * kill the program.
 */
static void report(const char *line, size_t n)
{
    struct stat st;
    if (fstat(report_fd, &st) != 0 || st.st_dev != report_dev || st.st_ino != report_ino)
        return;
    sigset_t pipe_set, old_mask, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    int was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    ssize_t written;
    do {
        written = write(report_fd, line, n);
    } while (written < 0 && errno == EINTR);
    if (written < 0 && errno == EPIPE && !was_pending) {
        struct timespec none = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &none) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

static void report_bound(unsigned short requested, const char *host, unsigned short port)
{
    char line[96];
    int n = snprintf(line, sizeof line, "bound %u %s %u\n", requested, host, port);
    if (n > 0 && (size_t)n < sizeof line)
        report(line, (size_t)n);
}

static void report_failed(unsigned short requested, int err)
{
    char line[96];
    const char *name = errno_name(err);
    int n = name != NULL
        ? snprintf(line, sizeof line, "failed %u %s\n", requested, name)
        : snprintf(line, sizeof line, "failed %u %d\n", requested, err);
    if (n > 0 && (size_t)n < sizeof line)
        report(line, (size_t)n);
}

static void report_unix(unsigned short requested, const char *path)
{
    char line[160];
    int n = snprintf(line, sizeof line, "bound %u unix %s\n", requested, path);
    if (n > 0 && (size_t)n < sizeof line)
        report(line, (size_t)n);
}

/* Remember a moved socket so getsockname() can show its requested address. */
static void remember(int fd, const struct plan *plan)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    pthread_mutex_lock(&moved_lock);
    struct moved *slot = NULL;
    for (int i = 0; i < MAX_MOVED && slot == NULL; i++)
        if (moved_table[i].used && moved_table[i].fd == fd)
            slot = &moved_table[i];
    for (int i = 0; i < MAX_MOVED && slot == NULL; i++)
        if (!moved_table[i].used)
            slot = &moved_table[i];
    for (int i = 0; i < MAX_MOVED && slot == NULL; i++) {
        /* Reclaim an entry whose socket is gone (fd closed or reused). */
        struct stat old;
        if (fstat(moved_table[i].fd, &old) != 0
            || old.st_dev != moved_table[i].dev || old.st_ino != moved_table[i].ino)
            slot = &moved_table[i];
    }
    if (slot != NULL) {
        *slot = (struct moved){1, fd, st.st_dev, st.st_ino, plan->original, plan->len};
        __atomic_store_n(&any_moved, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&moved_lock);
}

/* Copy out the address a moved socket asked for; 0 if fd is not one. */
static int requested_address_of(int fd, union address *requested, socklen_t *len)
{
    if (!__atomic_load_n(&any_moved, __ATOMIC_ACQUIRE))
        return 0;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return 0;
    int found = 0;
    pthread_mutex_lock(&moved_lock);
    for (int i = 0; i < MAX_MOVED && !found; i++) {
        struct moved *m = &moved_table[i];
        if (m->used && m->fd == fd && m->dev == st.st_dev && m->ino == st.st_ino) {
            *requested = m->requested;
            *len = m->requested_len;
            found = 1;
        }
    }
    pthread_mutex_unlock(&moved_lock);
    return found;
}

static unsigned short bound_port(int fd)
{
    struct sockaddr_in6 local; /* large enough for AF_INET too */
    socklen_t len = sizeof local;
    getsockname_fn fn = next_getsockname();
    if (fn == NULL || fn(fd, (struct sockaddr *)&local, &len) != 0)
        return 0;
    /* sin_port and sin6_port share an offset. */
    return ntohs(local.sin6_port);
}

/* The family tag of a private socket's name: which TCP family it stands for. */
static char family_tag(const struct plan *plan)
{
    if (plan->original.sa.sa_family == AF_INET)
        return '4';
    return IN6_IS_ADDR_V4MAPPED(&plan->original.in6.sin6_addr) ? 'm' : '6';
}

/*
 * Private mode: bind a Unix socket in the private directory and put it in
 * place of fd (same number, same O_NONBLOCK and FD_CLOEXEC). On failure fd
 * is left as it was, and the error is returned and reported.
 */
static int private_bind(bind_fn real, int fd, struct plan *plan)
{
    int status_flags = fcntl(fd, F_GETFL);
    int fd_flags = fcntl(fd, F_GETFD);
    if (status_flags < 0 || fd_flags < 0) {
        int saved = errno;
        report_failed(plan->requested, saved);
        errno = saved;
        return -1;
    }
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    unsigned long serial = __atomic_add_fetch(&private_serial, 1, __ATOMIC_RELAXED);
    int n = snprintf(un.sun_path, sizeof un.sun_path, "%s%c-%u-%ld-%lu.sock", private_dir,
                     family_tag(plan), plan->requested, (long)getpid(), serial);
    int rc = -1;
    int saved = ENAMETOOLONG;
    int unix_fd = -1;
    if (n > 0 && (size_t)n < sizeof un.sun_path) {
        /* A name left by an earlier run under the same pid is stale. */
        unlink(un.sun_path);
        unix_fd = socket(AF_UNIX, moved_type | SOCK_CLOEXEC, 0);
        saved = errno;
    }
    if (unix_fd >= 0) {
        rc = real(unix_fd, (struct sockaddr *)&un, sizeof un);
        saved = errno;
        if (rc == 0 && dup3(unix_fd, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
            saved = errno;
            unlink(un.sun_path);
            rc = -1;
        }
        close(unix_fd);
    }
    if (rc != 0) {
        report_failed(plan->requested, saved);
        errno = saved;
        return -1;
    }
    fcntl(fd, F_SETFL, status_flags);
    remember(fd, plan);
    report_unix(plan->requested, un.sun_path);
    return 0;
}

static int moved_bind(bind_fn real, int fd, struct plan *plan)
{
    if (private_dir_len > 0)
        return private_bind(real, fd, plan);
    int rc = real(fd, &plan->addr.sa, plan->len);
    if (rc != 0 && errno == EADDRNOTAVAIL && plan->addr.sa.sa_family == AF_INET6
        && strcmp(plan->host, "::1") == 0 && !is_v6only(fd)) {
        /* No IPv6 loopback: a dual-stack socket can still use 127.0.0.1. */
        set_v4mapped_loopback(&plan->addr.in6);
        plan->host = "127.0.0.1";
        rc = real(fd, &plan->addr.sa, plan->len);
    }
    int saved = errno;
    if (rc != 0) {
        report_failed(plan->requested, saved);
    } else {
        unsigned short port = bound_port(fd);
        if (port == 0) {
            report_failed(plan->requested, errno);
        } else {
            remember(fd, plan);
            report_bound(plan->requested, plan->host, port);
        }
    }
    errno = saved;
    return rc;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    REAL_OR_ENOSYS(bind_fn, real, next_bind);
    struct plan plan;
    if (!active || !plan_move(fd, addr, len, &plan))
        return real(fd, addr, len);
    return moved_bind(real, fd, &plan);
}

/*
 * Whether fd is a socket in the private directory (a moved listening socket
 * or a connection accepted on one); if so, fill in the loopback address of
 * the TCP family it stands for, with the requested port.
 */
static int private_socket(int fd, union address *local, socklen_t *local_len, unsigned short *port)
{
    if (!active || private_dir_len == 0)
        return 0;
    struct sockaddr_un un;
    socklen_t len = sizeof un;
    getsockname_fn real = next_getsockname();
    if (real == NULL || real(fd, (struct sockaddr *)&un, &len) != 0 || un.sun_family != AF_UNIX
        || len <= offsetof(struct sockaddr_un, sun_path) + private_dir_len
        || strncmp(un.sun_path, private_dir, private_dir_len) != 0)
        return 0;
    const char *name = un.sun_path + private_dir_len;
    char tag = name[0];
    if (name[1] != '-' || (tag != '4' && tag != '6' && tag != 'm'))
        return 0;
    unsigned long value = strtoul(name + 2, NULL, 10);
    if (value == 0 || value > 65535)
        return 0;
    *port = (unsigned short)value;
    memset(local, 0, sizeof *local);
    if (tag == '4') {
        local->in4.sin_family = AF_INET;
        local->in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        local->in4.sin_port = htons(*port);
        *local_len = sizeof local->in4;
    } else {
        local->in6.sin6_family = AF_INET6;
        if (tag == 'm')
            set_v4mapped_loopback(&local->in6);
        else
            local->in6.sin6_addr = in6addr_loopback;
        local->in6.sin6_port = htons(*port);
        *local_len = sizeof local->in6;
    }
    return 1;
}

/*
 * The WebSocket client's address, if the router bound its end of the
 * connection to the abstract name PEER_PREFIX "<ip> <port> <nonce>". Only the
 * router's user can connect to a private socket, so the name is trusted.
 */
static int client_address(const union address *unix_peer, socklen_t len, int *family,
                          unsigned char ip[16], unsigned short *port)
{
    static const char prefix[] = PEER_PREFIX;
    size_t start = offsetof(struct sockaddr_un, sun_path);
    if (len <= start + 1 || len > sizeof(struct sockaddr_un) || unix_peer->un.sun_path[0] != '\0')
        return 0;
    char name[sizeof unix_peer->un.sun_path];
    size_t n = len - start - 1;
    memcpy(name, unix_peer->un.sun_path + 1, n);
    name[n] = '\0';
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return 0;
    char *host = name + sizeof prefix - 1;
    char *space = strchr(host, ' ');
    if (space == NULL)
        return 0;
    *space = '\0';
    char *end;
    unsigned long value = strtoul(space + 1, &end, 10);
    if (end == space + 1 || *end != ' ' || value > 65535)
        return 0;
    *port = (unsigned short)value;
    if (inet_pton(AF_INET, host, ip) == 1)
        *family = AF_INET;
    else if (inet_pton(AF_INET6, host, ip) == 1)
        *family = AF_INET6;
    else
        return 0;
    return 1;
}

/*
 * A connection's peer as the program should see it: the WebSocket client's
 * address when the router passed it (shown in the listener's family, an
 * IPv4 client as ::ffff:a.b.c.d on an IPv6 socket), else loopback with a
 * port made from the connection's inode.
 */
static int fake_peer(int fd, const union address *unix_peer, socklen_t unix_len,
                     union address *peer, socklen_t *peer_len)
{
    unsigned short port;
    if (!private_socket(fd, peer, peer_len, &port))
        return 0;
    int family;
    unsigned char ip[16];
    unsigned short client_port;
    if (client_address(unix_peer, unix_len, &family, ip, &client_port)) {
        if (peer->sa.sa_family == AF_INET && family == AF_INET) {
            memcpy(&peer->in4.sin_addr, ip, 4);
            peer->in4.sin_port = htons(client_port);
            return 1;
        }
        if (peer->sa.sa_family == AF_INET6) {
            if (family == AF_INET) {
                set_v4mapped_loopback(&peer->in6);
                memcpy(&peer->in6.sin6_addr.s6_addr[12], ip, 4);
            } else {
                memcpy(&peer->in6.sin6_addr, ip, 16);
            }
            peer->in6.sin6_port = htons(client_port);
            return 1;
        }
        /* An IPv6 client cannot be shown on an IPv4 socket: loopback it is. */
    }
    struct stat st;
    unsigned short fake = 32768;
    if (fstat(fd, &st) == 0)
        fake = (unsigned short)(32768 + st.st_ino % 28000);
    if (peer->sa.sa_family == AF_INET)
        peer->in4.sin_port = htons(fake);
    else
        peer->in6.sin6_port = htons(fake);
    return 1;
}

/* As the kernel does: truncate to the caller's room, report the full size. */
static void copy_out(const union address *from, socklen_t from_len, struct sockaddr *addr, socklen_t *len)
{
    if (addr == NULL || len == NULL)
        return;
    socklen_t room = *len;
    memcpy(addr, from, room < from_len ? room : from_len);
    *len = from_len;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    REAL_OR_ENOSYS(getsockname_fn, real, next_getsockname);
    if (!active || addr == NULL || len == NULL)
        return real(fd, addr, len);
    union address actual;
    socklen_t actual_len = sizeof actual;
    int rc = real(fd, &actual.sa, &actual_len);
    if (rc != 0)
        return rc;
    int saved = errno;
    union address shown;
    socklen_t shown_len;
    unsigned short port;
    if (requested_address_of(fd, &shown, &shown_len))
        copy_out(&shown, shown_len, addr, len);
    else if (actual.sa.sa_family == AF_UNIX && private_socket(fd, &shown, &shown_len, &port))
        copy_out(&shown, shown_len, addr, len);
    else
        copy_out(&actual, actual_len, addr, len);
    errno = saved;
    return rc;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    REAL_OR_ENOSYS(getsockname_fn, real, next_getpeername);
    if (!active || private_dir_len == 0 || addr == NULL || len == NULL)
        return real(fd, addr, len);
    union address actual;
    socklen_t actual_len = sizeof actual;
    int rc = real(fd, &actual.sa, &actual_len);
    if (rc != 0)
        return rc;
    int saved = errno;
    union address peer;
    socklen_t peer_len;
    if (actual.sa.sa_family == AF_UNIX && fake_peer(fd, &actual, actual_len, &peer, &peer_len))
        copy_out(&peer, peer_len, addr, len);
    else
        copy_out(&actual, actual_len, addr, len);
    errno = saved;
    return rc;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    REAL_OR_ENOSYS(accept4_fn, real, next_accept4);
    if (!active || private_dir_len == 0 || addr == NULL || len == NULL)
        return real(fd, addr, len, flags);
    union address actual;
    socklen_t actual_len = sizeof actual;
    int conn = real(fd, &actual.sa, &actual_len, flags);
    if (conn < 0)
        return conn;
    int saved = errno;
    union address peer;
    socklen_t peer_len;
    if (actual.sa.sa_family == AF_UNIX && fake_peer(conn, &actual, actual_len, &peer, &peer_len))
        copy_out(&peer, peer_len, addr, len);
    else
        copy_out(&actual, actual_len, addr, len);
    errno = saved;
    return conn;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return accept4(fd, addr, len, 0);
}

/* Options at these levels have no meaning on a Unix socket. */
static int tcp_level(int level)
{
    return level == IPPROTO_TCP || level == IPPROTO_IP || level == IPPROTO_IPV6;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    REAL_OR_ENOSYS(sockopt_set_fn, real, next_setsockopt);
    union address local;
    socklen_t local_len;
    unsigned short port;
    if (tcp_level(level) && private_socket(fd, &local, &local_len, &port))
        return 0;
    return real(fd, level, name, value, len);
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    REAL_OR_ENOSYS(sockopt_get_fn, real, next_getsockopt);
    union address local;
    socklen_t local_len;
    unsigned short port;
    int pretend = tcp_level(level)
        || (level == SOL_SOCKET && (name == SO_DOMAIN || name == SO_PROTOCOL));
    if (!pretend || value == NULL || len == NULL || *len < (socklen_t)sizeof(int)
        || !private_socket(fd, &local, &local_len, &port))
        return real(fd, level, name, value, len);
    int shown = 0;
    if (level == SOL_SOCKET)
        shown = name == SO_DOMAIN ? local.sa.sa_family : moved_type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
    memset(value, 0, *len);
    memcpy(value, &shown, sizeof shown);
    return 0;
}

/* -- private UDP ----------------------------------------------------------- */

/* How many senders a private UDP socket can answer (the most recently used). */
#define MAX_PEERS 256

/* A sender as the program sees it, and the Unix name to answer it at. */
struct dgram_peer {
    unsigned long used; /* when last heard or answered (dgram_clock); 0: free */
    union address fake;
    struct sockaddr_un un;
    socklen_t un_len;
};
static struct dgram_peer dgram_peers[MAX_PEERS];
static unsigned long dgram_clock;
static int dgram_warned;
static pthread_mutex_t dgram_lock = PTHREAD_MUTEX_INITIALIZER;

static int private_dgram(void)
{
    return active && private_dir_len > 0 && moved_type == SOCK_DGRAM;
}

static int same_ip_address(const union address *a, const union address *b)
{
    if (a->sa.sa_family != b->sa.sa_family)
        return 0;
    if (a->sa.sa_family == AF_INET)
        return a->in4.sin_port == b->in4.sin_port && a->in4.sin_addr.s_addr == b->in4.sin_addr.s_addr;
    if (a->sa.sa_family == AF_INET6)
        return a->in6.sin6_port == b->in6.sin6_port
            && memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof a->in6.sin6_addr) == 0;
    return 0;
}

static void remember_peer(const union address *fake, const union address *unix_peer, socklen_t unix_len)
{
    pthread_mutex_lock(&dgram_lock);
    struct dgram_peer *slot = NULL, *oldest = &dgram_peers[0];
    for (int i = 0; i < MAX_PEERS && slot == NULL; i++) {
        if (dgram_peers[i].used && same_ip_address(&dgram_peers[i].fake, fake))
            slot = &dgram_peers[i];
        else if (dgram_peers[i].used < oldest->used)
            oldest = &dgram_peers[i];
    }
    if (slot == NULL)
        slot = oldest; /* free, else the least recently used */
    slot->used = ++dgram_clock;
    slot->fake = *fake;
    memcpy(&slot->un, &unix_peer->un, unix_len);
    slot->un_len = unix_len;
    pthread_mutex_unlock(&dgram_lock);
}

static int lookup_peer(const struct sockaddr *dest, socklen_t dest_len, struct sockaddr_un *un, socklen_t *un_len)
{
    union address wanted;
    memset(&wanted, 0, sizeof wanted);
    memcpy(&wanted, dest, dest_len < sizeof wanted ? dest_len : sizeof wanted);
    int found = 0;
    pthread_mutex_lock(&dgram_lock);
    for (int i = 0; i < MAX_PEERS && !found; i++) {
        if (dgram_peers[i].used && same_ip_address(&dgram_peers[i].fake, &wanted)) {
            *un = dgram_peers[i].un;
            *un_len = dgram_peers[i].un_len;
            dgram_peers[i].used = ++dgram_clock;
            found = 1;
        }
    }
    pthread_mutex_unlock(&dgram_lock);
    return found;
}

/*
 * The IP address a datagram's Unix sender is shown as (remembered, so a
 * reply finds it): the WebSocket client's, else loopback with a port made
 * from the sender's name. 0 if fd is not a private socket or the sender is
 * unnamed (it cannot be answered).
 */
static int dgram_sender(int fd, const union address *unix_peer, socklen_t unix_len,
                        union address *peer, socklen_t *peer_len)
{
    size_t start = offsetof(struct sockaddr_un, sun_path);
    if (unix_peer->sa.sa_family != AF_UNIX || unix_len <= start || unix_len > sizeof(struct sockaddr_un)
        || !fake_peer(fd, unix_peer, unix_len, peer, peer_len))
        return 0;
    int family;
    unsigned char ip[16];
    unsigned short port;
    if (!client_address(unix_peer, unix_len, &family, ip, &port)
        || (family == AF_INET6 && peer->sa.sa_family == AF_INET)) {
        /* Not a client the router named, or one an IPv4 socket cannot show. */
        unsigned hash = 2166136261u; /* FNV-1a over the name */
        for (size_t i = start; i < unix_len; i++)
            hash = (hash ^ (unsigned char)((const char *)&unix_peer->un)[i]) * 16777619u;
        unsigned short fake = (unsigned short)(32768 + hash % 28000);
        if (peer->sa.sa_family == AF_INET)
            peer->in4.sin_port = htons(fake);
        else
            peer->in6.sin6_port = htons(fake);
    }
    remember_peer(peer, unix_peer, unix_len);
    return 1;
}

/* Where a datagram to dest goes: its sender's Unix name; -1 (errno set) if never seen. */
static int dgram_destination(int fd, const struct sockaddr *dest, socklen_t dest_len,
                             struct sockaddr_un *un, socklen_t *un_len)
{
    union address local;
    socklen_t local_len;
    unsigned short port;
    if (dest == NULL || dest_len < sizeof(sa_family_t)
        || (dest->sa_family != AF_INET && dest->sa_family != AF_INET6)
        || !private_socket(fd, &local, &local_len, &port))
        return 0;
    if (!lookup_peer(dest, dest_len, un, un_len)) {
        if (!__atomic_exchange_n(&dgram_warned, 1, __ATOMIC_RELAXED)) {
            static const char line[] = "wsrouter rebind: a datagram to an address this private UDP socket has not "
                                       "heard from (or no longer remembers) fails with EHOSTUNREACH\n";
            ssize_t ignored = write(STDERR_FILENO, line, sizeof line - 1);
            (void)ignored;
        }
        errno = EHOSTUNREACH;
        return -1;
    }
    return 1;
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
    REAL_OR_ENOSYS(recvfrom_fn, real, next_recvfrom);
    if (!private_dgram() || addr == NULL || len == NULL)
        return real(fd, buf, n, flags, addr, len);
    union address actual;
    socklen_t actual_len = sizeof actual;
    ssize_t got = real(fd, buf, n, flags, &actual.sa, &actual_len);
    if (got < 0)
        return got;
    int saved = errno;
    union address peer;
    socklen_t peer_len;
    if (dgram_sender(fd, &actual, actual_len, &peer, &peer_len))
        copy_out(&peer, peer_len, addr, len);
    else
        copy_out(&actual, actual_len, addr, len);
    errno = saved;
    return got;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    REAL_OR_ENOSYS(recvmsg_fn, real, next_recvmsg);
    if (!private_dgram() || msg == NULL || msg->msg_name == NULL)
        return real(fd, msg, flags);
    void *name = msg->msg_name;
    socklen_t room = msg->msg_namelen;
    union address actual;
    msg->msg_name = &actual;
    msg->msg_namelen = sizeof actual;
    ssize_t got = real(fd, msg, flags);
    socklen_t actual_len = msg->msg_namelen;
    msg->msg_name = name;
    msg->msg_namelen = room;
    if (got < 0)
        return got;
    int saved = errno;
    union address peer;
    socklen_t peer_len;
    if (dgram_sender(fd, &actual, actual_len, &peer, &peer_len))
        copy_out(&peer, peer_len, name, &msg->msg_namelen);
    else
        copy_out(&actual, actual_len, name, &msg->msg_namelen);
    errno = saved;
    return got;
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *dest, socklen_t dest_len)
{
    REAL_OR_ENOSYS(sendto_fn, real, next_sendto);
    struct sockaddr_un un;
    socklen_t un_len;
    int mapped = private_dgram() ? dgram_destination(fd, dest, dest_len, &un, &un_len) : 0;
    if (mapped < 0)
        return -1;
    if (mapped)
        return real(fd, buf, n, flags, (struct sockaddr *)&un, un_len);
    return real(fd, buf, n, flags, dest, dest_len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    REAL_OR_ENOSYS(sendmsg_fn, real, next_sendmsg);
    struct sockaddr_un un;
    socklen_t un_len;
    int mapped = private_dgram() && msg != NULL
        ? dgram_destination(fd, msg->msg_name, msg->msg_namelen, &un, &un_len) : 0;
    if (mapped < 0)
        return -1;
    if (!mapped)
        return real(fd, msg, flags);
    struct msghdr copy = *msg;
    copy.msg_name = &un;
    copy.msg_namelen = un_len;
    return real(fd, &copy, flags);
}

int connect(int fd, const struct sockaddr *dest, socklen_t dest_len)
{
    REAL_OR_ENOSYS(connect_fn, real, next_connect);
    struct sockaddr_un un;
    socklen_t un_len;
    int mapped = private_dgram() ? dgram_destination(fd, dest, dest_len, &un, &un_len) : 0;
    if (mapped < 0)
        return -1;
    if (mapped)
        return real(fd, (struct sockaddr *)&un, un_len);
    return real(fd, dest, dest_len);
}

static int timespec_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags, struct timespec *timeout)
{
    REAL_OR_ENOSYS(recvmmsg_fn, real, next_recvmmsg);
    union address local;
    socklen_t local_len;
    unsigned short port;
    if (!private_dgram() || vec == NULL || !private_socket(fd, &local, &local_len, &port))
        return real(fd, vec, vlen, flags, timeout);
    /* As the kernel: the timeout is checked after each datagram; after the
     * first, MSG_WAITFORONE makes the rest non-blocking; an error after the
     * first datagram ends the batch and is not reported. */
    struct timespec deadline;
    if (timeout != NULL) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout->tv_sec;
        deadline.tv_nsec += timeout->tv_nsec;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    int each = flags & ~MSG_WAITFORONE;
    unsigned int got = 0;
    while (got < vlen) {
        ssize_t n = recvmsg(fd, &vec[got].msg_hdr, each);
        if (n < 0)
            return got > 0 ? (int)got : -1;
        vec[got].msg_len = (unsigned int)n;
        got++;
        if (flags & MSG_WAITFORONE)
            each |= MSG_DONTWAIT;
        if (timeout != NULL && timespec_passed(&deadline))
            break;
    }
    return (int)got;
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    REAL_OR_ENOSYS(sendmmsg_fn, real, next_sendmmsg);
    union address local;
    socklen_t local_len;
    unsigned short port;
    if (!private_dgram() || vec == NULL || !private_socket(fd, &local, &local_len, &port))
        return real(fd, vec, vlen, flags);
    unsigned int sent = 0;
    for (; sent < vlen; sent++) {
        ssize_t n = sendmsg(fd, &vec[sent].msg_hdr, flags);
        if (n < 0)
            return sent > 0 ? (int)sent : -1;
        vec[sent].msg_len = (unsigned int)n;
    }
    return (int)sent;
}
