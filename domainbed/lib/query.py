"""DomainBed's small query list, ``Q``, for notebooks and scripts that read records with it.

A ``Q`` is a list (so everything that takes a list of records, e.g. ``domainbed.model_selection``,
takes one) with DomainBed's chainable methods: ``select``, ``filter``, ``filter_equals``,
``filter_not_none``, ``filter_not_nan``, ``group``, ``group_map``, ``map``, ``flatten``, ``unique``,
``sorted``, ``argmax``, ``min``, ``max``, ``sum``, ``len``, ``mean``, ``std``, ``mean_std``.

Selectors are callables or DomainBed's strings: ``"x"`` is ``r["x"]``, ``"x.y"`` is
``r["x"]["y"]``, ``"x,y"`` is ``(r["x"], r["y"])``. Torch-free.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from typing import Any, Callable

import numpy as np

__all__ = ["Q", "make_selector_fn", "hashable"]


def make_selector_fn(selector) -> Callable[[Any], Any]:
    """A function from a selector: callables as they are, strings as described above."""
    if callable(selector):
        return selector
    if not isinstance(selector, str):
        raise TypeError(f"a selector is a function or a string such as 'args.dataset', got {selector!r}")
    if "," in selector:
        parts = [make_selector_fn(part) for part in selector.split(",")]
        return lambda obj: tuple(part(obj) for part in parts)
    keys = [key.strip() for key in selector.split(".")]

    def select(obj):
        for key in keys:
            obj = obj[key]
        return obj
    return select


def hashable(obj):
    """``obj`` if it is hashable, else a canonical JSON string of it (lists, dicts)."""
    try:
        hash(obj)
        return obj
    except TypeError:
        return json.dumps({"_": obj}, sort_keys=True)


def _n_parameters(fn) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature take one argument here
        return 1


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class Q(list):
    """A list with DomainBed's query methods (each returns a new ``Q``)."""

    # ------------------------------------------------------------------ transforming
    def select(self, selector) -> "Q":
        fn = make_selector_fn(selector)
        return Q(fn(x) for x in self)

    def map(self, fn) -> "Q":
        """``fn`` on each element; a function of several arguments gets each element unpacked
        (``group(...).map(lambda group, records: ...)``)."""
        if _n_parameters(fn) > 1:
            return Q(fn(*x) for x in self)
        return Q(fn(x) for x in self)

    def flatten(self) -> "Q":
        return Q(y for x in self for y in x)

    # ------------------------------------------------------------------ filtering
    def filter(self, fn) -> "Q":
        return Q(x for x in self if fn(x))

    def filter_equals(self, selector, value) -> "Q":
        fn = make_selector_fn(selector)
        return self.filter(lambda x: fn(x) == value)

    def filter_not_none(self) -> "Q":
        return self.filter(lambda x: x is not None)

    def filter_not_nan(self) -> "Q":
        return self.filter(lambda x: not _is_nan(x))

    def unique(self) -> "Q":
        seen, out = set(), Q()
        for x in self:
            key = hashable(x)
            if key not in seen:
                seen.add(key)
                out.append(x)
        return out

    # ------------------------------------------------------------------ grouping and ordering
    def group(self, selector) -> "Q":
        """``Q`` of ``(group, Q(records))`` pairs, sorted by group (first-appearance order when
        groups do not compare)."""
        fn = make_selector_fn(selector)
        groups: dict = {}
        for x in self:
            group = fn(x)
            groups.setdefault(hashable(group), (group, Q()))[1].append(x)
        try:
            keys = sorted(groups)
        except TypeError:
            keys = list(groups)
        return Q(groups[key] for key in keys)

    def group_map(self, selector, fn) -> "Q":
        return self.group(selector).map(fn)

    def sorted(self, key=None) -> "Q":
        """Sorted by ``key`` (a function; NaN values first, as DomainBed sorts them)."""
        key = key or (lambda x: x)

        def sort_key(x):
            value = key(x)
            return float("-inf") if _is_nan(value) else value
        return Q(sorted(self, key=sort_key))

    def argmax(self, selector):
        return max(self, key=make_selector_fn(selector))

    # ------------------------------------------------------------------ reducing
    def len(self) -> int:
        return len(self)

    def min(self):
        return min(self)

    def max(self):
        return max(self)

    def sum(self):
        return sum(self)

    def mean(self) -> float:
        """NumPy's mean (NaN, silently, for an empty ``Q``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.mean(list(self)))

    def std(self) -> float:
        """NumPy's (population) standard deviation (NaN, silently, for an empty ``Q``)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.std(list(self)))

    def mean_std(self) -> tuple[float, float]:
        return self.mean(), self.std()
