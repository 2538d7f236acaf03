// Palaver console: sign in, manage assistants, talk to one over WebRTC, and
// read past sessions. Plain browser JavaScript, no build step; served by the
// server itself from files embedded in the binary.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const STAGES = [
    ['transcript_ms', 'transcript'],
    ['first_token_ms', 'first token'],
    ['first_audio_ms', 'first audio'],
    ['voice_to_voice_ms', 'voice to voice'],
  ];
  const STATE_LABELS = {
    idle: 'not connected',
    connecting: 'connecting…',
    listening: 'listening',
    'user-speaking': 'you are speaking',
    thinking: 'thinking',
    speaking: 'assistant speaking',
    ended: 'call ended',
    error: 'failed',
  };
  /// Why a session ended (`session.ended`'s reason), in words.
  const END_REASONS = {
    'hang-up': 'hung up (or its connection closed)',
    'end-session': 'the page ended it',
    'ended-by-api': 'ended through the API',
    'idle-timeout': 'nobody spoke for the assistant\'s idle timeout',
    'max-duration': 'it reached the assistant\'s maximum duration',
  };
  /// What failed, by the server's `error` event code.
  const ERROR_SOURCES = {
    llm_failed: 'The language model provider failed',
    stt_failed: 'Speech recognition (speech to text) failed',
    tts_failed: 'The voice provider (text to speech) failed',
  };
  const AUTH_KEY = 'palaver.console.auth';
  /// Mic level (0..1, scaled RMS) above which the caller counts as speaking.
  const SPEAKING_LEVEL = 0.08;

  // ---------------------------------------------------------------- API ---

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field || null;
    }
  }

  const auth = { kind: null, token: null, refresh: null, label: '' };

  function saveAuth() {
    sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
  }

  function unreachable() {
    return new ApiError(0, 'unreachable',
      'The Palaver server cannot be reached. Is it running, and is this page served by it?');
  }

  async function api(method, path, body, opts = {}) {
    const headers = { Accept: 'application/json' };
    const token = opts.token === undefined ? auth.token : opts.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    let payload;
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload });
    } catch (_) {
      throw unreachable();
    }
    if (res.status === 401 && !opts.retried && opts.token === undefined
        && auth.kind === 'user' && auth.refresh && await refreshTokens()) {
      return api(method, path, body, { ...opts, retried: true });
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!res.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(res.status, e.code || `http_${res.status}`,
        e.message || text || res.statusText, e.field);
    }
    return data;
  }

  async function refreshTokens() {
    try {
      const pair = await api('POST', '/v1/auth/refresh', { refresh_token: auth.refresh },
        { token: null, retried: true });
      auth.token = pair.access_token;
      auth.refresh = pair.refresh_token;
      saveAuth();
      return true;
    } catch (_) {
      return false;
    }
  }

  /// Shows an error from a background action: unreachable server or an
  /// expired credential in the banner (the latter signs out).
  function report(err, what) {
    if (err instanceof ApiError && err.status === 401 && auth.token) {
      signOut(`Signed out: ${err.message}`);
      return;
    }
    const message = err instanceof ApiError ? err.message : String(err && err.message || err);
    showBanner(what ? `${what}: ${message}` : message);
  }

  // ------------------------------------------------------------- banner ---

  function showBanner(text, kind = 'error') {
    $('banner-text').textContent = text;
    $('banner').className = kind === 'info' ? 'banner info' : 'banner';
    $('banner').hidden = false;
  }

  function hideBanner() {
    $('banner').hidden = true;
  }

  // ------------------------------------------------------------ sign in ---

  async function signInWithKey(event) {
    event.preventDefault();
    const key = $('api-key').value.trim();
    const error = $('api-key-error');
    error.textContent = '';
    $('api-key').removeAttribute('aria-invalid');
    if (!key) {
      error.textContent = 'Enter an API key.';
      $('api-key').setAttribute('aria-invalid', 'true');
      $('api-key').focus();
      return;
    }
    try {
      await api('GET', '/v1/assistants?limit=1', undefined, { token: key });
    } catch (err) {
      error.textContent = err.status === 401 ? `The server refused this key: ${err.message}` : err.message;
      $('api-key').setAttribute('aria-invalid', 'true');
      $('api-key').focus();
      return;
    }
    Object.assign(auth, { kind: 'key', token: key, refresh: null, label: `API key ${key.slice(0, 10)}…` });
    saveAuth();
    $('api-key').value = '';
    enterApp();
  }

  async function signInWithPassword(event) {
    event.preventDefault();
    const error = $('login-error');
    error.textContent = '';
    const body = { email: $('login-email').value.trim(), password: $('login-password').value };
    const org = $('login-org').value.trim();
    if (org) body.organization_id = Number(org);
    try {
      const pair = await api('POST', '/v1/auth/login', body, { token: null });
      Object.assign(auth, {
        kind: 'user', token: pair.access_token, refresh: pair.refresh_token,
        label: `${pair.user.email} (${pair.user.role})`,
      });
      saveAuth();
      $('login-password').value = '';
      enterApp();
    } catch (err) {
      error.textContent = err.message;
      $('login-password').focus();
    }
  }

  function signOut(message) {
    if (call.pc) hangUp();
    Object.assign(auth, { kind: null, token: null, refresh: null, label: '' });
    sessionStorage.removeItem(AUTH_KEY);
    // Nothing of the previous credential's organization stays on screen.
    assistants.list = [];
    assistants.editing = null;
    past.list = [];
    past.current = null;
    $('session-list').replaceChildren();
    $('past-transcript').replaceChildren();
    $('past-title').textContent = 'Pick a session';
    $('past-meta').textContent = '';
    resetConversation();
    setState('idle');
    $('app').hidden = true;
    $('signin').hidden = false;
    $('who').hidden = true;
    $('sign-out').hidden = true;
    if (message) showBanner(message, 'info');
    $('api-key').focus();
  }

  function enterApp() {
    hideBanner();
    $('signin').hidden = true;
    $('app').hidden = false;
    $('who').textContent = `Signed in: ${auth.label}`;
    $('who').hidden = false;
    $('sign-out').hidden = false;
    selectTab('assistants');
    // The blank form is ready before the list arrives, so the list never
    // wipes what someone has started typing.
    if (!assistants.editing) newAssistant();
    loadAssistants();
    loadSessions(false);
    listDevices();
    checkLocalEngines();
  }

  // The embedded engines serve assistants on `local` (the default of a new
  // one): say which of them is not ready and why (the server's own words,
  // e.g. "missing: … run scripts/fetch-models.sh").
  async function checkLocalEngines() {
    const note = $('local-engines');
    const names = { stt: 'speech recognition', llm: 'language model', tts: 'voice' };
    try {
      const res = await fetch('/readyz');
      const local = (await res.json()).local || {};
      const notReady = Object.entries(local)
        .filter(([, state]) => typeof state === 'string' && !state.startsWith('ready'))
        .map(([port, state]) => `${names[port] || port}: ${state}`);
      note.textContent = notReady.length
        ? `Embedded engines (assistants on "local") not ready: ${notReady.join('; ')}`
        : '';
      note.hidden = notReady.length === 0;
    } catch (_) {
      note.hidden = true;
    }
  }

  // --------------------------------------------------------------- tabs ---

  const TABS = ['assistants', 'call', 'sessions'];

  function selectTab(name, focus = false) {
    for (const t of TABS) {
      const tab = $(`tab-${t}`);
      const on = t === name;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      $(`panel-${t}`).hidden = !on;
      if (on && focus) tab.focus();
    }
    if (name === 'sessions') loadSessions(false);
  }

  function tabKeys(event) {
    const at = TABS.findIndex((t) => $(`tab-${t}`) === event.target);
    if (at < 0) return;
    let next = null;
    if (event.key === 'ArrowRight') next = (at + 1) % TABS.length;
    if (event.key === 'ArrowLeft') next = (at + TABS.length - 1) % TABS.length;
    if (event.key === 'Home') next = 0;
    if (event.key === 'End') next = TABS.length - 1;
    if (next === null) return;
    event.preventDefault();
    selectTab(TABS[next], true);
  }

  // --------------------------------------------------------- assistants ---

  const assistants = { list: [], editing: null };
  const form = () => $('assistant-form');
  const fields = () => Array.from(form().querySelectorAll('[data-field]'));
  const NULLABLE = new Set(['first_message', 'llm.base_url']);
  /// Blank on create: let the server pick its default.
  const DEFAULT_WHEN_BLANK = new Set(['llm.model', 'stt.model', 'tts.voice_id', 'stt.language',
    'system_prompt', 'llm.base_url', 'first_message']);

  function fieldValue(obj, path) {
    return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  function setPath(obj, path, value) {
    const parts = path.split('.');
    let o = obj;
    for (const p of parts.slice(0, -1)) o = o[p] || (o[p] = {});
    o[parts[parts.length - 1]] = value;
  }

  function errorElement(el) {
    return $(`err-${el.id}`);
  }

  function prepareForm() {
    for (const el of fields()) {
      const p = document.createElement('p');
      p.id = `err-${el.id}`;
      p.className = 'field-error';
      p.setAttribute('aria-live', 'polite');
      el.closest('.field').appendChild(p);
      el.setAttribute('aria-describedby', p.id);
    }
    // A new provider's default model/voice applies unless one is typed.
    for (const [provider, dependent] of [['llm.provider', 'llm.model'], ['stt.provider', 'stt.model'],
      ['tts.provider', 'tts.voice_id']]) {
      form().querySelector(`[data-field="${provider}"]`).addEventListener('change', () => {
        const el = form().querySelector(`[data-field="${dependent}"]`);
        el.value = '';
        el.placeholder = "the provider's default";
      });
    }
  }

  function clearFieldErrors() {
    for (const el of fields()) {
      el.removeAttribute('aria-invalid');
      errorElement(el).textContent = '';
    }
    $('assistant-form-status').textContent = '';
    $('assistant-form-status').className = 'status-line';
  }

  /// Puts a message next to the field the server named (`llm.model`, …);
  /// returns whether such a field exists.
  function showFieldError(field, message) {
    let el = null;
    for (let f = field; f && !el; f = f.includes('.') ? f.slice(0, f.lastIndexOf('.')) : null) {
      el = form().querySelector(`[data-field="${CSS.escape(f)}"]`);
    }
    if (!el) return false;
    el.setAttribute('aria-invalid', 'true');
    errorElement(el).textContent = message;
    return el;
  }

  function formStatus(text, ok) {
    const s = $('assistant-form-status');
    s.textContent = text;
    s.className = `status-line ${ok ? 'ok' : 'bad'}`;
  }

  function fillForm(a) {
    for (const el of fields()) {
      const v = a ? fieldValue(a, el.dataset.field) : undefined;
      if (el.type === 'checkbox') {
        el.checked = v === undefined ? el.defaultChecked : Boolean(v);
      } else if (el.hasAttribute('data-json')) {
        el.value = v === undefined ? '{}' : JSON.stringify(v, null, 0);
      } else if (el.tagName === 'SELECT') {
        // A new assistant starts where the API's would: the first option,
        // `local` (the embedded engines, no key needed).
        el.value = v === undefined ? el.options[0].value : String(v);
      } else {
        el.value = v === undefined || v === null ? '' : String(v);
        if (el.dataset.field.endsWith('model') || el.dataset.field === 'tts.voice_id') {
          el.placeholder = a ? '' : "the provider's default";
        }
      }
    }
  }

  function newAssistant() {
    assistants.editing = null;
    clearFieldErrors();
    fillForm(null);
    $('assistant-form-title').textContent = 'New assistant';
    $('assistant-save').textContent = 'Create assistant';
    $('assistant-talk').hidden = true;
    renderAssistantList();
  }

  function editAssistant(a) {
    assistants.editing = a;
    clearFieldErrors();
    fillForm(a);
    $('assistant-form-title').textContent = `Edit: ${a.name} (#${a.id})`;
    $('assistant-save').textContent = 'Save changes';
    $('assistant-talk').hidden = false;
    renderAssistantList();
  }

  /// The request body from the form; `errors` gets client-side problems.
  function collect(creating, errors) {
    const body = {};
    for (const el of fields()) {
      const f = el.dataset.field;
      let v;
      if (el.type === 'checkbox') {
        v = el.checked;
      } else if (el.hasAttribute('data-json')) {
        try {
          v = JSON.parse(el.value.trim() || '{}');
        } catch (e) {
          errors.push([f, `${f} must be valid JSON (${e.message})`]);
          continue;
        }
      } else if (el.type === 'number') {
        if (el.value.trim() === '') continue;
        v = Number(el.value);
        if (!Number.isFinite(v)) {
          errors.push([f, `${f} must be a number`]);
          continue;
        }
      } else {
        v = el.value;
        if (v.trim() === '') {
          if (creating && DEFAULT_WHEN_BLANK.has(f)) continue;
          if (!creating && NULLABLE.has(f)) v = null;
          else if (!creating && f !== 'name' && f !== 'system_prompt') continue;
        }
      }
      setPath(body, f, v);
    }
    return body;
  }

  async function saveAssistant(event) {
    event.preventDefault();
    clearFieldErrors();
    const creating = !assistants.editing;
    const errors = [];
    const body = collect(creating, errors);
    if (errors.length) {
      for (const [f, m] of errors) showFieldError(f, m);
      formStatus('Fix the marked fields.', false);
      form().querySelector('[aria-invalid=true]').focus();
      return;
    }
    try {
      const saved = creating
        ? await api('POST', '/v1/assistants', body)
        : await api('PATCH', `/v1/assistants/${assistants.editing.id}`, body);
      await loadAssistants();
      editAssistant(saved);
      formStatus(creating ? `Created assistant #${saved.id}.` : 'Saved.', true);
    } catch (err) {
      if (err.status === 0 || err.status === 401) {
        report(err);
        return;
      }
      const el = err.field && showFieldError(err.field, err.message);
      formStatus(el ? `The server refused this: ${err.message}` : err.message, false);
      if (el) el.focus();
    }
  }

  async function loadAssistants() {
    const list = $('assistant-list');
    list.setAttribute('aria-busy', 'true');
    try {
      const page = await api('GET', '/v1/assistants?limit=100');
      assistants.list = page.data;
    } catch (err) {
      report(err, 'Could not list assistants');
      return;
    } finally {
      list.removeAttribute('aria-busy');
    }
    renderAssistantList();
    const select = $('call-assistant');
    const keep = select.value;
    select.replaceChildren(...assistants.list.map((a) => {
      const o = document.createElement('option');
      o.value = a.id;
      o.textContent = `${a.name} (#${a.id}, ${a.llm.provider}/${a.llm.model})`;
      return o;
    }));
    if (keep && assistants.list.some((a) => String(a.id) === keep)) select.value = keep;
  }

  function renderAssistantList() {
    const list = $('assistant-list');
    list.replaceChildren(...assistants.list.map((a) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = a.name;
      const small = document.createElement('small');
      small.textContent = `#${a.id} · ${a.llm.provider} ${a.llm.model} · stt ${a.stt.provider} · tts ${a.tts.provider}`;
      b.appendChild(small);
      if (assistants.editing && assistants.editing.id === a.id) b.setAttribute('aria-current', 'true');
      b.addEventListener('click', () => editAssistant(a));
      li.appendChild(b);
      return li;
    }));
    $('assistant-list-empty').hidden = assistants.list.length > 0;
  }

  // --------------------------------------------------------------- call ---

  const call = {
    pc: null, dc: null, stream: null, track: null, session: null, token: null, location: null,
    state: 'idle', muted: false, meter: null, audioCtx: null,
    user: null, assistant: null, metrics: [], interruptions: 0, bargeIns: [], events: [],
    speakingSince: 0, quietSince: 0, states: [], maxLevel: 0,
  };
  // What the browser test (and a curious developer) can look at.
  window.palaverConsole = {
    get pc() { return call.pc; },
    get dc() { return call.dc; },
    get sessionId() { return call.session; },
    get state() { return call.state; },
    get events() { return call.events.slice(); },
    get metrics() { return call.metrics.slice(); },
    /// Every state the indicator showed this call, and the loudest mic level.
    get states() { return call.states.slice(); },
    get maxLevel() { return call.maxLevel; },
  };

  function setState(state) {
    if (state !== call.state) call.states.push(state);
    call.state = state;
    const el = $('call-state');
    el.textContent = STATE_LABELS[state] || state;
    el.className = `state state-${state}`;
    el.dataset.state = state;
  }

  function inCall() {
    return Boolean(call.pc);
  }

  function setCallControls() {
    const live = inCall();
    $('call-start').disabled = live;
    $('call-start-text').disabled = live;
    $('call-hangup').disabled = !live;
    $('call-mute').disabled = !live || !call.track;
    $('say-text').disabled = !live;
    $('say-send').disabled = !live;
    $('call-assistant').disabled = live;
  }

  function addItem(kind, text) {
    const li = document.createElement('li');
    li.className = `msg ${kind}`;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = kind === 'user' ? 'You' : kind === 'assistant' ? 'Assistant' : kind === 'error' ? 'Error' : '';
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    if (who.textContent) li.appendChild(who);
    li.appendChild(body);
    $('transcript').appendChild(li);
    li.scrollIntoView({ block: 'nearest' });
    return li;
  }

  /// Shows `full` with the part the caller never heard struck through, and
  /// the cut mark saying what was heard.
  function markInterrupted(li, full, heard) {
    li.classList.add('interrupted');
    li.dataset.interrupted = 'true';
    const body = li.querySelector('.text');
    body.replaceChildren();
    const heardSpan = document.createElement('span');
    heardSpan.className = 'heard';
    heardSpan.textContent = heard;
    body.appendChild(heardSpan);
    const rest = full.startsWith(heard) ? full.slice(heard.length) : '';
    if (rest) {
      const unheard = document.createElement('span');
      unheard.className = 'unheard';
      unheard.textContent = rest;
      unheard.title = 'generated, never heard';
      body.appendChild(unheard);
    }
    const cut = document.createElement('span');
    cut.className = 'cut';
    cut.textContent = `✂ Interrupted — the caller heard: “${heard || '(nothing)'}”`;
    li.appendChild(cut);
    return cut;
  }

  function onEvent(event) {
    call.events.push(event);
    switch (event.type) {
      case 'connected':
        addItem('system', `Connected to session #${event.session_id ?? call.session}.`);
        setState('listening');
        break;
      case 'session.started':
        if (call.state === 'connecting') setState('listening');
        break;
      case 'transcript.partial':
        if (!call.user) call.user = addItem('user', '');
        call.user.classList.add('partial');
        call.user.querySelector('.text').textContent = event.text;
        if (call.state !== 'speaking') setState('user-speaking');
        break;
      case 'transcript.final':
        if (!call.user) call.user = addItem('user', '');
        call.user.classList.remove('partial');
        call.user.querySelector('.text').textContent = event.text;
        call.user = null;
        setState('thinking');
        break;
      case 'assistant.delta':
        if (!call.assistant) {
          call.assistant = addItem('assistant', '');
          call.assistant.dataset.full = '';
        }
        call.assistant.dataset.full += event.text;
        call.assistant.querySelector('.text').textContent = call.assistant.dataset.full;
        break;
      case 'assistant.speaking':
        setState('speaking');
        break;
      case 'assistant.interrupted': {
        call.interruptions += 1;
        const li = call.assistant || addItem('assistant', '');
        call.lastCut = markInterrupted(li, li.dataset.full || '', event.heard_text || '');
        call.lastInterrupted = li;
        call.assistant = null;
        setState('listening');
        renderSummary();
        break;
      }
      case 'barge-in':
        call.bargeIns.push(event.onset_to_decision_ms);
        // A typed turn interrupts at once (0 ms); speech after a while.
        if (call.lastCut && event.onset_to_decision_ms > 0) {
          call.lastCut.textContent += ` (decided ${event.onset_to_decision_ms} ms after you started speaking)`;
        }
        renderSummary();
        break;
      case 'assistant.done':
        if (!call.assistant) call.assistant = addItem('assistant', '');
        call.assistant.querySelector('.text').textContent = event.text;
        call.lastAssistant = call.assistant;
        call.assistant = null;
        if (call.state === 'speaking' || call.state === 'thinking') setState('listening');
        break;
      case 'turn.metrics': {
        // An interrupted reply reports the stages it reached before the cut.
        call.metrics.push(event);
        const li = event.interrupted ? call.lastInterrupted : call.lastAssistant;
        if (li) {
          const lat = document.createElement('span');
          lat.className = 'lat';
          lat.textContent = latencyLine(event);
          li.appendChild(lat);
        }
        renderWaterfall();
        renderSummary();
        break;
      }
      case 'error': {
        // A provider failing does not end the session: the assistant
        // apologises and listens again.
        const what = ERROR_SOURCES[event.code] || 'The session reported an error';
        addItem('error', `${what}: ${event.message} (${event.code})`);
        showBanner(`${what}: ${event.message} (${event.code}). The session goes on; `
          + 'check the assistant\'s provider settings.');
        break;
      }
      case 'session.ended':
        callEnded(`${END_REASONS[event.reason] || 'the server ended it'} (${event.reason})`, 'ended');
        break;
      default:
        break; // assistant-message, session-ended: the WebSocket protocol's duplicates
    }
  }

  /// Says why the call ended, in the transcript and next to the state, and
  /// lets a new one start.
  function callEnded(why, state) {
    addItem('system', `Call ended: ${why}.`);
    if (call.session) $('call-session').textContent = `Session #${call.session} · call ended: ${why}`;
    teardown(state);
  }

  function latencyLine(m) {
    return STAGES.map(([k, label]) => `${label} ${m[k] == null ? '—' : `${m[k]} ms`}`).join(' · ');
  }

  async function getMicrophone() {
    const deviceId = $('call-device').value;
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    if (deviceId) audio.deviceId = { exact: deviceId };
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error('This browser (or an insecure http:// origin other than localhost) gives no microphone access.'), { name: 'NoMediaDevices' });
    }
    return navigator.mediaDevices.getUserMedia({ audio, video: false });
  }

  function micProblem(err) {
    switch (err.name) {
      case 'NotAllowedError':
      case 'SecurityError':
        return 'Microphone blocked: the browser denied this page the microphone. To allow it, click the '
          + 'microphone (or lock) icon in the address bar, set Microphone to Allow for this site, and start '
          + 'again; or use “Start without microphone” and type.';
      case 'NotFoundError':
      case 'OverconstrainedError':
        return 'No microphone was found (or the chosen one is gone): plug one in or pick another, or use '
          + '“Start without microphone” and type.';
      case 'NotReadableError':
        return 'The microphone is busy in another program: close it there and start again, or use '
          + '“Start without microphone” and type.';
      default:
        return `The microphone could not be opened (${err.message}): use “Start without microphone” and type.`;
    }
  }

  /// Starts a call: with the microphone, or (`microphone` false) typed
  /// turns only. Without the microphone it asked for, nothing starts: no
  /// session is created.
  async function startCall(microphone = true) {
    hideBanner();
    const assistantId = Number($('call-assistant').value);
    if (!assistantId) {
      showBanner('Create an assistant first (Assistants tab).');
      return;
    }
    resetConversation();
    call.session = null;
    call.token = null;
    $('call-session').textContent = '';
    setState('connecting');
    $('call-start').disabled = true;
    $('call-start-text').disabled = true;
    call.stream = null;
    call.track = null;
    if (microphone) {
      try {
        call.stream = await getMicrophone();
        call.track = call.stream.getAudioTracks()[0] || null;
        listDevices();
      } catch (err) {
        showBanner(micProblem(err));
        setState('idle');
        setCallControls();
        return;
      }
    }
    try {
      const created = await api('POST', '/v1/sessions', { assistant_id: assistantId });
      call.session = created.id;
      call.token = created.token;
      $('call-session').textContent = `Session #${call.session}`;
      const pc = new RTCPeerConnection({ iceServers: [] });
      call.pc = pc;
      setCallControls();
      if (call.track) {
        pc.addTransceiver(call.track, { direction: 'sendrecv', streams: [call.stream] });
        startMeter(call.stream);
      } else {
        pc.addTransceiver('audio', { direction: 'sendrecv' });
      }
      const dc = pc.createDataChannel('events');
      call.dc = dc;
      dc.onmessage = (m) => {
        let event;
        try { event = JSON.parse(m.data); } catch (_) { return; }
        onEvent(event);
      };
      dc.onclose = () => {
        if (call.dc !== dc) return;
        // No `session.ended` first: the server went away (restart, network).
        // The server would hold the session for a rejoin
        // (server.reconnect_grace_s); this console starts a new one
        // instead, so it hangs the old one up (best effort: the server may
        // be gone).
        const location = call.location;
        const token = call.token;
        if (location) api('DELETE', location, undefined, { token }).catch(() => {});
        callEnded('the connection to the server was lost (no goodbye from it); start a new session to go on',
          'error');
      };
      pc.ontrack = (e) => {
        const audio = $('remote-audio');
        audio.srcObject = e.streams[0] || new MediaStream([e.track]);
        audio.play().catch(() => {
          showBanner('The browser blocked audio playback: click anywhere on the page to hear the assistant.', 'info');
        });
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'failed' && call.pc === pc) {
          showBanner('The call\'s media connection failed: the browser could not reach the server\'s WebRTC port (rtc.bind / rtc.public_ip). Start a new session to retry.');
          callEnded('the media connection failed', 'error');
        }
      };
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringDone(pc);
      let res;
      try {
        res = await fetch(`/v1/sessions/${call.session}/webrtc`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${call.token}` },
          body: pc.localDescription.sdp,
        });
      } catch (_) {
        throw unreachable();
      }
      const answer = await res.text();
      if (res.status !== 201) {
        let message = answer;
        try { message = JSON.parse(answer).error.message; } catch (_) { /* plain text */ }
        throw new ApiError(res.status, 'webrtc_refused', `The server refused the call: ${message}`);
      }
      call.location = res.headers.get('Location');
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
      $('say-text').focus();
    } catch (err) {
      report(err, 'Could not start the session');
      const { session, token } = call;
      teardown('error');
      // A session that was created but never joined would wait for its
      // idle timeout: end it now (best effort: the server may be gone).
      if (session) {
        api('POST', `/v1/sessions/${session}/end`, undefined, { token }).catch(() => {});
      }
    }
  }

  function iceGatheringDone(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === 'complete') {
          pc.removeEventListener('icegatheringstatechange', done);
          resolve();
        }
      };
      pc.addEventListener('icegatheringstatechange', done);
      // The server is ICE-lite and learns the caller's address from its
      // checks: host candidates are enough, so don't wait long.
      setTimeout(resolve, 2000);
    });
  }

  function resetConversation() {
    $('transcript').replaceChildren();
    call.metrics = [];
    call.events = [];
    call.states = [];
    call.maxLevel = 0;
    call.bargeIns = [];
    call.interruptions = 0;
    call.user = null;
    call.assistant = null;
    call.lastAssistant = null;
    call.lastInterrupted = null;
    call.lastCut = null;
    renderWaterfall();
    renderSummary();
  }

  function teardown(state) {
    const pc = call.pc;
    call.pc = null;
    call.dc = null;
    if (pc) {
      // Still there to inspect after the call.
      window.palaverConsole.lastPc = pc;
      pc.close();
    }
    if (call.stream) call.stream.getTracks().forEach((t) => t.stop());
    call.stream = null;
    call.track = null;
    call.location = null;
    stopMeter();
    call.muted = false;
    $('call-mute').setAttribute('aria-pressed', 'false');
    $('call-mute').textContent = 'Mute';
    setState(state);
    setCallControls();
  }

  async function hangUp() {
    const location = call.location;
    const token = call.token;
    $('call-hangup').disabled = true;
    if (location) {
      try {
        // The server says goodbye on the data channel, then closes the call.
        await api('DELETE', location, undefined, { token });
      } catch (err) {
        // 404: the session already ended on its own.
        if (err.status !== 404) report(err, 'Hang-up');
      }
    }
    // Unless the server's goodbye (`session.ended`) came first.
    if (inCall()) callEnded('you hung up', 'ended');
  }

  function toggleMute() {
    if (!call.track) return;
    call.muted = !call.muted;
    call.track.enabled = !call.muted;
    $('call-mute').setAttribute('aria-pressed', String(call.muted));
    $('call-mute').textContent = call.muted ? 'Unmute' : 'Mute';
  }

  function sendText(event) {
    event.preventDefault();
    const input = $('say-text');
    const text = input.value.trim();
    if (!text || !call.dc || call.dc.readyState !== 'open') {
      if (text) showBanner('The call is not connected yet: wait for “listening”.', 'info');
      return;
    }
    call.dc.send(JSON.stringify({ type: 'user-message', text }));
    input.value = '';
  }

  // ------------------------------------------------------ level & devices ---

  function startMeter(stream) {
    stopMeter();
    try {
      const ctx = new AudioContext();
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      ctx.createMediaStreamSource(stream).connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      call.audioCtx = ctx;
      call.meter = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const s of samples) sum += s * s;
        const level = call.muted ? 0 : Math.min(1, Math.sqrt(sum / samples.length) * 4);
        call.maxLevel = Math.max(call.maxLevel, level);
        $('mic-level').value = level;
        $('mic-level').textContent = level.toFixed(2);
        localSpeech(level);
      }, 50);
    } catch (_) {
      // No Web Audio: no meter, the call works all the same.
    }
  }

  /// The server says when speech becomes text; the meter says at once that
  /// the caller is speaking.
  function localSpeech(level) {
    const now = performance.now();
    if (level > SPEAKING_LEVEL) {
      call.quietSince = 0;
      if (!call.speakingSince) call.speakingSince = now;
      if (call.state === 'listening' && now - call.speakingSince > 150) setState('user-speaking');
    } else {
      call.speakingSince = 0;
      if (!call.quietSince) call.quietSince = now;
      if (call.state === 'user-speaking' && !call.user && now - call.quietSince > 800) setState('listening');
    }
  }

  function stopMeter() {
    if (call.meter) clearInterval(call.meter);
    call.meter = null;
    if (call.audioCtx) call.audioCtx.close().catch(() => {});
    call.audioCtx = null;
    $('mic-level').value = 0;
  }

  async function listDevices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const select = $('call-device');
    const keep = select.value;
    let devices = [];
    try { devices = await navigator.mediaDevices.enumerateDevices(); } catch (_) { return; }
    const mics = devices.filter((d) => d.kind === 'audioinput' && d.deviceId && d.deviceId !== 'default');
    const def = document.createElement('option');
    def.value = '';
    def.textContent = 'Default microphone';
    select.replaceChildren(def, ...mics.map((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `Microphone ${i + 1}`;
      return o;
    }));
    if (keep && mics.some((d) => d.deviceId === keep)) select.value = keep;
  }

  async function switchDevice() {
    if (!inCall() || !call.pc) return;
    const sender = call.pc.getSenders().find((s) => !s.track || s.track.kind === 'audio');
    try {
      const stream = await getMicrophone();
      const track = stream.getAudioTracks()[0];
      track.enabled = !call.muted;
      if (sender) await sender.replaceTrack(track);
      if (call.stream) call.stream.getTracks().forEach((t) => t.stop());
      call.stream = stream;
      call.track = track;
      startMeter(stream);
      setCallControls();
    } catch (err) {
      showBanner(micProblem(err));
    }
  }

  // ----------------------------------------------------- latency display ---

  function renderWaterfall() {
    const box = $('waterfall');
    if (!call.metrics.length) {
      box.innerHTML = '<p class="muted">Each answered (or cut off) turn adds a row here.</p>';
      return;
    }
    const max = Math.max(1, ...call.metrics.flatMap((m) => STAGES.map(([k]) => m[k] || 0)));
    box.replaceChildren(...call.metrics.map((m, i) => {
      const row = document.createElement('div');
      row.className = 'turn';
      row.dataset.turn = String(i + 1);
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = `Turn ${i + 1}`;
      if (m.interrupted) {
        row.classList.add('interrupted');
        row.dataset.interrupted = 'true';
        const tag = document.createElement('small');
        tag.className = 'cut-tag';
        tag.textContent = 'cut off';
        label.appendChild(tag);
      }
      const bars = document.createElement('div');
      bars.className = 'bars';
      for (const [k, name] of STAGES) {
        const bar = document.createElement('div');
        bar.className = 'bar';
        bar.dataset.stage = k;
        bar.setAttribute('role', 'img');
        const v = m[k];
        // A typed turn has no transcript stage; a cut one may stop short.
        const missing = m.interrupted ? 'not measured or not reached before the cut' : 'not measured';
        bar.setAttribute('aria-label', `Turn ${i + 1}${m.interrupted ? ' (cut off)' : ''}, ${name}: ${v == null ? missing : `${v} ms`}`);
        const fill = document.createElement('span');
        fill.className = `fill ${k}`;
        fill.style.width = `${v == null ? 0 : Math.max(0.5, (100 * v) / max)}%`;
        const val = document.createElement('span');
        val.className = 'val';
        val.textContent = `${name} ${v == null ? '—' : `${v} ms`}`;
        if (v != null) val.dataset.ms = String(v);
        bar.append(fill, val);
        bars.appendChild(bar);
      }
      row.append(label, bars);
      return row;
    }));
  }

  function percentile(values, p) {
    const sorted = values.slice().sort((a, b) => a - b);
    const rank = Math.ceil((p / 100) * sorted.length);
    return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
  }

  function renderSummary() {
    const body = $('summary').tBodies[0];
    body.replaceChildren(...STAGES.map(([k, name]) => {
      const values = call.metrics.map((m) => m[k]).filter((v) => v != null);
      const tr = document.createElement('tr');
      tr.dataset.stage = k;
      const cells = [name, values.length ? percentile(values, 50) : '—',
        values.length ? percentile(values, 95) : '—', values.length];
      cells.forEach((c, i) => {
        const cell = document.createElement(i === 0 ? 'th' : 'td');
        if (i === 0) cell.scope = 'row';
        cell.textContent = String(c);
        tr.appendChild(cell);
      });
      return tr;
    }));
    const barge = call.bargeIns.length
      ? ` · barge-in decision p50 ${percentile(call.bargeIns, 50)} ms` : '';
    const cutOff = call.metrics.filter((m) => m.interrupted).length;
    $('summary-extra').textContent = `${call.metrics.length} measured turns`
      + `${cutOff ? ` (${cutOff} cut off: the stages they reached)` : ''}`
      + ` · ${call.interruptions} interruptions${barge}`;
    $('summary-extra').dataset.interruptions = String(call.interruptions);
  }

  // ------------------------------------------------------- past sessions ---

  const past = { list: [], next: null, current: null };

  async function loadSessions(more) {
    if (!auth.token) return;
    const query = more && past.next ? `?limit=20&after=${encodeURIComponent(past.next)}` : '?limit=20';
    let page;
    try {
      page = await api('GET', `/v1/sessions${query}`);
    } catch (err) {
      report(err, 'Could not list sessions');
      return;
    }
    past.list = more ? past.list.concat(page.data) : page.data;
    past.next = page.next_cursor || null;
    $('sessions-more').hidden = !past.next;
    const names = new Map(assistants.list.map((a) => [a.id, a.name]));
    $('session-list').replaceChildren(...past.list.map((s) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = `#${s.id} · ${names.get(s.assistant_id) || `assistant #${s.assistant_id}`}`;
      const small = document.createElement('small');
      small.textContent = `${s.status}${s.end_reason ? ` (${s.end_reason})` : ''} · ${s.transport || 'not joined'} · ${new Date(s.created_at).toLocaleString()}`;
      b.appendChild(small);
      if (past.current === s.id) b.setAttribute('aria-current', 'true');
      b.addEventListener('click', () => showSession(s));
      li.appendChild(b);
      return li;
    }));
  }

  async function showSession(s) {
    past.current = s.id;
    $('past-title').textContent = `Session #${s.id}`;
    $('past-meta').textContent = `${s.status}${s.end_reason ? ` (${s.end_reason})` : ''}`
      + `${s.started_at ? ` · started ${new Date(s.started_at).toLocaleString()}` : ''}`
      + `${s.ended_at ? ` · ended ${new Date(s.ended_at).toLocaleString()}` : ''}`;
    for (const b of $('session-list').querySelectorAll('button')) {
      b.toggleAttribute('aria-current', b.textContent.startsWith(`#${s.id} `));
    }
    const list = $('past-transcript');
    list.replaceChildren();
    let page;
    try {
      page = await api('GET', `/v1/sessions/${s.id}/messages?limit=100`);
    } catch (err) {
      report(err, 'Could not load the transcript');
      return;
    }
    if (!page.data.length) {
      const li = document.createElement('li');
      li.className = 'msg system';
      li.textContent = 'No messages.';
      list.appendChild(li);
    }
    for (const m of page.data) {
      const li = document.createElement('li');
      li.className = `msg ${m.role === 'user' ? 'user' : m.role === 'assistant' ? 'assistant' : 'system'}`;
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = m.role;
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = m.content;
      li.append(who, text);
      if (m.interrupted) {
        markInterrupted(li, m.content, m.heard_text || '');
      } else if (m.heard_text != null) {
        const note = document.createElement('span');
        note.className = 'cut';
        note.textContent = `Only part was heard: “${m.heard_text}”`;
        li.appendChild(note);
      }
      if (m.role === 'assistant' && m.latency && STAGES.some(([k]) => m.latency[k] != null)) {
        const lat = document.createElement('span');
        lat.className = 'lat';
        lat.textContent = latencyLine(m.latency);
        li.appendChild(lat);
      }
      list.appendChild(li);
    }
  }

  // --------------------------------------------------------------- start ---

  function start() {
    prepareForm();
    $('key-form').addEventListener('submit', signInWithKey);
    $('login-form').addEventListener('submit', signInWithPassword);
    $('sign-out').addEventListener('click', () => signOut());
    $('banner-close').addEventListener('click', hideBanner);
    for (const t of TABS) $(`tab-${t}`).addEventListener('click', () => selectTab(t));
    document.querySelector('.tabs').addEventListener('keydown', tabKeys);
    $('new-assistant').addEventListener('click', () => {
      newAssistant();
      $('f-name').focus();
    });
    form().addEventListener('submit', saveAssistant);
    $('assistant-talk').addEventListener('click', () => {
      $('call-assistant').value = String(assistants.editing.id);
      selectTab('call', true);
    });
    $('call-start').addEventListener('click', () => startCall(true));
    $('call-start-text').addEventListener('click', () => startCall(false));
    $('call-hangup').addEventListener('click', hangUp);
    $('call-mute').addEventListener('click', toggleMute);
    $('call-device').addEventListener('change', switchDevice);
    $('say-form').addEventListener('submit', sendText);
    $('sessions-refresh').addEventListener('click', () => loadSessions(false));
    $('sessions-more').addEventListener('click', () => loadSessions(true));
    if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
      navigator.mediaDevices.addEventListener('devicechange', listDevices);
    }
    // Leaving the page hangs up, so the session does not wait for a timeout.
    window.addEventListener('pagehide', () => {
      if (call.dc && call.dc.readyState === 'open') call.dc.send(JSON.stringify({ type: 'end-session' }));
    });
    setState('idle');
    setCallControls();
    renderWaterfall();
    renderSummary();
    try {
      Object.assign(auth, JSON.parse(sessionStorage.getItem(AUTH_KEY) || '{}'));
    } catch (_) { /* start signed out */ }
    if (auth.token) enterApp();
    else $('api-key').focus();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
