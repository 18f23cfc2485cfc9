"""The recipes shipped with mtkd (installed as ``mtkd_recipes``): found by name from any
folder (``mtkd run seg_distilled_id``, ``defaults: [_base]``); see mtkd.recipe_files."""
