"""Headtune's PySide6 window (talks to ``headtune.core`` only through its public functions)."""
