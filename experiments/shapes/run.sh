#!/usr/bin/env bash
# The shapes benchmark: DetDiffusion's three claims in miniature on a CPU (see benchmark.py).
#   experiments/shapes/run.sh            # full run, about 45 min on 2 cores → experiments/shapes/RESULTS.md
#   experiments/shapes/run.sh --quick    # every step on tiny settings, a few minutes → outputs/shapes_benchmark_quick
# A rerun resumes after the last finished step; --fresh starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python experiments/shapes/benchmark.py "$@"
