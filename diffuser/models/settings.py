"""Typed, frozen views of a cell config, one per model (in the manner of CORL's dataclass configs).

A view's fields are cell-config keys by name and have no defaults: the values, and their documentation,
are in diffuser/schemas/cell.schema.yaml alone, and a model reads `cfg.expectile`, never
`config["expectile"]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class Settings:
    """Base of the views; subclasses are `@dataclass(frozen=True)` with one field per key they read."""

    @classmethod
    def view(cls, config):
        """`config` itself when it is this view already, else the view of a (validated) cell config mapping."""
        if isinstance(config, cls):
            return config
        if not isinstance(config, Mapping):
            raise TypeError(f"{cls.__name__} is read from a cell config mapping, not {type(config).__name__}.")
        return cls(**{field.name: config[field.name] for field in dataclasses.fields(cls)})
