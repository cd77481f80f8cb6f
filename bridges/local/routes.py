"""Functions route templates ('metrics', 'webhooks/{source}', 'azure/{*resourceId}', '{id:int?}').

Matching follows ASP.NET routing as the host uses it: case-insensitive literals, one segment
per parameter, an optional trailing parameter with '?', a catch-all '{*name}' that takes the
rest of the path, and the common constraints (int, long, double, bool, guid, alpha).
"""
from __future__ import annotations

import re

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "bool": r"(?i:true|false)",
    "guid": r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
    "alpha": r"[A-Za-z]+",
}
_PARAMETER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+)(?:\([^)]*\))?)?(\?)?\}")


class RouteTemplate:
    def __init__(self, template: str):
        self.template = template.strip("/")
        self.parameters: list[str] = []
        pattern = ""
        for index, segment in enumerate(self.template.split("/") if self.template else []):
            slash = "/" if index else ""
            whole = _PARAMETER.fullmatch(segment)
            if whole and whole.group(1):
                self.parameters.append(whole.group(2))
                pattern += f"(?:{slash}(?P<{whole.group(2)}>.*))?"
                continue
            if whole and whole.group(4):
                self.parameters.append(whole.group(2))
                inner = _CONSTRAINTS.get((whole.group(3) or "").lower(), r"[^/]+")
                pattern += f"(?:{slash}(?P<{whole.group(2)}>{inner}))?"
                continue
            pattern += slash + self._segment(segment)
        self._regex = re.compile(pattern, re.IGNORECASE)
        self.catch_all = "{*" in self.template
        self.literal_length = len(_PARAMETER.sub("", self.template))

    def _segment(self, segment: str) -> str:
        pattern, last = "", 0
        for match in _PARAMETER.finditer(segment):
            pattern += re.escape(segment[last:match.start()])
            name = match.group(2)
            self.parameters.append(name)
            inner = _CONSTRAINTS.get((match.group(3) or "").lower(), r"[^/]+")
            pattern += f"(?P<{name}>{inner})"
            last = match.end()
        return pattern + re.escape(segment[last:])

    def match(self, path: str) -> dict[str, str] | None:
        found = self._regex.fullmatch(path.strip("/"))
        if found is None:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}

    def specificity(self) -> tuple:
        """Sort key: literal routes before parameterized ones, catch-alls last."""
        return (self.catch_all, len(self.parameters), -self.literal_length)
