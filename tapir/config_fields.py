"""Config fields that were renamed: a config still holds the old name as an empty placeholder, so a user who
types `--config.<old>=...` gets an error naming the new field instead of a bare "no such field".

    add_placeholders(config, TRAINING_RENAMES)     # in a configs/*.py get_config(), before config.lock()
    reject_renamed(config, TRAINING_RENAMES)       # where the run starts (trainer, evaluation runner)
"""

from typing import Mapping

from ml_collections import config_dict

# old dotted field -> (new dotted field, type of the old field's values)
TRAINING_RENAMES: dict[str, tuple[str, type]] = {
    'model_kind': ('task', str),
    'data.train_size': ('data.train_hw', tuple),
    'eval.synthetic_size': ('eval.synthetic_hw', tuple),
    'eval.query_mode': ('eval.query_modes', str),
    'eval.chunk_size': ('eval.query_chunk_size', int),
}
EVALUATION_RENAMES: dict[str, tuple[str, type]] = {
    'resolution': ('resolution_hw', tuple),
    'synthetic.size': ('synthetic.hw', tuple),
}


def _parent_and_leaf(config, dotted: str):
  *path, leaf = dotted.split('.')
  for part in path:
    config = config[part]
  return config, leaf


def add_placeholders(config: config_dict.ConfigDict, renames: Mapping[str, tuple[str, type]]) -> None:
  """Adds each old field as an unset placeholder of its old type (call before locking the config)."""
  for old, (_, kind) in renames.items():
    parent, leaf = _parent_and_leaf(config, old)
    parent[leaf] = config_dict.placeholder(kind)


def reject_renamed(config: config_dict.ConfigDict, renames: Mapping[str, tuple[str, type]]) -> None:
  """ValueError naming the new field for every old field that was given a value."""
  used = []
  for old, (new, _) in renames.items():
    try:
      parent, leaf = _parent_and_leaf(config, old)
      value = parent.get(leaf)
    except (KeyError, AttributeError):
      continue
    if value is not None:
      used.append(f'config.{old} is now config.{new} (got {old}={value!r})')
  if used:
    raise ValueError('renamed config fields: ' + '; '.join(used))
