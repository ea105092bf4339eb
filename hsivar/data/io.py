# ruff: noqa: A005
"""x."""
