#!/usr/bin/env bash
# Installs Autobahn|Testsuite (PyPI autobahntestsuite, Python 2.7 only) into a
# virtualenv at DIR (default .cache/autobahn-py27), from PyPI through pip.
# Python 2.7 is looked for as $PYTHON2, then python2.7 on PATH, then under
# pyenv (`pyenv root`, or ~/.pyenv).  Without one it says how to get one
# (docs/conformance.md) and exits 3, so callers can skip rather than fail.
set -euo pipefail
dir="${1:-.cache/autobahn-py27}"
if [ -x "$dir/bin/wstest" ]; then
    exit 0
fi

# A candidate counts only if it runs and is 2.7: pyenv's python2.7 shim is on
# PATH even where 2.7 is not the selected version, and then fails.
is_python27() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1
}

find_python2() {
    local root candidate
    if [ -n "${PYTHON2:-}" ]; then echo "$PYTHON2"; return 0; fi
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in "$(command -v python2.7 || true)" "$root"/versions/2.7*/bin/python2.7 /usr/bin/python2.7; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && is_python27 "$candidate"; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

if ! python2="$(find_python2)"; then
    echo "conformance: no Python 2.7 found (set PYTHON2=/path/to/python2.7); see docs/conformance.md" >&2
    exit 3
fi
echo "conformance: installing Autobahn|Testsuite with $python2 into $dir"
if ! "$python2" -m virtualenv --version >/dev/null 2>&1; then
    "$python2" -m pip install -q --disable-pip-version-check virtualenv 2>&1 | grep -v "is ignored" || true
fi
rm -rf "$dir"
"$python2" -m virtualenv -q "$dir"
# pip's warnings about local index directories that lack a package are noise.
"$dir/bin/pip" install -q --disable-pip-version-check autobahntestsuite 2>&1 | grep -v "is ignored" || true
test -x "$dir/bin/wstest"
