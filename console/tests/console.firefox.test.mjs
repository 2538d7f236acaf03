// The console in Firefox: Debian's firefox-esr, driven over WebDriver BiDi
// by puppeteer-core (Playwright's Firefox is a patched build we cannot
// download), with Firefox's fake microphone, against the same server as the
// Chromium test. Started by scripts/test-console.sh, which passes
// PALAVER_URL, PALAVER_KEY, FIREFOX and CONSOLE_ARTIFACTS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/test-console.sh`);
  return value;
};
const BASE = env('PALAVER_URL');
const KEY = env('PALAVER_KEY');
const ARTIFACTS = env('CONSOLE_ARTIFACTS');
const EXECUTABLE = process.env.FIREFOX || '/usr/bin/firefox-esr';
/// What the fake model answers (palaver-loadtest's DEFAULT_REPLY).
const REPLY_PART = 'ninety euros';
const TIMEOUT = 20_000;

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

/// Waits until `check(...args)`, run in the page, returns something truthy.
const until = (page, check, args = [], timeout = TIMEOUT) => page.waitForFunction(
  check, { timeout, polling: 100 }, ...args);

test('Firefox: sign in, create an assistant, a typed turn over WebRTC with its voice', { timeout: 120_000 }, async (t) => {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: EXECUTABLE,
    headless: true,
    extraPrefsFirefox: {
      // A fake microphone, granted without a prompt; silent, so only the
      // typed turn speaks.
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.navigator.audio.fake_frequency': 0,
      // ICE uses the test's network namespace address (Firefox gathers no
      // loopback candidates); never go offline because the namespace has
      // no way out.
      'media.peerconnection.ice.loopback': true,
      'network.manage-offline-status': false,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
      'media.autoplay.default': 0,
      'media.autoplay.block-webaudio': false,
    },
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(TIMEOUT);
  if (process.env.CONSOLE_FROM_DISK === '1') {
    // While editing the console: console/ from disk, not the embedded copy.
    const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
    const types = { html: 'text/html', js: 'text/javascript', css: 'text/css', svg: 'image/svg+xml' };
    await page.setRequestInterception(true);
    page.on('request', async (request) => {
      const { pathname } = new URL(request.url());
      if (!/^\/console(\/[^/]*)?$/.test(pathname)) return request.continue();
      const name = pathname.replace(/^\/console\/?/, '') || 'index.html';
      const body = await readFile(path.join(dir, name)).catch(() => null);
      if (!body) return request.respond({ status: 404, body: 'not found' });
      return request.respond({ status: 200, body, contentType: types[name.split('.').pop()] });
    });
  }

  try {
    await page.goto(`${BASE}/console`);
    assert.equal(await page.title(), 'Palaver console');
    const browserVersion = await browser.version();
    console.log(`# ${browserVersion}`);
    assert.match(browserVersion, /firefox/i);

    await page.locator('#api-key').fill(KEY);
    await page.locator('#key-form button[type=submit]').click();
    await until(page, () => !document.getElementById('app').hidden);

    // Create an assistant through the form.
    await page.locator('#f-name').fill('Firefox desk');
    await page.select('[data-field="llm.provider"]', 'openai');
    await page.select('[data-field="stt.provider"]', 'openai');
    await page.select('[data-field="tts.provider"]', 'openai');
    await page.locator('[data-field="llm.model"]').fill('fake-1');
    await page.locator('#assistant-save').click();
    await until(page, () => /Created assistant #\d+/.test(document.getElementById('assistant-form-status').textContent));

    // Talk: the fake microphone, then a typed turn.
    await page.locator('#assistant-talk').click();
    await page.locator('#call-start').click();
    await until(page, () => window.palaverConsole.state === 'listening');
    assert.ok(await page.evaluate(() => Boolean(window.palaverConsole.pc.getSenders()[0].track)),
      'the fake microphone is sending');
    await page.locator('#say-text').fill('Do you have a room for tonight?');
    await page.keyboard.press('Enter');
    await until(page, () => document.querySelector('#transcript .msg.user')?.textContent.includes('a room for tonight'));
    await until(page, (part) => document.querySelector('#transcript .msg.assistant')?.textContent.includes(part),
      [REPLY_PART], 30_000);

    // The assistant's voice arrives as RTP audio.
    const packets = await page.waitForFunction(async () => {
      const pc = window.palaverConsole.pc;
      if (!pc) return 0;
      let received = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') received += s.packetsReceived || 0;
      });
      return received > 10 ? received : 0;
    }, { timeout: TIMEOUT, polling: 250 });
    console.log(`# inbound audio packets: ${await packets.jsonValue()}`);
    await until(page, () => document.querySelector(
      '#waterfall .turn[data-turn="1"] .bar[data-stage="first_audio_ms"] .val[data-ms]'), [], 30_000);
    await shot(page, 'firefox-01-typed-turn');

    await page.locator('#call-hangup').click();
    await until(page, () => window.palaverConsole.state === 'ended');
    assert.deepEqual(problems, [], 'no errors in the page');
  } catch (err) {
    await shot(page, 'firefox-failure').catch(() => {});
    console.log(`# page events: ${JSON.stringify(await page.evaluate(() => window.palaverConsole && window.palaverConsole.events).catch(() => null))}`);
    throw err;
  }
});
