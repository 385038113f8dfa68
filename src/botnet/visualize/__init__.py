"""See what attention looks at: record attention maps and draw them.

``record_attention`` (pure PyTorch) records weights and the content /
position split of chosen MHSA2d layers; :mod:`botnet.visualize.figures`
(matplotlib, imported on use) draws them; ``botnet attention`` is the command.
"""

from .record import AttentionRecord, attention_layers, record_attention, select_attention_layers

__all__ = ["AttentionRecord", "attention_layers", "record_attention", "select_attention_layers"]
