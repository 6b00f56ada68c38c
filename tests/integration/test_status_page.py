"""The status page at ``/`` and the API reference at ``/docs``, in a real headless Chromium
against a real server: what the page shows (a loaded model's id and size, the memory budget, a
save job), that it asks for the token on 401 and keeps the one entered, and that neither page
asks any host but the service's for anything (air-gapped clusters). Each test saves a
screenshot and the rendered DOM under its tmp_path."""

from __future__ import annotations

from pathlib import Path

from _browser import Browser, check_png

TOKEN = "status-page-token-0123456789abcdef"

MODEL = "mlm_gpt"


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _shows_size(text: str, n: int) -> bool:
    """``text`` is ``n`` bytes in binary units to one decimal ('417.3 KiB'), the unit the largest
    that leaves at least 1 ('1.0 GiB' for 2**30)."""
    value, unit = text.split(" ")
    scale = _UNITS[unit]
    return 1 <= n / scale < 1024 and abs(float(value) - n / scale) <= 0.05 + 1e-9


def _only_from(page, base_url: str) -> None:
    requests = page.requests
    assert requests, "the page made no request at all"
    outside = [u for u in requests if not (u.startswith(base_url + "/") or u.startswith("data:"))]
    assert not outside, f"the page asked other hosts: {outside}"


def _screenshot(page, path: Path) -> dict:
    png = page.screenshot(path)
    width, height = check_png(path.read_bytes())
    assert (width, height) == (1280, 900)
    stats = page.pixel_stats(png)
    assert (stats["width"], stats["height"]) == (width, height)
    # a rendered page, not a blank one: many colours (text antialiasing) and a good share of ink
    assert stats["colours"] > 50 and stats["other"] > 0.02, stats
    return stats


def test_status_page_shows_models_memory_and_jobs(start, tmp_path):
    with Browser(tmp_path) as browser, start(memory_budget="1GiB") as svc:
        model = svc.load(MODEL)
        assert model.status_code == 201, model.text
        model = model.json()
        saved = svc.client.post(f"/v1/models/{model['id']}/save", json={"path": "from-status-page"})
        assert saved.status_code == 202, saved.text
        assert svc.wait_job(saved.json()["id"])["state"] == "succeeded"

        page = browser.page()
        page.goto(svc.base_url + "/")
        page.wait_for(f"document.querySelector('[data-model-id=\"{model['id']}\"]') !== null")
        page.wait_for(f"document.querySelector('[data-job-id=\"{saved.json()['id']}\"]') !== null")
        _screenshot(page, tmp_path / "status.png")
        html = page.html()
        (tmp_path / "status.dom.html").write_text(html)

        row = f"[data-model-id=\"{model['id']}\"]"
        assert page.evaluate(f"document.querySelector('{row} .model-id').textContent") == model["id"]
        assert page.evaluate(f"document.querySelector('{row} .model-size').dataset.bytes") == str(model["size_bytes"])
        assert _shows_size(page.evaluate(f"document.querySelector('{row} .model-size').textContent"), model["size_bytes"])
        assert page.evaluate(f"document.querySelector('{row} .model-dtype').textContent") == model["dtype"]
        assert page.evaluate(f"document.querySelector('{row} .model-pinned').textContent") == "no"
        assert page.evaluate(f"document.querySelector('{row} .model-leases').textContent") == "0"
        # the budget the service was started with, and what the model uses of it
        assert page.evaluate("document.getElementById('memory-budget').textContent") == "1.0 GiB"
        assert page.evaluate("document.getElementById('memory-budget').dataset.bytes") == str(2**30)
        assert page.evaluate("document.getElementById('memory-used').dataset.bytes") == str(model["size_bytes"])
        assert page.evaluate("document.getElementById('ready').textContent") == "ready"
        assert page.evaluate("document.getElementById('fact-world-size').textContent") == "1"
        job = f"[data-job-id=\"{saved.json()['id']}\"]"
        assert page.evaluate(f"document.querySelector('{job}').dataset.state") == "succeeded"
        assert "100%" in page.evaluate(f"document.querySelector('{job} .job-progress').textContent")
        assert model["id"] in html and "1.0 GiB" in html
        assert page.exceptions == []
        _only_from(page, svc.base_url)

        # it refreshes itself: an eviction shows without a reload
        assert svc.client.delete(f"/v1/models/{model['id']}").status_code == 204
        page.wait_for(f"document.querySelector('{row}') === null", timeout=20)
        assert page.evaluate("document.getElementById('memory-used').dataset.bytes") == "0"


def test_status_page_asks_for_the_token_and_keeps_it_for_the_tab(start, tmp_path):
    with Browser(tmp_path) as browser, start(token=TOKEN) as svc:
        model = svc.load(MODEL)
        assert model.status_code == 201, model.text
        model_id = model.json()["id"]

        page = browser.page()
        page.goto(svc.base_url + "/")  # the page itself is public; its data is not
        page.wait_for("document.getElementById('banner').classList.contains('shown')")
        _screenshot(page, tmp_path / "status-401.png")
        (tmp_path / "status-401.dom.html").write_text(page.html())
        banner = page.evaluate("document.getElementById('banner').innerText")
        assert "401" in banner and "requires a token" in banner, banner
        assert page.evaluate("getComputedStyle(document.getElementById('token-form')).display") != "none"
        assert page.evaluate(f"document.querySelector('[data-model-id=\"{model_id}\"]')") is None
        assert page.evaluate("getComputedStyle(document.getElementById('models-section')).display") == "none"

        def enter(token: str) -> None:
            page.evaluate("document.getElementById('token-input').focus()")
            page.send("Input.insertText", {"text": token})
            page.evaluate("document.getElementById('token-save').click()")

        enter("not-the-token-0123456789")
        page.wait_for("document.getElementById('banner-title').textContent.includes('refused')")

        enter(TOKEN)
        page.wait_for(f"document.querySelector('[data-model-id=\"{model_id}\"]') !== null")
        assert not page.evaluate("document.getElementById('banner').classList.contains('shown')")
        assert page.evaluate("sessionStorage.getItem('megaload.token')") == TOKEN
        page.reload()  # kept for the tab: no second prompt
        page.wait_for(f"document.querySelector('[data-model-id=\"{model_id}\"]') !== null")
        _screenshot(page, tmp_path / "status-token.png")
        assert page.exceptions == []
        _only_from(page, svc.base_url)


def test_swagger_ui_renders_without_any_outside_host(start, tmp_path):
    with Browser(tmp_path) as browser, start() as svc:
        page = browser.page()
        page.goto(svc.base_url + "/docs")
        title = page.wait_for("(document.querySelector('.swagger-ui .info .title') || {}).textContent")
        assert title.startswith("megaload")
        page.wait_for("document.querySelectorAll('.opblock').length > 10")
        _screenshot(page, tmp_path / "docs.png")
        _only_from(page, svc.base_url)
        assert page.exceptions == []

