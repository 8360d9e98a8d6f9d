#!/usr/bin/env bash
# Installs the Debian packages the program-wrapping tests use: Xvfb and
# x11vnc, and netkit's telnetd (from telnetd-ssl, unpacked into a cache
# directory, since it conflicts with Debian's own telnetd); and HAProxy for
# the scaling example (examples/haproxy.cfg); openssl for the TLS tests' certificates; Apache's htpasswd (apache2-utils) for the htpasswd tests.  Without root or a reachable
# package registry it says so and the tests that need these skip.
set -u
cache="${1:?usage: system-deps.sh CACHE_DIR}"
mkdir -p "$cache"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: not root or no apt-get; telnetd, x11vnc and HAProxy tests will be skipped"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
missing=""
missing_haproxy=""
for tool in Xvfb x11vnc; do command -v "$tool" >/dev/null || missing=1; done
command -v haproxy >/dev/null || missing_haproxy=1
if [ -n "$missing" ] || [ -n "$missing_haproxy" ] || [ ! -x "$cache/telnetd-ssl/usr/sbin/in.telnetd" ]; then
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
fi
if [ -n "$missing" ]; then
    timeout 600 apt-get install -y -qq --no-install-recommends xvfb x11vnc \
        || echo "system-deps: could not install xvfb/x11vnc; their tests will be skipped"
fi
if [ -n "$missing_haproxy" ]; then
    timeout 600 apt-get install -y -qq --no-install-recommends haproxy \
        || echo "system-deps: could not install haproxy; the HAProxy example test will be skipped"
fi
if ! command -v openssl >/dev/null; then
    # The TLS tests make their certificates with the openssl command.
    timeout 600 apt-get install -y -qq --no-install-recommends openssl \
        || echo "system-deps: could not install openssl; the TLS tests will be skipped"
fi
if ! command -v htpasswd >/dev/null; then
    # The htpasswd tests check lines made by Apache's own htpasswd tool.
    timeout 600 apt-get install -y -qq --no-install-recommends apache2-utils \
        || echo "system-deps: could not install apache2-utils; the htpasswd tests will be skipped"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    # The browser tests drive Debian's own Chromium build through its driver.
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
    timeout 900 apt-get install -y -qq --no-install-recommends chromium chromium-driver \
        || echo "system-deps: could not install chromium/chromium-driver; the browser tests will be skipped"
fi
if [ ! -e /usr/share/novnc/vnc_lite.html ] || ! command -v systemd-socket-activate >/dev/null; then
    # The browser test of noVNC serves Debian's novnc; the socket activation test runs
    # the router under systemd-socket-activate (Debian's systemd package; no init needed).
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends novnc systemd \
        || echo "system-deps: could not install novnc/systemd; the noVNC and socket activation tests will be skipped"
fi
if ! command -v redis-server >/dev/null; then
    # The TokenRedis resolver tests start their own redis-server on loopback.
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends redis-server \
        || echo "system-deps: could not install redis-server; the TokenRedis tests will be skipped"
fi
if ! command -v lighttpd >/dev/null || [ ! -e /usr/lib/lighttpd/mod_openssl.so ]; then
    # make bench: lighttpd's mod_wstunnel is the reference relay, mod_openssl its wss:// variant.
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends lighttpd lighttpd-mod-openssl \
        || echo "system-deps: could not install lighttpd; make bench reports its variants as failed"
fi
python=.venv/bin/python; [ -x "$python" ] || python=python3
if ! command -v cc >/dev/null || ! "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    # The compiled frame codec (src/wsrouter/ws/_frames.c, optional) needs a C compiler and the
    # headers of Debian's python3 (a pyenv or other own-built Python ships its headers itself).
    timeout 300 apt-get update -qq || echo "system-deps: apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev \
        || echo "system-deps: could not install gcc/python3-dev; the pure-Python frame codec is used"
fi
if [ ! -x "$cache/telnetd-ssl/usr/sbin/in.telnetd" ]; then
    (
        cd "$cache" && rm -f telnetd-ssl_*.deb \
        && timeout 300 apt-get download telnetd-ssl 2>/dev/null \
        && dpkg -x telnetd-ssl_*.deb telnetd-ssl
    ) || echo "system-deps: could not fetch telnetd-ssl; the telnetd test will be skipped"
fi
exit 0
