"""Merging: learning/forgetting signals and the interval rule (signals.py), the stateful controller
(controller.py), and fusion over adapter state dicts (fusion.py)."""
