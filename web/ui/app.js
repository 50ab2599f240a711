// app.js — tern serve's web UI (/ui/): the dashboard (stats, a uPlot chart), the queue with
// its retry/hold/release/delete buttons, the live event stream, the suppression list, API keys,
// webhooks with their delivery attempts, and the message archive (search, raw copy, legal
// hold, export). Plain JS over the admin API (/api/v1/...), with the
// session cookie and, on anything but GET, the session's CSRF token (X-CSRF-Token).
//
// Owns: drawing each page from the API's answers. Never: put server text into the page as
// HTML (textContent only), keep a token of a new API key after it was shown, or fetch anything
// from elsewhere (the CSP forbids it anyway).
'use strict';

const S = { csrf: '', user: '', timer: null, chart: null, gen: 0 };
const TYPES = ['sent', 'delivered', 'deferred', 'bounced', 'complained', 'opened', 'clicked', 'suppressed'];

// ------------------------------------------------------------------------------ helpers

function h(tag, attrs, ...kids) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs || {})) {
		if (v === undefined || v === null || v === false) continue;
		if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
		else if (k === 'class') e.className = v;
		else e.setAttribute(k, v === true ? '' : String(v));
	}
	for (const k of kids.flat()) {
		if (k === null || k === undefined || k === false) continue;
		e.append(k instanceof Node ? k : document.createTextNode(String(k)));
	}
	return e;
}

function flash(msg, bad) {
	const f = document.getElementById('flash');
	f.textContent = msg;
	f.className = bad ? 'flash bad' : 'flash';
	f.hidden = !msg;
}

class ApiError extends Error {
	constructor(status, body) {
		super((body && body.error && body.error.message) || `HTTP ${status}`);
		this.status = status;
		this.body = body;
	}
}

async function api(method, path, body) {
	const headers = {};
	if (method !== 'GET') headers['X-CSRF-Token'] = S.csrf;
	if (body !== undefined) headers['Content-Type'] = 'application/json';
	const r = await fetch(path, {
		method, headers, credentials: 'same-origin',
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	if (r.status === 401) {
		location.href = '/ui/login';
		throw new ApiError(401, null);
	}
	let j = null;
	if (r.status !== 204) {
		try { j = await r.json(); } catch (e) { j = null; }
	}
	if (!r.ok) throw new ApiError(r.status, j);
	return j;
}

function when(t) {
	if (t === null || t === undefined || t === '') return '—';
	const d = typeof t === 'number' ? new Date(t * 1000) : new Date(t);
	return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function table(cols, rows, attrs) {
	return h('table', attrs || {},
		h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)))),
		h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, 'none'))));
}

function stopTimer() {
	if (S.timer) clearTimeout(S.timer);
	S.timer = null;
}

// ---------------------------------------------------------------------------- dashboard

function drawChart(el, st) {
	if (S.chart) { S.chart.destroy(); S.chart = null; }
	if (typeof uPlot === 'undefined') { el.textContent = 'chart library not loaded'; return; }
	const step = st.bucket === 'day' ? 86400 : 3600;
	const start = Math.floor(st.since / step) * step;
	const xs = [];
	for (let t = start; t <= st.until; t += step) xs.push(t);
	const byT = new Map((st.series || []).map((p) => [p.t, p]));
	const shown = ['sent', 'delivered', 'deferred', 'bounced'];
	const colours = { sent: '#2563eb', delivered: '#1a7f37', deferred: '#b54708', bounced: '#c62828' };
	const data = [xs, ...shown.map((k) => xs.map((t) => (byT.get(t) || {})[k] || 0))];
	const opts = {
		width: Math.max(320, Math.min(el.clientWidth || 900, 1300)), height: 240,
		series: [{}, ...shown.map((k) => ({ label: k, stroke: colours[k], width: 2 }))],
		axes: [{}, { size: 50 }],
		scales: { x: { time: true } },
	};
	S.chart = new uPlot(opts, data, el);
}

async function pageDashboard(arg, v) {
	const since = ['24h', '7d', '30d'].includes(arg.since) ? arg.since : '24h';
	const group = ['domain', 'provider', 'key', 'tag'].includes(arg.group) ? arg.group : 'domain';
	const sel = (name, opts, cur) => h('select', {
		'data-testid': `dash-${name}`,
		onchange: (e) => { location.hash = `#dashboard?since=${name === 'since' ? e.target.value : since}&group=${name === 'group' ? e.target.value : group}`; },
	}, opts.map((o) => h('option', { value: o, selected: o === cur }, o)));
	v.replaceChildren(h('h2', {}, 'Dashboard'),
		h('div', { class: 'row' }, 'Period ', sel('since', ['24h', '7d', '30d'], since),
			' by ', sel('group', ['domain', 'provider', 'key', 'tag'], group)),
		h('p', { class: 'muted' }, 'loading…'));
	const st = await api('GET', `/api/v1/stats?since=${since}&bucket=${since === '24h' ? 'hour' : 'day'}&group=${group}`);
	const totals = h('div', { class: 'totals', id: 'totals' },
		TYPES.map((k) => h('div', { class: 'total' },
			h('div', { class: 'n', 'data-testid': `total-${k}` }, String(st.totals[k] || 0)),
			h('div', { class: 'l' }, k))));
	const chart = h('div', { id: 'chart' });
	const lat = st.latency_ms;
	const groupRows = (st.groups || []).map((g) => h('tr', { 'data-group': g.name }, h('td', {}, g.name),
		TYPES.map((k) => h('td', { class: 'num' }, String(g[k] || 0)))));
	const bounceRows = (st.top_bounce_reasons || []).map((b) => h('tr', {},
		h('td', {}, b.status || ''), h('td', {}, b.reason || ''), h('td', { class: 'num' }, String(b.count))));
	v.replaceChildren(h('h2', {}, 'Dashboard'),
		h('div', { class: 'row' }, 'Period ', sel('since', ['24h', '7d', '30d'], since),
			' by ', sel('group', ['domain', 'provider', 'key', 'tag'], group),
			h('span', { class: 'muted' }, ` ${when(st.since)} – ${when(st.until)}`)),
		totals,
		h('h3', {}, `Per ${st.bucket}`), h('div', { class: 'card' }, chart),
		h('h3', {}, `Per ${group}`), table([{ label: group }, ...TYPES.map((k) => ({ label: k, num: true }))], groupRows, { 'data-testid': 'groups' }),
		h('h3', {}, 'Delivery latency (received → delivered)'),
		lat ? table(['count', 'p50', 'p90', 'p99', 'max'].map((k) => ({ label: k === 'count' ? k : `${k} ms`, num: true })),
			[h('tr', {}, ['count', 'p50', 'p90', 'p99', 'max'].map((k) => h('td', { class: 'num', 'data-testid': `lat-${k}` }, lat[k] === null || lat[k] === undefined ? '—' : String(Math.round(lat[k])))))])
			: h('p', { class: 'muted' }, 'not available'),
		h('h3', {}, 'Top bounce reasons'),
		table([{ label: 'status' }, { label: 'reason' }, { label: 'count', num: true }], bounceRows, { 'data-testid': 'bounces' }),
		h('p', { class: 'muted', 'data-testid': 'opens-note' }, st.opens_note || ''));
	drawChart(chart, st);
}

// -------------------------------------------------------------------------------- queue

async function queueAction(id, action) {
	const path = `/api/v1/queue/${encodeURIComponent(id)}` + (action === 'delete' ? '' : `/${action}`);
	try {
		const r = await api(action === 'delete' ? 'DELETE' : 'POST', path);
		flash(`${action}: ${id} (${r && r.recipients !== undefined ? r.recipients + ' recipients' : 'ok'})`);
	} catch (e) {
		flash(`${action} ${id}: ${e.message}`, true);
	}
	route();
}

async function pageQueue(arg, v) {
	const state = ['deferred', 'active', 'held', 'all'].includes(arg.state) ? arg.state : 'all';
	let r;
	try {
		r = await api('GET', `/api/v1/queue?state=${state}&limit=200`);
	} catch (e) {
		if (e.status !== 404) throw e;
		v.replaceChildren(h('h2', {}, 'Queue'), h('p', { class: 'muted' }, 'This server has no queue API (/api/v1/queue).'));
		return;
	}
	const rows = [];
	for (const m of r.messages) {
		const rc = m.recipients || [];
		rc.forEach((x, i) => rows.push(h('tr', { 'data-queue-id': m.queue_id },
			i === 0 ? h('td', { rowspan: rc.length }, h('code', {}, m.queue_id), m.held ? h('div', { class: 'state-held' }, 'held') : null) : null,
			i === 0 ? h('td', { rowspan: rc.length }, m.from || '<>') : null,
			i === 0 ? h('td', { rowspan: rc.length }, when(m.received)) : null,
			h('td', {}, x.rcpt), h('td', { class: `state-${x.state}` }, x.state),
			h('td', { class: 'num' }, String(x.attempts)), h('td', { 'data-testid': 'reason' }, x.reason || ''),
			h('td', {}, when(x.next_attempt)),
			i === 0 ? h('td', { rowspan: rc.length },
				h('div', { class: 'row' },
					h('button', { 'data-action': 'retry', onclick: () => queueAction(m.queue_id, 'retry') }, 'Retry'),
					m.held ? h('button', { 'data-action': 'release', onclick: () => queueAction(m.queue_id, 'release') }, 'Release')
						: h('button', { 'data-action': 'hold', onclick: () => queueAction(m.queue_id, 'hold') }, 'Hold'),
					h('button', {
						class: 'danger', 'data-action': 'delete',
						onclick: () => { if (confirm(`Delete ${m.queue_id} and all its recipients?`)) queueAction(m.queue_id, 'delete'); },
					}, 'Delete'))) : null)));
	}
	v.replaceChildren(h('h2', {}, 'Queue'),
		h('div', { class: 'row' }, 'Show ', h('select', {
			'data-testid': 'queue-state', onchange: (e) => { location.hash = `#queue?state=${e.target.value}`; },
		}, ['all', 'deferred', 'active', 'held'].map((o) => h('option', { value: o, selected: o === state }, o))),
		h('button', { onclick: () => route() }, 'Refresh'),
		h('span', { class: 'muted' }, `${r.messages.length} message(s)${r.next_cursor ? ', more…' : ''}`)),
		table(['queue id', 'from', 'received', 'recipient', 'state', 'attempts', 'reason', 'next attempt', ''].map((l) => ({ label: l, num: l === 'attempts' })),
			rows, { id: 'queue-table' }));
}

// ------------------------------------------------------------------------------- events

async function pageEvents(arg, v) {
	const body = h('tbody', { id: 'events-body' });
	const status = h('span', { class: 'muted', 'data-testid': 'events-status' }, 'loading…');
	const filter = h('input', { placeholder: 'filter: type, recipient, queue id', 'data-testid': 'events-filter' });
	const seen = [];
	const MAX = 500;
	const rowOf = (e) => h('tr', { 'data-type': e.type },
		h('td', {}, when(e.time)), h('td', { class: `ev-${e.type}` }, e.type),
		h('td', {}, h('code', {}, e.queue_id || '')), h('td', {}, e.recipient || ''),
		h('td', {}, e.key || ''), h('td', {}, [e.status, e.reply].filter(Boolean).join(' ')));
	const match = (e) => {
		const f = filter.value.trim().toLowerCase();
		return !f || [e.type, e.recipient, e.queue_id, e.key].some((x) => (x || '').toLowerCase().includes(f));
	};
	const redraw = () => body.replaceChildren(...seen.filter(match).slice(-MAX).reverse().map(rowOf));
	filter.addEventListener('input', redraw);
	v.replaceChildren(h('h2', {}, 'Events'),
		h('div', { class: 'row' }, filter, status),
		h('table', {}, h('thead', {}, h('tr', {}, ['time', 'type', 'queue id', 'recipient', 'key', 'reply'].map((c) => h('th', {}, c)))), body));
	let cursor = null;
	const since = Math.floor(Date.now() / 1000) - 86400;
	const poll = async () => {
		if (!document.body.contains(body)) return; // another page is shown
		try {
			for (let i = 0; i < 20; i++) {
				const q = cursor ? `?cursor=${encodeURIComponent(cursor)}&limit=500` : `?since=${since}&limit=500`;
				const r = await api('GET', '/api/v1/events' + q);
				seen.push(...r.events);
				if (seen.length > 5 * MAX) seen.splice(0, seen.length - MAX);
				cursor = r.next_cursor || cursor;
				if (!r.more) break;
			}
			redraw();
			status.textContent = `live: ${seen.length} event(s), updated ${new Date().toLocaleTimeString()}`;
		} catch (e) {
			status.textContent = `error: ${e.message}`;
		}
		if (document.body.contains(body)) S.timer = setTimeout(poll, 2000);
	};
	await poll();
}

// ------------------------------------------------------------------------- suppressions

async function pageSuppressions(arg, v) {
	const r = await api('GET', '/api/v1/suppressions');
	const addr = h('input', { placeholder: 'address', 'data-testid': 'supp-address', required: true });
	const dom = h('input', { placeholder: 'sending domain (empty: every domain)', 'data-testid': 'supp-domain' });
	const detail = h('input', { placeholder: 'note', 'data-testid': 'supp-detail' });
	const form = h('form', {
		class: 'row', onsubmit: async (ev) => {
			ev.preventDefault();
			try {
				await api('PUT', `/api/v1/suppressions/${encodeURIComponent(addr.value.trim())}`,
					{ domain: dom.value.trim(), reason: 'manual', detail: detail.value });
				flash(`suppressed ${addr.value.trim()}`);
			} catch (e) { flash(`cannot add: ${e.message}`, true); }
			route();
		},
	}, addr, dom, detail, h('button', { type: 'submit', class: 'primary', 'data-testid': 'supp-add' }, 'Add'));
	const rows = r.suppressions.map((s) => h('tr', { 'data-address': s.address },
		h('td', {}, s.address), h('td', {}, s.domain || '(every domain)'), h('td', {}, s.reason),
		h('td', {}, s.detail || ''), h('td', {}, when(s.created)),
		h('td', {}, h('button', {
			class: 'danger', 'data-action': 'delete',
			onclick: async () => {
				try {
					await api('DELETE', `/api/v1/suppressions/${encodeURIComponent(s.address)}?domain=${encodeURIComponent(s.domain || '')}`);
					flash(`removed ${s.address}`);
				} catch (e) { flash(`cannot remove: ${e.message}`, true); }
				route();
			},
		}, 'Remove'))));
	v.replaceChildren(h('h2', {}, 'Suppression list'), form,
		table(['address', 'domain', 'reason', 'detail', 'since', ''].map((l) => ({ label: l })), rows, { id: 'supp-table' }));
}

// ---------------------------------------------------------------------------------- keys

async function pageKeys(arg, v) {
	const r = await api('GET', '/api/v1/keys');
	const name = h('input', { placeholder: 'name', 'data-testid': 'key-name', required: true });
	const scope = h('select', { 'data-testid': 'key-scope' }, ['send', 'read', 'admin'].map((s) => h('option', { value: s }, s)));
	const doms = h('input', { placeholder: 'from domains (comma-separated; empty: any)', 'data-testid': 'key-domains' });
	const perHour = h('input', { type: 'number', min: 0, placeholder: 'per hour', 'data-testid': 'key-per-hour' });
	const perDay = h('input', { type: 'number', min: 0, placeholder: 'per day', 'data-testid': 'key-per-day' });
	const shown = h('div', { class: 'card', hidden: true, 'data-testid': 'new-key' });
	const form = h('form', {
		class: 'row', onsubmit: async (ev) => {
			ev.preventDefault();
			const body = {
				name: name.value.trim(), scope: scope.value,
				from_domains: doms.value.split(',').map((s) => s.trim()).filter(Boolean),
			};
			if (perHour.value) body.per_hour = Number(perHour.value);
			if (perDay.value) body.per_day = Number(perDay.value);
			try {
				const k = await api('POST', '/api/v1/keys', body);
				await pageKeys(arg, v);
				const box = v.querySelector('[data-testid="new-key"]');
				box.replaceChildren(h('p', {}, `The token of the key “${k.name}”. It is shown this once: copy it now.`),
					h('div', { class: 'token', 'data-testid': 'new-token' }, k.token));
				box.hidden = false;
			} catch (e) { flash(`cannot create: ${e.message}`, true); }
		},
	}, name, scope, doms, perHour, perDay, h('button', { type: 'submit', class: 'primary', 'data-testid': 'key-create' }, 'Create'));
	const rows = r.keys.map((k) => h('tr', { 'data-key': k.name },
		h('td', {}, k.name), h('td', {}, h('code', {}, k.id)), h('td', {}, k.scope),
		h('td', {}, (k.from_domains || []).join(', ') || 'any'),
		h('td', {}, [k.per_second && `${k.per_second}/s`, k.per_hour && `${k.per_hour}/h`, k.per_day && `${k.per_day}/d`].filter(Boolean).join(' ') || '—'),
		h('td', {}, when(k.created)), h('td', { 'data-testid': 'key-state' }, k.revoked ? `revoked ${when(k.revoked)}` : 'live'),
		h('td', {}, k.revoked ? '' : h('button', {
			class: 'danger', 'data-action': 'revoke',
			onclick: async () => {
				if (!confirm(`Revoke the key ${k.name}? Programs using it stop working.`)) return;
				try { await api('DELETE', `/api/v1/keys/${encodeURIComponent(k.name)}`); flash(`revoked ${k.name}`); } catch (e) { flash(`cannot revoke: ${e.message}`, true); }
				route();
			},
		}, 'Revoke'))));
	v.replaceChildren(h('h2', {}, 'API keys'), form, shown,
		table(['name', 'id', 'scope', 'from domains', 'quotas', 'created', 'state', ''].map((l) => ({ label: l })), rows, { id: 'keys-table' }));
}

// ------------------------------------------------------------------------------ webhooks

async function pageWebhooks(arg, v) {
	const r = await api('GET', '/api/v1/webhooks');
	const att = h('div', { id: 'attempts' });
	const showAttempts = async (w) => {
		const a = await api('GET', `/api/v1/webhooks/${w.id}/attempts?limit=100`);
		att.replaceChildren(h('h3', {}, `Delivery attempts to ${w.url}`),
			table(['time', 'event', 'response', 'error'].map((l) => ({ label: l })),
				a.attempts.slice().reverse().map((x) => h('tr', {},
					h('td', {}, x.time), h('td', {}, h('code', {}, x.event)),
					h('td', { 'data-testid': 'attempt-status' }, x.http_status ? String(x.http_status) : '—'),
					h('td', {}, x.error || ''))), { 'data-testid': 'attempts-table' }));
	};
	const rows = r.webhooks.map((w) => h('tr', { 'data-webhook': w.id },
		h('td', { class: 'num' }, String(w.id)), h('td', {}, w.url), h('td', {}, w.events || 'all'),
		h('td', {}, w.key || '—'), h('td', {}, w.status), h('td', { class: 'num' }, String(w.pending)),
		h('td', {}, h('button', { 'data-action': 'attempts', onclick: () => { location.hash = `#webhooks?id=${w.id}`; } }, 'Attempts'))));
	v.replaceChildren(h('h2', {}, 'Webhooks'),
		h('p', { class: 'muted' }, 'Endpoints are added with tern webhook add URL --events …'),
		table(['id', 'url', 'events', 'key', 'status', 'pending', ''].map((l) => ({ label: l, num: l === 'id' || l === 'pending' })), rows, { id: 'webhooks-table' }),
		att);
	const pick = r.webhooks.find((w) => String(w.id) === arg.id);
	if (pick) await showAttempts(pick);
}

// ------------------------------------------------------------------------------- archive

// "Name <addr>" or "addr" of the archive's {Name, Address} (or a bare string).
function addrText(a) {
	if (!a) return '';
	if (typeof a === 'string') return a;
	return a.Name ? `${a.Name} <${a.Address || ''}>` : (a.Address || '');
}

function sizeText(n) {
	if (typeof n !== 'number') return '';
	if (n < 1024) return `${n} B`;
	if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
	return `${(n / 1048576).toFixed(1)} MiB`;
}

// The archive records every delivery result (each deferral too): per recipient, the latest
// (by Time, RFC 3339 in UTC so it sorts as text) and how many there are.
function lastOutcomes(outs) {
	const by = new Map();
	for (const o of outs) {
		const k = o.Recipient || '';
		const cur = by.get(k);
		if (!cur) by.set(k, [o, 1]);
		else by.set(k, [(o.Time || '') >= (cur[0].Time || '') ? o : cur[0], cur[1] + 1]);
	}
	return [...by.values()];
}

async function archiveHold(id, on) {
	try {
		await api(on ? 'PUT' : 'DELETE', `/api/v1/archive/${encodeURIComponent(id)}/hold`);
		flash(`${on ? 'held' : 'released'}: ${id}`);
	} catch (e) {
		flash(`${on ? 'hold' : 'release'} ${id}: ${e.message}`, true);
	}
	route();
}

// The original bytes of one archived message as text, below the list (at most SHOW_MAX of
// them: the Raw link has the whole message).
const SHOW_MAX = 1 << 20;
async function archiveShow(id, raw) {
	const box = document.getElementById('archive-shown');
	if (!box) return;
	box.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
	try {
		const r = await fetch(raw, { credentials: 'same-origin' });
		if (!r.ok) throw new Error(`HTTP ${r.status}`);
		const text = await r.text();
		const cut = text.length > SHOW_MAX;
		box.replaceChildren(h('h3', {}, 'Message ', h('code', {}, id)),
			h('pre', { class: 'raw', 'data-testid': 'archive-raw' }, cut ? text.slice(0, SHOW_MAX) : text),
			...(cut ? [h('p', { class: 'muted' }, 'cut short: the Raw link has the whole message')] : []));
	} catch (e) {
		box.replaceChildren(h('p', { class: 'error' }, `cannot show ${id}: ${e.message}`));
	}
}

// The archive searched with the capture syntax (from:, to:, subject:, words), newest first,
// a page of `limit` from `start`; each row links its original bytes and holds/releases it.
async function pageArchive(arg, v) {
	const query = arg.query || '';
	const limit = /^\d+$/.test(arg.limit || '') && Number(arg.limit) >= 1 && Number(arg.limit) <= 1000 ? Number(arg.limit) : 50;
	const sizes = [...new Set([25, 50, 100, 200, limit])].sort((a, b) => a - b);
	const start = /^\d+$/.test(arg.start || '') ? Number(arg.start) : 0;
	const hashOf = (q, st, lim) => `#archive?${new URLSearchParams({ query: q, start: String(st), limit: String(lim) })}`;
	const box = h('input', {
		type: 'search', value: query, size: 50, 'data-testid': 'archive-query',
		placeholder: 'words, from:, to:, subject:, before:YYYY-MM-DD, "a phrase", -word',
	});
	const form = h('form', {
		class: 'row', onsubmit: (ev) => { ev.preventDefault(); location.hash = hashOf(box.value.trim(), 0, limit); },
	}, box, h('button', { type: 'submit', class: 'primary', 'data-testid': 'archive-search' }, 'Search'));
	v.replaceChildren(h('h2', {}, 'Archive'), form, h('p', { class: 'muted' }, 'loading…'));
	let r;
	try {
		r = await api('GET', `/api/v1/archive?query=${encodeURIComponent(query)}&start=${start}&limit=${limit}`);
	} catch (e) {
		if (e.status === 400) {
			v.replaceChildren(h('h2', {}, 'Archive'), form, h('p', { class: 'error', 'data-testid': 'archive-error' }, `cannot search: ${e.message}`));
			return;
		}
		if (e.status !== 404 && e.status !== 503) throw e;
		v.replaceChildren(h('h2', {}, 'Archive'), h('p', { class: 'muted' }, `The archive is not available (${e.message}); it is turned on with archive { enabled = true; } in tern.conf.`));
		return;
	}
	const msgs = r.messages || [];
	const matched = typeof r.messages_count === 'number' ? r.messages_count : msgs.length;
	const rows = msgs.map((m) => {
		const raw = `/api/v1/archive/${encodeURIComponent(m.ID)}/raw`;
		const outs = m.Outcomes || [];
		return h('tr', { 'data-archive-id': m.ID },
			h('td', { class: 'nowrap' }, when(m.Created)),
			h('td', { 'data-testid': 'archive-from' }, addrText(m.From) || m.EnvelopeFrom || '<>'),
			h('td', { 'data-testid': 'archive-to' }, ((m.To && m.To.length ? m.To : m.EnvelopeTo) || []).map(addrText).join(', ')),
			h('td', { 'data-testid': 'archive-subject' }, m.Subject || ''),
			h('td', { class: 'num nowrap' }, sizeText(m.Size)),
			h('td', {}, m.Direction || ''),
			h('td', { 'data-testid': 'archive-hold' }, m.Hold ? h('span', { class: 'state-held' }, 'held') : ''),
			h('td', { 'data-testid': 'archive-outcome' }, outs.length ? lastOutcomes(outs).map(([o, n]) => h('div', { title: o.Reply || '' },
				`${o.Recipient || ''}: `, h('span', { class: `state-${o.State}` }, o.State || ''),
				n > 1 ? h('span', { class: 'muted' }, ` (${n} results)`) : null)) : '—'),
			h('td', { class: 'actions' }, h('div', { class: 'row' },
				h('button', { 'data-action': 'show', onclick: () => archiveShow(m.ID, raw) }, 'Show'),
				h('a', { href: raw, target: '_blank', rel: 'noopener', 'data-action': 'raw' }, 'Raw'),
				m.Hold ? h('button', { 'data-action': 'release', onclick: () => archiveHold(m.ID, false) }, 'Release')
					: h('button', { 'data-action': 'hold', onclick: () => archiveHold(m.ID, true) }, 'Hold'))));
	});
	const exp = (fmt) => h('a', {
		href: `/api/v1/archive/export?query=${encodeURIComponent(query)}&format=${fmt}`,
		download: `archive.${fmt}`, 'data-testid': `archive-export-${fmt}`,
	}, fmt);
	const last = start + msgs.length;
	const pager = h('div', { class: 'row' },
		h('button', { 'data-testid': 'archive-prev', disabled: start === 0, onclick: () => { location.hash = hashOf(query, Math.max(0, start - limit), limit); } }, '← Newer'),
		h('span', { 'data-testid': 'archive-range' }, msgs.length ? `${start + 1}–${last} of ${matched}` : `0 of ${matched}`),
		h('button', { 'data-testid': 'archive-next', disabled: last >= matched, onclick: () => { location.hash = hashOf(query, last, limit); } }, 'Older →'),
		'Per page ', h('select', {
			'data-testid': 'archive-limit', onchange: (e) => { location.hash = hashOf(query, 0, e.target.value); },
		}, sizes.map((n) => h('option', { value: n, selected: n === limit }, String(n)))),
		h('span', { class: 'muted', 'data-testid': 'archive-total' }, r.total ? `${r.total} message(s) archived`
			: 'nothing archived (mail is kept with archive { enabled = true; } in tern.conf)'),
		h('span', {}, 'Export results: ', exp('mbox'), ' ', exp('zip')));
	v.replaceChildren(h('h2', {}, 'Archive'), form, pager,
		table(['date', 'from', 'to', 'subject', 'size', 'direction', 'hold', 'delivery', ''].map((l) => ({ label: l, num: l === 'size' })),
			rows, { id: 'archive-table' }),
		h('div', { id: 'archive-shown' }));
}

// -------------------------------------------------------------------------------- router

const PAGES = {
	dashboard: pageDashboard, queue: pageQueue, events: pageEvents,
	suppressions: pageSuppressions, keys: pageKeys, webhooks: pageWebhooks, archive: pageArchive,
};

// Each page draws into a container of its own, in the page at once: a page still loading
// when another is asked for (a button's reload, then a click on the menu) draws into a
// container no longer shown, never over the new page.
async function route() {
	stopTimer();
	const gen = ++S.gen;
	const [name, qs] = (location.hash.slice(1) || 'dashboard').split('?');
	const page = PAGES[name] ? name : 'dashboard';
	const arg = Object.fromEntries(new URLSearchParams(qs || ''));
	for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
	const v = h('div', { class: 'page' });
	document.getElementById('view').replaceChildren(v);
	document.body.dataset.page = page;
	document.body.dataset.ready = '';
	try {
		await PAGES[page](arg, v);
	} catch (e) {
		if (e.status !== 401) v.replaceChildren(h('p', { class: 'error' }, `cannot load: ${e.message}`));
	}
	if (gen === S.gen) document.body.dataset.ready = page;
}

document.addEventListener('DOMContentLoaded', async () => {
	const r = await fetch('/ui/session', { credentials: 'same-origin' });
	if (!r.ok) { location.href = '/ui/login'; return; }
	const s = await r.json();
	S.csrf = s.csrf;
	S.user = s.user;
	document.getElementById('who').textContent = s.user;
	document.getElementById('logout').addEventListener('click', async () => {
		await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': S.csrf } });
		location.href = '/ui/login';
	});
	window.addEventListener('hashchange', () => { flash(''); route(); });
	route();
});
