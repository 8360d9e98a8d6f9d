#!/bin/sh
# Reproduce src/wsrouter/web/wstelnet/xterm/ from the npm registry: the built
# xterm.js, its stylesheet, the fit addon and their licences, at pinned
# versions (VERSIONS records them with the tarballs' integrity hashes).
# Nothing is fetched at run time; wstelnet.html loads these files from the router.
# Usage: tools/vendor-xterm.sh   (needs npm and tar; change the versions below to upgrade)
set -eu
XTERM_VERSION=6.0.0
FIT_VERSION=0.11.0
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/src/wsrouter/web/wstelnet/xterm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@xterm/xterm@$XTERM_VERSION" "@xterm/addon-fit@$FIT_VERSION" >/dev/null
mkdir xterm fit
tar xzf "xterm-xterm-$XTERM_VERSION.tgz" -C xterm
tar xzf "xterm-addon-fit-$FIT_VERSION.tgz" -C fit
mkdir -p "$out"
cp xterm/package/lib/xterm.js xterm/package/css/xterm.css "$out/"
cp xterm/package/LICENSE "$out/LICENSE"
cp fit/package/lib/addon-fit.js "$out/addon-fit.js"
cp fit/package/LICENSE "$out/LICENSE.addon-fit"
{
    echo "# Vendored by tools/vendor-xterm.sh from the npm registry; do not edit by hand."
    for tgz in "xterm-xterm-$XTERM_VERSION.tgz" "xterm-addon-fit-$FIT_VERSION.tgz"; do
        echo "$tgz sha256:$(sha256sum "$tgz" | cut -d' ' -f1)"
    done
    echo "@xterm/xterm $XTERM_VERSION (MIT): xterm.js xterm.css LICENSE"
    echo "@xterm/addon-fit $FIT_VERSION (MIT): addon-fit.js LICENSE.addon-fit"
} > "$out/VERSIONS"
echo "vendored @xterm/xterm $XTERM_VERSION and @xterm/addon-fit $FIT_VERSION into $out"
