"""Typed hyperparameters: what a rule's ``step(params, grad_fn, state, hyper)`` reads.

One small frozen container per rule family, read by field (``hyper.lr``), never by string key::

    GDHyper    SGDRule, AdamRule, RMSpropRule     lr, momentum=0, weight_decay=0
    ODEHyper   RungeKuttaRule, AdaptiveRungeKuttaRule, GradientFlowRule, NesterovFlowRule
               lr (the step size h, or flow time per step), weight_decay=0

(GARO's, DCAO's and the hybrid's live with their methods: ``metaopt.garo.hyper.GAROHyper``,
``metaopt.dcao.rule.DCAOHyper``, ``metaopt.hybrid.hyper.HybridHyper``.) A field holds a float or
a tensor, or a list with one per parameter tensor (param groups with their own lr), so a
controller may set it every step and gradients flow through it. The containers are built inside
a step, from the controller's outputs or the adapter's param groups; ``torch.func.vmap`` and
``functional_call`` see the tensors they hold, as they saw a dict's values.

Errors are one line and name the valid fields: ``GDHyper(lrr=0.1)`` raises
``HyperError: GDHyper: unknown field 'lrr' (did you mean 'lr'?); valid: lr, momentum,
weight_decay``; a required field left out names itself.

Plain mappings (external code written against the dict protocol) go through ONE converter,
``Cls.coerce(value)``, which every rule applies to its ``hyper``: a container of the right type
passes unchanged, a mapping becomes one (the same unknown / missing field errors), anything else
is refused. A family may rename a field; its old key is still read from a mapping, with a
``DeprecationWarning`` naming the new one (GARO's multipliers, ``lr`` -> ``lr_scale``).
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

_MISSING = dataclasses.MISSING


class HyperError(ValueError, TypeError):
    """A hyperparameter container built with an unknown, missing or mistyped field.

    Both a ``ValueError`` (bad configuration) and a ``TypeError`` (what Python raises for an
    unexpected keyword), so either ``except`` catches it."""


class Hyper:
    """Base of the typed containers: construction checks the field names (module docstring).

    Subclasses are ``@dataclasses.dataclass(frozen=True, init=False, eq=False)``: fields may hold
    tensors, whose ``==`` is elementwise, so containers compare by identity.
    """

    #: old mapping key -> field, read by ``coerce`` with a DeprecationWarning
    renamed: ClassVar[Mapping[str, str]] = {}

    def __init__(self, *args: Any, **kwargs: Any):
        cls = type(self)
        spec = cls.__dict__.get("_cached_spec") or cls._spec()
        names, defaults = spec
        if args:
            if len(args) > len(names):
                raise HyperError(f"{cls.__name__}: takes at most {len(names)} positional "
                                 f"fields ({', '.join(names)}), got {len(args)}")
            for name, value in zip(names, args):
                if name in kwargs:
                    raise HyperError(f"{cls.__name__}: field {name!r} given twice")
                kwargs[name] = value
        if not kwargs.keys() <= defaults.keys():
            raise HyperError(cls._unknown(next(k for k in kwargs if k not in defaults)))
        set_field = object.__setattr__
        for name in names:
            value = kwargs.get(name, _MISSING)
            if value is _MISSING:
                value = defaults[name]
                if value is _MISSING:
                    raise HyperError(f"{cls.__name__}: missing field {name!r} "
                                     f"(fields: {cls._listing()})")
            set_field(self, name, value)

    @classmethod
    def _spec(cls) -> tuple[tuple[str, ...], dict[str, Any]]:
        spec = cls.__dict__.get("_cached_spec")
        if spec is None:
            fields = dataclasses.fields(cls)
            spec = (tuple(f.name for f in fields), {f.name: f.default for f in fields})
            cls._cached_spec = spec
        return spec

    @classmethod
    def _listing(cls) -> str:
        names, defaults = cls._spec()
        return ", ".join(name if defaults[name] is _MISSING else f"{name}={defaults[name]!r}"
                         for name in names)

    @classmethod
    def _unknown(cls, key: Any) -> str:
        names, _ = cls._spec()
        close = difflib.get_close_matches(str(key), names + tuple(cls.renamed), n=1)
        hint = f" (did you mean {cls.renamed.get(close[0], close[0])!r}?)" if close else ""
        return f"{cls.__name__}: unknown field {key!r}{hint}; valid: {', '.join(names)}"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The fields, in order."""
        return cls._spec()[0]

    @classmethod
    def coerce(cls, value: Any):
        """``value`` as a ``cls``: the container itself, or one built from a mapping of its
        fields (old renamed keys translated with a DeprecationWarning). The one converter for
        code that still passes dicts."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            if cls.renamed and any(key in cls.renamed for key in value):
                value = dict(value)
                for old, new in cls.renamed.items():
                    if old in value:
                        if new in value:
                            raise HyperError(f"{cls.__name__}: both {old!r} (the old name) and "
                                             f"{new!r} given; pass {new!r} only")
                        warnings.warn(f"{cls.__name__}: the key {old!r} is deprecated; it is "
                                      f"now the field {new!r}", DeprecationWarning, stacklevel=3)
                        value[new] = value.pop(old)
            return cls(**value)
        raise HyperError(f"hyper: expected a {cls.__name__} (or a mapping of its fields: "
                         f"{cls._listing()}), got {type(value).__name__}")

    def replace(self, **changes: Any):
        """A copy with some fields replaced (unknown names raise ``HyperError``)."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: Any):  # the dict protocol is gone: say what replaced it
        raise HyperError(f"{type(self).__name__} is read by field, not by key: use "
                         f"hyper.{key} (fields: {', '.join(self.field_names())})"
                         if key in self.field_names() else self._unknown(key))

    def __contains__(self, key: Any):  # (else ``in`` would iterate through __getitem__)
        raise HyperError(f"{type(self).__name__} is read by field, not by key: every field is "
                         f"always present ({self._listing()}); test the value, e.g. "
                         f"hyper.{self.field_names()[0]} is None")


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class GDHyper(Hyper):
    """SGD / Adam / RMSprop: ``lr`` (required), ``momentum`` (SGD's and RMSprop's buffer decay;
    Adam's first moment is its ``beta1``, so Adam ignores it), ``weight_decay`` (coupled L2,
    as in ``torch.optim``)."""

    lr: Any
    momentum: Any = 0.0
    weight_decay: Any = 0.0


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class ODEHyper(Hyper):
    """The Runge–Kutta integrators and flows: ``lr`` (the step size h of an explicit step, the
    first step of an adaptive one, or the flow time per step), ``weight_decay`` (the field
    −∇L(θ) − wd·θ)."""

    lr: Any
    weight_decay: Any = 0.0
