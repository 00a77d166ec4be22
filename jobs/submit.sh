#!/usr/bin/env bash
# Submit a ray-wsis command to a Ray cluster as a Ray job, from this checkout.
#
#   jobs/submit.sh [ray job submit options] -- <ray-wsis command and its flags>
#   jobs/submit.sh --address http://HEAD:8265 -- run --config configs/cluster.yaml
#   jobs/submit.sh --address http://HEAD:8265 --no-wait -- train-downstream --labels s3://bucket/run1 --task semantic
#
# The checkout is the job's working dir (Ray puts it on the driver's and workers' sys.path), so
# the cluster needs no ray_wsis install; the entrypoint is `python -m ray_wsis`. Without a
# --runtime-env* option, cluster/runtime_env.yaml is used. RAY_ADDRESS works instead of --address.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
submit=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do submit+=("$1"); shift; done
if [ "$#" -eq 0 ]; then
  echo "usage: jobs/submit.sh [ray job submit options] -- <ray-wsis command ...>" >&2
  exit 2
fi
shift
case " ${submit[*]-} " in
  *" --runtime-env"*) ;;
  *) submit+=(--runtime-env "$root/cluster/runtime_env.yaml") ;;
esac
exec ray job submit --working-dir "$root" "${submit[@]}" -- python -m ray_wsis "$@"
