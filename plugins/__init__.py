"""mtkd's built-in plugins, installed as the package ``mtkd_plugins``.

Each module is a plugin loaded through the ``mtkd`` entry-point group, exactly like a
third-party plugin; the core package ``mtkd`` never imports from here.
"""
