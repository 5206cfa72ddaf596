"""The chat page in a real headless browser (Debian's chromium through selenium)."""

import shutil

import pytest

from tests.serving import serve, tiny_bot

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SEED = 7
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


@pytest.fixture(scope="module")
def browser():
    driver_path = shutil.which("chromedriver")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if not (driver_path and binary):
        pytest.skip("no headless browser here: install chromium and chromium-driver (bash .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,640", "--lang=zh-CN"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def send(browser, text: str) -> str:
    """Type `text`, press Enter, and return the reply once it has finished streaming."""
    before = len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant"))
    browser.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".message.assistant:not(.streaming)")) > before)
    return browser.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1].text


def test_page_streams_replies_and_new_conversation_forgets_the_history(browser, bot, tmp_path):
    expect = lambda text, history: bot.reply(text, history, seed=SEED, temperature=1.0, top_p=1.0)  # noqa: E731
    first = expect("你好", [])
    second, fresh = expect("今天天气", ["你好", first]), expect("今天天气", [])
    assert second != fresh, "the test needs a history that changes the reply"
    with serve(bot) as url:
        browser.get(url)
        WebDriverWait(browser, 10, poll_frequency=0.05).until(lambda b: b.find_element(By.ID, "model").text == "tiny")
        browser.find_element(By.ID, "seed").send_keys(str(SEED))
        browser.execute_script(WATCH_REPLIES)

        assert send(browser, "你好") == first
        pieces = {t for t in browser.execute_script("return window.seen") if t}
        assert len(pieces) >= 2, f"the reply arrived in one piece: {pieces}"
        assert send(browser, "今天天气") == second
        browser.save_screenshot(str(tmp_path / "chat.png"))

        browser.find_element(By.ID, "new-conversation").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".message") == []
        assert send(browser, "今天天气") == fresh
        assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".message")] == ["今天天气", fresh]
