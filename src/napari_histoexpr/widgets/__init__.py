"""Dock panels. Each module holds one panel; ``layers`` builds/updates napari layers."""
