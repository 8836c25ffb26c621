#!/usr/bin/env bash
# Multi-process training with torchrun (DDP). NCCL on GPUs; on a machine
# without CUDA tools/train.py switches to gloo, so the same command runs
# CPU processes.
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT. Python: $PYTHON.
set -e
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
if [[ -z "$CONFIG" || -z "$GPUS" ]]; then
  echo "usage: bash $0 CONFIG NUM_PROCS [train.py args...]" >&2; exit 2
fi
# the master port must be free on the master node (torchrun would stop with
# a raw EADDRINUSE)
if [[ "$NODE_RANK" == 0 ]] && ! "$PYTHON" -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)
' "$PORT"; then
  echo "error: port $PORT (PORT, torchrun's master port) is in use on this" \
    "machine, e.g. by another training job. Set PORT to a free port:" \
    "PORT=$((PORT + 1)) bash $0 $*" >&2
  exit 1
fi
PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
