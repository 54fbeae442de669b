"""``[graph]`` of the config: which Graph API versions are served (docs/configuration.md, docs/fidelity.md).

Here, beside the routes that read it, so the Graph layer never imports the config loader (``wacall.config``
builds it and re-exports it).

Meta's versions in 2026 (https://developers.facebook.com/docs/graph-api/changelog/versions): v21.0 (2024-10-02)
to v26.0 (2026-07-29) are available; v20.0 and older are retired. A request to a retired version is refused
with the error Meta gives callers of deprecated versions (code 2635), or, with ``retired = "upgrade"``,
served as the oldest available version (what Meta's versioning guide describes for most Graph calls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..domain.errors import GraphError

VERSION = re.compile(r"^v(\d+)\.(\d+)$")



def parse_version(text: str) -> tuple[int, int] | None:
    match = VERSION.match(text)
    if not match or len(match.group(1)) > 6 or len(match.group(2)) > 6:
        return None if not match else (10 ** 6, 0)      # absurdly long numbers: newer than anything
    return int(match.group(1)), int(match.group(2))


@dataclass
class GraphVersions:
    """``[graph]``: the versions served."""
    oldest_version: str = "v21.0"      # older ones are retired (refused, or upgraded: ``retired``)
    latest_version: str = "v26.0"      # the newest Meta serves (named in the refusal)
    newer: str = "accept"              # versions above latest_version: "accept" (a future one) | "refuse"
    retired: str = "refuse"            # "refuse" (code 2635) | "upgrade" (served as oldest_version)
    default_version: str = "v23.0"     # what an unversioned request is served as (the app's API version)

    def __post_init__(self) -> None:
        for name in ("oldest_version", "latest_version", "default_version"):
            if parse_version(getattr(self, name)) is None:
                raise ValueError(f"graph.{name} must be a version like \"v23.0\", got {getattr(self, name)!r}")
        if parse_version(self.oldest_version) > parse_version(self.latest_version):
            raise ValueError("graph.oldest_version must not be newer than graph.latest_version")
        if self.retired not in ("refuse", "upgrade"):
            raise ValueError(f"graph.retired must be \"refuse\" or \"upgrade\", got {self.retired!r}")
        if self.newer not in ("accept", "refuse"):
            raise ValueError(f"graph.newer must be \"accept\" or \"refuse\", got {self.newer!r}")

    def served(self, version: str | None) -> str:
        """The version a request to ``version`` (None: unversioned) is served as, or Graph's refusal."""
        if version is None:
            return self.default_version
        parsed = parse_version(version)
        if parsed is None:
            raise GraphError(100, f"Unknown path components: /{version}", message="Unknown path components")
        if parsed < parse_version(self.oldest_version):
            if self.retired == "upgrade":
                return self.oldest_version
            raise GraphError(2635, f"Graph API {version} is no longer available (the oldest version served "
                                         f"is {self.oldest_version}). Please update to the latest version: "
                                         f"{self.latest_version}.",
                             message=f"You are calling a deprecated version of the Graph API. Please update to "
                                     f"the latest version: {self.latest_version}.")
        if parsed > parse_version(self.latest_version) and self.newer == "refuse":
            raise GraphError(100, f"Unknown path components: /{version}", message="Unknown path components")
        return version
