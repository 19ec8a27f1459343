"""The shape every featx result shares: a JSON summary and a table.

:func:`featx.evaluate`, :func:`featx.learn`, :func:`featx.compare`, :func:`featx.tune`
and :func:`featx.report` return dataclasses derived from :class:`Result`:

- ``result.summary()``: plain Python values only (what ``--json`` prints), ready for
  ``json.dumps``;
- ``result.to_frame()``: a :class:`pandas.DataFrame` view, one row per thing compared
  (a fold, a backbone x head, a configuration, a panel);
- ``result["key"]``: the summary's entry, so a result reads like the dict it describes.

Examples
--------
>>> from featx.results import jsonable
>>> import numpy as np
>>> jsonable({"a": np.float32(0.5), "b": (np.int64(1), None)})
{'a': 0.5, 'b': [1, None]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["Result", "jsonable"]


class Result:
    """Base of featx's results: :meth:`summary`, :meth:`to_frame` and ``result[key]``."""

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_frame(self) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.summary()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.summary()

    def __iter__(self) -> Iterator[str]:
        return iter(self.summary())

    def keys(self) -> Iterator[str]:
        return iter(self.summary())

    def get(self, key: str, default: Any = None) -> Any:
        return self.summary().get(key, default)

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.summary())``."""
        return json.dumps(self.summary(), **kwargs)


def jsonable(value: Any) -> Any:
    """Plain Python values only, so ``json.dumps`` takes the result as it is."""
    if isinstance(value, Result):
        return value.summary()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)
