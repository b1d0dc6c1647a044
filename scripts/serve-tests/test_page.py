"""The chat page at `/` in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): the page loads, a question streams an answer, and the branches of a forking answer
appear side by side while it decodes."""

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from test_serve import LIST_PROMPT, Server


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def test_the_page_streams_an_answer_and_shows_its_branches(browser):
    s = Server("--protocol", "titles")
    try:
        browser.get(s.url + "/")
        assert browser.title == "pardec"
        box = browser.find_element(By.ID, "prompt")
        box.send_keys(LIST_PROMPT)
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        wait = WebDriverWait(browser, 120)
        # Branch columns appear at the fork, each filling with its own text.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".branch")) >= 2)
        wait.until(lambda d: d.find_element(By.ID, "stats").text != "")
        columns = browser.find_elements(By.CSS_SELECTOR, ".branch")
        assert all(c.text.startswith("branch ") for c in columns)
        assert any(len(c.text) > len("branch 1") + 5 for c in columns), [c.text for c in columns]
        answer = browser.find_element(By.CSS_SELECTOR, ".answer").text
        assert len(answer) > 40, answer
        assert "blocks" in browser.find_element(By.ID, "stats").text
        # Control: a plain question opens no branch columns.
        browser.find_element(By.ID, "prompt").send_keys("Say hello.")
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer")) == 2
                   and d.find_elements(By.CSS_SELECTOR, ".answer")[1].text != "")
        wait.until(lambda d: "0 blocks" in d.find_element(By.ID, "stats").text
                   or len(d.find_elements(By.CSS_SELECTOR, ".branches")[1].find_elements(By.CSS_SELECTOR, ".branch")) > 0)
        second = browser.find_elements(By.CSS_SELECTOR, ".branches")[1]
        assert second.find_elements(By.CSS_SELECTOR, ".branch") == []
    finally:
        s.stop()
