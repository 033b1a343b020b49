"""Which requirements of geomlab (and of what it pulls in) the current Python does not satisfy.

    python kit_requirements.py geomlab        # prints one unsatisfied project name a line

Used by the device kit's run.sh: after the kit's wheels are installed (``--no-deps``), the
names printed here are installed from the kit's fallback wheels. Reads installed metadata
only (``importlib.metadata`` and ``packaging``, else pip's copy of it); imports nothing it checks.
"""

from __future__ import annotations

import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # no packaging installed: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def unsatisfied(root: str) -> list[str]:
    missing: dict[str, str] = {}
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra's or another platform's requirement
            dep = canonicalize_name(req.name)
            try:
                version = metadata.version(dep)
            except metadata.PackageNotFoundError:
                missing[dep] = f"{req} (not installed)"
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                missing[dep] = f"{req} (installed {version})"
            todo.append(dep)
    for _dep, why in sorted(missing.items()):
        print(f"unsatisfied: {why}", file=sys.stderr)
    return sorted(missing)


if __name__ == "__main__":
    for name in unsatisfied(sys.argv[1] if len(sys.argv) > 1 else "geomlab"):
        print(name)
