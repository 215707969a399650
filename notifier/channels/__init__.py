"""Delivery channels: a module or package per provider protocol, each with ``send() -> Receipt``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Receipt"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a provider accepted a message."""

    channel: str
    provider: str
    provider_id: str
