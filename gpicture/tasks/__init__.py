"""The downstream tasks, one module (or sub-package) each.

Each task holds its settings, typed dataset items, model builder, prediction, writing in
the official format and scoring; :func:`gpicture.training.finetune.finetune` and
:func:`gpicture.training.finetune.predict` drive it through the
:class:`~gpicture.training.finetune.FinetuneTask` protocol, and
:class:`~gpicture.tasks.base.EvaluatedTask` adds what ``gpicture evaluate`` needs.
"""
