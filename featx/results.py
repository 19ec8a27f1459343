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
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TABLE_WIDTH", "Result", "jsonable", "text_table"]

#: The width the command line's tables fit in (a terminal is at least 100 columns).
TABLE_WIDTH = 100


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


def text_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    width: int = TABLE_WIDTH,
) -> str:
    """``rows`` as a plain-text table at most ``width`` characters wide.

    ``columns`` are ``(key, heading, format)``: a format spec for numbers (``".3f"``),
    or ``""`` for text. The first column (the label) is cut, ending in ``...``, where
    the table would be wider; numbers are right-aligned; a missing value or NaN is ``-``.

    Examples
    --------
    >>> rows = [{"label": "MobileNetV2 (mobilenet_v2_1.0_160_no_top.weights.h5)",
    ...          "accuracy": 0.8961}, {"label": "raw pixels 16x16", "accuracy": None}]
    >>> print(text_table(rows, [("label", "backbone", ""), ("accuracy", "accuracy", ".3f")],
    ...                  width=40))
    backbone                        accuracy
    MobileNetV2 (mobilenet_v2_1...     0.896
    raw pixels 16x16                       -
    """

    def cell(value: Any, spec: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, spec) if spec else str(value)

    cells = [[cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    widths = [
        max([len(heading)] + [len(line[i]) for line in cells])
        for i, (_, heading, _) in enumerate(columns)
    ]
    rest = sum(widths[1:]) + 2 * (len(columns) - 1)
    widths[0] = max(len(columns[0][1]), min(widths[0], width - rest))

    def line(values: Sequence[str]) -> str:
        first = values[0]
        if len(first) > widths[0]:
            first = first[: widths[0] - 3] + "..."
        parts = [first.ljust(widths[0])]
        for (_, _, spec), value, w in zip(columns[1:], values[1:], widths[1:], strict=True):
            parts.append(value.rjust(w) if spec else value.ljust(w))
        return "  ".join(parts).rstrip()

    return "\n".join([line([h for _, h, _ in columns]), *(line(v) for v in cells)])
