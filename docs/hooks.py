"""mkdocs hook: fill generated content into pages at build time."""

from __future__ import annotations

MARKER = "<!-- funcgrad:registry-table -->"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """Replace the registry marker with the table generated from funcgrad.PRIMITIVES."""
    if MARKER not in markdown:
        return markdown
    from funcgrad.registry import derivative_table

    return markdown.replace(MARKER, derivative_table())
