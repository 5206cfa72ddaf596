"""The chat page in a real headless browser (Debian's chromium through selenium), on a desktop and a phone.

Screenshots go to tmp_path, or to the folder named by $PAGE_SHOTS (to look at them).
"""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving import serve, tiny_bot

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SEED = 7
KEY = "page-key"
TITLE = "聊天机器人"
# Collects every text the newest reply bubble shows, to see the reply arrive in pieces.
WATCH_REPLIES = """
window.seen = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('.message.assistant');
  if (bubbles.length) window.seen.push(bubbles[bubbles.length - 1].textContent);
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def bot(tokenizer):
    # 30 ms a step and 8 forced tokens: a reply streams for about a quarter of a second.
    return tiny_bot(tokenizer, delay=0.03, max_new_tokens=8, min_new_tokens=8)


def chrome(*arguments: str, phone: tuple[int, int] | None = None):
    """Headless chromium with `arguments`; `phone=(width, height)` emulates a touch phone of that size."""
    driver_path = shutil.which("chromedriver")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if not (driver_path and binary):
        pytest.skip("no headless browser here: install chromium and chromium-driver (bash .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=zh-CN", *arguments):
        options.add_argument(arg)
    if phone:
        width, height = phone
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 2, "mobile": True, "touch": True}})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver_path))


@pytest.fixture(scope="module")
def desktop():
    driver = chrome()
    # A viewport of exactly 1280x900 (--window-size would count the browser's own bars in).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def phone():
    driver = chrome(phone=(390, 844))
    yield driver
    driver.quit()


def screenshot(browser, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("PAGE_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))


def wait(browser, condition, timeout: float = 10):
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def send(browser, text: str) -> str:
    """Type `text`, press Enter, and return the reply once it has finished streaming."""
    before = len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant"))
    browser.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    done = ".message.assistant:not(.streaming)"
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, done)) > before)
    return browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1].text


def box(browser, element_id: str) -> dict:
    """The element's size and scroll size in CSS pixels, and whether it lies wholly inside the viewport."""
    return browser.execute_script("""
        const e = document.getElementById(arguments[0]), r = e.getBoundingClientRect();
        return {clientHeight: e.clientHeight, scrollHeight: e.scrollHeight, height: r.height,
                inside: r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight};
    """, element_id)


def assert_fits_the_screen(browser) -> None:
    """No sideways scrolling, and the message box shows its placeholder or text without an inner scrollbar."""
    width = browser.execute_script("return [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    field = box(browser, "input")
    assert field["scrollHeight"] <= field["clientHeight"] and field["inside"], field


def test_page_streams_replies_and_new_conversation_forgets_the_history(desktop, bot, tmp_path):
    browser = desktop

    def expect(text, history):
        return bot.reply(text, history, seed=SEED, temperature=1.0, top_p=1.0)

    first = expect("你好", [])
    second, fresh = expect("今天天气", ["你好", first]), expect("今天天气", [])
    assert second != fresh, "the test needs a history that changes the reply"
    with serve(bot) as url:
        browser.get(url)
        wait(browser, lambda b: b.find_element(By.ID, "model").text == "tiny")
        assert browser.title == TITLE
        assert browser.execute_script("return [innerWidth, innerHeight]") == [1280, 900]
        assert_fits_the_screen(browser)
        assert not browser.find_element(By.ID, "settings-toggle").is_displayed()  # a sidebar: always open
        browser.find_element(By.ID, "seed").send_keys(str(SEED))
        browser.execute_script(WATCH_REPLIES)

        assert send(browser, "你好") == first
        pieces = {t for t in browser.execute_script("return window.seen") if t}
        assert len(pieces) >= 2, f"the reply arrived in one piece: {pieces}"
        assert send(browser, "今天天气") == second
        # On a wide screen the conversation keeps to a column, not the window's edges.
        mine, reply = (browser.find_elements(By.CSS_SELECTOR, f".message.{role}")[-1].rect
                       for role in ("user", "assistant"))
        assert mine["x"] + mine["width"] - reply["x"] <= 760
        assert browser.switch_to.active_element.get_attribute("id") == "input"
        screenshot(browser, tmp_path, "desktop-1280x900")

        browser.find_element(By.ID, "new-conversation").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".message") == []
        assert send(browser, "今天天气") == fresh
        assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".message")] == ["今天天气", fresh]


def test_on_a_phone_the_settings_and_api_key_are_one_tap_away(phone, bot, tmp_path):
    browser = phone
    expected = bot.reply("你好", [], seed=SEED, temperature=1.0, top_p=1.0)
    with serve(bot, api_key=KEY) as url:
        browser.get(url)
        assert browser.title == TITLE
        assert browser.execute_script("return [innerWidth, innerHeight]") == [390, 844]
        assert_fits_the_screen(browser)
        key = browser.find_element(By.ID, "api-key")
        assert not key.is_displayed()  # in the closed drawer

        # Without the key the server says 401: the page says so, in Chinese, with a way to the field.
        browser.find_element(By.ID, "input").send_keys("你好", Keys.ENTER)
        error = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, ".message.error"))
        assert "API 密钥" in error.text
        assert browser.find_elements(By.CSS_SELECTOR, ".message.assistant") == []
        error.find_element(By.TAG_NAME, "button").click()
        wait(browser, lambda b: key.is_displayed() and box(b, "api-key")["inside"])
        assert browser.switch_to.active_element == key
        key.send_keys(KEY)
        browser.find_element(By.ID, "seed").send_keys(str(SEED))
        browser.find_element(By.ID, "settings-close").click()
        wait(browser, lambda b: not key.is_displayed())
        wait(browser, lambda b: b.find_element(By.ID, "model").text == "tiny")  # /v1/models, with the key
        assert browser.execute_script("return sessionStorage.getItem('chatbot-api-key')") == KEY

        # A long message grows the box instead of scrolling inside it.
        field = browser.find_element(By.ID, "input")
        field.send_keys("今天天气很好" * 12)
        grown = box(browser, "input")
        assert grown["height"] > 60 and grown["scrollHeight"] <= grown["clientHeight"], grown
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        assert send(browser, "你好") == expected
        assert_fits_the_screen(browser)
        screenshot(browser, tmp_path, "phone-390x844")

        browser.find_element(By.ID, "settings-toggle").click()
        wait(browser, lambda b: key.is_displayed() and box(b, "api-key")["inside"])
        screenshot(browser, tmp_path, "phone-390x844-settings")
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(browser, lambda b: not key.is_displayed())


def test_page_loads_with_no_failed_request_and_nothing_blocked_by_its_csp(desktop, bot):
    with serve(bot) as url:
        desktop.get_log("browser")  # forget what earlier pages logged
        desktop.get(url)
        wait(desktop, lambda b: b.find_element(By.ID, "model").text == "tiny")
        icon = httpx.get(desktop.execute_script("return document.querySelector('link[rel=icon]').href"))
        errors = [e["message"] for e in desktop.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
