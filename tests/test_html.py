"""Graph.to_html: the self-contained step-through page, checked in a real headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it) driven by playwright's Python
package; no browser is ever downloaded. The browser tests skip, with the reason, only when
no Chromium can be found.

The docs' live page is written into the site by docs/hooks.py at build time; regenerate the
screenshot (docs/img/lesson_backward.png) with
``FUNCGRAD_REGENERATE_DOCS=1 pytest tests/test_html.py -k docs``.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time

import jax.numpy as jnp
import pytest

import funcgrad as fg
from funcgrad.explain import lesson_graph, lesson_html
from funcgrad.explain.html import layered_layout, page_data, repr_html, to_html
from funcgrad.registry import PRIMITIVES

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DEPTH = 20


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


# --------------------------------------------------------------------------- graphs
@pytest.fixture(scope="module")
def lesson():
    return lesson_graph("backprop")


@pytest.fixture(scope="module")
def lesson_page(lesson):
    return to_html(lesson, learning_rate=0.1)


def _deep_loss(params, x, labels):
    h = x
    for p in params[:-1]:
        h = fg.relu(fg.dense(h, p["w"], p["b"]))
    z = fg.dense(h, params[-1]["w"], params[-1]["b"])
    return fg.mean(fg.softmax_cross_entropy(z, labels))


@pytest.fixture(scope="module")
def deep():
    params = [{"w": jnp.eye(4) * 0.9 + 0.01 * k, "b": jnp.full((4,), 0.01)}
              for k in range(DEPTH)]
    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    return fg.explain(_deep_loss, params, x, jnp.array([0, 1, 2]))


@pytest.fixture(scope="module")
def deep_page(deep):
    return to_html(deep)


# --------------------------------------------------------------------------- no browser
def test_layered_layout_puts_each_node_right_of_its_inputs():
    preds = {"y": ["x", "w"], "L": ["y", "t"], "z": ["x"]}
    pos = layered_layout(["x", "w", "t", "y", "z", "L"], preds)
    for node, ins in preds.items():
        assert all(pos[i][0] < pos[node][0] for i in ins), (node, pos)
    assert pos["t"][0] == pos["L"][0] - 1  # a source sits next to its consumer
    rows = [(c, r) for c, r in pos.values()]
    assert len(rows) == len(set(rows))  # no two nodes share a slot


def test_lesson_page_is_self_contained_and_small(lesson_page):
    assert len(lesson_page.encode()) <= 200_000
    for pattern in (r"<script[^>]+src=", r"<link\b", r"<img\b", r"@import", r"url\(\s*['\"]?http",
                    r"\bfetch\(", r"XMLHttpRequest", r"<iframe"):
        assert not re.search(pattern, lesson_page), pattern


def test_page_data_has_the_lessons_numbers(lesson):
    data = page_data(lesson, learning_rate=0.1)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["y"]["value"] == "6" and nodes["L"]["value"] == "16"
    assert nodes["y"]["grad"] == "dL/dy = 8" and nodes["w"]["grad"] == "dL/dw = 16"
    assert nodes["w"]["update"] == "w_new = 3 − 0.1·16 = 1.4"
    labels = [e["label"] for e in data["edges"] if e["label"]]
    assert ["dL/dy × ∂y/∂w", "8 × 2 = 16"] in labels
    assert data["steps"][-1]["u"] and not data["groups"]


def test_fan_out_sums_the_shares():
    g = fg.explain(lambda x, w: fg.add(fg.mul(x, w), fg.square(w)), 2.0, 3.0)
    nodes = {n["name"]: n for n in page_data(g)["nodes"]}
    assert nodes["w"]["grad"] == "dL/dw = 2 + 6 = 8"  # d(xw)/dw + d(w²)/dw


def test_array_summary_marks_nonfinite_elements():
    g = fg.explain(lambda x: jnp.sum(jnp.log(x)), jnp.array([1.0, 0.0, 2.0, 4.0]))
    x = next(n for n in page_data(g)["nodes"] if n["name"] == "x")
    assert x["vstats"]["finite"] == 4 and sum(x["vstats"]["hist"]) == 4
    assert x["gstats"]["posinf"] == 1 and x["gstats"]["finite"] == 3
    assert x["vstats"]["max"] == "4" and x["vstats"]["min"] == "0"


def test_writes_the_file_and_a_notebook_frame(lesson, tmp_path):
    path = tmp_path / "lesson.html"
    page = to_html(lesson, path, title="Lesson <1>")
    assert path.read_text(encoding="utf-8") == page
    assert "<title>Lesson &lt;1&gt;</title>" in page
    frame = repr_html(lesson)
    assert frame.startswith("<iframe srcdoc=") and "&lt;!DOCTYPE html&gt;" in frame


def test_cli_explain_html_writes_the_lessons_page(tmp_path, capsys):
    from funcgrad.cli import main

    path = tmp_path / "lesson.html"
    assert main(["explain", "--html", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == lesson_html("backprop")  # the lesson's page
    assert main(["explain", "--example", "graph", "--html", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == lesson_html("graph")
    capsys.readouterr()
    assert main(["explain", "--html", str(tmp_path)]) == 2
    assert "--html must be a file" in capsys.readouterr().err
    assert main(["explain", "--html", str(tmp_path / "no" / "x.html")]) == 2
    assert "--html: cannot write" in capsys.readouterr().err


def test_docs_hook_writes_the_live_page_into_the_site(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    hooks.on_post_build({"site_dir": str(tmp_path)})
    page = (tmp_path / "lesson_graph.html").read_text(encoding="utf-8")
    assert page == lesson_html("backprop")
    assert "w_new = 3 − 0.1·16 = 1.4" in page and "x_new" not in page  # the lesson updates w
    assert 'src="../lesson_graph.html"' in (ROOT / "docs" / "interactive.md").read_text()


def test_deep_graph_opens_collapsed_by_layer(deep, deep_page):
    assert len(deep.nodes) == 2 * DEPTH + 1
    data = page_data(deep)
    assert len(data["groups"]) >= DEPTH and all(gr["collapsed"] for gr in data["groups"])
    assert not any(gr["collapsed"] for gr in page_data(deep, collapse=False)["groups"])
    assert len(deep_page.encode()) <= 2_000_000


# --------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium browser found: install Debian's chromium "
                    "(apt-get install chromium) to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: pip install -e '.[test]'")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=exe,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 640})
        yield context
        context.close()


class Page:
    """A loaded page with the console errors and the network requests it made."""

    def __init__(self, context, html: str, ready: str | None = "window.fgPlayer") -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = page = context.new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)
        page.route("**/*", lambda route: route.abort() if self._external(route.request.url)
                   else route.continue_())
        start = time.perf_counter()
        page.set_content(html)
        if ready:
            page.wait_for_function(ready)
        self.load_s = time.perf_counter() - start

    @staticmethod
    def _external(url: str) -> bool:
        return not url.startswith(("data:", "about:"))

    def _request(self, request) -> None:
        if self._external(request.url):
            self.requests.append(request.url)

    def texts(self) -> dict[str, dict[str, str]]:
        """node name -> the text of its value, gradient and update lines, as shown."""
        return self.page.evaluate("""() => Object.fromEntries(
            [...document.querySelectorAll('g.node:not(.hidden)')].map(g => [g.dataset.name, {
              val: g.querySelector('text.val').textContent,
              grad: g.querySelector('text.grad').textContent,
              upd: g.querySelector('text.upd').textContent}]))""")

    def step(self) -> int:
        return self.page.evaluate("fgPlayer.step()")

    def panel(self, name: str) -> str:
        self.page.click(f'g[data-name="{name}"]')
        return self.page.inner_text("#fg-panel")

    def close(self) -> None:
        assert not self.errors, self.errors
        assert not self.requests, self.requests
        self.page.close()


@pytest.fixture
def open_page(browser):
    pages = []

    def _open(html: str) -> Page:
        pages.append(Page(browser, html))
        return pages[-1]

    yield _open
    for p in pages:
        p.close()


def _number(text: str) -> str:
    """The last number a line shows: ``w_new = 3 − 0.1·16 = 1.4`` -> ``1.4``."""
    return text.rsplit("=", 1)[-1].strip()


def test_lesson_page_loads_offline_without_errors(browser, lesson_page):
    page = Page(browser, lesson_page)
    assert page.page.locator("g.node").count() == 5 and page.step() == 0
    page.close()  # asserts: no console error, no request other than data:/about:


def test_the_request_and_error_checks_can_fail(browser):
    page = Page(browser, '<img src="http://example.invalid/x.png">'
                         '<script>console.error("boom")</script>', ready=None)
    page.page.wait_for_timeout(200)
    assert page.requests == ["http://example.invalid/x.png"] and "boom" in page.errors
    page.page.close()


def test_notebook_frame_runs_the_player(browser, lesson):
    page = Page(browser, repr_html(lesson), ready=None)
    frame = page.page.frame_locator("iframe")
    frame.locator("#fg-next").click()
    assert frame.locator('g.node[data-name="y"] text.val').text_content() == "= 6"
    page.close()


def test_stepping_shows_the_lessons_numbers_in_order(open_page, lesson_page):
    page = open_page(lesson_page)
    expected = [("y", "val", "6"), ("L", "val", "16"), ("y", "grad", "8"),
                ("w", "grad", "16"), ("x", "grad", "24"), ("w", "upd", "1.4")]
    first_seen: dict[int, int] = {}
    n_steps = page.page.evaluate("fgPlayer.steps")
    for k in range(n_steps):
        if k:
            if k % 2:
                page.page.click("#fg-next")
            else:
                page.page.keyboard.press("ArrowRight")
        assert page.step() == k
        texts = page.texts()
        for j, (node, line, number) in enumerate(expected):
            if j not in first_seen and texts[node][line] and _number(texts[node][line]) == number:
                first_seen[j] = k
    assert sorted(first_seen) == list(range(len(expected))), first_seen
    order = [first_seen[j] for j in range(len(expected))]
    assert order == sorted(order) and len(set(order)) == len(order), order
    assert texts["L"]["grad"] == "dL/dL = 1" and texts["target"]["grad"] == "dL/dtarget = -8"
    labels = page.page.evaluate(
        "[...document.querySelectorAll('.edge.shown text')].map(t => t.textContent)")
    assert "dL/dy × ∂y/∂w8 × 2 = 16" in labels and "dL/dy × ∂y/∂x8 × 3 = 24" in labels


def test_left_key_steps_back(open_page, lesson_page):
    page = open_page(lesson_page)
    page.page.keyboard.press("End")
    last = page.step()
    assert page.texts()["w"]["upd"].endswith("= 1.4")
    page.page.keyboard.press("ArrowLeft")
    assert page.step() == last - 1 and page.texts()["w"]["upd"] == ""
    assert _number(page.texts()["x"]["grad"]) == "24"
    page.page.keyboard.press("ArrowLeft")
    assert page.texts()["x"]["grad"] == "" and _number(page.texts()["w"]["grad"]) == "16"
    assert "8 × 3 = 24" not in page.page.inner_text("#fg-status")


def test_play_animates_to_the_end(open_page, lesson_page):
    page = open_page(lesson_page)
    page.page.evaluate("fgPlayer.interval = 60")
    page.page.click("#fg-play")
    assert page.page.inner_text("#fg-play") == "❚❚ pause"
    page.page.wait_for_function("fgPlayer.step() === fgPlayer.steps - 1", timeout=15_000)
    assert _number(page.texts()["w"]["upd"]) == "1.4"


def test_clicking_a_node_shows_its_formula(open_page, lesson_page):
    page = open_page(lesson_page)
    text = page.panel("L")
    assert PRIMITIVES["squared_error"].formula in text
    assert "squared_error" in text and "float32" in text
    assert PRIMITIVES["mul"].formula in page.panel("y")


def test_user_primitive_shows_its_own_formula(open_page):
    formula = "d(x³)/dx = 3x² (funcgrad test cube)"
    cube = fg.primitive(name="html_test_cube", fwd=lambda x: (x ** 3, x),
                        bwd=lambda x, g: (3 * x ** 2 * g,), formula=formula, replace=True)
    g = fg.explain(lambda x: cube(x), 2.0)
    assert g.output.op == "html_test_cube"
    page = open_page(to_html(g))
    assert formula in page.panel("L")


def test_array_panel_has_summary_histogram_and_tap(open_page):
    g = fg.explain(lambda x: jnp.sum(jnp.log(x)), jnp.array([1.0, 0.0, 2.0, 4.0]))
    tap = {"norm": 3.5, "max_abs": 1.0, "nonfinite": 1, "zero_fraction": 0.0,
           "first_nonfinite": "x"}
    page = open_page(to_html(g, taps={"x": tap}))
    text = page.panel("x")
    assert "norm" in text and "mean 1.75" in text and "non-finite: 0 nan, 1 +inf" in text
    assert "max_abs = 1" in text and "first_nonfinite = x" in text
    bars = page.page.locator("#fg-panel svg.hist rect")
    assert bars.count() >= 2 and page.page.locator("#fg-panel svg.hist rect.bad").count() == 1


def test_deep_page_opens_collapsed_expands_and_is_fast(open_page, deep_page):
    page = open_page(deep_page)
    setup_ms = page.page.evaluate("fgPlayer.setupMs")
    print(f"\n20-layer MLP page: {len(deep_page.encode()) / 1e3:.0f} KB, interactive "
          f"{page.load_s * 1e3:.0f} ms after set_content (script {setup_ms:.0f} ms)")
    assert page.load_s < 1.0
    assert page.page.locator("g.gbox:not(.hidden)").count() >= DEPTH
    assert page.page.locator('g.node[data-name="dense_1"]').get_attribute("class") \
        .split().count("hidden") == 1
    page.page.click('g.gbox[data-name="params[0]"] text.toggle')
    assert "hidden" not in page.page.locator('g.node[data-name="dense_1"]').get_attribute("class")
    assert page.page.locator('g.node[data-name="dense_2"].hidden').count() == 1
    page.page.click("#fg-expand")
    assert page.page.locator("g.node.hidden").count() == 0
    page.page.keyboard.press("End")
    assert _number(page.texts()["params[0].w"]["grad"]) != ""


def test_docs_screenshot(open_page, lesson_page, tmp_path):
    page = open_page(lesson_page)
    while page.step() < page.page.evaluate("fgPlayer.steps") - 2:  # end of backward pass
        page.page.keyboard.press("ArrowRight")
    page.panel("y")
    out = ROOT / "docs" / "img" / "lesson_backward.png" \
        if os.environ.get("FUNCGRAD_REGENERATE_DOCS") else tmp_path / "lesson_backward.png"
    page.page.set_viewport_size({"width": 1420, "height": 470})
    page.page.screenshot(path=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
