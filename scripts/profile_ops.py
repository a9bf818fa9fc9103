r"""Where a benchmark case spends its time, per XLA operation (`jax.profiler`), for finding the next thing to speed up.

    python scripts/profile_ops.py --case offline            # 24 × 256² × 256 points, as scripts/benchmark.py
    python scripts/profile_ops.py --case gradient --top 30  # the paper model's gradient, 4 × 256² × 256, chunk 32

Runs the case through `scripts/benchmark.py`'s `run_case` (its case dicts, or `--case_json`): compiled, timed once,
then once more under the profiler; and prints the time per kind of XLA operation (the fusion or op name
without its number: `ynn_fusion` are XLA:CPU's library dot / conv kernels, `conv_general_dilated` convolutions it
did not hand to them, `*_fusion` elementwise loops) and the slowest single operations with their call counts
(an operation inside a loop body is called once per trip). The shares are of the summed operation times.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

CASES = {'offline': dict(kind='offline', frames=24, size=256, points=256),
         'gradient': dict(kind='gradient', frames=4, size=256, points=256),
         'online': dict(kind='online', frames=16, size=256, points=8)}
# host-side spans around the operations, not operations themselves
_WRAPPERS = re.compile(r'^(ThunkExecutor|SlinkyThreadPool|\$|PjitFunction|CommonPjRt)')


def profile(case: dict, top: int = 20) -> dict:
  """{'kinds': [(kind, ms, share)] (every kind), 'ops': [(name, ms, calls)] (the `top` slowest), 'total_ms'} for
  one run of `case` (see module docstring)."""
  from scripts import benchmark  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as trace_dir:
    benchmark.run_case(case, 1, profile_dir=trace_dir)  # compiled and timed first; the traced run is the last
    path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))[-1]
    with gzip.open(path) as f:
      events = [e for e in json.load(f)['traceEvents'] if e.get('ph') == 'X' and not _WRAPPERS.match(e['name'])]
  per_op, calls = collections.Counter(), collections.Counter()
  for e in events:
    per_op[e['name']] += e['dur'] / 1e3
    calls[e['name']] += 1
  kinds = collections.Counter()
  for name, ms in per_op.items():
    kinds[re.sub(r'\.\d+$', '', name)] += ms
  total = sum(kinds.values()) or 1.0
  return dict(kinds=[(k, ms, ms / total) for k, ms in kinds.most_common()],  # all of them
              ops=[(k, ms, calls[k]) for k, ms in per_op.most_common(top)], total_ms=total)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--case', choices=sorted(CASES), default='offline')
  parser.add_argument('--case_json', help='a case dict of scripts/bench_cases.py as JSON (instead of --case)')
  parser.add_argument('--top', type=int, default=20)
  args = parser.parse_args()
  case = json.loads(args.case_json) if args.case_json else CASES[args.case]
  result = profile(case, args.top)
  print(f'{case}: {result["total_ms"]:.1f} ms in XLA operations\n\nby kind:')
  for kind, ms, share in result['kinds'][:args.top]:
    print(f'  {ms:9.1f} ms {100 * share:5.1f}%  {kind}')
  print('\nslowest operations (calls):')
  for name, ms, count in result['ops']:
    print(f'  {ms:9.1f} ms {count:5d}  {name}')


if __name__ == '__main__':
  main()
