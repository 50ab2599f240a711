/*
 * app.js — behaviour of the capture-mode web UI (tern capture).
 *
 * Owns: the message list (live via server-sent events on /api/events), search (Mailpit query
 * syntax through /api/v1/search), the reader (HTML in a sandboxed iframe from /view/ID.html,
 * text, headers, raw source, MIME structure, attachments), preview widths, delete, read status,
 * and keyboard shortcuts. Talks only to the Mailpit-compatible API v1 of the same origin.
 *
 * Never: put message content into the page as HTML (every message-derived string goes through
 * textContent or an attribute), let message HTML run scripts or share our origin (the iframe is
 * sandboxed without allow-scripts and allow-same-origin), load anything from another origin,
 * or use inline styles/scripts (the page may be served under a strict CSP).
 */
'use strict';

(() => {
	const PAGE = 50;
	const $ = (sel) => document.querySelector(sel);

	const el = {
		search: $('#search'),
		searchForm: $('#search-form'),
		searchStatus: $('#search-status'),
		searchStatusText: $('#search-status-text'),
		clearSearch: $('#clear-search'),
		list: $('#list'),
		empty: $('#empty'),
		emptyHint: $('#empty-hint'),
		loadMore: $('#load-more'),
		counts: $('#counts'),
		badge: $('#unread-badge'),
		conn: $('#conn'),
		markAllRead: $('#mark-all-read'),
		deleteAll: $('#delete-all'),
		helpBtn: $('#help-btn'),
		reader: $('#reader'),
		placeholder: $('#placeholder'),
		back: $('#back'),
		prev: $('#prev'),
		next: $('#next'),
		toggleRead: $('#toggle-read'),
		downloadRaw: $('#download-raw'),
		deleteOne: $('#delete-one'),
		subject: $('#reader-subject'),
		meta: $('#reader-meta'),
		attachments: $('#attachments'),
		tabs: [...document.querySelectorAll('[role="tab"]')],
		htmlTools: $('#html-tools'),
		widthBtns: [...document.querySelectorAll('[data-width]')].filter((b) => b.tagName === 'BUTTON'),
		showRemote: $('#show-remote'),
		remoteNote: $('#remote-note'),
		frameWrap: $('#frame-wrap'),
		frame: $('#html-frame'),
		textBody: $('#text-body'),
		headersBody: $('#headers-body'),
		rawBody: $('#raw-body'),
		partsBody: $('#parts-body'),
		mimeTree: $('#mime-tree'),
		info: $('#info'),
		toast: $('#toast'),
		confirm: $('#confirm-dialog'),
		confirmTitle: $('#confirm-title'),
		confirmText: $('#confirm-text'),
		confirmOk: $('#confirm-ok'),
		help: $('#help-dialog'),
	};

	const state = {
		messages: [], // MessageSummary objects in list order (newest first)
		total: 0, // messages in the mailbox
		unread: 0, // unread in the mailbox
		matching: 0, // messages_count of the current list/query
		query: '',
		selected: null, // ID with the list cursor
		openId: null, // ID shown in the reader
		msg: null, // the Message object in the reader
		tab: 'html',
		width: localStorage.getItem('tern.width') || 'desktop',
		remote: false,
		cache: {}, // per open message: headers, raw
		listSeq: 0,
		openSeq: 0,
		info: null,
	};

	// ---------------------------------------------------------------- helpers

	async function api(method, path, body) {
		const opt = { method, headers: { Accept: 'application/json' } };
		if (body !== undefined) {
			opt.headers['Content-Type'] = 'application/json';
			opt.body = JSON.stringify(body);
		}
		const r = await fetch(path, opt);
		if (!r.ok) {
			let detail = '';
			try { detail = (await r.text()).slice(0, 200); } catch (_) { /* ignore */ }
			const e = new Error(`${method} ${path}: ${r.status} ${detail}`.trim());
			e.status = r.status;
			throw e;
		}
		const ct = r.headers.get('content-type') || '';
		return ct.includes('json') ? r.json() : r.text();
	}

	function h(tag, attrs, ...children) {
		const n = document.createElement(tag);
		if (attrs) {
			for (const [k, v] of Object.entries(attrs)) {
				if (v === undefined || v === null || v === false) continue;
				if (k === 'class') n.className = v;
				else if (k === 'text') n.textContent = v;
				else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
				else n.setAttribute(k, v === true ? '' : String(v));
			}
		}
		for (const c of children) {
			if (c === null || c === undefined || c === false) continue;
			n.append(c instanceof Node ? c : document.createTextNode(String(c)));
		}
		return n;
	}

	function fmtSize(n) {
		n = Number(n) || 0;
		if (n < 1024) return `${n} B`;
		const u = ['kB', 'MB', 'GB', 'TB'];
		let i = -1;
		do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
		return `${n < 10 ? n.toFixed(1) : Math.round(n)} ${u[i]}`;
	}

	const dfToday = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
	const dfYear = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
	const dfOld = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
	const dfFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });

	function fmtShortDate(s) {
		const d = new Date(s);
		if (Number.isNaN(d.getTime())) return '';
		const now = new Date();
		if (d.toDateString() === now.toDateString()) return dfToday.format(d);
		if (d.getFullYear() === now.getFullYear()) return dfYear.format(d);
		return dfOld.format(d);
	}

	function fmtFullDate(s) {
		const d = new Date(s);
		return Number.isNaN(d.getTime()) ? String(s || '') : dfFull.format(d);
	}

	function fmtAddr(a) {
		if (!a) return '';
		if (a.Name && a.Address) return `${a.Name} <${a.Address}>`;
		return a.Name || a.Address || '';
	}

	function fmtAddrs(list) {
		return (list || []).map(fmtAddr).filter(Boolean).join(', ');
	}

	function shortFrom(m) {
		const f = m.From || {};
		return f.Name || f.Address || '(no sender)';
	}

	// A paperclip drawn inline: emoji fonts are not a given (headless, minimal desktops).
	function clipIcon() {
		const ns = 'http://www.w3.org/2000/svg';
		const svg = document.createElementNS(ns, 'svg');
		svg.setAttribute('viewBox', '0 0 24 24');
		svg.setAttribute('class', 'icon-clip');
		svg.setAttribute('aria-hidden', 'true');
		svg.setAttribute('focusable', 'false');
		const p = document.createElementNS(ns, 'path');
		p.setAttribute('d', 'M21 11.5l-8.6 8.6a5.5 5.5 0 0 1-7.8-7.8l8.6-8.6a3.7 3.7 0 0 1 5.2 5.2l-8.6 8.6a1.8 1.8 0 0 1-2.6-2.6l7.9-7.9');
		svg.append(p);
		return svg;
	}

	let toastTimer = 0;
	function toast(msg) {
		el.toast.textContent = msg;
		el.toast.hidden = false;
		clearTimeout(toastTimer);
		toastTimer = setTimeout(() => { el.toast.hidden = true; }, 5000);
	}

	function fail(e) {
		console.error(e);
		toast(e && e.message ? e.message : String(e));
	}

	function isTyping(t) {
		if (!t || !t.tagName) return false;
		return t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName);
	}

	const enc = encodeURIComponent;

	// ---------------------------------------------------------------- list

	function listUrl(start, limit) {
		if (state.query) {
			return `/api/v1/search?query=${enc(state.query)}&start=${start}&limit=${limit}`;
		}
		return `/api/v1/messages?start=${start}&limit=${limit}`;
	}

	/* Reloads the list from the top, keeping as many rows as are shown now so that a live
	 * refresh does not collapse pages the user has loaded. */
	async function loadList() {
		const seq = ++state.listSeq;
		const limit = Math.max(PAGE, state.messages.length);
		try {
			const r = await api('GET', listUrl(0, limit));
			if (seq !== state.listSeq) return; // a newer request won
			applySummary(r);
			state.messages = r.messages || [];
			renderList();
		} catch (e) {
			if (seq === state.listSeq) fail(e);
		}
	}

	let loadingMore = false;
	async function loadMore() {
		if (loadingMore) return;
		loadingMore = true;
		const seq = ++state.listSeq;
		try {
			const r = await api('GET', listUrl(state.messages.length, PAGE));
			if (seq !== state.listSeq) return;
			applySummary(r);
			const have = new Set(state.messages.map((m) => m.ID));
			for (const m of r.messages || []) if (!have.has(m.ID)) state.messages.push(m);
			renderList();
		} catch (e) {
			fail(e);
		} finally {
			loadingMore = false;
		}
	}

	function applySummary(r) {
		if (typeof r.total === 'number') state.total = r.total;
		if (typeof r.unread === 'number') state.unread = r.unread;
		state.matching = typeof r.messages_count === 'number' ? r.messages_count
			: (r.messages || []).length;
	}

	let refreshTimer = 0;
	function scheduleRefresh() {
		clearTimeout(refreshTimer);
		refreshTimer = setTimeout(loadList, 120);
	}

	function renderCounts() {
		const t = state.total;
		el.counts.textContent = `${t} message${t === 1 ? '' : 's'}`;
		el.badge.hidden = state.unread === 0;
		el.badge.textContent = `${state.unread} unread`;
		document.title = state.unread ? `(${state.unread}) tern capture` : 'tern capture';
		el.deleteAll.disabled = state.query ? state.matching === 0 : t === 0;
		el.deleteAll.textContent = state.query ? 'Delete results' : 'Delete all';
		el.markAllRead.disabled = state.unread === 0;
		if (state.query) {
			el.searchStatus.hidden = false;
			el.searchStatusText.textContent =
				`${state.matching} match${state.matching === 1 ? '' : 'es'} for “${state.query}”`;
		} else {
			el.searchStatus.hidden = true;
		}
	}

	function renderItem(m) {
		const unread = !m.Read;
		const atts = Number(m.Attachments) || 0;
		const btn = h('button', {
			type: 'button',
			class: 'msg' + (unread ? ' unread' : '') + (m.ID === state.selected ? ' selected' : ''),
			'data-id': m.ID,
			'aria-current': m.ID === state.openId ? 'true' : null,
			tabindex: m.ID === state.selected ? '0' : '-1',
		},
		h('span', { class: 'row1' },
			unread ? h('span', { class: 'dot', 'aria-hidden': 'true' }) : null,
			unread ? h('span', { class: 'vh', text: 'Unread. ' }) : null,
			h('span', { class: 'from', text: shortFrom(m) }),
			atts ? h('span', { class: 'clip', title: `${atts} attachment${atts === 1 ? '' : 's'}`,
				role: 'img', 'aria-label': `${atts} attachment${atts === 1 ? '' : 's'}` }, clipIcon()) : null,
			h('time', { class: 'when', datetime: m.Created, title: fmtFullDate(m.Created),
				text: fmtShortDate(m.Created) })),
		h('span', { class: 'row2' },
			h('span', { class: 'subj', text: m.Subject || '(no subject)' })),
		h('span', { class: 'row3' },
			h('span', { class: 'to', text: 'To: ' + (fmtAddrs(m.To) || '—') }),
			...(m.Tags || []).map((t) => h('span', { class: 'tag', text: t }))),
		m.Snippet ? h('span', { class: 'snippet', text: m.Snippet }) : null);
		btn.addEventListener('click', () => { select(m.ID); openMessage(m.ID); });
		return h('li', { 'data-id': m.ID }, btn);
	}

	function renderList() {
		const focusedId = document.activeElement && document.activeElement.closest
			&& document.activeElement.closest('#list') ? document.activeElement.dataset.id : null;
		if (state.selected && !state.messages.some((m) => m.ID === state.selected)) {
			state.selected = null;
		}
		if (!state.selected && state.messages.length) state.selected = state.messages[0].ID;
		const frag = document.createDocumentFragment();
		for (const m of state.messages) frag.append(renderItem(m));
		el.list.replaceChildren(frag);
		el.empty.hidden = state.messages.length > 0;
		el.loadMore.hidden = state.messages.length >= state.matching;
		if (state.query) {
			el.emptyHint.textContent = 'Nothing matches this search.';
		} else {
			const smtp = state.info && (state.info.SMTPAddress || state.info.SMTP);
			el.emptyHint.textContent = smtp
				? `Send mail to the SMTP server at ${smtp}; it shows up here at once.`
				: 'Send mail to the capture SMTP server; it shows up here at once.';
		}
		renderCounts();
		if (focusedId) {
			const b = itemButton(focusedId) || itemButton(state.selected);
			if (b) b.focus({ preventScroll: true });
		}
	}

	function itemButton(id) {
		return id ? el.list.querySelector(`button[data-id="${CSS.escape(id)}"]`) : null;
	}

	function select(id, { focus = false } = {}) {
		state.selected = id;
		for (const b of el.list.querySelectorAll('button.msg')) {
			const on = b.dataset.id === id;
			b.classList.toggle('selected', on);
			b.tabIndex = on ? 0 : -1;
		}
		const b = itemButton(id);
		if (b) {
			b.scrollIntoView({ block: 'nearest' });
			if (focus) b.focus({ preventScroll: true });
		}
	}

	function indexOf(id) {
		return state.messages.findIndex((m) => m.ID === id);
	}

	function move(delta) {
		if (!state.messages.length) return;
		const cur = state.openId || state.selected;
		let i = indexOf(cur);
		i = i < 0 ? 0 : Math.min(state.messages.length - 1, Math.max(0, i + delta));
		const id = state.messages[i].ID;
		const readerOpen = !!state.openId;
		select(id, { focus: !readerOpen });
		if (readerOpen && id !== state.openId) openMessage(id);
		if (delta > 0 && i >= state.messages.length - 3 && state.messages.length < state.matching) {
			loadMore();
		}
	}

	function setSummaryRead(id, read) {
		const m = state.messages.find((x) => x.ID === id);
		if (m && m.Read !== read) {
			m.Read = read;
			state.unread = Math.max(0, state.unread + (read ? -1 : 1));
			const li = itemButton(id);
			if (li) li.closest('li').replaceWith(renderItem(m));
			renderCounts();
		}
	}

	// ---------------------------------------------------------------- live events

	let es = null;
	let esRetry = 0;
	let esWasDown = false;

	function setConn(ok, text) {
		el.conn.textContent = text || (ok ? 'live' : 'reconnecting…');
		el.conn.classList.toggle('ok', ok);
		el.conn.classList.toggle('down', !ok);
	}

	function parse(e) {
		try { return JSON.parse(e.data); } catch (_) { return null; }
	}

	function connectEvents() {
		if (!('EventSource' in window)) { setConn(false, 'no live updates'); return; }
		es = new EventSource('/api/events');
		es.addEventListener('open', () => {
			setConn(true);
			if (esWasDown) { esWasDown = false; loadList(); } // catch up on what we missed
		});
		es.addEventListener('error', () => {
			setConn(false);
			esWasDown = true;
			if (es.readyState === EventSource.CLOSED) {
				// The browser gave up (e.g. a non-200 answer); retry ourselves.
				clearTimeout(esRetry);
				esRetry = setTimeout(connectEvents, 3000);
			}
		});
		es.addEventListener('new', (e) => { const d = parse(e); if (d) onNew(d); });
		es.addEventListener('delete', (e) => { const d = parse(e); if (d) onDelete(d); });
		es.addEventListener('update', (e) => { const d = parse(e); if (d) onUpdate(d); });
		es.addEventListener('stats', (e) => { const d = parse(e); if (d) onStats(d); });
	}

	function onNew(m) {
		if (!m.ID) return;
		if (state.query) { scheduleRefresh(); return; }
		if (indexOf(m.ID) >= 0) return;
		state.messages.unshift(m);
		state.total++;
		state.matching++;
		if (!m.Read) state.unread++;
		const li = renderItem(m);
		li.classList.add('fresh');
		el.list.prepend(li);
		if (!state.selected) select(m.ID);
		el.empty.hidden = true;
		renderCounts();
	}

	function onDelete(d) {
		if (d.All) {
			state.messages = [];
			if (state.openId) closeReader();
		} else {
			const ids = new Set(d.IDs || []);
			if (state.openId && ids.has(state.openId)) {
				const next = neighbourNotIn(state.openId, ids);
				closeReader();
				if (next) select(next);
			}
			if (state.selected && ids.has(state.selected)) {
				state.selected = neighbourNotIn(state.selected, ids);
			}
			state.messages = state.messages.filter((m) => !ids.has(m.ID));
		}
		renderList();
		scheduleRefresh(); // counts and the rows that now fit on the page
	}

	function onUpdate(d) {
		scheduleRefresh();
		if (state.openId && (d.IDs || []).includes(state.openId)) {
			// Keep the reader's read toggle truthful without refetching (a GET marks read).
			setTimeout(() => {
				const m = state.messages.find((x) => x.ID === state.openId);
				if (m) renderReadToggle(m.Read);
			}, 300);
		}
	}

	function onStats(d) {
		if (typeof d.Total === 'number') state.total = d.Total;
		if (typeof d.Unread === 'number') state.unread = d.Unread;
		if (!state.query && typeof d.Total === 'number') state.matching = d.Total;
		renderCounts();
		el.loadMore.hidden = state.messages.length >= state.matching;
	}

	function neighbourNotIn(id, ids) {
		const i = indexOf(id);
		if (i < 0) return null;
		for (let j = i + 1; j < state.messages.length; j++) {
			if (!ids.has(state.messages[j].ID)) return state.messages[j].ID;
		}
		for (let j = i - 1; j >= 0; j--) {
			if (!ids.has(state.messages[j].ID)) return state.messages[j].ID;
		}
		return null;
	}

	// ---------------------------------------------------------------- reader

	async function openMessage(id, { fromHash = false } = {}) {
		const seq = ++state.openSeq;
		let msg;
		try {
			msg = await api('GET', `/api/v1/message/${enc(id)}`);
		} catch (e) {
			if (seq !== state.openSeq) return;
			if (e.status === 404) { toast('That message no longer exists.'); closeReader(); return; }
			fail(e);
			return;
		}
		if (seq !== state.openSeq) return;
		const wasUnread = (state.messages.find((m) => m.ID === id) || {}).Read === false;
		const wasOpen = !!state.openId;
		state.openId = id;
		state.msg = msg;
		state.cache = {};
		state.remote = false;
		if (window.ternChecks) window.ternChecks.reset();
		select(id);
		for (const b of el.list.querySelectorAll('button.msg')) {
			if (b.dataset.id === id) b.setAttribute('aria-current', 'true');
			else b.removeAttribute('aria-current');
		}
		if (!fromHash && location.hash !== `#/m/${id}`) {
			// One history entry per visit to the reader, not one per message stepped through.
			if (wasOpen) history.replaceState(null, '', `#/m/${id}`);
			else history.pushState(null, '', `#/m/${id}`);
		}
		document.body.classList.add('reading');
		el.reader.hidden = false;
		el.placeholder.hidden = true;
		renderReader(msg);
		if (wasUnread) {
			// Mailpit's GET marks read already; the PUT makes it explicit for any server.
			setSummaryRead(id, true);
			api('PUT', '/api/v1/messages', { IDs: [id], Read: true }).catch(fail);
		}
		renderReadToggle(true);
	}

	function closeReader({ fromHash = false } = {}) {
		state.openSeq++;
		const was = state.openId;
		state.openId = null;
		state.msg = null;
		state.cache = {};
		el.frame.removeAttribute('src');
		el.reader.hidden = true;
		el.placeholder.hidden = false;
		document.body.classList.remove('reading');
		for (const b of el.list.querySelectorAll('button.msg[aria-current]')) b.removeAttribute('aria-current');
		if (!fromHash && location.hash.startsWith('#/m/')) history.replaceState(null, '', '#/');
		if (was) select(state.selected || was, { focus: true });
	}

	function renderReadToggle(read) {
		el.toggleRead.textContent = read ? 'Mark unread' : 'Mark read';
		el.toggleRead.dataset.read = read ? '1' : '0';
	}

	function hasRemoteContent(html) {
		// Anything the CSP will stop: absolute or protocol-relative URLs in src/background/
		// srcset/poster attributes, or in CSS url(...) and @import.
		return /\b(?:src|background|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?\/\//i.test(html)
			|| /url\(\s*["']?\s*(?:https?:)?\/\//i.test(html)
			|| /@import\s+["']?\s*(?:https?:)?\/\//i.test(html);
	}

	function renderReader(m) {
		el.subject.textContent = m.Subject || '(no subject)';
		const rows = [
			['From', fmtAddr(m.From)],
			['To', fmtAddrs(m.To)],
			['Cc', fmtAddrs(m.Cc)],
			['Bcc', fmtAddrs(m.Bcc)],
			['Reply-To', fmtAddrs(m.ReplyTo)],
			['Date', fmtFullDate(m.Date)],
			['Size', fmtSize(m.Size)],
		];
		if (m.Tags && m.Tags.length) rows.push(['Tags', m.Tags.join(', ')]);
		const frag = document.createDocumentFragment();
		for (const [k, v] of rows) {
			if (!v) continue;
			frag.append(h('div', { class: 'meta-row' }, h('dt', { text: k }), h('dd', { text: v })));
		}
		el.meta.replaceChildren(frag);

		// Attachments strip: the downloadable parts.
		const atts = m.Attachments || [];
		el.attachments.replaceChildren(...atts.map((a) => h('li', null,
			h('a', {
				class: 'att',
				href: partUrl(m.ID, a.PartID),
				download: a.FileName || `part-${a.PartID}`,
				title: `${a.ContentType || 'application/octet-stream'}, ${fmtSize(a.Size)}`,
			},
			clipIcon(),
			h('span', { class: 'att-name', text: a.FileName || `part ${a.PartID}` }),
			h('span', { class: 'att-size', text: fmtSize(a.Size) })))));
		el.attachments.hidden = atts.length === 0;

		el.downloadRaw.href = `/api/v1/message/${enc(m.ID)}/raw`;
		el.downloadRaw.setAttribute('download', `${m.ID}.eml`);

		const hasHtml = !!(m.HTML && m.HTML.length);
		const tabHtml = el.tabs.find((t) => t.dataset.tab === 'html');
		tabHtml.hidden = !hasHtml;
		el.showRemote.hidden = true;
		el.remoteNote.hidden = true;
		if (hasHtml) {
			const remote = hasRemoteContent(m.HTML);
			el.showRemote.hidden = !remote;
			el.showRemote.disabled = false;
			el.showRemote.textContent = 'Show remote images';
			el.remoteNote.hidden = !remote;
		}
		el.frame.removeAttribute('src');
		el.textBody.textContent = m.Text || (hasHtml ? '(this message has no plain-text part)' : '(empty body)');
		el.headersBody.replaceChildren();
		el.rawBody.textContent = '';
		renderParts(m);
		el.mimeTree.replaceChildren(h('li', { class: 'muted', text: 'Loading…' }));

		let tab = state.tab;
		if (tab === 'html' && !hasHtml) tab = 'text';
		showTab(tab, { remember: false });
	}

	function partUrl(id, partId) {
		return `/api/v1/message/${enc(id)}/part/${enc(partId)}`;
	}

	function loadFrame() {
		if (!state.msg) return;
		// embed=1: links get target=_blank, so clicking one opens a new tab (allow-popups)
		// instead of navigating the preview away from the message.
		const url = `/view/${enc(state.msg.ID)}.html?embed=1${state.remote ? '&remote=1' : ''}`;
		if (el.frame.getAttribute('src') !== url) el.frame.setAttribute('src', url);
	}

	function showTab(tab, { remember = true, focus = false } = {}) {
		const t = el.tabs.find((x) => x.dataset.tab === tab);
		if (!t || t.hidden) return;
		if (remember) state.tab = tab;
		for (const x of el.tabs) {
			const on = x === t;
			x.setAttribute('aria-selected', on ? 'true' : 'false');
			x.tabIndex = on ? 0 : -1;
			document.getElementById(x.getAttribute('aria-controls')).hidden = !on;
		}
		el.htmlTools.hidden = tab !== 'html';
		el.remoteNote.hidden = tab !== 'html' || !(state.msg && hasRemoteContent(state.msg.HTML || ''))
			|| state.remote;
		if (focus) t.focus();
		if (tab === 'html') loadFrame();
		else if (tab === 'headers') loadHeaders();
		else if (tab === 'raw' || tab === 'mime') loadRaw();
		else if (window.ternChecks) window.ternChecks.show(tab, state.msg); // checks.js
	}

	async function loadHeaders() {
		const m = state.msg;
		if (!m || state.cache.headers) return;
		state.cache.headers = true;
		try {
			const hd = await api('GET', `/api/v1/message/${enc(m.ID)}/headers`);
			if (state.msg !== m) return;
			const frag = document.createDocumentFragment();
			for (const [name, vals] of Object.entries(hd || {})) {
				for (const v of Array.isArray(vals) ? vals : [vals]) {
					// RFC 2047 encoded words shown decoded; the raw value stays one click away
					const dec = decodeWords(String(v));
					const td = h('td', null, h('span', { class: 'hdr-value', text: dec }));
					if (dec !== v) {
						td.append(h('details', { class: 'hdr-raw' }, h('summary', { text: 'raw' }),
							h('code', { text: v })));
					}
					frag.append(h('tr', null, h('th', { scope: 'row', text: name }), td));
				}
			}
			el.headersBody.replaceChildren(frag);
		} catch (e) {
			state.cache.headers = false;
			fail(e);
		}
	}

	const RAW_SHOW_MAX = 2 * 1024 * 1024;

	async function loadRaw() {
		const m = state.msg;
		if (!m || state.cache.raw !== undefined) return;
		state.cache.raw = null;
		el.rawBody.textContent = 'Loading…';
		try {
			const r = await fetch(`/api/v1/message/${enc(m.ID)}/raw`);
			if (!r.ok) throw new Error(`raw source: ${r.status}`);
			const buf = await r.arrayBuffer();
			if (state.msg !== m) return;
			// Non-UTF-8 bytes show as U+FFFD; the download keeps the exact bytes.
			let text = new TextDecoder('utf-8', { fatal: false }).decode(buf);
			state.cache.raw = text;
			if (text.length > RAW_SHOW_MAX) {
				text = text.slice(0, RAW_SHOW_MAX) + `\n\n… truncated (${fmtSize(buf.byteLength)} in all; use “Download .eml”)`;
			}
			el.rawBody.textContent = text;
			renderTree(state.cache.raw);
		} catch (e) {
			state.cache.raw = undefined;
			el.rawBody.textContent = '';
			fail(e);
		}
	}

	function renderParts(m) {
		const rows = [];
		const add = (kind, a) => rows.push(h('tr', null,
			h('td', { class: 'mono', text: a.PartID || '' }),
			h('td', { class: 'opt', text: kind }),
			h('td', { class: 'mono opt', text: a.ContentType || '' }),
			h('td', { class: 'fname', text: a.FileName || '' }),
			h('td', { class: 'mono opt', text: a.ContentID || '' }),
			h('td', { class: 'num', text: fmtSize(a.Size) }),
			h('td', null, h('a', { href: partUrl(m.ID, a.PartID), download: a.FileName || `part-${a.PartID}`,
				'aria-label': `Download ${a.FileName || 'part ' + a.PartID}` }, 'Download'))));
		for (const a of m.Attachments || []) add('attachment', a);
		for (const a of m.Inline || []) add('inline', a);
		if (!rows.length) {
			rows.push(h('tr', null, h('td', { colspan: '7', class: 'muted', text: 'No attachments or inline parts.' })));
		}
		el.partsBody.replaceChildren(...rows);
	}

	// A small MIME walker over the raw source: just enough to show the structure (types,
	// encodings, dispositions, sizes). The server's GMime parse stays the source of truth for
	// content; this never renders part bodies.
	function parseHeaders(block) {
		const out = [];
		for (const line of block.split(/\r?\n/)) {
			if (/^[ \t]/.test(line) && out.length) out[out.length - 1][1] += ' ' + line.trim();
			else {
				const i = line.indexOf(':');
				if (i > 0) out.push([line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()]);
			}
		}
		return out;
	}

	function decodeBytes(bytes, charset) {
		try { return new TextDecoder(charset || 'utf-8').decode(bytes); } catch (_) {
			return new TextDecoder('utf-8').decode(bytes);
		}
	}

	// RFC 2047 encoded words (=?charset?B|Q?...?=), as some mailers put them in file names.
	function decodeWords(v) {
		return v.replace(/=\?([^?]+)\?([bqBQ])\?([^?]*)\?=\s*(?==\?)?/g, (all, cs, kind, text) => {
			try {
				let bytes;
				if (kind.toUpperCase() === 'B') {
					bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
				} else {
					const t = text.replace(/_/g, ' ');
					const out = [];
					for (let i = 0; i < t.length; i++) {
						if (t[i] === '=' && /^[0-9a-f]{2}$/i.test(t.slice(i + 1, i + 3))) {
							out.push(parseInt(t.slice(i + 1, i + 3), 16));
							i += 2;
						} else out.push(t.charCodeAt(i) & 0xff);
					}
					bytes = Uint8Array.from(out);
				}
				return decodeBytes(bytes, cs.split('*')[0]);
			} catch (_) { return all; }
		});
	}

	// A header parameter: plain, quoted, RFC 2231 extended (name*=charset'lang'%XX) or
	// continued (name*0*=, name*1*=, ...).
	function headerParam(value, name) {
		const re = /;\s*([^=\s;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/g;
		const pieces = [];
		let plain = '';
		let mm;
		while ((mm = re.exec(';' + (value || ''))) !== null) {
			const key = mm[1].toLowerCase();
			const val = mm[2] !== undefined ? mm[2].replace(/\\(.)/g, '$1') : mm[3];
			if (key === name) plain = val;
			const ext = /^([^*]+)(?:\*(\d+))?(\*)?$/.exec(key);
			if (ext && ext[1] === name && (ext[2] !== undefined || ext[3])) {
				pieces.push({ n: Number(ext[2] || 0), enc: !!ext[3], val });
			}
		}
		if (!pieces.length) return name === 'filename' || name === 'name' ? decodeWords(plain) : plain;
		pieces.sort((a, b) => a.n - b.n);
		let charset = 'utf-8';
		const bytes = [];
		pieces.forEach((p, i) => {
			let v = p.val;
			if (i === 0 && p.enc) {
				const q = /^([^']*)'[^']*'(.*)$/.exec(v);
				if (q) { charset = q[1] || charset; v = q[2]; }
			}
			for (let k = 0; k < v.length; k++) {
				if (p.enc && v[k] === '%' && /^[0-9a-f]{2}$/i.test(v.slice(k + 1, k + 3))) {
					bytes.push(parseInt(v.slice(k + 1, k + 3), 16));
					k += 2;
				} else {
					for (const b of new TextEncoder().encode(v[k])) bytes.push(b);
				}
			}
		});
		return decodeBytes(Uint8Array.from(bytes), charset);
	}

	function walkMime(text, depth) {
		const sep = /\r?\n\r?\n/.exec(text);
		const head = sep ? text.slice(0, sep.index) : text;
		const body = sep ? text.slice(sep.index + sep[0].length) : '';
		const hs = parseHeaders(head);
		const get = (n) => (hs.find(([k]) => k === n) || [])[1] || '';
		const ct = get('content-type') || 'text/plain';
		const node = {
			type: ct.split(';')[0].trim().toLowerCase(),
			charset: headerParam(ct, 'charset'),
			name: headerParam(get('content-disposition'), 'filename') || headerParam(ct, 'name'),
			disposition: get('content-disposition').split(';')[0].trim().toLowerCase(),
			encoding: get('content-transfer-encoding').toLowerCase(),
			cid: get('content-id'),
			size: body.length,
			children: [],
		};
		const boundary = headerParam(ct, 'boundary');
		if (node.type.startsWith('multipart/') && boundary && depth < 20) {
			const lines = body.split(/\r?\n/);
			let cur = null;
			for (const line of lines) {
				if (line.startsWith('--' + boundary)) {
					if (cur) node.children.push(walkMime(cur.join('\r\n'), depth + 1));
					cur = line.trimEnd() === `--${boundary}--` ? null : [];
					if (cur === null) break;
				} else if (cur) cur.push(line);
			}
		} else if (node.type === 'message/rfc822' && depth < 20) {
			node.children.push(walkMime(body, depth + 1));
		}
		return node;
	}

	function renderTree(raw) {
		let root;
		try { root = walkMime(raw || '', 0); } catch (e) { root = null; }
		const build = (n) => {
			const bits = [n.charset && `charset ${n.charset}`, n.encoding, n.disposition,
				n.cid && `cid ${n.cid}`].filter(Boolean).join(' · ');
			const li = h('li', null,
				h('span', { class: 'mime-type', text: n.type }),
				n.name ? h('span', { class: 'mime-name', text: ` “${n.name}”` }) : null,
				h('span', { class: 'mime-info', text: ` ${bits ? bits + ' · ' : ''}${fmtSize(n.size)} encoded` }));
			if (n.children.length) li.append(h('ul', null, ...n.children.map(build)));
			return li;
		};
		el.mimeTree.replaceChildren(root ? build(root) : h('li', { class: 'muted', text: 'Could not parse.' }));
	}

	async function deleteIds(ids) {
		if (!ids.length) return;
		try {
			await api('DELETE', '/api/v1/messages', { IDs: ids });
			// Apply now rather than wait for the event; the event handler is idempotent.
			onDelete({ IDs: ids });
		} catch (e) {
			fail(e);
		}
	}

	function deleteCurrent() {
		const id = state.openId || state.selected;
		if (!id) return;
		const readerOpen = !!state.openId;
		const next = neighbourNotIn(id, new Set([id]));
		deleteIds([id]).then(() => {
			if (next) {
				select(next, { focus: !readerOpen });
				if (readerOpen) openMessage(next);
			} else {
				el.list.focus();
			}
		});
	}

	function confirmDialog(title, text, ok) {
		return new Promise((resolve) => {
			el.confirmTitle.textContent = title;
			el.confirmText.textContent = text;
			el.confirmOk.textContent = ok;
			el.confirm.returnValue = '';
			el.confirm.addEventListener('close', () => resolve(el.confirm.returnValue === 'ok'), { once: true });
			el.confirm.showModal();
			el.confirmOk.focus();
		});
	}

	async function deleteAll() {
		const q = state.query;
		const n = q ? state.matching : state.total;
		const ok = await confirmDialog(
			q ? 'Delete matching messages?' : 'Delete all messages?',
			q ? `${n} message${n === 1 ? '' : 's'} matching “${q}” will be deleted.`
				: `All ${n} message${n === 1 ? '' : 's'} will be deleted. This cannot be undone.`,
			q ? 'Delete results' : 'Delete all');
		if (!ok) return;
		try {
			if (q) {
				await api('DELETE', `/api/v1/search?query=${enc(q)}`);
				if (state.openId) closeReader();
				loadList();
			} else {
				await api('DELETE', '/api/v1/messages', {});
				onDelete({ All: true });
			}
		} catch (e) {
			fail(e);
		}
	}

	async function toggleRead() {
		const id = state.openId || state.selected;
		if (!id) return;
		const m = state.messages.find((x) => x.ID === id);
		const read = state.openId ? el.toggleRead.dataset.read !== '1' : !(m && m.Read);
		try {
			await api('PUT', '/api/v1/messages', { IDs: [id], Read: read });
			setSummaryRead(id, read);
			if (state.openId === id) renderReadToggle(read);
		} catch (e) {
			fail(e);
		}
	}

	async function markAllRead() {
		try {
			const body = state.query ? { Read: true, Search: state.query } : { Read: true };
			await api('PUT', '/api/v1/messages', body);
			for (const m of state.messages) m.Read = true;
			if (!state.query) state.unread = 0;
			renderList();
			scheduleRefresh();
		} catch (e) {
			fail(e);
		}
	}

	function setWidth(w) {
		state.width = w;
		try { localStorage.setItem('tern.width', w); } catch (_) { /* private mode */ }
		el.frameWrap.dataset.width = w;
		for (const b of el.widthBtns) b.setAttribute('aria-pressed', b.dataset.width === w ? 'true' : 'false');
	}

	// ---------------------------------------------------------------- search

	let searchTimer = 0;
	function runSearch(q) {
		q = (q || '').trim();
		clearTimeout(searchTimer);
		if (q === state.query) return;
		state.query = q;
		state.messages = [];
		state.selected = null;
		loadList();
	}

	// ---------------------------------------------------------------- keyboard

	const TAB_KEYS = { 1: 'html', 2: 'text', 3: 'headers', 4: 'raw', 5: 'mime', 6: 'html-check', 7: 'link-check', 8: 'sa-check' };

	function onKey(e) {
		if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
		if (document.querySelector('dialog[open]')) return; // the dialog handles its own keys
		const t = e.target;
		if (isTyping(t)) {
			if (e.key === 'Escape' && t === el.search) {
				if (el.search.value) { el.search.value = ''; runSearch(''); } else t.blur();
				e.preventDefault();
			} else if ((e.key === 'ArrowDown') && t === el.search) {
				e.preventDefault();
				if (state.selected) select(state.selected, { focus: true });
			}
			return;
		}
		const inTabs = t && t.getAttribute && t.getAttribute('role') === 'tab';
		switch (e.key) {
		case 'j': case 'ArrowDown':
			e.preventDefault(); move(1); break;
		case 'k': case 'ArrowUp':
			e.preventDefault(); move(-1); break;
		case 'ArrowRight': case 'ArrowLeft':
			if (inTabs) {
				e.preventDefault();
				const vis = el.tabs.filter((x) => !x.hidden);
				const i = vis.indexOf(t) + (e.key === 'ArrowRight' ? 1 : -1);
				showTab(vis[(i + vis.length) % vis.length].dataset.tab, { focus: true });
			}
			break;
		case 'Enter': case 'o':
			// Enter on any other button keeps its own meaning.
			if (e.key === 'Enter' && t && t.tagName !== 'BODY' && !(t === el.list)) {
				if (t.tagName === 'BUTTON' || t.tagName === 'A' || t.tagName === 'SUMMARY') return;
			}
			if (state.selected) { e.preventDefault(); openMessage(state.selected); }
			break;
		case 'Delete': case '#':
			e.preventDefault(); deleteCurrent(); break;
		case 'Escape':
			if (state.openId) { e.preventDefault(); closeReader(); }
			break;
		case '/':
			e.preventDefault(); el.search.focus(); el.search.select(); break;
		case 'u':
			e.preventDefault(); toggleRead(); break;
		case '?':
			e.preventDefault(); el.help.showModal(); break;
		default:
			if (state.openId && TAB_KEYS[e.key]) { e.preventDefault(); showTab(TAB_KEYS[e.key]); }
		}
	}

	// ---------------------------------------------------------------- routing & wiring

	function fromHash() {
		const mm = /^#\/m\/([^/?#]+)/.exec(location.hash);
		if (mm) {
			const id = decodeURIComponent(mm[1]);
			if (id !== state.openId) openMessage(id, { fromHash: true });
		} else if (state.openId) {
			closeReader({ fromHash: true });
		}
	}

	async function loadInfo() {
		try {
			state.info = await api('GET', '/api/v1/info');
			const i = state.info || {};
			const bits = [`tern ${i.Version || ''}`.trim()];
			const smtp = i.SMTPAddress || i.SMTP;
			if (smtp) bits.push(`SMTP ${smtp}`);
			if (typeof i.DatabaseSize === 'number') bits.push(`store ${fmtSize(i.DatabaseSize)}`);
			el.info.textContent = bits.join(' · ');
			if (!state.messages.length) renderList();
		} catch (_) { /* the footer is optional */ }
	}

	function wire() {
		el.searchForm.addEventListener('submit', (e) => { e.preventDefault(); runSearch(el.search.value); });
		el.search.addEventListener('input', () => {
			clearTimeout(searchTimer);
			searchTimer = setTimeout(() => runSearch(el.search.value), 350);
		});
		el.clearSearch.addEventListener('click', () => { el.search.value = ''; runSearch(''); el.search.focus(); });
		el.loadMore.addEventListener('click', loadMore);
		el.deleteAll.addEventListener('click', deleteAll);
		el.markAllRead.addEventListener('click', markAllRead);
		el.helpBtn.addEventListener('click', () => el.help.showModal());
		el.back.addEventListener('click', () => closeReader());
		el.prev.addEventListener('click', () => move(-1));
		el.next.addEventListener('click', () => move(1));
		el.toggleRead.addEventListener('click', toggleRead);
		el.deleteOne.addEventListener('click', deleteCurrent);
		for (const t of el.tabs) t.addEventListener('click', () => showTab(t.dataset.tab));
		for (const b of el.widthBtns) b.addEventListener('click', () => setWidth(b.dataset.width));
		el.showRemote.addEventListener('click', () => {
			state.remote = true;
			el.showRemote.disabled = true;
			el.showRemote.textContent = 'Remote images shown';
			el.remoteNote.hidden = true;
			loadFrame();
		});
		if ('IntersectionObserver' in window) {
			// Endless scrolling: fetch the next page when "Load more" scrolls into view.
			new IntersectionObserver((entries) => {
				if (entries.some((e) => e.isIntersecting) && !el.loadMore.hidden) loadMore();
			}, { root: el.list.parentElement, rootMargin: '200px' }).observe(el.loadMore);
		}
		el.list.addEventListener('focus', () => { if (state.selected) select(state.selected, { focus: true }); });
		document.addEventListener('keydown', onKey);
		window.addEventListener('popstate', fromHash);
		// Close the search help popover when clicking elsewhere.
		document.addEventListener('click', (e) => {
			const d = document.querySelector('.search-help[open]');
			if (d && !d.contains(e.target)) d.open = false;
		});
	}

	wire();
	setWidth(['desktop', 'tablet', 'phone'].includes(state.width) ? state.width : 'desktop');
	renderCounts();
	connectEvents();
	loadInfo();
	loadList().then(fromHash);
})();
