"""prep: data preparation, distillation and evaluation toolkit for a Chinese
psychological-counselling assistant fine-tuned with LLaMA-Factory.

Data flows one way: readers (one per input shape) -> canonical
:class:`~prep.records.Conversation` records with provenance -> cleaning steps
(pure functions returning kept + rejected-with-reason) -> writers (alpaca,
sharegpt, the ``dataset_info.json`` registry).
"""

__version__ = "0.1.0"
