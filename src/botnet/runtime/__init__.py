"""What every command needs and no task owns: device, processes, console, input checks, the file store.

* :mod:`~botnet.runtime.device`: choosing and checking ``--device``;
* :mod:`~botnet.runtime.distributed`: torchrun process groups, collectives,
  :func:`~botnet.runtime.distributed.unwrap`;
* :mod:`~botnet.runtime.console`: one-line messages and progress bars;
* :mod:`~botnet.runtime.checks`: option-value checks and output-path checks;
* :mod:`~botnet.runtime.store`: atomic writes, file sets with a manifest,
  safe ``torch.load`` and safetensors I/O, :class:`~botnet.runtime.store.CheckpointError`.

Nothing here imports a model or a task: training, evaluation, prediction,
export and the pictures all stand on it.
"""
