"""The accelerator suite runs end to end in its dry mode (tiny sizes), so it is ready for the day a device is lent."""

from scripts import bench_cases
from scripts import benchmark


def test_accelerator_suite_dry_run_gives_a_table_row_per_case(tmp_path):
  cases = [bench_cases.dry_run(c) for c in bench_cases.CASES['accelerator']]
  assert all(c['size'] == 32 and c['model'] == 'tiny' for c in cases)
  results = [benchmark.run_case(c, repeats=1) for c in cases]
  assert all(r['seconds'] > 0 and r['gflop'] > 0 for r in results)
  table = benchmark.to_markdown(results, benchmark.describe_machine())
  rows = [line for line in table.splitlines() if line.startswith('| ') and 'tiny model' in line]
  assert len(rows) == len(cases)
  assert benchmark.describe_machine() in table


def test_dry_run_keeps_the_cases_that_have_no_size():
  case = dict(kind='render_cpu_batch', scenes='procedural')
  assert bench_cases.dry_run(case) == case
