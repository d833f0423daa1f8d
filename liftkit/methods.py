"""Dense-feature methods as a typed plan, parsed once.

A method names how the dense features of an image are obtained from a backbone (see
:meth:`liftkit.extractor.ViTExtractor.features`):

    ``low``       the backbone's own grid, (B, C, h, w)
    ``bilinear``  that grid upsampled 2x bilinearly; ``bilinearK``: 2^K x
    ``nearest``   likewise, nearest neighbour
    ``highres``   the backbone on the image resized 2x (bilinear); ``highresK``: 2^K x (one backbone pass each)
    ``lift``      one LiFT step, (B, C, 2h, 2w); ``liftK``: K steps, (B, C, 2^K h, 2^K w)
    ``jbu``       joint bilateral upsampling of that grid 2x guided by the image (:mod:`liftkit.lift.jbu`); ``jbuK``: 2^K x

Every method but ``highres*`` starts from the same backbone pass, so a plan of several methods costs one backbone
pass plus one per ``highres*`` entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Tuple, Union

from liftkit.errors import ConfigError

KINDS = ("low", "bilinear", "nearest", "highres", "lift", "jbu")
METHODS = ("low", "bilinear", "nearest", "highres", "jbu", "lift", "lift2", "lift3")  # the common names, for help texts


@dataclass(frozen=True)
class Method:
    """One parsed method.

    Attributes:
        name: as the user wrote it (``lift2``); the key of its features in every result.
        kind: one of :data:`KINDS`.
        iterations: K (1 when not written; always 1 for ``low``).
    """

    name: str
    kind: str
    iterations: int = 1

    @property
    def scale(self) -> int:
        """Grid magnification relative to the backbone grid: 1 for ``low``, else 2^K."""
        return 1 if self.kind == "low" else 2 ** self.iterations

    @property
    def needs_lift(self) -> bool:
        return self.kind == "lift"

    @property
    def own_backbone_pass(self) -> bool:
        """True for ``highres*``: the only kind that cannot share the backbone pass of the others."""
        return self.kind == "highres"

    @classmethod
    def parse(cls, text: str) -> "Method":
        """``"lift3"`` -> Method("lift3", "lift", 3); unknown names raise ConfigError (one line)."""
        name = str(text).strip()
        m = re.fullmatch(r"(low|bilinear|nearest|highres|lift|jbu)(\d*)", name)
        if not m or (m.group(1) == "low" and m.group(2)):
            raise ConfigError(f"unknown method '{name}'; choose from {', '.join(METHODS)} (liftK for K iterations)")
        k = int(m.group(2)) if m.group(2) else 1
        if k < 1:
            raise ConfigError(f"method '{name}': the iteration count must be at least 1")
        return cls(name, m.group(1), k)


MethodsLike = Union[str, Method, Iterable[Union[str, Method]]]


def parse_methods(methods: MethodsLike, flag: str = "--methods") -> Tuple[Method, ...]:
    """A plan from ``"low,bilinear,lift"``, a list of names or of :class:`Method`.

    Raises:
        ConfigError: empty, unknown name, or a name listed twice.
    """
    if isinstance(methods, (str, Method)):
        methods = [methods]
    items: List[Method] = []
    for entry in methods:
        if isinstance(entry, Method):
            items.append(entry)
            continue
        items += [Method.parse(t) for t in str(entry).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} is empty; give e.g. low,bilinear,lift")
    names = [m.name for m in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{flag} {','.join(names)}: {', '.join(twice)} listed twice")
    return tuple(items)


def parse_method(method: str) -> Tuple[str, int]:
    """``"lift3"`` -> ("lift", 3); ``"bilinear"`` -> ("bilinear", 1) (the pre-plan interface, kept)."""
    m = Method.parse(method)
    return m.kind, m.iterations


def needs_lift_message(names, why: str, instead: str = "drop them from --methods") -> str:
    """The one message for "these methods need a LiFT but there is none" (``why`` says why there is none)."""
    return (f"--methods {','.join(names)} needs a LiFT but {why}: pass --lift_path FILE (or auto), train one with "
            f"train_lift.py, or {instead}")
