r"""What the cost-volume head's matrix-product gradients (`tapir.models.matmul_grad_conv`) buy, measured in one run.

    python scripts/bench_conv_grads.py --rounds 3

Times two cases of `scripts/benchmark.py` with the head's three convolutions as `MatmulGradConv2D` (the library:
matrix-product gradients inside the query-chunk scan on CPU, XLA's elsewhere) and as plain `hk.Conv2D` (XLA's own
gradients everywhere, as before), alternating in one process so both see the same machine: the gradient of all
outputs of the paper model (4 × 256² × 256 queries in 8 chunks of 32, dense patches: 7 chunks in the scan) and
the train step of `configs/tapir.py:cpu` on a fixed batch (64 queries in one chunk: no scan, so the two should
match). Forward outputs are identical either way (the same XLA convolution); the gradients agree up to float
summation order (tests/test_matmul_grad_conv.py).
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

CASES = (dict(kind='gradient', frames=4, size=256, points=256), dict(kind='train_cpu_preset'))


def _plain_conv(output_channels, kernel_shape, stride=1, name=None):
  import haiku as hk  # pylint: disable=g-import-not-at-top
  return hk.Conv2D(output_channels, kernel_shape, stride=stride, padding='SAME', name=name)


def run(rounds: int = 3, cases=CASES, repeats: int = 3) -> list[dict]:
  """Per case and formulation, the median over `rounds` alternating runs of `benchmark.run_case` medians."""
  from scripts import benchmark  # pylint: disable=g-import-not-at-top
  from tapir.models import cost_volume  # pylint: disable=g-import-not-at-top
  library = cost_volume.MatmulGradConv2D
  rows = []
  for case in cases:
    times = {'matrix products': [], 'XLA conv gradients': []}
    for _ in range(rounds):
      for label, conv in (('XLA conv gradients', _plain_conv), ('matrix products', library)):
        cost_volume.MatmulGradConv2D = conv  # read when the model is built, inside run_case
        try:
          times[label].append(benchmark.run_case(case, repeats)['seconds'])
        finally:
          cost_volume.MatmulGradConv2D = library
    medians = {label: benchmark._median(ts) for label, ts in times.items()}  # pylint: disable=protected-access
    rows.append(dict(case=benchmark._case_label(case), seconds=medians,  # pylint: disable=protected-access
                     speedup=medians['XLA conv gradients'] / medians['matrix products']))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per case per round (after a compile run)')
  args = parser.parse_args()
  from scripts import benchmark  # pylint: disable=g-import-not-at-top
  print(f'Machine: {benchmark.describe_machine()}; medians of {args.rounds} alternating rounds\n')
  print('| case | XLA conv gradients (s) | matrix products (s) | speed-up |\n|---|---|---|---|')
  for row in run(args.rounds, repeats=args.repeats):
    s = row['seconds']
    print(f"| {row['case']} | {s['XLA conv gradients']:.2f} | {s['matrix products']:.2f} | {row['speedup']:.2f}× |")


if __name__ == '__main__':
  main()
