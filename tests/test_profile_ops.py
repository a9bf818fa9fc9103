"""scripts/profile_ops.py on a tiny case: the profiler's per-operation times are read and grouped by kind."""

import pytest

from scripts import profile_ops

TINY_OFFLINE = dict(kind='offline', frames=2, size=32, points=8, chunk=8, model='tiny', peaks='tiny')


def test_a_tiny_case_is_profiled_per_operation():
  result = profile_ops.profile(TINY_OFFLINE, top=50)
  kinds = dict((k, share) for k, _, share in result['kinds'])
  assert result['total_ms'] > 0 and sum(kinds.values()) == pytest.approx(1.0, abs=1e-6)
  assert not any(k.startswith(('ThunkExecutor', 'CommonPjRt', '$')) for k in kinds)  # host spans left out
  assert all(ms > 0 and calls >= 1 for _, ms, calls in result['ops'])
  assert any(k in ('ynn_fusion', 'dot', 'convolution', 'conv_general_dilated') for k in kinds)  # the model's work
