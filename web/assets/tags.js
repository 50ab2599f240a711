/*
 * tags.js — tags in the capture-mode web UI (tern capture): a tag bar above the message list
 * (click a tag to filter the list with the search tag:"…", rename ✎ or delete × a tag), and
 * a tag editor in the reader (remove a tag ×, add one). Works through the tags API of the same
 * origin (GET/PUT /api/v1/tags, PUT/DELETE /api/v1/tags/{tag}); the list and reader of app.js
 * pick the changes up through their live "update" events.
 *
 * Never: put a tag into the page as HTML (textContent and attributes only), talk to another
 * origin, or use inline styles/scripts (the page may be served under a strict CSP).
 */
'use strict';

(() => {
	const $ = (sel) => document.querySelector(sel);

	async function api(method, path, body) {
		const opt = { method, headers: { Accept: 'application/json' } };
		if (body !== undefined) {
			opt.headers['Content-Type'] = 'application/json';
			opt.body = JSON.stringify(body);
		}
		const r = await fetch(path, opt);
		if (!r.ok) throw new Error(`${method} ${path}: ${r.status}`);
		const ct = r.headers.get('content-type') || '';
		return ct.includes('json') ? r.json() : r.text();
	}

	function h(tag, attrs, ...children) {
		const n = document.createElement(tag);
		for (const [k, v] of Object.entries(attrs || {})) {
			if (v === undefined || v === null || v === false) continue;
			if (k === 'class') n.className = v;
			else if (k === 'text') n.textContent = v;
			else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
			else n.setAttribute(k, v === true ? '' : String(v));
		}
		for (const c of children) if (c) n.append(c);
		return n;
	}

	function toast(msg) {
		const t = $('#toast');
		if (!t) return;
		t.textContent = msg;
		t.hidden = false;
		setTimeout(() => { t.hidden = true; }, 4000);
	}

	// The search term for one tag, quoted when it has a space.
	const tagQuery = (t) => (/\s/.test(t) ? `tag:"${t}"` : `tag:${t}`);

	function search(q) {
		const input = $('#search');
		const form = $('#search-form');
		if (!input || !form) return;
		input.value = q;
		if (form.requestSubmit) form.requestSubmit();
		else form.dispatchEvent(new Event('submit', { cancelable: true }));
	}

	// ---------------------------------------------------------------- tag bar

	const bar = h('nav', { id: 'tag-bar', class: 'tag-bar', 'aria-label': 'Tags' });
	bar.hidden = true;
	let tags = [];

	function renderBar() {
		const active = ($('#search') || {}).value || '';
		bar.replaceChildren(h('span', { class: 'tag-bar-title', text: 'Tags' }),
			...tags.map((t) => h('span', { class: 'tag-item' },
				h('button', {
					type: 'button', class: 'tag tag-filter', 'data-tag': t, text: t,
					'aria-pressed': active.trim() === tagQuery(t) ? 'true' : 'false',
					title: `Show messages tagged ${t}`,
					onclick: () => search(active.trim() === tagQuery(t) ? '' : tagQuery(t)),
				}),
				h('button', {
					type: 'button', class: 'tag-act tag-rename', text: '✎',
					'aria-label': `Rename tag ${t}`, title: `Rename ${t}`,
					onclick: () => renameTag(t),
				}),
				h('button', {
					type: 'button', class: 'tag-act tag-delete', text: '×',
					'aria-label': `Delete tag ${t}`, title: `Delete ${t} (messages stay)`,
					onclick: () => deleteTag(t),
				}))));
		bar.hidden = tags.length === 0;
	}

	async function loadTags() {
		try {
			tags = await api('GET', '/api/v1/tags');
			renderBar();
		} catch (e) { /* the list shows connection trouble already */ }
	}

	async function renameTag(t) {
		const name = window.prompt(`Rename tag "${t}" to:`, t);
		if (name === null || !name.trim() || name.trim() === t) return;
		try {
			await api('PUT', `/api/v1/tags/${encodeURIComponent(t)}`, { Name: name.trim() });
		} catch (e) { toast(`Could not rename the tag: ${e.message}`); }
		refresh();
	}

	async function deleteTag(t) {
		if (!window.confirm(`Delete tag "${t}" from every message? The messages stay.`)) return;
		try {
			await api('DELETE', `/api/v1/tags/${encodeURIComponent(t)}`);
		} catch (e) { toast(`Could not delete the tag: ${e.message}`); }
		refresh();
	}

	// ---------------------------------------------------------------- reader editor

	const editor = h('div', { id: 'tag-editor', class: 'tag-editor', 'aria-label': 'Tags of this message' });
	let openId = null;
	let openTags = [];

	function currentId() {
		const m = /^#\/m\/([^/?#]+)/.exec(location.hash);
		return m ? decodeURIComponent(m[1]) : null;
	}

	function renderEditor() {
		const input = h('input', {
			type: 'text', class: 'tag-input', placeholder: 'Add tag', 'aria-label': 'Add a tag',
			maxlength: '100', autocomplete: 'off',
		});
		const form = h('form', {
			class: 'tag-add',
			onsubmit: (e) => {
				e.preventDefault();
				const v = input.value.trim();
				if (v) setTags([...openTags, v]);
			},
		}, input, h('button', { type: 'submit', class: 'btn', text: 'Add' }));
		editor.replaceChildren(
			...openTags.map((t) => h('span', { class: 'tag tag-chip', 'data-tag': t },
				t,
				h('button', {
					type: 'button', class: 'tag-act tag-remove', text: '×',
					'aria-label': `Remove tag ${t}`, title: `Remove ${t}`,
					onclick: () => setTags(openTags.filter((x) => x !== t)),
				}))),
			form);
	}

	// The reader's "Tags" line (app.js draws it when the message opens) follows the editor.
	function syncMetaLine() {
		const meta = $('#reader-meta');
		if (!meta) return;
		const row = [...meta.querySelectorAll('.meta-row')]
			.find((r) => (r.querySelector('dt') || {}).textContent === 'Tags');
		if (row) {
			if (openTags.length) row.querySelector('dd').textContent = openTags.join(', ');
			else row.remove();
		}
	}

	async function loadEditor() {
		openId = currentId();
		if (!openId) return;
		try {
			// the reader opened it already, so reading it again changes nothing
			const m = await api('GET', `/api/v1/message/${encodeURIComponent(openId)}`);
			openTags = m.Tags || [];
			renderEditor();
			syncMetaLine();
		} catch (e) { /* the reader says what went wrong */ }
	}

	async function setTags(list) {
		if (!openId) return;
		try {
			await api('PUT', '/api/v1/tags', { IDs: [openId], Tags: list });
		} catch (e) { toast(`Could not change the tags: ${e.message}`); }
		refresh();
	}

	function refresh() {
		loadTags();
		if (currentId()) loadEditor();
	}

	// ---------------------------------------------------------------- wiring

	function wire() {
		const pane = $('.list-pane');
		const list = $('#list');
		const meta = $('#reader-meta');
		if (!pane || !list || !meta) return;
		pane.insertBefore(bar, pane.firstElementChild);
		meta.after(editor);
		loadTags();
		if (currentId()) loadEditor();
		// app.js opens a message with history.pushState (no hashchange): watch the reader.
		window.addEventListener('hashchange', () => { if (currentId()) loadEditor(); });
		const subject = $('#reader-subject');
		if (subject) {
			new MutationObserver(() => {
				if (currentId() && currentId() !== openId) {
					openTags = [];
					editor.replaceChildren();
					loadEditor();
				}
			}).observe(subject, { childList: true, characterData: true, subtree: true });
		}
		// New messages may bring new tags, and the search box says which filter is on.
		let t = null;
		new MutationObserver(() => {
			clearTimeout(t);
			t = setTimeout(() => { loadTags(); if (currentId() === openId && openId) loadEditor(); }, 250);
		}).observe(list, { childList: true, subtree: true });
	}

	if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wire);
	else wire();
})();
