// The console in a real browser: Debian's Chromium (headless, driven by
// playwright-core) with a WAV of real speech as its microphone, against a
// Palaver server whose providers are palaver-loadtest's fakes. Started by
// scripts/test-console.sh, which passes PALAVER_URL, PALAVER_KEY,
// SPEECH_WAV, CHROMIUM and CONSOLE_ARTIFACTS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/test-console.sh`);
  return value;
};
const BASE = env('PALAVER_URL');
const KEY = env('PALAVER_KEY');
const WAV = env('SPEECH_WAV');
const USER_EMAIL = env('PALAVER_USER_EMAIL');
const USER_PASSWORD = env('PALAVER_USER_PASSWORD');
const ARTIFACTS = env('CONSOLE_ARTIFACTS');
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
/// What the fake recognizer hears, whatever it is sent.
const HEARD = 'Do you have a room tonight?';

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

test('the console serves its files with their content types', async () => {
  for (const [file, type] of [['', 'text/html'], ['/', 'text/html'], ['/console.js', 'text/javascript'],
    ['/console.css', 'text/css'], ['/favicon.svg', 'image/svg+xml']]) {
    const res = await fetch(`${BASE}/console${file}`);
    assert.equal(res.status, 200, `/console${file}`);
    assert.ok(res.headers.get('content-type').startsWith(type), `/console${file}: ${res.headers.get('content-type')}`);
  }
  assert.equal((await fetch(`${BASE}/console/nope.js`)).status, 404);
});

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

/// Debian's Chromium; `microphone` false: the fake device is there but every
/// permission prompt is denied, as when a user blocks the microphone.
const launchChromium = (microphone) => chromium.launch({
  executablePath: EXECUTABLE,
  headless: true,
  args: [...CHROMIUM_ARGS, ...(microphone
    ? ['--use-fake-ui-for-media-stream', `--use-file-for-fake-audio-capture=${WAV}`]
    : ['--deny-permission-prompts'])],
});

/// A page of `browser` that collects page errors in `problems`, serving
/// console/ from disk when CONSOLE_FROM_DISK=1.
async function openPage(browser, problems) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Refused and aborted requests are logged by Chromium itself; anything
  // else is ours.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(20_000);
  if (process.env.CONSOLE_FROM_DISK === '1') {
    // While editing the console: serve console/ from disk instead of the
    // copy embedded in the binary, without rebuilding it.
    const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
    const types = { html: 'text/html', js: 'text/javascript', css: 'text/css', svg: 'image/svg+xml' };
    await page.route(/\/console(\/[^/]*)?$/, async (route) => {
      const name = new URL(route.request().url()).pathname.replace(/^\/console\/?/, '') || 'index.html';
      const body = await readFile(path.join(dir, name)).catch(() => null);
      if (!body) return route.fulfill({ status: 404, body: 'not found' });
      return route.fulfill({ status: 200, body, contentType: types[name.split('.').pop()] });
    });
  }
  return page;
}

/// The REST API with the test's key, for setting up and checking behind the
/// console's back.
async function rest(method, route, body) {
  const res = await fetch(`${BASE}${route}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}

const latestSessionId = async () => (await rest('GET', '/v1/sessions?limit=1')).data[0]?.id ?? 0;

/// Waits until `check` returns something truthy (polling the server).
async function eventually(what, check, timeoutMs = 10_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function signInWithKey(page) {
  await page.goto(`${BASE}/console`);
  await page.getByLabel('API key').fill(KEY);
  await page.getByRole('button', { name: 'Sign in with key' }).click();
  await page.locator('#app').waitFor();
}

test('sign in, edit an assistant, talk to it over WebRTC, cut it off, read the transcript', { timeout: 180_000 }, async (t) => {
  const browser = await launchChromium(true);
  t.after(() => browser.close());
  const problems = [];
  const page = await openPage(browser, problems);

  // The first assistant list is held back until the form has been used, so
  // the list arriving late must not wipe what was typed (it once did, and
  // only a slow machine showed it).
  let releaseList;
  const listHeld = new Promise((resolve) => { releaseList = resolve; });
  let held = false;
  await page.route(/\/v1\/assistants\?limit=100$/, async (route) => {
    if (!held) {
      held = true;
      await listHeld;
    }
    await route.continue();
  });

  try {
    await page.goto(`${BASE}/console`);
    assert.equal(await page.title(), 'Palaver console');

    // A wrong key is refused next to the field; the right one signs in.
    await page.getByLabel('API key').fill('pk_not_a_key');
    await page.getByRole('button', { name: 'Sign in with key' }).click();
    await page.locator('#api-key-error').filter({ hasText: /refused/ }).waitFor();
    await shot(page, '01-sign-in-refused');
    await page.getByLabel('API key').fill(KEY);
    await page.getByRole('button', { name: 'Sign in with key' }).click();
    await page.locator('#app').waitFor();

    // A new assistant's providers start at the API's default, the embedded
    // engines.
    for (const port of ['llm', 'stt', 'tts']) {
      assert.equal(await page.locator(`[data-field="${port}.provider"]`).inputValue(), 'local', port);
    }

    // The server's validation message lands next to the field it names.
    await page.getByLabel('Name', { exact: true }).fill('Front desk');
    await page.locator('[data-field="llm.provider"]').selectOption('openai');
    await page.locator('[data-field="llm.model"]').fill('fake-1');
    await page.locator('[data-field="stt.provider"]').selectOption('openai');
    await page.locator('[data-field="tts.provider"]').selectOption('openai');
    await page.locator('[data-field="end_of_turn_ms"]').fill('99999');
    await page.locator('[data-field="idle_timeout_s"]').fill('120');
    await page.getByRole('button', { name: 'Create assistant' }).click();
    const fieldError = page.locator('#err-f-end_of_turn_ms');
    await fieldError.filter({ hasText: 'end_of_turn_ms must be between 100 and 5000' }).waitFor();
    assert.equal(await page.locator('[data-field="end_of_turn_ms"]').getAttribute('aria-invalid'), 'true');
    releaseList();
    await page.locator('#assistant-list:not([aria-busy])').waitFor({ state: 'attached' });
    assert.equal(await fieldError.textContent(), 'end_of_turn_ms must be between 100 and 5000');
    assert.equal(await page.getByLabel('Name', { exact: true }).inputValue(), 'Front desk');
    await shot(page, '02-validation');
    await page.locator('[data-field="end_of_turn_ms"]').fill('500');
    await page.getByRole('button', { name: 'Create assistant' }).click();
    await page.locator('#assistant-form-status').filter({ hasText: /Created assistant #\d+/ }).waitFor();
    assert.equal(await fieldError.textContent(), '');

    // Edit it (PATCH) and see the list follow.
    await page.getByLabel('Name', { exact: true }).fill('Front desk (console)');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#assistant-form-status').filter({ hasText: 'Saved.' }).waitFor();
    await page.locator('#assistant-list').getByText('Front desk (console)').waitFor();

    // Talk: the fake microphone says a phrase 3 s after the call opens.
    await page.getByRole('button', { name: 'Talk to it' }).click();
    const started = Date.now();
    await page.getByRole('button', { name: 'Start voice session' }).click();
    await page.locator('#call-state[data-state="listening"], #call-state[data-state="user-speaking"]').waitFor();
    console.log(`# connected in ${Date.now() - started} ms`);
    const userTurn = page.locator('#transcript .msg.user').first();
    await userTurn.filter({ hasText: HEARD }).waitFor({ timeout: 45_000 });
    console.log(`# transcript after ${Date.now() - started} ms`);
    await page.locator('#transcript .msg.assistant').first().waitFor();
    await page.locator('#call-state[data-state="speaking"]').waitFor();
    await shot(page, '03-speaking');
    // The indicator went through the turn; the meter moved while the mic spoke.
    const { states, maxLevel } = await page.evaluate(
      () => ({ states: window.palaverConsole.states, maxLevel: window.palaverConsole.maxLevel }));
    console.log(`# states: ${states.join(' > ')}; loudest mic level ${maxLevel.toFixed(2)}`);
    for (const state of ['connecting', 'listening', 'user-speaking', 'thinking', 'speaking']) {
      assert.ok(states.includes(state), `the state indicator showed ${state}`);
    }
    assert.ok(maxLevel > 0.08, 'the mic level meter moved');

    // The assistant's voice arrives as RTP audio.
    const inbound = await page.waitForFunction(async () => {
      const pc = window.palaverConsole.pc;
      if (!pc) return 0;
      const stats = await pc.getStats();
      let packets = 0;
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived || 0;
      });
      return packets > 10 ? packets : 0;
    }, undefined, { polling: 250 });
    console.log(`# inbound audio packets: ${await inbound.jsonValue()}`);

    // The whole reply plays, then its latency shows in the waterfall.
    const v2v = page.locator('#waterfall .turn[data-turn="1"] .bar[data-stage="voice_to_voice_ms"] .val[data-ms]');
    await v2v.waitFor({ timeout: 30_000 });
    for (const stage of ['transcript_ms', 'first_token_ms', 'first_audio_ms', 'voice_to_voice_ms']) {
      const ms = await page.locator(`#waterfall .turn[data-turn="1"] .bar[data-stage="${stage}"] .val`).getAttribute('data-ms');
      assert.match(ms ?? '', /^\d+$/, `turn 1 ${stage} is a number`);
    }
    assert.match(await page.locator('#summary tr[data-stage="voice_to_voice_ms"] td').first().textContent(), /^\d+$/);
    await shot(page, '04-waterfall');

    // Barge-in: a typed turn starts a reply; a second one while it speaks
    // cuts it off, and the mark says what the caller heard.
    const speakingEvents = async () => (await page.evaluate(() => window.palaverConsole.events))
      .filter((e) => e.type === 'assistant.speaking').length;
    const before = await speakingEvents();
    await page.getByLabel('Type a message').fill('Tell me about breakfast.');
    await page.getByLabel('Type a message').press('Enter');
    await page.waitForFunction((n) => window.palaverConsole.events
      .filter((e) => e.type === 'assistant.speaking').length > n, before);
    await page.waitForTimeout(1000);
    await page.getByLabel('Type a message').fill('Stop, thank you.');
    await page.getByRole('button', { name: 'Send' }).click();
    const cut = page.locator('#transcript .msg.assistant.interrupted .cut');
    await cut.filter({ hasText: 'Interrupted — the caller heard' }).waitFor();
    const heard = await page.evaluate(() => window.palaverConsole.events
      .find((e) => e.type === 'assistant.interrupted').heard_text);
    assert.ok(heard.length > 0, 'about a second of the reply was heard');
    assert.ok((await cut.textContent()).includes(heard), 'the mark quotes what was heard');
    assert.equal(await page.locator('#summary-extra').getAttribute('data-interruptions'), '1');
    // The cut reply still gets its waterfall row, marked, with the stages it
    // reached (it had spoken for a second: all of them).
    const cutRow = page.locator('#waterfall .turn[data-interrupted="true"]');
    await cutRow.waitFor();
    assert.equal(await cutRow.count(), 1);
    assert.equal(await cutRow.getAttribute('data-turn'), '2');
    assert.match(await cutRow.locator('.label').textContent(), /cut off/);
    for (const stage of ['first_token_ms', 'first_audio_ms', 'voice_to_voice_ms']) {
      assert.match(await cutRow.locator(`.bar[data-stage="${stage}"] .val`).getAttribute('data-ms') ?? '', /^\d+$/,
        `the cut turn's ${stage} is a number`);
    }
    const cutMetrics = (await page.evaluate(() => window.palaverConsole.metrics)).filter((m) => m.interrupted);
    assert.equal(cutMetrics.length, 1, 'one turn.metrics marked interrupted');
    await shot(page, '05-barge-in');

    // Mute flips, hang-up ends the call.
    await page.getByRole('button', { name: 'Mute' }).click();
    assert.equal(await page.locator('#call-mute').getAttribute('aria-pressed'), 'true');
    await page.getByRole('button', { name: 'Hang up' }).click();
    await page.locator('#call-state[data-state="ended"]').waitFor();
    const session = await page.evaluate(() => window.palaverConsole.sessionId);

    // The stored transcript marks the interrupted turn.
    await page.getByRole('tab', { name: 'Past sessions' }).click();
    await page.locator('#session-list button', { hasText: `#${session} ` }).click();
    await page.locator('#past-transcript .msg.user').filter({ hasText: HEARD }).waitFor();
    await page.locator('#past-transcript .msg.assistant.interrupted .cut').filter({ hasText: heard }).first().waitFor();
    await page.locator('#past-transcript .msg.assistant .lat').first().waitFor();
    await shot(page, '06-past-session');

    // Sign out, then in again as a user of the same organization.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Email').fill(USER_EMAIL);
    await page.getByLabel('Password').fill('wrong password');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.locator('#login-error').filter({ hasText: /./ }).waitFor();
    await page.getByLabel('Password').fill(USER_PASSWORD);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.locator('#who').filter({ hasText: `${USER_EMAIL} (manager)` }).waitFor();
    await page.locator('#assistant-list').getByText('Front desk (console)').waitFor();
    assert.deepEqual(problems, [], 'no errors in the page');
  } catch (err) {
    await shot(page, 'failure').catch(() => {});
    console.log(`# page events: ${JSON.stringify(await page.evaluate(() => window.palaverConsole && window.palaverConsole.events).catch(() => null))}`);
    throw err;
  }
});

test('clear messages: microphone blocked, server unreachable, a provider failing', { timeout: 120_000 }, async (t) => {
  // A model nobody answers on: a loopback port that was free a moment ago.
  const deadPort = await new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  const failing = await rest('POST', '/v1/assistants', {
    name: 'Failing model',
    llm: { provider: 'openai', model: 'fake-1', base_url: `http://127.0.0.1:${deadPort}/v1` },
    stt: { provider: 'openai' },
    tts: { provider: 'openai' },
  });
  const browser = await launchChromium(false);
  t.after(() => browser.close());
  const problems = [];
  const page = await openPage(browser, problems);
  try {
    await signInWithKey(page);
    await page.getByRole('tab', { name: 'Talk' }).click();
    await page.getByLabel('Assistant', { exact: true }).selectOption(String(failing.id));
    const banner = page.getByRole('alert');

    // Microphone blocked: say so and how to allow it; nothing starts, so no
    // session is left half open.
    const before = await latestSessionId();
    await page.getByRole('button', { name: 'Start voice session' }).click();
    await banner.filter({ hasText: /Microphone blocked/ }).waitFor();
    assert.match(await banner.textContent(), /To allow it, click the microphone \(or lock\) icon in the address bar/);
    await page.locator('#call-state[data-state="idle"]').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Start voice session' }).isEnabled(), true);
    assert.equal(await latestSessionId(), before, 'no session was created');
    await shot(page, '07-mic-blocked');

    // The server unreachable while joining: the banner says so, and the
    // session the console had created is ended rather than left waiting.
    await page.route(/\/v1\/sessions\/\d+\/webrtc$/, (route) => route.abort('connectionrefused'));
    await page.getByRole('button', { name: 'Start without microphone' }).click();
    await banner.filter({ hasText: 'Could not start the session: The Palaver server cannot be reached' }).waitFor();
    await page.locator('#call-state[data-state="error"]').waitFor();
    const orphan = await latestSessionId();
    assert.ok(orphan > before, 'the console created a session');
    await eventually(`session #${orphan} to end`,
      async () => (await rest('GET', `/v1/sessions/${orphan}`)).status === 'ended');
    await page.unroute(/\/v1\/sessions\/\d+\/webrtc$/);
    // …and while browsing: any API call that cannot reach the server.
    await page.route(/\/v1\//, (route) => route.abort('connectionrefused'));
    await page.getByRole('tab', { name: 'Past sessions' }).click();
    await banner.filter({ hasText: 'Could not list sessions: The Palaver server cannot be reached' }).waitFor();
    await shot(page, '08-unreachable');
    await page.unroute(/\/v1\//);

    // A provider failing: the server's error event is shown for what it is,
    // and the session goes on (the assistant apologises out loud).
    await page.getByRole('tab', { name: 'Talk' }).click();
    await page.getByRole('button', { name: 'Start without microphone' }).click();
    await page.locator('#call-state[data-state="listening"]').waitFor();
    await page.getByLabel('Type a message').fill('Is breakfast included?');
    await page.getByLabel('Type a message').press('Enter');
    const shown = page.locator('#transcript .msg.error');
    await shown.filter({ hasText: 'The language model provider failed' }).waitFor();
    const serverEvent = await page.evaluate(() => window.palaverConsole.events.find((e) => e.type === 'error'));
    assert.equal(serverEvent.code, 'llm_failed');
    assert.ok((await shown.textContent()).includes(serverEvent.message), 'the server\'s message is shown');
    assert.match(await banner.textContent(), /The language model provider failed: .*The session goes on/);
    await page.locator('#transcript .msg.assistant').filter({ hasText: 'Sorry, I\'m having trouble answering' }).waitFor();
    await page.waitForFunction(async () => {
      const pc = window.palaverConsole.pc;
      let packets = 0;
      if (pc) (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp') packets += s.packetsReceived || 0; });
      return packets > 10;
    }, undefined, { polling: 250 });
    await page.locator('#call-state[data-state="listening"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate(() => window.palaverConsole.state), 'listening', 'the session goes on');
    await shot(page, '09-provider-failed');
    await page.getByRole('button', { name: 'Hang up' }).click();
    await page.locator('#call-state[data-state="ended"]').waitFor();
    assert.deepEqual(problems, [], 'no errors in the page');
  } catch (err) {
    await shot(page, 'failure-messages').catch(() => {});
    console.log(`# page events: ${JSON.stringify(await page.evaluate(() => window.palaverConsole && window.palaverConsole.events).catch(() => null))}`);
    throw err;
  }
});

test('reconnects: a new call after hanging up, after the server ends one, after the connection drops', { timeout: 120_000 }, async (t) => {
  const working = await rest('POST', '/v1/assistants', {
    name: 'Reconnect desk',
    llm: { provider: 'openai', model: 'fake-1' },
    stt: { provider: 'openai' },
    tts: { provider: 'openai' },
  });
  const browser = await launchChromium(false);
  t.after(() => browser.close());
  const problems = [];
  const page = await openPage(browser, problems);
  const state = (s) => page.locator(`#call-state[data-state="${s}"]`);
  const transcript = page.locator('#transcript');
  /// Starts a typed-turns call and waits until it listens; its session id.
  const startCall = async () => {
    await page.getByRole('button', { name: 'Start without microphone' }).click();
    await state('listening').waitFor();
    return page.evaluate(() => window.palaverConsole.sessionId);
  };
  /// A typed turn answered in full, back to listening.
  const typedTurn = async (text) => {
    const replies = await transcript.locator('.msg.assistant').count();
    const doneBefore = await page.evaluate(
      () => window.palaverConsole.events.filter((e) => e.type === 'assistant.done').length);
    await page.getByLabel('Type a message').fill(text);
    await page.getByLabel('Type a message').press('Enter');
    await transcript.locator('.msg.user').filter({ hasText: text }).waitFor();
    await transcript.locator('.msg.assistant').nth(replies).filter({ hasText: 'ninety euros' }).waitFor();
    await page.waitForFunction(
      (n) => window.palaverConsole.events.filter((e) => e.type === 'assistant.done').length > n, doneBefore);
    await state('listening').waitFor({ timeout: 30_000 });
  };
  try {
    await signInWithKey(page);
    await page.getByRole('tab', { name: 'Talk' }).click();
    await page.getByLabel('Assistant', { exact: true }).selectOption(String(working.id));

    const first = await startCall();
    await typedTurn('Do you have a room?');
    await page.getByRole('button', { name: 'Hang up' }).click();
    await state('ended').waitFor();
    await transcript.locator('.msg.system').filter({ hasText: /^Call ended: (you hung up|hung up)/ }).waitFor();
    assert.equal((await rest('GET', `/v1/sessions/${first}`)).status, 'ended');

    // Again: a new session, a fresh transcript, the state machine listening
    // and answering.
    const second = await startCall();
    assert.notEqual(second, first, 'a new session');
    assert.equal(await transcript.locator('.msg.user, .msg.assistant').count(), 0, 'a fresh transcript');
    assert.match(await transcript.locator('.msg').first().textContent(), new RegExp(`Connected to session #${second}\\.`));
    await typedTurn('And breakfast?');

    // The server ends the call (a real server-side cause): the console says
    // why, and a new call starts.
    await rest('POST', `/v1/sessions/${second}/end`);
    await transcript.locator('.msg.system').filter({ hasText: 'Call ended: ended through the API (ended-by-api).' }).waitFor();
    await state('ended').waitFor();
    assert.match(await page.locator('#call-session').textContent(), /call ended: ended through the API/);
    assert.equal(await page.getByRole('button', { name: 'Hang up' }).isDisabled(), true);
    await shot(page, '10-ended-by-server');
    const third = await startCall();
    assert.ok(third !== second && third !== first, 'another new session');
    await typedTurn('Thanks, see you.');

    // The events channel dropping without the server's goodbye (the page
    // closes it here; a network failure looks the same to the console):
    // the call ends with that reason, and the server ends the session too.
    await page.evaluate(() => window.palaverConsole.dc.close());
    await transcript.locator('.msg.system')
      .filter({ hasText: 'Call ended: the connection to the server was lost' }).waitFor();
    await state('error').waitFor();
    await eventually(`session #${third} to end`,
      async () => (await rest('GET', `/v1/sessions/${third}`)).status === 'ended', 15_000);
    const fourth = await startCall();
    assert.ok(fourth > third, 'a new call after the drop');
    await page.getByRole('button', { name: 'Hang up' }).click();
    await state('ended').waitFor();
    assert.deepEqual(problems, [], 'no errors in the page');
  } catch (err) {
    await shot(page, 'failure-reconnect').catch(() => {});
    console.log(`# page events: ${JSON.stringify(await page.evaluate(() => window.palaverConsole && window.palaverConsole.events).catch(() => null))}`);
    throw err;
  }
});

test('says which embedded engine is missing, and nothing when they are ready', { timeout: 60_000 }, async (t) => {
  const browser = await launchChromium(true);
  t.after(() => browser.close());
  const problems = [];
  const page = await openPage(browser, problems);
  // The server's own /readyz first: every engine is ready (make test
  // fetches the models), so there is nothing to say.
  const ready = await (await fetch(`${BASE}/readyz`)).json();
  await eventually('the local engines loaded', async () => {
    const local = (await (await fetch(`${BASE}/readyz`)).json()).local || {};
    return Object.values(local).every((s) => s.startsWith('ready'));
  }, 30_000);
  assert.ok(ready.local, JSON.stringify(ready));
  await signInWithKey(page);
  await page.locator('#assistant-list:not([aria-busy])').waitFor({ state: 'attached' });
  assert.equal(await page.locator('#local-engines').isHidden(), true);

  // A node without the speech recognition model: /readyz says so (as the
  // server does when models/ lacks it) and the console repeats it.
  const page2 = await openPage(browser, problems);
  await page2.route(/\/readyz$/, (route) => route.fulfill({
    status: 200,
    contentType: 'application/json',
    body: JSON.stringify({
      status: 'ready', database: 'ok', redis: 'not_configured',
      local: {
        tts: 'ready: piper en_US-joe-medium',
        llm: 'ready: smollm2-135m-instruct',
        stt: 'missing: speech recognition: models/whisper-tiny-en/model.bin is missing; run scripts/fetch-models.sh',
      },
    }),
  }));
  await signInWithKey(page2);
  const note = page2.locator('#local-engines');
  await note.filter({ hasText: 'speech recognition: missing' }).waitFor();
  assert.match(await note.textContent(), /run scripts\/fetch-models\.sh/);
  assert.doesNotMatch(await note.textContent(), /voice|language model/);
  await shot(page2, '40-engine-missing');
  assert.deepEqual(problems, []);
});
