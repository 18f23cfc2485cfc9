"""Data sets read from folders of image files (``mtkd_plugins.folders``).

``identity_folder`` (``root/<person>/<image>``, no masks), ``palette_folder`` (colour label
images and a palette), ``index_folder`` (label images of class indices) and ``mut1ny`` (the
Mut1ny head-segmentation layout). The hook implementation is in :mod:`.plugin`; each module
here has one job: ``options`` (recipe keys), ``index`` (listing files, reading identity,
pose and split from paths), ``csv_index`` / ``xml_index`` (index files), ``pairing`` (image
to label), ``catalog`` (assembling the samples), ``images`` (safe decoding), ``masks``
(palette snapping, index checks) and ``source`` (the shared ``SampleSource`` base).
"""
