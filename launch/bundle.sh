#!/bin/sh
# Makes a relocatable bundle of loom for a GPU host without package access:
#   launch/bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build, loom-bundle)
# OUT_DIR/bin holds loom (and any extra binaries named in LOOM_BUNDLE_EXTRA),
# OUT_DIR/lib the libraries a cluster site does not provide (ZeroMQ and its
# dependencies, protobuf-c, jansson, utf8proc, PCRE2). The binaries' rpath is
# $ORIGIN/../lib. MPI, CUDA, cuBLASLt and NCCL are NOT bundled: they must come
# from the host, matching its drivers and interconnect (as on any cluster).
set -eu
build=${1:-build}
out=${2:-loom-bundle}
command -v patchelf >/dev/null 2>&1 || { echo "bundle: patchelf is needed (apt-get install patchelf)" >&2; exit 1; }
[ -x "$build/loom" ] || { echo "bundle: $build/loom not found; build first" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
# Libraries to carry: the non-system ones loom links, by soname prefix.
carry='libzmq|libsodium|libpgm|libnorm|libprotobuf-c|libjansson|libutf8proc|libpcre2-8|libbsd|libmd'
for bin in "$build/loom" ${LOOM_BUNDLE_EXTRA:-}; do
    cp "$bin" "$out/bin/"
    patchelf --set-rpath '$ORIGIN/../lib' "$out/bin/$(basename "$bin")"
    ldd "$bin" | awk '{print $3}' | grep -E "/($carry)[.-]" | while read -r lib; do
        cp -L "$lib" "$out/lib/"
    done
done
for lib in "$out"/lib/*; do patchelf --set-rpath '$ORIGIN' "$lib"; done
echo "bundle: $out ($(du -sh "$out" | cut -f1)); run $out/bin/loom on the target host"
