"""The dashboard at /admin/ in a real headless chromium (Debian's chromium + chromium-driver, driven
by selenium) against a real gateway after real requests: no console errors, charts drawn with data,
the requests table filters and opens a request; the admin token asked for and kept in the tab."""
from __future__ import annotations

import shutil

import pytest

from procs import wait_until

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")

POLICY = """
provider up {{
    url "{url}"
    price fake-model input 2.50 output 10.00
}}
provider demo {{
    format echo
    price echo input 0.15 output 0.60
}}
key search_team  {{ secret "sk-search" }}
key support_team {{ secret "sk-support" }}

rule cached {{ when temperature == 0 and not stream  cache ttl 1h }}
rule tight  {{ when model == "tight"  limit requests 2 per 1m by key  route up/fake-model }}
rule smart  {{ when model == "smart"  route up/fake-model }}
"""
SEARCH, SUPPORT = {"authorization": "Bearer sk-search"}, {"authorization": "Bearer sk-support"}


def send_traffic(gw, upstream) -> int:
    """A mix of outcomes through the gateway; returns how many requests were sent."""
    sent = 0
    for n in range(6):
        assert gw.chat("smart", headers=SEARCH, content=f"question {n} " * (n + 1)).status_code == 200
        assert gw.chat("demo/echo", headers=SUPPORT, content=f"ticket {n}").status_code == 200
        sent += 2
    assert gw.chat("smart", headers=SUPPORT, stream=True).status_code == 200
    for _ in range(2):
        assert gw.chat("smart", headers=SEARCH, temperature=0, content="same").status_code == 200
    for expected in (200, 200, 429):
        assert gw.chat("tight", headers=SUPPORT).status_code == expected
    upstream.control(fail_next=1, fail_status=500)
    assert gw.chat("smart", headers=SEARCH).status_code == 502
    sent += 7
    wait_until(lambda: gw.finished_requests() >= sent, 30, what="every request finished")
    wait_until(lambda: len(gw.http.get("/admin/requests?limit=1000").json()["data"]) >= sent, 30,
               what="every request in the log")
    return sent


def browser(tmp_path, width: int = 1440, height: int = 1600):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--window-size={width},{height}",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def drawn(driver, selector: str) -> list:
    """The SVG elements under `selector` with a non-zero size."""
    return [e for e in driver.find_elements(By.CSS_SELECTOR, selector)
            if e.size["width"] > 0 and e.size["height"] > 0]


@pytest.fixture
def gateway(upstream, gateways):
    upstream.reset()
    gw = gateways(POLICY.format(url=upstream.url))
    send_traffic(gw, upstream)
    return gw


def test_the_dashboard_shows_real_traffic(gateway, tmp_path):
    driver = browser(tmp_path)
    try:
        driver.get(gateway.url + "/admin/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: drawn(d, "#chart-traffic svg rect.bar"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#requests tbody tr"))
        assert drawn(driver, "#chart-latency svg circle.point")
        assert drawn(driver, "#chart-tokens svg rect.bar")
        assert len(drawn(driver, "#chart-spend-key svg rect.bar")) == 2      # two keys spent
        assert drawn(driver, "#chart-spend-model svg rect.bar")
        assert driver.find_element(By.ID, "k-requests").text == "19"
        assert driver.find_element(By.ID, "k-limited").text == "1"
        assert driver.find_element(By.ID, "policy-version").text == gateway.admin_policy()["version"]
        assert "up" in driver.find_element(By.ID, "providers").text

        rows = lambda: driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr")  # noqa: E731
        assert len(rows()) == 19
        Select(driver.find_element(By.ID, "f-status")).select_by_value("4xx")
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows()] == ["429"]
        Select(driver.find_element(By.ID, "f-status")).select_by_value("")
        driver.find_element(By.ID, "q").send_keys("support_team")
        assert len(rows()) == 6 + 1 + 3
        assert all("support_team" in r.text for r in rows())
        Select(driver.find_element(By.ID, "f-status")).select_by_value("5xx")
        assert rows() == []
        Select(driver.find_element(By.ID, "f-status")).select_by_value("")
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys("502")
        [failed] = rows()
        failed.click()
        wait.until(lambda d: d.find_element(By.ID, "drawer").is_displayed())
        detail = driver.find_element(By.ID, "drawer-json").text
        assert '"status": 502' in detail and '"key": "search_team"' in detail

        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        assert severe(driver) == []
    finally:
        driver.quit()


def test_the_page_asks_for_the_admin_token(upstream, gateways, tmp_path):
    token = "dashboard-admin-token"
    gw = gateways(POLICY.format(url=upstream.url), env={"EDGERULES_ADMIN_TOKEN": token})
    assert gw.chat("demo/echo", headers=SEARCH).status_code == 200
    gw.http.headers["authorization"] = f"Bearer {token}"
    wait_until(lambda: gw.finished_requests() >= 1, 30, what="the request finished")
    driver = browser(tmp_path)
    try:
        driver.get(gw.url + "/admin/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
        before = severe(driver)
        assert before and all("401" in m for m in before)   # only the refused fetches
        driver.find_element(By.ID, "login-token").send_keys(token + "\n")
        wait.until(lambda d: d.find_element(By.ID, "k-requests").text == "1")
        assert not driver.find_element(By.ID, "login").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('edgerules.adminToken')") == token
        driver.refresh()   # the tab keeps the token: no second prompt
        wait.until(lambda d: d.find_element(By.ID, "k-requests").text == "1")
        assert not driver.find_element(By.ID, "login").is_displayed()
        assert severe(driver) == []
    finally:
        driver.quit()


def test_the_page_without_the_request_log(upstream, gateways, tmp_path):
    gw = gateways(POLICY.format(url=upstream.url), "--log-store", "none")
    assert gw.chat("demo/echo", headers=SEARCH).status_code == 200
    wait_until(lambda: gw.finished_requests() >= 1, 30, what="the request finished")
    driver = browser(tmp_path)
    try:
        driver.get(gw.url + "/admin/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "Request log off" in d.find_element(By.ID, "banner").text)
        assert driver.find_element(By.ID, "k-requests").text == "1"     # from /metrics
        assert "request log off" in driver.find_element(By.ID, "chart-traffic").text
        assert "request log off" in driver.find_element(By.ID, "requests-note").text
        # the only console errors: the log endpoints answering 404
        assert all("404" in m for m in severe(driver))
    finally:
        driver.quit()
