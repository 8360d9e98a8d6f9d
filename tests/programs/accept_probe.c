/*
 * A small TCP server in C for the rebind shim's private-mode tests: what a
 * plain C server sees of its socket after the shim moved it.
 *
 *   accept_probe FAMILY HOST PORT     (FAMILY: 4, 6 or dual)
 *
 * Binds HOST:PORT with SO_REUSEADDR and O_NONBLOCK|FD_CLOEXEC set before the
 * bind, listens, prints
 *   listening <host> <port> nonblock=<0|1> cloexec=<0|1>
 * (getsockname's address), waits for one connection with poll() and
 * accept(), prints
 *   accepted <peer host> <peer port> local <host> <port> peer <host> <port> nodelay=<rc> domain=<n>
 * (accept's address, then getsockname and getpeername of the connection,
 * setsockopt(TCP_NODELAY)'s result, SO_DOMAIN), writes "hi\n" to the
 * client and exits 0. Exits 1 with a message on any failure.
 */

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

/* Format an address as "host port"; "family <n>" for anything but IP. */
static void show(const struct sockaddr_storage *ss, char *out, size_t room)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
        snprintf(out, room, "%s %u", host, ntohs(in4->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(out, room, "%s %u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(out, room, "family %d", ss->ss_family);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    int family = strcmp(argv[1], "4") == 0 ? AF_INET : AF_INET6;
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (family == AF_INET6) {
        int v6only = strcmp(argv[1], "6") == 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);

    struct sockaddr_storage addr;
    socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&addr;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((unsigned short)atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &in4->sin_addr) != 1)
            return 2;
        len = sizeof *in4;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)atoi(argv[3]));
        if (inet_pton(AF_INET6, argv[2], &in6->sin6_addr) != 1)
            return 2;
        len = sizeof *in6;
    }
    if (bind(fd, (struct sockaddr *)&addr, len) != 0)
        fail("bind");
    if (listen(fd, 4) != 0)
        fail("listen");

    char text[3][96];
    struct sockaddr_storage seen;
    len = sizeof seen;
    if (getsockname(fd, (struct sockaddr *)&seen, &len) != 0)
        fail("getsockname");
    show(&seen, text[0], sizeof text[0]);
    printf("listening %s nonblock=%d cloexec=%d\n", text[0], (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0,
           (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    fflush(stdout);

    struct pollfd wait_for = {fd, POLLIN, 0};
    if (poll(&wait_for, 1, 20000) != 1)
        fail("poll");
    struct sockaddr_storage peer;
    len = sizeof peer;
    int conn = accept(fd, (struct sockaddr *)&peer, &len);
    if (conn < 0)
        fail("accept");
    show(&peer, text[0], sizeof text[0]);
    len = sizeof seen;
    if (getsockname(conn, (struct sockaddr *)&seen, &len) != 0)
        fail("getsockname");
    show(&seen, text[1], sizeof text[1]);
    len = sizeof seen;
    if (getpeername(conn, (struct sockaddr *)&seen, &len) != 0)
        fail("getpeername");
    show(&seen, text[2], sizeof text[2]);
    int nodelay = setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    int domain = -1;
    len = sizeof domain;
    getsockopt(conn, SOL_SOCKET, SO_DOMAIN, &domain, &len);
    printf("accepted %s local %s peer %s nodelay=%d domain=%d\n", text[0], text[1], text[2], nodelay, domain);
    fflush(stdout);
    if (write(conn, "hi\n", 3) != 3)
        fail("write");
    close(conn);
    return 0;
}
