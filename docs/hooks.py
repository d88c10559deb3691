"""mkdocs hooks: fill generated content into pages, and write generated pages, at build time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- funcgrad:registry-table -->"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """Replace the registry marker with the table generated from funcgrad.PRIMITIVES."""
    if MARKER not in markdown:
        return markdown
    from funcgrad.registry import derivative_table

    return markdown.replace(MARKER, derivative_table())


#: Pages generated from the real code into the site: the lesson's step-through player
#: (embedded by docs/interactive.md), never committed, so it cannot go stale.
GENERATED_PAGES = {"lesson_graph.html": "backprop"}


def on_post_build(config: Any, **kwargs: object) -> None:
    """Write the generated HTML pages into the built site."""
    from funcgrad.explain import lesson_html

    for name, example in GENERATED_PAGES.items():
        lesson_html(example, Path(config["site_dir"]) / name)
