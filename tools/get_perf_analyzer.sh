#!/usr/bin/env bash
# Put Triton's perf_analyzer (C++ binary) at $VENV/perf-analyzer/perf_analyzer, from the package index only.
#
# tritonclient stopped shipping perf_analyzer in its wheels after 2.51 (the `perf-analyzer` name on the index
# is an empty placeholder, 0.1.0); the tritonclient 2.51.0 manylinux wheel still holds it in
# tritonclient-2.51.0.data/data/bin/. It links libb64.so.0d and libcudart.so.12, which the nvidia-pytriton
# wheel (`make install`) already ships under hashed names in nvidia_pytriton.libs/: links with the plain
# names go beside the binary and a wrapper sets LD_LIBRARY_PATH. Without a GPU, libcudart only loads.
# Usage: tools/get_perf_analyzer.sh [VENV]   (default .venv)
set -euo pipefail
VENV=${1:-.venv}
PY="$VENV/bin/python"
DEST="$VENV/perf-analyzer"
VERSION=2.51.0
LIBS=$("$PY" -c "from importlib import metadata; print(metadata.distribution('nvidia-pytriton').locate_file('nvidia_pytriton.libs'))")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$TMP" "tritonclient==$VERSION"
mkdir -p "$DEST/lib"
unzip -q -o -j "$TMP"/tritonclient-$VERSION-*.whl "tritonclient-$VERSION.data/data/bin/perf_analyzer" -d "$DEST/lib"
chmod +x "$DEST/lib/perf_analyzer"
ln -sf "$(ls "$LIBS"/libb64-*.so.0d | head -1)" "$DEST/lib/libb64.so.0d"
ln -sf "$(ls "$LIBS"/libcudart-*.so.12* | head -1)" "$DEST/lib/libcudart.so.12"
cat > "$DEST/perf_analyzer" <<'WRAP'
#!/usr/bin/env bash
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LD_LIBRARY_PATH="$HERE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$HERE/lib/perf_analyzer" "$@"
WRAP
chmod +x "$DEST/perf_analyzer"
"$DEST/perf_analyzer" --version 2>&1 | head -1 || true
echo "perf_analyzer (tritonclient $VERSION wheel): $DEST/perf_analyzer"
