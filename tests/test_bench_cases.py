"""The accelerator suite runs end to end in its dry mode (tiny sizes), so it is ready for the day a device is lent.

The cases run in a subprocess of their own, as the benchmark runs them: XLA:CPU state left by its pmapped train
steps and memory analyses crashed later compilations in a shared test worker.
"""

import json
import os
import subprocess
import sys
import textwrap

from scripts import bench_cases
from tests.conftest import REPO

_SCRIPT = textwrap.dedent('''
    import json
    from scripts import bench_cases, benchmark
    cases = [bench_cases.dry_run(c) for c in bench_cases.CASES['accelerator']]
    results = [benchmark.run_case(c, repeats=1) for c in cases]
    table = benchmark.to_markdown(results, benchmark.describe_machine())
    print('RESULT ' + json.dumps(dict(results=results, table=table, machine=benchmark.describe_machine())))
''')


def test_accelerator_suite_dry_run_gives_a_table_row_per_case():
  cases = [bench_cases.dry_run(c) for c in bench_cases.CASES['accelerator']]
  assert all(c['size'] == 32 and c['model'] == 'tiny' for c in cases)
  done = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'})
  line = next((l for l in done.stdout.splitlines() if l.startswith('RESULT ')), None)
  assert done.returncode == 0 and line, done.stderr[-3000:]
  out = json.loads(line[len('RESULT '):])
  assert len(out['results']) == len(cases)
  assert all(r['seconds'] > 0 and r['gflop'] > 0 for r in out['results'])
  rows = [l for l in out['table'].splitlines() if l.startswith('| ') and 'tiny model' in l]
  assert len(rows) == len(cases) and out['machine'] in out['table']


def test_dry_run_keeps_the_cases_that_have_no_size():
  case = dict(kind='render_cpu_batch', scenes='procedural')
  assert bench_cases.dry_run(case) == case
