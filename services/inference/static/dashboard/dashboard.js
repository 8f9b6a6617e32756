// robot_sac operator console: reads the v1 JSON routes every few seconds and drives the
// operator's controls. No framework, no build step, no outside URL: a file the service ships.
//
// Token: asked for once (only when the service answers 401) and kept in this tab's
// sessionStorage; every request sends it as "Authorization: Bearer <token>". A service with no
// tokens (loopback only) is used without one.
'use strict';

(() => {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = 'robot_sac.token';
  const VERSIONS_SHOWN = 12; // newest versions listed before "Show all versions"
  const DASH = '—'; // what a missing or null figure shows

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY), // null: try without one first
    timer: null,
    inFlight: false,
    polling: true,
    readOnly: false, // set once a control was refused (403): the token only reads
    showAllVersions: false,
    pending: new Set(), // controls whose request is under way (a second press is ignored)
    chartKey: '',
    // Bumped by every control: a refresh that began before it is stale and is not shown.
    epoch: 0,
    again: false, // a refresh is due as soon as the one in flight ends
    status: null,
  };

  // --- the API ----------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  // One request to the service; resolves to the parsed JSON, rejects with an HttpError whose
  // detail is the service's own sentence (every error of the API is {"detail": "..."}).
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const detail =
        data && typeof data.detail === 'string' ? data.detail : text || response.statusText;
      throw new HttpError(response.status, detail);
    }
    return data;
  }

  // --- formatting: every missing, null or non-finite figure shows as a dash ------------------

  function isNum(x) {
    return typeof x === 'number' && Number.isFinite(x);
  }

  function fmt(x) {
    if (!isNum(x)) return DASH;
    const a = Math.abs(x);
    if (a >= 100) return x.toLocaleString(undefined, { maximumFractionDigits: 1 });
    if (a >= 1) return x.toLocaleString(undefined, { maximumFractionDigits: 2 });
    if (a === 0) return '0';
    return x.toLocaleString(undefined, { maximumSignificantDigits: 3 });
  }

  function count(x) {
    return isNum(x) ? Math.round(x).toLocaleString() : DASH;
  }

  function version(v) {
    return isNum(v) ? `v${v}` : DASH;
  }

  function seconds(s) {
    if (!isNum(s)) return DASH;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function ms(x) {
    return isNum(x) ? `${fmt(x)} ms` : DASH;
  }

  function percent(x) {
    return isNum(x) ? `${Math.round(x * 100)} %` : DASH;
  }

  function when(text) {
    if (typeof text !== 'string' || !text) return DASH;
    const d = new Date(text);
    return Number.isNaN(d.getTime()) ? text : d.toLocaleString();
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // --- messages -----------------------------------------------------------------------------

  function setConnection(kind, text) {
    const el = $('connection');
    el.dataset.kind = kind;
    setText('connection', text);
  }

  // The outcome of an operator's action, in the live region (read out by screen readers).
  function announce(kind, text) {
    const el = $('action-result');
    el.dataset.kind = kind;
    el.textContent = text;
    if (kind === 'error') el.setAttribute('role', 'alert');
    else el.setAttribute('role', 'status');
  }

  // --- signing in ---------------------------------------------------------------------------

  function askForToken(reason) {
    stopPolling();
    $('main').hidden = true;
    $('login').hidden = false;
    $('change-token').hidden = true;
    setText('login-reason', reason);
    setConnection('warn', 'Waiting for a token');
    const input = $('token');
    input.value = '';
    input.focus();
  }

  function signedIn() {
    $('login').hidden = true;
    $('main').hidden = false;
    $('change-token').hidden = !state.token;
  }

  function useToken(event) {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) {
      setText('login-reason', 'Enter a token: the service asks for one.');
      $('token').focus();
      return;
    }
    state.token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    setReadOnly(false);
    announce('info', '');
    setText('login-reason', '');
    $('login').hidden = true;
    setConnection('info', 'Checking the token…');
    startPolling();
  }

  function changeToken() {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken('Enter a token (operator for the controls, viewer to watch).');
  }

  // A control refused for this token's role: the token only reads. The controls are hidden (a
  // button that can only fail is noise) and the message says why and what to do.
  function setReadOnly(on) {
    state.readOnly = on;
    document.body.classList.toggle('read-only', on);
    for (const el of document.querySelectorAll('.control')) el.hidden = on;
  }

  // --- polling ------------------------------------------------------------------------------

  function startPolling() {
    state.polling = true;
    clearTimeout(state.timer);
    refresh();
  }

  function stopPolling() {
    state.polling = false;
    clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    clearTimeout(state.timer);
    if (state.polling) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  // A route this service does not have (an older service): its part shows dashes.
  function orNull(promise) {
    return promise.catch((e) => {
      if (e instanceof HttpError && e.status === 404) return null;
      throw e;
    });
  }

  async function refresh() {
    if (state.inFlight || !state.polling) return;
    if (document.hidden) {
      schedule(); // a hidden tab asks nothing; it catches up when shown
      return;
    }
    state.inFlight = true;
    const epoch = state.epoch;
    try {
      const [status, robots, policies] = await Promise.all([
        api('GET', '/v1/admin/status'),
        orNull(api('GET', '/v1/admin/robots')),
        orNull(api('GET', '/v1/admin/policies')),
      ]);
      signedIn();
      if (epoch !== state.epoch) return; // a control changed things meanwhile: ask again
      render(status, robots, policies);
      const ro = state.readOnly ? ' · read-only token' : '';
      setConnection('ok', `Live · updated ${new Date().toLocaleTimeString()}${ro}`);
    } catch (e) {
      readFailed(e);
    } finally {
      state.inFlight = false;
      if (state.again) {
        state.again = false;
        refresh();
      } else schedule();
    }
  }

  function readFailed(e) {
    if (!(e instanceof HttpError)) {
      setConnection('error', 'Cannot reach the service: retrying every 2 s');
      return;
    }
    if (e.status === 401) {
      askForToken(
        state.token
          ? `The service did not accept this token (401: ${e.detail}). Enter another.`
          : 'This service needs a token (operator, or viewer to watch).'
      );
    } else if (e.status === 403) {
      askForToken(`This token may not read the console (403: ${e.detail}).`);
    } else {
      setConnection('warn', `The service answered ${e.status}: ${e.detail}. Retrying.`);
    }
  }

  // --- the operator's controls --------------------------------------------------------------

  async function control(key, what, method, path, body) {
    if (state.pending.has(key)) return;
    state.pending.add(key);
    announce('info', `${what}…`);
    try {
      const answer = await api(method, path, body);
      announce('ok', `${what}: done.`);
      if (answer && 'served_version' in answer) renderStatus(answer);
    } catch (e) {
      controlFailed(what, e);
    } finally {
      state.pending.delete(key);
      // Show the outcome at once rather than at the next tick; a refresh already under way may
      // have read the state before this control, so it is not shown and another follows.
      state.epoch += 1;
      if (state.inFlight) state.again = true;
      else if (state.polling) refresh();
    }
  }

  function controlFailed(what, e) {
    if (!(e instanceof HttpError)) {
      announce('error', `${what} failed: the service did not answer. Nothing is known to have changed.`);
      return;
    }
    if (e.status === 401) {
      askForToken(`The service did not accept this token (401: ${e.detail}).`);
      announce('error', `${what} failed: the token was not accepted (401).`);
      return;
    }
    if (e.status === 403) {
      setReadOnly(true);
      announce(
        'error',
        `Not allowed (403): ${e.detail}. This token can only watch; the controls are hidden. ` +
          'Use "Change token" with the operator token to act.'
      );
      $('action-result').focus(); // the pressed button is gone: keep the keyboard somewhere sensible
      return;
    }
    announce('error', `${what} failed (${e.status}): ${e.detail}`);
  }

  // --- rendering ----------------------------------------------------------------------------

  function render(status, robots, policies) {
    renderStatus(status);
    renderRobots(robots ? robots.robots : null, status);
    setText('robots-store', robots && robots.store_error ? `Episodes unavailable: ${robots.store_error}` : '');
    $('robots-store').hidden = !(robots && robots.store_error);
    renderVersions(policies ? policies.policies : null, status);
    renderChart(policies ? policies.policies : [], status.episodes || []);
  }

  function renderStatus(s) {
    state.status = s;
    const learner = s.learner || {};
    const traffic = s.traffic || {};
    const task = s.task || {};

    setText('task-name', task.name ? `task: ${task.name}` : '');
    setText('served-version', version(s.served_version));
    setText(
      'served-mode',
      s.mode === 'pinned'
        ? `pinned to ${version(s.pinned_version)} (not following)`
        : s.mode === 'follow'
          ? `following newest (latest ${version(s.latest_version)})`
          : DASH
    );

    // The hold, prominent: all robots, some robots, or none.
    const held = Array.isArray(s.held_robots) ? s.held_robots : [];
    const panel = $('hold-panel');
    let kind;
    if (s.hold) {
      kind = 'held';
      setText('hold-state', 'ALL ROBOTS HELD');
      setText(
        'hold-detail',
        `Every act answers the safe action${s.hold_persisted === false ? ' (not yet stored)' : ''}.`
      );
    } else if (held.length) {
      kind = 'partial';
      setText('hold-state', `${held.length} robot${held.length > 1 ? 's' : ''} held`);
      setText('hold-detail', `Held: ${held.join(', ')}. The others act.`);
    } else {
      kind = 'free';
      setText('hold-state', 'Robots acting');
      setText('hold-detail', 'No hold is in force.');
    }
    panel.dataset.kind = kind;

    const paused = s.learner_paused ? ' (paused by operator)' : '';
    setText('learner-state', `${learner.state || DASH}${paused}`);
    setText('learner-updates', `${count(learner.updates)} updates · ${fmt(learner.updates_per_s)}/s`);
    setText('learner-utd', fmt(learner.utd_effective));
    setText('learner-utd-target', `effective; target ${fmt(isNum(learner.utd) ? learner.utd : task.utd)}`);
    setText('transitions', count(s.transitions));
    const bySource = s.transitions_by_source || {};
    const prior = ['human', 'demo'].filter((k) => bySource[k]).map((k) => `${k} ${count(bySource[k])}`);
    const rate = isNum(traffic.transitions_per_s) ? `${fmt(traffic.transitions_per_s)}/s here` : `${DASH}/s`;
    setText('transitions-rate', prior.length ? `${rate} · ${prior.join(' · ')}` : rate);
    setText('acts-rate', isNum(traffic.acts_per_s) ? `${fmt(traffic.acts_per_s)}/s` : DASH);
    setText(
      'act-latency',
      `latency p50 ${ms(traffic.act_latency_p50_ms)} · p99 ${ms(traffic.act_latency_p99_ms)}`
    );
    setText('replay-size', count(learner.replay_size));
    setText('data-age', `data age ${seconds(learner.data_age_s)}`);
    $('learner-state').dataset.kind = learner.state || 'unknown';

    setText('l-state', `${learner.state || DASH}${paused}`);
    setText('l-updates', count(learner.updates));
    setText('l-rate', fmt(learner.updates_per_s));
    setText('l-utd', `${fmt(learner.utd_effective)} (target ${fmt(isNum(learner.utd) ? learner.utd : task.utd)})`);
    setText('l-alpha', fmt(learner.alpha));
    setText('l-replay', count(learner.replay_size));
    setText('l-age', seconds(learner.data_age_s));
    renderLosses(learner.losses || {});
  }

  function renderLosses(losses) {
    const body = $('l-losses');
    const names = Object.keys(losses).sort();
    const rows = names.map((name) => [name.replace(/^loss_/, 'loss: '), fmt(losses[name])]);
    if (body.dataset.key === JSON.stringify(rows)) return;
    body.dataset.key = JSON.stringify(rows);
    body.replaceChildren(
      ...rows.map(([name, value]) => {
        const tr = document.createElement('tr');
        const th = document.createElement('th');
        th.scope = 'row';
        th.textContent = name;
        const td = document.createElement('td');
        td.textContent = value;
        tr.append(th, td);
        return tr;
      })
    );
  }

  // Keyed rows: a row (and its button) is kept across refreshes and only its text changes, so a
  // keyboard user's focus stays on the button they are on while the figures update.
  function syncRows(tbody, items, keyOf, build, update) {
    const existing = new Map();
    for (const tr of tbody.children) existing.set(tr.dataset.key, tr);
    items.forEach((item, i) => {
      const key = String(keyOf(item));
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else {
        tr = build(key);
        tr.dataset.key = key;
      }
      update(tr, item);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const tr of existing.values()) tr.remove();
  }

  function cells(tr, n, numeric) {
    for (let i = 0; i < n; i++) {
      const cell = document.createElement(i === 0 ? 'th' : 'td');
      if (i === 0) cell.scope = 'row';
      if (numeric.includes(i)) cell.className = 'num';
      tr.append(cell);
    }
  }

  function setCell(cell, text) {
    if (cell.textContent !== text) cell.textContent = text;
  }

  function renderRobots(robots, status) {
    const tbody = $('robots-body');
    setText('robots-title', robots ? `Robots seen (${robots.length})` : 'Robots seen');
    $('robots-empty').hidden = Boolean(robots && robots.length > 0);
    setText(
      'robots-empty',
      robots
        ? 'No robot has acted with a robot_id yet.'
        : 'This service does not list its robots (GET /v1/admin/robots is not there).'
    );
    if (!robots) {
      tbody.replaceChildren();
      return;
    }
    const sorted = [...robots].sort((a, b) => String(a.robot_id).localeCompare(String(b.robot_id)));
    syncRows(
      tbody,
      sorted,
      (r) => r.robot_id,
      (key) => {
        const tr = document.createElement('tr');
        cells(tr, 8, [1, 2, 3, 4, 5, 6]);
        const td = document.createElement('td');
        td.className = 'control-col';
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'control small robot-hold';
        button.hidden = state.readOnly;
        button.addEventListener('click', () => {
          const release = button.dataset.action === 'release';
          control(
            `robot:${key}`,
            `${release ? 'Release' : 'Hold'} robot ${key}`,
            'POST',
            release ? '/v1/admin/release' : '/v1/admin/hold',
            { robot_id: key }
          );
        });
        td.append(button);
        tr.append(td);
        return tr;
      },
      (tr, r) => {
        const c = tr.children;
        setCell(c[0], String(r.robot_id));
        setCell(c[1], isNum(r.last_act_age_s) ? `${seconds(r.last_act_age_s)} ago` : DASH);
        setCell(c[2], version(r.last_version));
        setCell(c[3], count(r.acts));
        setCell(c[4], count(r.episodes));
        setCell(c[5], fmt(r.last_return));
        setCell(c[6], fmt(r.mean_return));
        const alone = r.held_alone === true;
        const heldText = alone ? 'held' : r.held || status.hold ? 'held (all robots)' : 'no';
        setCell(c[7], heldText);
        tr.dataset.held = alone || r.held || status.hold ? 'yes' : 'no';
        const button = c[8].firstChild;
        // A robot held alone is released alone; any other robot can be held alone.
        const action = alone ? 'release' : 'hold';
        if (button.dataset.action !== action) {
          button.dataset.action = action;
          button.textContent = alone ? 'Release' : 'Hold';
          button.setAttribute('aria-label', `${alone ? 'Release' : 'Hold'} robot ${r.robot_id}`);
        }
      }
    );
  }

  function renderVersions(policies, status) {
    const tbody = $('versions-body');
    const more = $('versions-more');
    if (!policies) {
      tbody.replaceChildren();
      more.hidden = true;
      return;
    }
    const newestFirst = [...policies].sort((a, b) => b.version - a.version);
    const shown = state.showAllVersions ? newestFirst : newestFirst.slice(0, VERSIONS_SHOWN);
    more.hidden = newestFirst.length <= VERSIONS_SHOWN;
    setText(
      'versions-more',
      state.showAllVersions
        ? `Show the newest ${VERSIONS_SHOWN} only`
        : `Show all ${newestFirst.length} versions`
    );
    const newest = newestFirst.length ? newestFirst[0].version : null;
    syncRows(
      tbody,
      shown,
      (p) => p.version,
      (key) => {
        const tr = document.createElement('tr');
        cells(tr, 7, [2, 3, 4, 5]);
        const td = document.createElement('td');
        td.className = 'control-col';
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'control small pin';
        button.hidden = state.readOnly;
        button.textContent = 'Pin';
        button.setAttribute('aria-label', `Pin version ${key} (serve it and stop following)`);
        button.addEventListener('click', () =>
          control(`pin:${key}`, `Pin version ${key}`, 'POST', '/v1/admin/policy/pin', {
            version: Number(key),
          })
        );
        td.append(button);
        tr.append(td);
        return tr;
      },
      (tr, p) => {
        const c = tr.children;
        setCell(c[0], version(p.version));
        setCell(c[1], when(p.created_at));
        setCell(c[2], count(p.updates));
        setCell(c[3], count(p.episodes));
        setCell(c[4], fmt(p.mean_episode_return));
        setCell(c[5], percent(p.success_rate));
        const marks = [];
        if (p.version === status.served_version) marks.push('served');
        if (status.mode === 'pinned' && p.version === status.pinned_version) marks.push('pinned');
        if (p.version === newest) marks.push('newest');
        if (p.refused) marks.push(`refused: ${p.refused}`);
        setCell(c[6], marks.join(' · ') || DASH);
        tr.dataset.served = p.version === status.served_version ? 'yes' : 'no';
      }
    );
  }

  // --- the chart: mean episode return (and success rate) per version, drawn as SVG ----------

  // About five round tick values covering [lo, hi].
  function ticks(lo, hi, n = 5) {
    if (!(hi > lo)) {
      const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
      lo -= pad;
      hi += pad;
    }
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    const start = Math.floor(lo / step) * step;
    const out = [];
    for (let v = start; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    if (out[out.length - 1] < hi) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
    return out;
  }

  // An SVG element; its namespace is taken from the page's own <svg> (no URL in this file).
  function el(name, attrs, text) {
    const node = document.createElementNS($('chart').namespaceURI, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderChart(policies, episodes) {
    // Per version: the registry's figures (every kept version), then the status's (recent
    // versions, also those retention has deleted from the registry).
    const byVersion = new Map();
    for (const p of policies || []) {
      if (isNum(p.mean_episode_return)) {
        byVersion.set(p.version, {
          version: p.version,
          mean: p.mean_episode_return,
          success: isNum(p.success_rate) ? p.success_rate : null,
          episodes: p.episodes,
        });
      }
    }
    for (const e of episodes || []) {
      if (isNum(e.mean_return)) {
        byVersion.set(e.version, {
          version: e.version,
          mean: e.mean_return,
          success: isNum(e.success_rate) ? e.success_rate : null,
          episodes: e.episodes,
        });
      }
    }
    const points = [...byVersion.values()].sort((a, b) => a.version - b.version);
    const key = JSON.stringify(points);
    if (key === state.chartKey) return;
    state.chartKey = key;

    const svg = $('chart');
    const desc = $('chart-desc');
    $('chart-empty').hidden = points.length > 0;
    svg.classList.toggle('is-empty', !points.length);
    if (!points.length) {
      svg.replaceChildren(desc);
      desc.textContent = 'No episode has ended yet.';
      return;
    }

    const W = 640;
    const H = 260;
    const hasSuccess = points.some((p) => p.success !== null);
    const m = { left: 56, right: hasSuccess ? 48 : 16, top: 28, bottom: 36 };
    const iw = W - m.left - m.right;
    const ih = H - m.top - m.bottom;
    const vs = points.map((p) => p.version);
    let x0 = Math.min(...vs);
    let x1 = Math.max(...vs);
    if (x0 === x1) {
      // One version: centred, and no neighbouring version numbers invented on the axis.
      x0 -= 0.5;
      x1 += 0.5;
    }
    const ys = points.map((p) => p.mean);
    const yt = ticks(Math.min(...ys), Math.max(...ys));
    const y0 = yt[0];
    const y1 = yt[yt.length - 1];
    const sx = (v) => m.left + ((v - x0) / (x1 - x0)) * iw;
    const sy = (v) => m.top + ih - ((v - y0) / (y1 - y0)) * ih;
    const ss = (v) => m.top + ih - v * ih;

    const first = points[0];
    const lastPoint = points[points.length - 1];
    desc.textContent =
      `${points.length} version${points.length > 1 ? 's' : ''} with ended episodes, from ` +
      `${version(first.version)} (mean return ${fmt(first.mean)}) to ` +
      `${version(lastPoint.version)} (mean return ${fmt(lastPoint.mean)}). ` +
      'The versions table lists every figure.';
    svg.replaceChildren(desc);

    // Grid and the return axis (left).
    for (const t of yt) {
      svg.append(el('line', { x1: m.left, x2: W - m.right, y1: sy(t), y2: sy(t), class: 'gridline' }));
      svg.append(el('text', { x: m.left - 8, y: sy(t) + 4, class: 'tick', 'text-anchor': 'end' }, fmt(t)));
    }
    // Version axis (bottom): at most ~8 labels, whole versions only.
    const span = x1 - x0;
    const every = Math.max(1, Math.ceil(span / 8));
    for (let v = Math.ceil(x0); v <= x1; v += every) {
      svg.append(el('line', { x1: sx(v), x2: sx(v), y1: m.top + ih, y2: m.top + ih + 4, class: 'axis' }));
      svg.append(el('text', { x: sx(v), y: m.top + ih + 18, class: 'tick', 'text-anchor': 'middle' }, `v${v}`));
    }
    svg.append(el('line', { x1: m.left, x2: W - m.right, y1: m.top + ih, y2: m.top + ih, class: 'axis' }));
    svg.append(el('text', { x: m.left + iw / 2, y: H - 4, class: 'label', 'text-anchor': 'middle' }, 'policy version'));
    svg.append(el('text', { x: m.left, y: 16, class: 'label', 'text-anchor': 'start' }, 'mean episode return'));

    if (hasSuccess) {
      for (const t of [0, 0.5, 1]) {
        svg.append(el('text', { x: W - m.right + 6, y: ss(t) + 4, class: 'tick success', 'text-anchor': 'start' }, `${t * 100}%`));
      }
      svg.append(el('text', { x: W - m.right, y: 16, class: 'label success', 'text-anchor': 'end' }, 'success rate (dashed)'));
      const withSuccess = points.filter((p) => p.success !== null);
      svg.append(
        el('polyline', {
          points: withSuccess.map((p) => `${sx(p.version)},${ss(p.success)}`).join(' '),
          class: 'series-success',
        })
      );
      for (const p of withSuccess) {
        const mark = el('rect', { x: sx(p.version) - 3, y: ss(p.success) - 3, width: 6, height: 6, class: 'point-success' });
        mark.append(el('title', {}, `${version(p.version)}: success ${percent(p.success)}`));
        svg.append(mark);
      }
    }

    svg.append(
      el('polyline', {
        points: points.map((p) => `${sx(p.version)},${sy(p.mean)}`).join(' '),
        class: 'series-return',
      })
    );
    for (const p of points) {
      const dot = el('circle', { cx: sx(p.version), cy: sy(p.mean), r: 4, class: 'point-return' });
      dot.append(
        el('title', {}, `${version(p.version)}: mean return ${fmt(p.mean)} over ${count(p.episodes)} episodes`)
      );
      svg.append(dot);
    }
  }

  // --- wiring -------------------------------------------------------------------------------

  function wire() {
    $('login-form').addEventListener('submit', useToken);
    $('change-token').addEventListener('click', changeToken);
    $('hold-all').addEventListener('click', () =>
      control('hold', 'Hold all robots', 'POST', '/v1/admin/hold')
    );
    $('release-all').addEventListener('click', () =>
      control('release', 'Release all robots', 'POST', '/v1/admin/release')
    );
    $('learner-pause').addEventListener('click', () =>
      control('learner', 'Pause learning', 'POST', '/v1/admin/learner/pause')
    );
    $('learner-resume').addEventListener('click', () =>
      control('learner', 'Resume learning', 'POST', '/v1/admin/learner/resume')
    );
    $('follow').addEventListener('click', () =>
      control('follow', 'Follow the newest version', 'POST', '/v1/admin/policy/follow')
    );
    $('versions-more').addEventListener('click', () => {
      state.showAllVersions = !state.showAllVersions;
      if (state.polling && !state.inFlight) refresh();
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.polling && !state.inFlight) refresh();
    });
    startPolling();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wire);
  else wire();
})();
