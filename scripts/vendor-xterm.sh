#!/usr/bin/env bash
# Fetch the vendored xterm.js files again from the npm registry (versions below;
# see sessions_app/static/sessions_app/vendor/xterm/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
XTERM=6.0.0
FIT=0.11.0
dest=sessions_app/static/sessions_app/vendor/xterm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT" >/dev/null)
tar -xzf "$work/xterm-xterm-$XTERM.tgz" -C "$work" package/lib/xterm.js package/css/xterm.css package/LICENSE
cp "$work/package/lib/xterm.js" "$work/package/css/xterm.css" "$dest/"
cp "$work/package/LICENSE" "$dest/LICENSE"
tar -xzf "$work/xterm-addon-fit-$FIT.tgz" -C "$work" package/lib/addon-fit.js
cp "$work/package/lib/addon-fit.js" "$dest/"
# The source maps are not shipped: drop the comments that name them (the static
# files' manifest would look for them).
sed -i 's|^//# sourceMappingURL=.*$||' "$dest/xterm.js" "$dest/addon-fit.js"
echo "xterm $XTERM and addon-fit $FIT in $dest"
