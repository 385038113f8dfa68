"""See what attention looks at, and how training went: records, numbers and pictures.

* :mod:`~botnet.visualize.record`: ``record_attention`` (pure PyTorch)
  records weights and the content / position split of chosen MHSA2d layers;
* :mod:`~botnet.visualize.queries`: which query tokens to show, per-head statistics;
* :mod:`~botnet.visualize.figures`: attention maps and position logits (matplotlib);
* :mod:`~botnet.visualize.plots`: learning curves and confusion matrices;
* :mod:`~botnet.visualize.style`: the one figure style and PNG writer;
* :mod:`~botnet.visualize.report`: ``botnet attention`` in one call.
"""

from .record import AttentionRecord, attention_layers, record_attention, select_attention_layers

__all__ = ["AttentionRecord", "attention_layers", "record_attention", "select_attention_layers"]
