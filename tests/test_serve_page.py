"""The page of ``cifarlab serve`` (serve/page.html) in a real browser: Debian's Chromium, driven
headless by Playwright, against a real server process serving a run trained on the real data.
Files picked, dropped and pasted get the labels ``cifarlab predict`` gives; errors are words on
the card of their file; the token form; a phone-sized screen; nothing is fetched from the
internet."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from serving import Server

TOKEN = "s3cret"
SECOND = "second-run"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# every card has an answer (a label or an error); the page's CSP forbids eval, so a function
ALL_DONE = """n => document.querySelectorAll('.card').length >= n
    && !document.querySelector('.card[data-state=pending]')"""


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs both: a skip there would hide a broken page
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's: Playwright never downloads one) for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _missing("no chromium here (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[Server]:
    """``cifarlab serve RUN --port 0 --backend torch``, no token (whatever the environment)."""
    s = Server(str(trained_run), "--backend", "torch", env={"CIFARLAB_SERVE_TOKEN": ""})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def token_server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two runs (the trained one and a copy named SECOND) behind ``--token s3cret``, with at
    most 2 files a request."""
    second = tmp_path_factory.mktemp("second") / SECOND
    shutil.copytree(trained_run, second, ignore=shutil.ignore_patterns(".lock"))
    s = Server(
        str(trained_run), str(second), "--backend", "torch", "--token", TOKEN, "--max-files", "2"
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, test_images: tuple[np.ndarray, np.ndarray]
) -> list[Path]:
    """Six real CIFAR-10 test images as PNG files, and ``notes.txt`` (not an image) last."""
    folder = tmp_path_factory.mktemp("page-images")
    files = []
    for i, pixels in enumerate(test_images[0][:6]):  # uint8 HWC
        path = folder / f"test{i}.png"
        Image.fromarray(pixels).save(path)
        files.append(path)
    notes = folder / "notes.txt"
    notes.write_text("not a picture\n")
    return [*files, notes]


@pytest.fixture(scope="module")
def expected(trained_run: Path, images: list[Path]) -> dict[str, dict[str, Any]]:
    """What ``cifarlab predict RUN FILES --json`` says of each image, by file name."""
    r = run_cli("predict", str(trained_run), *map(str, images[:-1]), "--json")
    assert r.returncode == 0, r.stderr
    return {Path(item["file"]).name: item for item in json.loads(r.stdout)}


@pytest.fixture(scope="module")
def models(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/v1/models", timeout=30) as resp:
        return json.load(resp)


@dataclass
class Tab:
    """A page in its own browser context, and what it did on the network."""

    page: Any
    outside: list[str] = field(default_factory=list)  # requests to another host: refused
    predicts: list[dict[str, Any]] = field(default_factory=list)  # POST /v1/predict sent
    errors: list[str] = field(default_factory=list)  # uncaught script errors


@pytest.fixture
def open_tab(browser: Any) -> Iterator[Any]:
    """``open_tab(url, width=..., height=...)``: a fresh context (own sessionStorage) whose
    requests to any host but 127.0.0.1 are refused and recorded."""
    contexts = []

    def opener(url: str, width: int = 1200, height: int = 800) -> Tab:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        tab = Tab(context.new_page())

        def route(r: Any) -> None:
            if urlparse(r.request.url).hostname == "127.0.0.1":
                r.continue_()
            else:
                tab.outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)

        def sent(req: Any) -> None:
            if req.method == "POST" and "/v1/predict" in req.url:
                tab.predicts.append({"url": req.url, "headers": req.headers})

        tab.page.on("request", sent)
        tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
        tab.page.goto(url)
        return tab

    yield opener
    for c in contexts:
        c.close()


def _wait_cards(tab: Tab, n: int) -> None:
    tab.page.wait_for_function(ALL_DONE, arg=n, timeout=60_000)


def _card(tab: Tab, name: str) -> Any:
    return tab.page.locator(f'.card[data-file="{name}"]')


def _send(tab: Tab, event: str, files: list[tuple[str, bytes | int, str]]) -> None:
    """Dispatch a synthetic ``drop`` on #drop or ``paste`` on the document, carrying ``files``
    (name, bytes or a size of zeros, type) in a DataTransfer built in the page."""
    payload = [
        [n, base64.b64encode(d).decode() if isinstance(d, bytes) else d, t] for n, d, t in files
    ]
    tab.page.evaluate(
        """([event, files]) => {
            const dt = new DataTransfer();
            for (const [name, data, type] of files) {
                const bytes = typeof data === "number" ? new Uint8Array(data)
                    : Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], name, {type}));
            }
            const init = {bubbles: true, cancelable: true};
            if (event === "drop") {
                document.querySelector("#drop").dispatchEvent(
                    new DragEvent("drop", {...init, dataTransfer: dt}));
            } else {
                document.dispatchEvent(new ClipboardEvent("paste", {...init, clipboardData: dt}));
            }
        }""",
        [event, payload],
    )


def test_picked_files_get_the_labels_of_cifarlab_predict(
    open_tab: Any,
    server: Server,
    trained_run: Path,
    images: list[Path],
    expected: dict[str, dict[str, Any]],
    models: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The run is described (name, model, accuracy, classes); six images and a text file
    picked at once give one card each: the label of `cifarlab predict`, uncertain exactly when
    its top probability is under 50 % (with the reason in words), the 32×32 input, and the
    text file's card says "not an image". One request for the lot; nothing from the internet."""
    tab = open_tab(server.url + "/")
    page = tab.page
    described = models["models"][0]
    page.wait_for_selector("#run-info:not([hidden])")
    assert page.text_content("#run-name") == trained_run.name == described["name"]
    assert page.text_content("#run-model") == described["model"]
    accuracy = page.text_content("#run-accuracy")
    if described["test_accuracy"] is None:
        assert accuracy == "not evaluated"
    else:
        assert accuracy.replace("\xa0", " ") == f"{described['test_accuracy'] * 100:.2f} %"
    assert page.locator("#classes li").all_text_contents() == described["classes"]
    # links and API calls are relative to the page: it works behind a proxy's path prefix
    assert page.eval_on_selector("a[href='docs']", "a => a.href") == server.url + "/docs"

    page.set_input_files("#picker", [str(p) for p in images])
    _wait_cards(tab, len(images))
    assert page.locator(".card").count() == len(images)
    assert len(tab.predicts) == 1 and "include_input=true" in tab.predicts[0]["url"]
    for name, want in expected.items():
        card = _card(tab, name)
        assert card.locator(".top1").text_content() == want["label"], name
        assert card.get_attribute("data-state") == "done"
        assert card.locator(".topk li").count() == 3
        unsure = want["top_k"][0]["probability"] < models["uncertain_below"]
        assert ("uncertain" in card.get_attribute("class").split()) == unsure, name
        if unsure:
            reason = card.locator(".reason").text_content().replace("\xa0", " ")
            assert reason.startswith("Uncertain:") and "less than 50 % probability" in reason
        seen = card.locator("img.seen")
        assert seen.get_attribute("src").startswith("data:image/png;base64,")
        assert seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [32, 32]
    notes = _card(tab, "notes.txt")
    assert notes.get_attribute("data-state") == "error"
    assert "not an image" in notes.locator(".error").text_content()
    assert "object" not in page.text_content("#results").lower()  # no "[object Object]"

    page.select_option("#top-k", "5")  # re-drawn from the answer: no new request
    assert page.locator(".card[data-state=done]").first.locator(".topk li").count() == 5
    assert len(tab.predicts) == 1

    shot = tmp_path / "page.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 20_000
    assert tab.outside == [] and tab.errors == []


def test_drop_paste_and_the_size_limit(
    open_tab: Any, server: Server, images: list[Path], expected: dict[str, dict[str, Any]]
) -> None:
    """A dropped image and a pasted one (Chromium builds both events with a DataTransfer) get
    their label; a pasted "image.png" is renamed so that cards tell pastes apart; a file over
    the server's limit is refused on the page, in words, without being sent; file names are
    text, never HTML."""
    tab = open_tab(server.url + "/")
    page = tab.page
    page.wait_for_selector("#run-info:not([hidden])")
    first = images[0]
    label = expected[first.name]["label"]

    _send(tab, "drop", [("dropped.png", first.read_bytes(), "image/png")])
    _wait_cards(tab, 1)
    assert _card(tab, "dropped.png").locator(".top1").text_content() == label

    _send(tab, "paste", [("image.png", first.read_bytes(), "image/png")])
    _wait_cards(tab, 2)
    assert _card(tab, "pasted image 1.png").locator(".top1").text_content() == label
    assert len(tab.predicts) == 2

    _send(tab, "drop", [("huge.png", 11 * 1024 * 1024, "image/png")])
    _wait_cards(tab, 3)
    error = _card(tab, "huge.png").locator(".error").text_content()
    assert error == "too large: 11.0 MB, the limit is 10 MB"
    assert len(tab.predicts) == 2  # refused before upload

    hostile = '<img src=x onerror="window.pwned=1">.txt'
    _send(tab, "drop", [(hostile, b"<b>bold</b>", "text/plain")])
    _wait_cards(tab, 4)
    card = page.locator(".card").first
    assert card.locator(".fname").text_content() == hostile
    assert "not an image" in card.locator(".error").text_content()
    assert card.locator("img:not(.thumb), b").count() == 0
    assert page.evaluate("() => window.pwned === undefined")
    assert tab.outside == [] and tab.errors == []


def test_request_errors_are_shown_in_words(
    open_tab: Any, server: Server, images: list[Path]
) -> None:
    """A request the server refuses as a whole (413 here, answered by a route in the browser)
    shows its JSON `error` on every card of the request; an answer that is not JSON (a proxy's
    502 page) says the status, never "[object Object]"."""
    tab = open_tab(server.url + "/")
    page = tab.page
    page.wait_for_selector("#run-info:not([hidden])")
    refusal = "too many files in one request: the limit is 128 (--max-files)"
    page.route(
        "**/v1/predict**",
        lambda r: r.fulfill(
            status=413,
            content_type="application/json",
            body=json.dumps({"error": refusal, "status": 413}),
        ),
    )
    page.set_input_files("#picker", [str(p) for p in images[:2]])
    _wait_cards(tab, 2)
    assert page.locator(".card .error").all_text_contents() == [refusal, refusal]

    page.unroute("**/v1/predict**")
    page.route("**/v1/predict**", lambda r: r.fulfill(status=502, body="<html>bad gateway"))
    page.set_input_files("#picker", [str(images[2])])
    _wait_cards(tab, 3)
    assert (
        page.locator(".card .error").first.text_content() == "the server answered 502 Bad Gateway"
    )
    assert tab.outside == [] and tab.errors == []


def test_phone_screen_has_one_column_and_no_sideways_scroll(
    open_tab: Any, server: Server, images: list[Path]
) -> None:
    """At 375×740 px the cards stack in one column and nothing is wider than the screen."""
    tab = open_tab(server.url + "/", width=375, height=740)
    page = tab.page
    page.wait_for_selector("#run-info:not([hidden])")
    page.set_input_files("#picker", [str(p) for p in images])
    _wait_cards(tab, len(images))
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    boxes = [c.bounding_box() for c in page.locator(".card").all()]
    assert len({round(b["x"]) for b in boxes}) == 1
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= 375 for b in boxes)
    assert tab.errors == []


def _enter_token(tab: Tab, token: str) -> None:
    tab.page.wait_for_selector("#token-form:not([hidden])")
    tab.page.fill("#token", token)
    tab.page.press("#token", "Enter")


def test_token_is_asked_for_kept_and_asked_again_when_wrong(
    open_tab: Any,
    token_server: Server,
    trained_run: Path,
    images: list[Path],
    expected: dict[str, dict[str, Any]],
) -> None:
    """A server with --token: the page asks in its form; a wrong token asks again; the right
    one shows the run and goes with every request (a drop over --max-files 2 is sent in two
    requests); a reload in the same tab keeps it (sessionStorage)."""
    tab = open_tab(token_server.url + "/")
    page = tab.page
    assert page.is_hidden("#run-info")
    _enter_token(tab, "wrong")
    page.wait_for_selector("#token-message.wrong")
    assert "Wrong token" in page.text_content("#token-message")
    assert page.is_visible("#token-form") and page.is_hidden("#run-info")
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#run-info:not([hidden])")
    assert page.text_content("#run-name") == trained_run.name
    assert page.is_hidden("#token-form")

    page.set_input_files("#picker", [str(p) for p in images[:3]])
    _wait_cards(tab, 3)
    for p in images[:3]:
        assert _card(tab, p.name).locator(".top1").text_content() == expected[p.name]["label"]
    assert len(tab.predicts) == 2
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in tab.predicts)

    page.reload()
    page.wait_for_selector("#run-info:not([hidden])")
    assert page.is_hidden("#token-form")
    assert tab.outside == [] and tab.errors == []


def test_several_runs_are_chosen_in_a_select(
    open_tab: Any,
    token_server: Server,
    trained_run: Path,
    images: list[Path],
    expected: dict[str, dict[str, Any]],
) -> None:
    """Two runs served: a <select> lists them (the default first); choosing the other one
    describes it and predicts the images already there again, with that model."""
    tab = open_tab(token_server.url + "/")
    page = tab.page
    _enter_token(tab, TOKEN)
    page.wait_for_selector("#run-info:not([hidden])")
    assert page.is_visible("#model")
    options = page.locator("#model option").all_text_contents()
    assert options == [trained_run.name, SECOND]
    assert page.input_value("#model") == trained_run.name
    first = images[0]
    page.set_input_files("#picker", [str(first)])
    _wait_cards(tab, 1)
    assert f"model={trained_run.name}" in tab.predicts[-1]["url"]

    page.select_option("#model", SECOND)
    assert page.text_content("#run-name") == SECOND
    _wait_cards(tab, 1)
    assert len(tab.predicts) == 2 and f"model={SECOND}" in tab.predicts[-1]["url"]
    card = _card(tab, first.name)
    assert card.locator(".by").text_content() == f"by {SECOND}"
    assert card.locator(".top1").text_content() == expected[first.name]["label"]  # same weights
    assert tab.outside == [] and tab.errors == []
