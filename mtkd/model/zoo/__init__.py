"""The model zoo in the core: pretrained encoders that plugins ship, by name (``zoo:<name>``).

- ``load.py``: resolve ``zoo:<name>``, check it fits the recipe, verify its checksum, and
  load its tensors (``encoder.weights=zoo:<name>``, ``init_from=zoo:<name>``);
- ``release.py``: turn a finished run folder into an entry (weights file and card);
- ``cli.py``: ``mtkd zoo`` (list the entries) and ``mtkd zoo release``.

What an entry is, and the card a plugin ships beside its weights, is the plugin contract
:mod:`mtkd.pretrained`; mtkd's own entries are the built-in ``mtkd_plugins.zoo`` plugin.
Kept free of imports so that ``mtkd zoo`` does not load timm.
"""
