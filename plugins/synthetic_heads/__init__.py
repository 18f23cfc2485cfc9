"""Procedural synthetic 3D heads with 14-class face-part masks (pure numpy)."""
