#!/bin/bash
# loom-launch.sh: start a loom cluster (one coordinator + TP*PP workers) with mpirun.
#
#   launch/loom-launch.sh --model DIR [--tp N] [--pp M] [--listen E]
#                         [--hostfile F] [--np-per-node K] [--bind-to X]
#                         [--oversubscribe] [--dry-run] [-- extra `loom serve` args]
#
# It runs (and prints, with --dry-run, instead of running):
#
#   mpirun -n $((1+TP*PP)) --map-by slot --bind-to none [placement] \
#          loom serve --model DIR --tp TP --pp PP [--listen E] [extra args]
#
# Ranks and roles. MPI rank 0 is the coordinator (tokenizer, scheduler, the client
# socket at --listen); ranks 1..TP*PP are workers. Worker w = rank - 1 belongs to
# pipeline stage w / TP and is tensor-parallel rank w % TP of that stage:
#
#   rank:   0     1      2      ...  TP       TP+1   ...  2*TP   ...
#   role:   coord s0/t0  s0/t1  ...  s0/t(TP-1) s1/t0 ... s1/t(TP-1) ...
#
# Placement. Ranks are mapped by slot (--map-by slot): each node's slots are
# filled, in rank order, before the next node is used, so consecutive ranks (one TP
# group) share a node. With --np-per-node K (K = worker ranks per node, i.e. GPUs
# per node) the launcher builds the host list itself: the first node gets K+1 slots
# (the coordinator and workers 1..K), every further node K slots. With K a multiple
# of TP every TP group stays inside one node, and pipeline stages are spread over
# the nodes. The nodes are the hosts of --hostfile (first column, in order), or,
# inside a Slurm allocation without --hostfile, the allocation's nodes. Without
# --np-per-node, --hostfile is passed to mpirun unchanged (give the first host one
# slot more than the others), and without either everything runs on this machine.
#
# Other behaviour:
#   * on SIGTERM, ranks get LOOM_SIGKILL_TIMEOUT (default 5) seconds before mpirun's
#     SIGKILL, so the coordinator can answer every open request first.
#   * run as root: exports OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
#   * on one machine with fewer CPU cores than ranks (CPU backend, tests) it adds
#     --oversubscribe; --oversubscribe forces it.
#   * --bind-to none by default, so each rank's OpenMP threads may use every core;
#     --bind-to core|socket|numa changes it.
#   * OMP_NUM_THREADS and LOOM_* variables, when set, are forwarded to all ranks (-x).
#   * the loom binary: $LOOM_BIN, else build/loom of this repository, else `loom`
#     on PATH. mpirun: $MPIRUN, else `mpirun` on PATH. $LOOM_MPIRUN_ARGS (split on
#     spaces) is added to mpirun's options, e.g. "--mca btl_tcp_if_include ib0".
#
# Examples:
#   launch/loom-launch.sh --model tests/data/stories260K --tp 2          # 3 ranks here
#   launch/loom-launch.sh --model /m/llama --tp 8 --pp 2 --hostfile hosts \
#       --np-per-node 8 --listen tcp://0.0.0.0:5555 -- --max-batch-size 64
#   build/loom client --endpoint tcp://127.0.0.1:5555 --health --wait 300
set -eu

prog=${0##*/}

usage() {
    sed -n '2,/^set -eu$/{/^set -eu$/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
    echo "$prog: error: $*" >&2
    echo "$prog: try '$prog --help'" >&2
    exit 2
}

is_posint() {
    case "$1" in
    '' | *[!0-9]* | 0*) return 1 ;;
    *) return 0 ;;
    esac
}

model=""
tp=1
pp=1
listen=""
hostfile=""
per_node=""
bind_to=none
force_oversubscribe=0
dry_run=0
extra=()

need_value() {
    # $1 = flag, $2 = number of arguments left (the flag included), $3 = its value
    if [ "$2" -lt 2 ]; then die "$1 needs a value"; fi
    case "$3" in --*) die "$1 needs a value, got the flag '$3'" ;; esac
}

while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --model) need_value "$1" $# "${2-}"; model=$2; shift 2 ;;
    --model=*) model=${1#*=}; shift ;;
    --tp) need_value "$1" $# "${2-}"; tp=$2; shift 2 ;;
    --tp=*) tp=${1#*=}; shift ;;
    --pp) need_value "$1" $# "${2-}"; pp=$2; shift 2 ;;
    --pp=*) pp=${1#*=}; shift ;;
    --listen) need_value "$1" $# "${2-}"; listen=$2; shift 2 ;;
    --listen=*) listen=${1#*=}; shift ;;
    --hostfile) need_value "$1" $# "${2-}"; hostfile=$2; shift 2 ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    --np-per-node) need_value "$1" $# "${2-}"; per_node=$2; shift 2 ;;
    --np-per-node=*) per_node=${1#*=}; shift ;;
    --bind-to) need_value "$1" $# "${2-}"; bind_to=$2; shift 2 ;;
    --bind-to=*) bind_to=${1#*=}; shift ;;
    --oversubscribe) force_oversubscribe=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *) die "unknown argument '$1' (extra 'loom serve' arguments go after '--')" ;;
    esac
done

[ -n "$model" ] || die "--model DIR is required"
[ -d "$model" ] || die "--model $model: not a directory"
is_posint "$tp" || die "--tp must be a positive integer, got '$tp'"
is_posint "$pp" || die "--pp must be a positive integer, got '$pp'"
if [ -n "$per_node" ]; then
    is_posint "$per_node" || die "--np-per-node must be a positive integer, got '$per_node'"
fi
if [ -n "$hostfile" ]; then
    if [ ! -f "$hostfile" ] || [ ! -r "$hostfile" ]; then die "--hostfile $hostfile: not a readable file"; fi
fi
if [ -n "$listen" ]; then
    case "$listen" in
    tcp://?*:?* | ipc://?* | inproc://?*) ;;
    *) die "--listen must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555, got '$listen'" ;;
    esac
fi
case "$bind_to" in
none | core | socket | numa | hwthread | l3cache | board) ;;
*) die "--bind-to must be none, core, socket, numa, hwthread, l3cache or board, got '$bind_to'" ;;
esac

workers=$((tp * pp))
np=$((1 + workers))

# --- the loom binary -------------------------------------------------------------
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
if [ -n "${LOOM_BIN:-}" ]; then
    loom=$LOOM_BIN
    [ -x "$loom" ] || [ "$dry_run" = 1 ] || die "LOOM_BIN=$loom is not an executable file"
elif [ -x "$repo/build/loom" ]; then
    loom=$repo/build/loom
elif command -v loom >/dev/null 2>&1; then
    loom=$(command -v loom)
elif [ "$dry_run" = 1 ]; then
    loom=loom
    echo "$prog: warning: no loom binary found (LOOM_BIN, $repo/build/loom, PATH)" >&2
else
    die "no loom binary: set LOOM_BIN, build $repo/build/loom (meson setup build && ninja -C build) or put loom on PATH"
fi

mpirun=${MPIRUN:-mpirun}
if ! command -v "$mpirun" >/dev/null 2>&1 && [ "$dry_run" = 0 ]; then
    die "$mpirun not found (Debian: apt-get install openmpi-bin)"
fi

# --- mpirun options --------------------------------------------------------------
env_prefix=()
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    env_prefix=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
fi

mpi_opts=(-n "$np" --map-by slot --bind-to "$bind_to")
# On SIGTERM mpirun signals every rank and SIGKILLs them after this many seconds
# (Open MPI's default is 1): time for the coordinator to answer its clients.
mpi_opts+=(--mca odls_base_sigkill_timeout "${LOOM_SIGKILL_TIMEOUT:-5}")

# Hosts of the placement: the hostfile's first column, else the Slurm allocation.
hosts=()
if [ -n "$per_node" ]; then
    if [ -n "$hostfile" ]; then
        while read -r h _; do
            case "$h" in '' | '#'*) continue ;; esac
            dup=0
            for seen in "${hosts[@]+"${hosts[@]}"}"; do
                [ "$seen" = "$h" ] && dup=1
            done
            [ "$dup" = 1 ] || hosts+=("$h")
        done <"$hostfile"
    elif [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null 2>&1; then
        while read -r h; do hosts+=("$h"); done < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    else
        die "--np-per-node needs --hostfile (or a Slurm allocation) to know the nodes"
    fi
    [ "${#hosts[@]}" -gt 0 ] || die "no hosts found in ${hostfile:-the Slurm allocation}"
    nodes_needed=$(((workers + per_node - 1) / per_node))
    [ "$nodes_needed" -le "${#hosts[@]}" ] ||
        die "TP*PP=$workers workers at $per_node per node need $nodes_needed nodes, only ${#hosts[@]} given"
    if [ "$tp" -le "$per_node" ] && [ $((per_node % tp)) -ne 0 ]; then
        echo "$prog: warning: --np-per-node $per_node is not a multiple of --tp $tp: some TP groups will span two nodes" >&2
    elif [ "$tp" -gt "$per_node" ]; then
        echo "$prog: warning: --tp $tp is larger than --np-per-node $per_node: TP groups span nodes" >&2
    fi
    host_list=""
    left=$workers
    i=0
    while [ "$left" -gt 0 ]; do
        n=$per_node
        if [ "$left" -lt "$n" ]; then n=$left; fi
        left=$((left - n))
        if [ "$i" -eq 0 ]; then n=$((n + 1)); fi # the coordinator
        host_list="$host_list${host_list:+,}${hosts[$i]}:$n"
        i=$((i + 1))
    done
    mpi_opts+=(--host "$host_list")
elif [ -n "$hostfile" ]; then
    mpi_opts+=(--hostfile "$hostfile")
fi

oversubscribe=$force_oversubscribe
if [ "$oversubscribe" = 0 ] && [ -z "$hostfile" ] && [ -z "$per_node" ] && [ -z "${SLURM_JOB_NODELIST:-}" ]; then
    cores=$(nproc 2>/dev/null || echo 1)
    if [ "$cores" -lt "$np" ]; then oversubscribe=1; fi
fi
if [ "$oversubscribe" = 1 ]; then mpi_opts+=(--oversubscribe); fi

for v in $(compgen -e); do
    case "$v" in
    LOOM_BIN | LOOM_MPIRUN_ARGS) ;;
    OMP_NUM_THREADS | LOOM_*) mpi_opts+=(-x "$v") ;;
    esac
done

if [ -n "${LOOM_MPIRUN_ARGS:-}" ]; then
    read -r -a user_mpi <<<"$LOOM_MPIRUN_ARGS"
    mpi_opts+=("${user_mpi[@]}")
fi

serve=("$loom" serve --model "$model" --tp "$tp" --pp "$pp")
if [ -n "$listen" ]; then serve+=(--listen "$listen"); fi
serve+=("${extra[@]+"${extra[@]}"}")

cmd=("${env_prefix[@]+"${env_prefix[@]}"}" "$mpirun" "${mpi_opts[@]}" "${serve[@]}")

# Shell-quote only what needs it, so the printed command stays readable.
quote() {
    case "$1" in
    '' | *[!A-Za-z0-9_./:=,+@%-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
    esac
}

if [ "$dry_run" = 1 ]; then
    line=""
    for a in "${cmd[@]}"; do line="$line${line:+ }$(quote "$a")"; done
    printf '%s\n' "$line"
    exit 0
fi

echo "$prog: $np ranks (coordinator + TP=$tp x PP=$pp workers): ${cmd[*]}" >&2
exec "${cmd[@]}"
