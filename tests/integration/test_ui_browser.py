"""The /ui page in a real browser: Debian's headless Chromium driven by Playwright, against a
gateway on the real embedded model with Redis behind its trace store.

On the page: ask a question and watch its steps arrive while the search runs, open a step's
candidates (with per-token log-probabilities), open a past response by id (and an unknown one),
compare two runs step by step, see a stored trace whose candidate is a ``<script>`` render it
as text, load a 64-step, 16-candidate trace, refuse a dropped file that is not a results file,
and show a stream that fails midway as a failure rather than a spinner.

The search tree is drawn from the response's ``tree`` (and a stream's ``node`` events) when
there is one: beams, with the chosen path.

The tier has a fixed budget (``TIER_BUDGET_S``, counted from its first test once the gateway
is up): every wait on the page is bounded by what is left of it, and a test that finds it
spent fails saying so. Screenshots go to ``test-artifacts/`` (``RATIONALYST_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.worker_fixtures import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TIER_BUDGET_S = 90.0
CHROMIUM = os.environ.get("RATIONALYST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RATIONALYST_TEST_ARTIFACTS", "test-artifacts"))
QUESTION = "A pen costs 2 dollars. How much do 4 pens cost?"
SMALL = {"n_candidates": "2", "max_steps": "2", "max_step_tokens": "24"}
TRACE_KEY = "rationalyst:trace:"


def chromium_major(executable: str) -> int:
    out = subprocess.run(
        [executable, "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    found = re.search(r"(\d+)\.\d+\.\d+", out.stdout)
    if not found:
        pytest.fail(f"cannot read the version of {executable}: {out.stdout!r} {out.stderr!r}")
    return int(found.group(1))


def playwright_chromium_major() -> int:
    import playwright

    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    for entry in json.loads(browsers.read_text())["browsers"]:
        if entry["name"] == "chromium":
            return int(str(entry["browserVersion"]).split(".")[0])
    raise AssertionError(f"no chromium in {browsers}")  # pragma: no cover


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from importlib.metadata import version

    from playwright.sync_api import sync_playwright

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"{CHROMIUM} is missing: `make setup` (scripts/bootstrap.sh) installs Debian's "
            "chromium; or `apt-get install chromium`"
        )
    have, want = chromium_major(CHROMIUM), playwright_chromium_major()
    if have != want:
        pytest.fail(
            f"Chromium {have} at {CHROMIUM}, but playwright {version('playwright')} drives "
            f"Chromium {want}: pin the playwright release built for Chromium {have} in "
            "pyproject.toml"
        )
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def ui_gateway(
    gateway_factory: Callable[..., str],
    model_services: dict[str, str],
    redis_server: RedisServer,  # noqa: F811
) -> str:
    return gateway_factory(
        rationalyst_url=model_services["rationalyst"],
        agent_url=model_services["agent"],
        scorer_url=model_services["scorer"],
        redis_url=redis_server.url,
        trace_ttl_s=600,
    )


@pytest.fixture(scope="module")
def deadline(ui_gateway: str, browser: Any) -> float:
    """When the tier's budget is spent."""
    return time.monotonic() + TIER_BUDGET_S


def left_ms(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        pytest.fail(f"the browser tier is over its {TIER_BUDGET_S:.0f} s budget")
    return left * 1000.0


@pytest.fixture
def page(browser: Any, ui_gateway: str, deadline: float) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(left_ms(deadline))
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{ui_gateway}/ui")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    context.close()
    assert not errors, f"the page threw: {errors}"


def screenshot(pg: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    return path


def ask(pg: Any, heuristic: str, **options: str) -> None:
    pg.fill("#question", QUESTION)
    pg.select_option("#heuristic", heuristic)
    for name, value in {**SMALL, "seed": "7", **options}.items():
        pg.fill(f"#{name}", value)
    pg.click("#run")


def wait_done(pg: Any) -> str:
    """Wait for the run to end; the status line it ends with."""
    pg.wait_for_selector(".status .msg.info, .status .msg.error")
    return str(pg.inner_text("#status"))


def store_trace(redis_url: str, trace: dict[str, Any]) -> None:
    redis.Redis.from_url(redis_url).set(TRACE_KEY + trace["id"], json.dumps(trace), ex=600)


@pytest.fixture(scope="module")
def sample(ui_gateway: str, deadline: float) -> dict[str, Any]:
    """A real response from the embedded model, the template of stored traces."""
    body = {"question": QUESTION, "heuristic": "likelihood", "n_candidates": 2, "max_steps": 1,
            "max_step_tokens": 16, "seed": 3}  # fmt: skip
    r = httpx.post(f"{ui_gateway}/v1/reason", json=body, timeout=left_ms(deadline) / 1000)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_ask_watch_steps_arrive_open_candidates_and_reopen_by_id(
    page: Any,
    ui_gateway: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # note the status line each time a step card appears: steps arrive while the search runs
    page.evaluate(
        """() => { window.__seen = [];
        new MutationObserver(() => {
          const n = document.querySelectorAll('#steps .step').length;
          const m = document.querySelector('#status .msg');
          if (n > window.__seen.length) window.__seen.push(m ? m.dataset.kind : null);
        }).observe(document.getElementById('steps'), {childList: true}); }"""
    )
    ask(page, "likelihood")
    page.wait_for_selector("#steps .step[data-step='0']")
    assert "done" in wait_done(page)
    assert page.evaluate("window.__seen")[0] == "running"
    assert page.locator(".status .spinner").count() == 0
    steps = page.locator("#steps .step")
    assert steps.count() >= 1
    run = page.evaluate("window.rationalystViewer.runs[0].response")
    assert page.inner_text("[data-testid=answer]") == (run["answer"] or "(none)")
    # a step's candidates: every distinct one with its score and rank, the chosen one marked
    first = run["trace"][0]
    page.click(".step[data-step='0'] details summary")
    page.wait_for_selector(".step[data-step='0'] table.cands")  # built when first opened
    rows = page.locator(".step[data-step='0'] table.cands tr[data-candidate]")
    distinct = [i for i, c in enumerate(first["candidates"]) if c["duplicate_of"] is None]
    assert rows.count() == len(distinct)
    chosen = page.locator(f".step[data-step='0'] tr[data-candidate='{first['chosen']}']")
    assert "chosen" in chosen.inner_text()
    # per-token log-probs, coloured, on a step whose candidates were scored
    scored_steps = [s for s in run["trace"] if any(c["tokens"] for c in s["candidates"])]
    assert scored_steps, "no step was scored: the test needs two distinct candidates"
    index = scored_steps[0]["index"]
    if index != 0:
        page.click(f".step[data-step='{index}'] details summary")
        page.wait_for_selector(f".step[data-step='{index}'] table.cands")
    tokens = page.locator(f".step[data-step='{index}'] .tok")
    want = sum(len(c["tokens"] or []) for c in scored_steps[0]["candidates"])
    assert tokens.count() == want > 0
    colour = tokens.first.evaluate("t => getComputedStyle(t).backgroundColor")
    assert colour not in ("", "rgba(0, 0, 0, 0)"), colour
    # the tree: the chosen path highlighted
    assert page.locator("#tree .node.chosen").count() == len(run["trace"])
    shot = screenshot(page, "ui-run.png")
    assert shot.stat().st_size > 10_000
    # kept in Redis too, with its TTL, for every replica
    stored = redis.Redis.from_url(redis_server.url)
    assert json.loads(stored.get(TRACE_KEY + run["id"]) or b"{}") == run
    assert 0 < stored.ttl(TRACE_KEY + run["id"]) <= 600
    # the same response again, by its id, in a fresh page load
    page.goto(f"{ui_gateway}/ui#trace={run['id']}")
    page.wait_for_selector("#summary [data-testid=answer]")
    assert page.inner_text("[data-testid=answer]") == (run["answer"] or "(none)")
    assert page.locator("#steps .step").count() == len(run["trace"])
    page.fill("#trace-id", "no-such-trace")
    page.click("#open-trace")
    page.wait_for_selector(".status .msg.error")
    assert "404" in page.inner_text("#status") and "no-such-trace" in page.inner_text("#status")


def test_compare_two_runs_marks_their_differences(page: Any) -> None:
    ask(page, "greedy", max_steps="1")
    assert "done" in wait_done(page)
    ask(page, "likelihood", max_steps="2", seed="11")
    page.wait_for_function("document.querySelectorAll('#runs li').length === 2")
    assert "done" in wait_done(page)
    page.click("#compare")
    page.wait_for_selector("#compare-view table.compare-grid")
    a, b = page.evaluate("window.rationalystViewer.runs.map(r => r.response)")
    rows = page.locator("#compare-view tr[data-row^='step-']")
    assert rows.count() == max(len(a["steps"]), len(b["steps"]))
    for i in range(rows.count()):
        sa = a["steps"][i] if i < len(a["steps"]) else None
        sb = b["steps"][i] if i < len(b["steps"]) else None
        assert ("diff" in str(rows.nth(i).get_attribute("class"))) == (sa != sb)
    assert page.locator("#compare-view tr.diff").count() >= 1  # heuristics differ at least
    screenshot(page, "ui-compare.png")


def test_script_in_a_stored_candidate_renders_as_text(
    page: Any,
    sample: dict[str, Any],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    trace = copy.deepcopy(sample)
    trace["id"] = "stored-script"
    trace["trace"][0]["candidates"][-1]["text"] = evil
    trace["trace"][0]["candidates"][-1]["tokens"] = [{"token": evil, "logprob": -1.0}]
    trace["trace"][0]["rationale"] = "<b>bold?</b>"
    store_trace(redis_server.url, trace)  # only in Redis: the gateway reads it back from there
    page.fill("#trace-id", "stored-script")
    page.click("#open-trace")
    page.wait_for_selector("#steps .step[data-step='0']")
    page.click(".step[data-step='0'] details summary")
    page.wait_for_selector(".step[data-step='0'] table.cands")
    assert evil in page.inner_text(".step[data-step='0'] table.cands")
    assert "<b>bold?</b>" in page.inner_text(".step[data-step='0'] .rationale")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#steps script, #steps img, #tree script, #steps b").count() == 0


def test_a_64_step_16_candidate_trace_renders(
    page: Any,
    sample: dict[str, Any],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    trace = copy.deepcopy(sample)
    step = trace["trace"][0]
    trace["id"] = "stored-64x16"
    trace.pop("tree", None)  # the page draws the tree from the 64 steps below
    trace["trace"] = []
    for i in range(64):
        s = copy.deepcopy(step)
        s["index"] = i
        s["candidates"] = [
            {**step["candidates"][0], "text": f"step {i} candidate {j}", "score": -j / 10.0,
             "duplicate_of": None, "repeat_of": None,
             "tokens": [{"token": f"t{k}", "logprob": -k / 8.0} for k in range(12)]}
            for j in range(16)
        ]  # fmt: skip
        s["chosen"] = 0
        s["step"] = f"step {i} candidate 0"
        trace["trace"].append(s)
    trace["steps"] = [s["step"] for s in trace["trace"]]
    store_trace(redis_server.url, trace)
    page.fill("#trace-id", "stored-64x16")
    page.click("#open-trace")
    page.wait_for_selector("#steps .step[data-step='63']")
    assert page.locator("#steps .step").count() == 64
    assert page.locator("#tree .node").count() == 64 * 16
    assert page.locator("#tree .node.chosen").count() == 64
    page.click(".step[data-step='63'] details summary")
    page.wait_for_selector(".step[data-step='63'] table.cands")
    assert page.locator(".step[data-step='63'] tr[data-candidate]").count() == 16
    assert page.locator(".step[data-step='63'] .tok").count() == 16 * 12
    # still responsive: a click is answered at once
    page.click("#runs li")
    assert page.locator("#runs li.current").count() == 1


def test_a_dropped_file_that_is_not_results_gives_a_message(
    page: Any, sample: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not json at all\n")
    page.set_input_files("#results-file", str(bad))
    page.wait_for_selector(".status .msg.error")
    assert "notes.txt is not a results.jsonl" in page.inner_text("#status")
    # dropped onto the page: the same message
    page.evaluate(
        """() => { const data = new DataTransfer();
        data.items.add(new File(['{"a": 1}\\n'], 'other.json', {type: 'application/json'}));
        document.getElementById('drop').dispatchEvent(
          new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true})); }"""
    )
    page.wait_for_function(
        "document.getElementById('status').innerText.includes('other.json is not a results')"
    )
    good = tmp_path / "results.jsonl"
    record = {"key": "k1", "task": "t", "item_id": "i1", "heuristic": "likelihood",
              "question": QUESTION, "correct": True, "response": sample}  # fmt: skip
    good.write_text(json.dumps(record) + "\n")
    page.set_input_files("#results-file", str(good))
    page.wait_for_selector("#results tr[data-record='0']")
    page.click("#results tr[data-record='0']")
    page.wait_for_selector("#steps .step[data-step='0']")
    assert page.inner_text("[data-testid=answer]") == (sample["answer"] or "(none)")


def test_a_stream_that_fails_midway_shows_the_failure(page: Any, sample: dict[str, Any]) -> None:
    # the API's own events: a step, then the error event a service failure ends a stream with
    step = json.dumps(sample["trace"][0])
    error = {"error": {"type": "service_unavailable", "message": "scorer: connection refused",
                       "request_id": "r1", "field": None}}  # fmt: skip
    body = f"event: step\ndata: {step}\n\nevent: error\ndata: {json.dumps(error)}\n\n"
    page.route(
        "**/v1/reason",
        lambda route: route.fulfill(status=200, body=body, content_type="text/event-stream"),
    )
    ask(page, "likelihood")
    page.wait_for_selector(".status .msg.error")
    assert "scorer: connection refused" in page.inner_text("#status")
    assert page.locator(".status .spinner").count() == 0
    assert page.locator("#steps .step").count() == 1
    assert "failed" in page.inner_text("#runs li")  # the run is marked, not left running
    # a stream cut off without its last event: also a failure, not a spinner
    page.unroute("**/v1/reason")
    page.route(
        "**/v1/reason",
        lambda route: route.fulfill(
            status=200, body=f"event: step\ndata: {step}\n\n", content_type="text/event-stream"
        ),
    )
    ask(page, "likelihood")
    page.wait_for_function("document.querySelectorAll('#runs li').length === 2")
    page.wait_for_selector(".status .msg.error")
    assert "ended without a response" in page.inner_text("#status")
    assert page.locator(".status .spinner").count() == 0
    # a failure the search survived: the fallback it reports, in the summary
    fallback = {"step": 0, "service": "scorer", "from_heuristic": "likelihood",
                "to_heuristic": "random", "reason": "scorer: connection refused"}  # fmt: skip
    degraded = {**sample, "fallbacks": [fallback], "heuristic_used": "random",
                "warnings": ["scorer unavailable at step 0; continuing as random"]}  # fmt: skip
    done = f"event: step\ndata: {step}\n\nevent: done\ndata: {json.dumps(degraded)}\n\n"
    page.unroute("**/v1/reason")
    page.route(
        "**/v1/reason",
        lambda route: route.fulfill(status=200, body=done, content_type="text/event-stream"),
    )
    ask(page, "likelihood")
    page.wait_for_selector("#summary .fallback")
    assert "scorer: connection refused" in page.inner_text("#summary .fallback")
    assert "1 fallback" in page.inner_text("#status")
    assert "likelihood → random" in page.inner_text("#summary")


def beam_tree() -> list[dict[str, Any]]:
    """A search tree in the response's `tree` shape: two beams at depth 0, one continued."""

    def node(i: int, parent: int | None, depth: int, status: str, score: float) -> dict[str, Any]:
        answer = "8" if status in ("chosen", "finished") and depth == 2 else None
        return {"id": f"n{i}", "parent": None if parent is None else f"n{parent}",
                "depth": depth, "text": f"node {i}", "score": score, "aggregate": score,
                "status": status, "rationale": None, "answer": answer}  # fmt: skip

    return [
        node(0, None, 0, "chosen", -0.2),
        node(1, None, 0, "kept", -0.4),
        node(2, None, 0, "pruned", -1.5),
        node(3, 0, 1, "chosen", -0.3),
        node(4, 1, 1, "pruned", -0.9),
        node(5, 3, 2, "chosen", -0.1),
        node(6, 3, 2, "finished", -0.6),
    ]


def test_a_search_tree_renders_beams_with_the_chosen_path(
    page: Any, sample: dict[str, Any]
) -> None:
    tree = beam_tree()
    # the tree of a response, and the node events of a stream, as the API sends them
    response = {**sample, "id": "beams", "tree": tree}
    page.route(
        "**/v1/traces/beams",
        lambda route: route.fulfill(status=200, json=response),
    )
    page.fill("#trace-id", "beams")
    page.click("#open-trace")
    page.wait_for_selector("#tree .node[data-node='n6']")
    assert page.locator("#tree .node").count() == len(tree)
    chosen = page.locator("#tree .node.chosen")
    assert [chosen.nth(i).get_attribute("data-node") for i in range(3)] == ["n0", "n3", "n5"]
    # nested: each chosen node sits under its parent's list item
    assert page.locator("#tree li:has(> [data-node='n0']) [data-node='n5']").count() == 1
    assert page.locator("#tree li:has(> [data-node='n1']) [data-node='n4']").count() == 1
    assert page.locator("#tree .node.kept").count() == 1
    assert page.locator("#tree .node.finished").count() == 1
    assert page.locator("#tree .node .tok").count() == 0  # without trace_tokens: plain text
    events = "".join(
        f"event: node\ndata: {json.dumps({'event': 'node', **n})}\n\n" for n in tree[:4]
    )
    page.route(
        "**/v1/reason",
        lambda route: route.fulfill(status=200, body=events, content_type="text/event-stream"),
    )
    ask(page, "likelihood")
    page.wait_for_selector(".status .msg.error")  # no done event: ended without a response
    assert page.locator("#tree .node").count() == 4  # the streamed nodes, drawn as they came


def test_a_beam_tree_with_trace_tokens_colours_its_nodes(page: Any, sample: dict[str, Any]) -> None:
    tree = beam_tree()
    for n in tree:  # with trace_tokens, every scored node carries its tokens
        words = str(n["text"]).split(" ")
        n["tokens"] = [{"token": w if k == 0 else f" {w}", "logprob": -2.0 * k}
                       for k, w in enumerate(words)]  # fmt: skip
    response = {**sample, "id": "beam-tokens", "trace": [], "tree": tree}
    page.route(
        "**/v1/traces/beam-tokens",
        lambda route: route.fulfill(status=200, json=response),
    )
    page.fill("#trace-id", "beam-tokens")
    page.click("#open-trace")
    page.wait_for_selector("#tree .node[data-node='n6'] .tok")
    assert page.locator("#tree .node .tok").count() == 2 * len(tree)
    first = page.locator("#tree .node[data-node='n3'] .tok")
    assert first.nth(0).inner_text() + first.nth(1).inner_text() == "node 3"
    likely, unlikely = (
        first.nth(k).evaluate("t => getComputedStyle(t).backgroundColor") for k in (0, 1)
    )
    assert likely != unlikely and "rgba(0, 0, 0, 0)" not in (likely, unlikely)
