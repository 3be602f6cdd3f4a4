"""Healing orchestration: train a pruned model back after the merge.

- :mod:`~replaceme.healing.objective`: the losses (cross-entropy, distillation), tensors in, tensors out;
- :mod:`~replaceme.healing.data`: the healing text, packed into fixed-length sequences;
- :mod:`~replaceme.healing.loop`: the optimiser loop (schedule, accumulation, held-out loss,
  early stop, resumable checkpoints, ``torchrun`` data parallelism);
- :mod:`~replaceme.healing.memory`: the memory estimate made before training;
- :mod:`~replaceme.healing.stage`: the stage itself (healer, teacher, student, records).

What trains is decided by a :class:`replaceme.healer.Healer` plugin.
"""
