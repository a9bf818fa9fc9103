"""Writing our checkpoints for other implementations: `torch` gives the official PyTorch port's state_dict
(`.safetensors`) and constructor arguments (`.json`), without torch. Reading such files back is
`tapir.checkpoint.read_checkpoint`'s job (`tapir.checkpoint_torch`).
`jax_artifact`: compiled trackers, weights inside, that run with jax alone; `command`: every format at once."""
