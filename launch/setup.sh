#!/bin/sh
# One-step set-up for a fresh Debian 12 machine (run as root from the repo):
#   launch/setup.sh demo   install what is missing, build, run the main job
#   launch/setup.sh test   install what is missing, build with ASan+UBSan, run every test
#   launch/setup.sh deps   only install the packages
# The test mode ends with a line "N passed, N failed".
set -eu

mode=${1:-demo}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

PACKAGES="build-essential meson ninja-build pkg-config python3 python3-venv python3-pip \
  libopenmpi-dev openmpi-bin libzmq3-dev libprotobuf-c-dev protobuf-c-compiler \
  libjansson-dev libpcre2-dev libutf8proc-dev"
# The test suite also starts a real Slurm on localhost.
TEST_PACKAGES="slurmctld slurmd slurm-client munge"

install_deps() {
    missing=""
    for p in $PACKAGES ${EXTRA_PACKAGES:-}; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "setup: installing$missing"
        if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # CUDA is optional: the build compiles the kernels when nvcc is found.
    if [ -x /usr/local/cuda/bin/nvcc ]; then PATH=/usr/local/cuda/bin:$PATH; export PATH; fi
}

# Python for the tests: Hugging Face `tokenizers` computes expected token ids
# independently of loom; pyzmq + protobuf (+ grpcio-tools for protoc) run the
# Python client.
python_env() {
    venv="$root/build-venv"
    if [ ! -x "$venv/bin/python3" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python3" -c "import tokenizers, zmq, google.protobuf, grpc_tools" 2>/dev/null ||
        "$venv/bin/python3" -m pip install -q --disable-pip-version-check "tokenizers>=0.20" numpy pyzmq protobuf grpcio-tools
    PATH="$venv/bin:$PATH"
    export PATH
}

case "$mode" in
deps)
    install_deps
    ;;
demo)
    install_deps
    [ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
    ninja -C build >/dev/null
    # The main job: the cluster on the demo model (stories260K), tensor parallel
    # over 2 CPU worker ranks under mpirun, queried with loom client.
    endpoint=tcp://127.0.0.1:${LOOM_DEMO_PORT:-5555}
    echo "setup: starting the cluster: launch/loom-launch.sh --model tests/data/stories260K --tp 2 --listen $endpoint"
    OMP_NUM_THREADS=1 launch/loom-launch.sh --model tests/data/stories260K --tp 2 --listen "$endpoint" &
    cluster=$!
    trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null' EXIT
    ./build/loom client --endpoint "$endpoint" --health --wait 60 >/dev/null
    echo "setup: query: loom client --prompt \"Once upon a time\" --max-new-tokens 120 --stream"
    printf "Once upon a time"
    ./build/loom client --endpoint "$endpoint" --prompt "Once upon a time" --max-new-tokens 120 \
        --temperature 0.8 --top-p 0.9 --seed 42 --stop-id 1 --stream
    echo
    ;;
test)
    EXTRA_PACKAGES=$TEST_PACKAGES
    install_deps
    python_env
    [ -f build-test/build.ninja ] || meson setup build-test --buildtype=debugoptimized \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
    ninja -C build-test
    # The ops suite needs a GPU and runs on the GPU machine only.
    set +e
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-test --no-suite ops --print-errorlogs --num-processes 2
    set -e
    python3 launch/test_summary.py build-test/meson-logs/testlog.json
    ;;
*)
    echo "usage: launch/setup.sh demo|test|deps" >&2
    exit 2
    ;;
esac
