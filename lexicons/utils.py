"""Helpers of the original lexicons API, kept under their old names.

``from lexicons.utils import encrypt`` is the deterministic password hash
the original README's models use (see :func:`lexicons.passwords.encrypt`).
"""
from __future__ import annotations

from lexicons.passwords import encrypt

__all__ = ["encrypt"]
