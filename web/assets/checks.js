/*
 * checks.js — the reader's check tabs of the capture-mode web UI: HTML Check (caniemail.com
 * support scores from /api/v1/message/{ID}/html-check), Link Check (each link's status, asked
 * only when the user presses the button: /link-check[?follow=true]) and Spam Check
 * (/sa-check: rspamd or SpamAssassin score and rules).
 *
 * app.js calls window.ternChecks.show(tab, msg) when one of these tabs is shown and
 * window.ternChecks.reset() when another message opens.
 *
 * Never: put server or message text into the page as HTML except caniemail's descriptions,
 * which come from the data embedded in tern (not from the message) and are shown as text too;
 * ask the network for a link check without the user's press; load anything from another origin.
 */
'use strict';

(() => {
	const $ = (sel) => document.querySelector(sel);
	const enc = encodeURIComponent;
	let cache = {};
	let current = null;

	function h(tag, attrs, ...children) {
		const n = document.createElement(tag);
		for (const [k, v] of Object.entries(attrs || {})) {
			if (v === undefined || v === null || v === false) continue;
			if (k === 'class') n.className = v;
			else if (k === 'text') n.textContent = v;
			else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
			else n.setAttribute(k, v === true ? '' : String(v));
		}
		for (const c of children) {
			if (c === null || c === undefined || c === false) continue;
			n.append(c instanceof Node ? c : document.createTextNode(String(c)));
		}
		return n;
	}

	const pct = (x) => `${(Math.round((x || 0) * 10) / 10).toFixed(1)}%`;

	// A 400 is the server saying why there is nothing to check (Mailpit's words, e.g. "message
	// does not contain HTML"): shown as a note, not as a failure.
	async function getJSON(path) {
		const r = await fetch(path, { headers: { Accept: 'application/json' } });
		if (r.status === 400) {
			const e = new Error((await r.text()).slice(0, 200).trim());
			e.note = true;
			throw e;
		}
		if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.text()).slice(0, 200)}`);
		return r.json();
	}

	function bar(total) {
		const seg = (cls, v, label) => h('span', { class: `bar-${cls}`, title: `${label} ${pct(v)}`,
			style: null, 'data-w': String(Math.round(v || 0)) });
		const b = h('div', { class: 'score-bar', role: 'img',
			'aria-label': `supported ${pct(total.Supported)}, partial ${pct(total.Partial)}, unsupported ${pct(total.Unsupported)}` },
		seg('yes', total.Supported, 'supported'), seg('partial', total.Partial, 'partial'),
		seg('no', total.Unsupported, 'unsupported'));
		// widths through CSSOM, not a style attribute (the page may be under a strict CSP)
		for (const s of b.children) s.style.width = `${s.dataset.w}%`;
		return b;
	}

	function renderHtmlCheck(r) {
		const body = $('#html-check-body');
		const t = r.Total || {};
		const out = [h('div', { class: 'check-summary' },
			h('div', { class: 'big', id: 'html-check-score', text: pct(t.Supported) }),
			h('div', null, h('div', { text: 'supported across the email clients caniemail.com tests' }),
				h('div', { class: 'muted', text: `partial ${pct(t.Partial)} · unsupported ${pct(t.Unsupported)} · ${t.Nodes || 0} nodes · ${t.Tests || 0} tests` }))),
		bar(t)];
		const warnings = r.Warnings || [];
		if (!warnings.length) out.push(h('p', { class: 'muted', text: 'Nothing found that some client does not support.' }));
		const table = h('table', { class: 'check-table', id: 'html-check-table' },
			h('caption', { class: 'vh', text: 'HTML and CSS features found' }),
			h('thead', null, h('tr', null, h('th', { scope: 'col', text: 'Feature' }),
				h('th', { scope: 'col', class: 'num', text: 'Found' }),
				h('th', { scope: 'col', class: 'num', text: 'Supported' }),
				h('th', { scope: 'col', class: 'num', text: 'Partial' }),
				h('th', { scope: 'col', class: 'num', text: 'Unsupported' }))));
		const tb = h('tbody');
		for (const w of warnings) {
			const s = w.Score || {};
			const no = (w.Results || []).filter((x) => x.Support === 'no').map((x) => x.Name);
			const part = (w.Results || []).filter((x) => x.Support === 'partial').map((x) => x.Name);
			const detail = h('details', null, h('summary', null, h('span', { class: 'feat', text: w.Title || w.Slug }),
				h('span', { class: 'muted mono', text: ` ${w.Slug}` })),
			w.URL ? h('a', { href: w.URL, target: '_blank', rel: 'noopener noreferrer', text: 'caniemail.com' }) : null,
			no.length ? h('p', null, h('strong', { text: 'Not supported: ' }), no.join(', ')) : null,
			part.length ? h('p', null, h('strong', { text: 'Partly: ' }), part.join(', ')) : null);
			tb.append(h('tr', { 'data-slug': w.Slug }, h('td', null, detail),
				h('td', { class: 'num', text: String(s.Found || 0) }),
				h('td', { class: 'num yes', text: pct(s.Supported) }),
				h('td', { class: 'num partial', text: pct(s.Partial) }),
				h('td', { class: 'num no', text: pct(s.Unsupported) })));
		}
		table.append(tb);
		if (warnings.length) out.push(table);
		body.replaceChildren(...out);
	}

	function renderLinkCheck(r) {
		const links = r.Links || [];
		const out = [h('p', { id: 'link-check-summary', text: `${links.length} link${links.length === 1 ? '' : 's'} checked, ${r.Errors || 0} with errors.` })];
		if (links.length) {
			const tb = h('tbody');
			for (const l of links) {
				const bad = !l.StatusCode || l.StatusCode >= 400;
				tb.append(h('tr', { class: bad ? 'bad' : 'good' },
					h('td', { class: 'num mono', text: l.StatusCode ? String(l.StatusCode) : '—' }),
					h('td', { text: l.Status || '' }),
					h('td', { class: 'mono url', text: l.URL })));
			}
			out.push(h('table', { class: 'check-table', id: 'link-check-table' },
				h('caption', { class: 'vh', text: 'Links and their status' }),
				h('thead', null, h('tr', null, h('th', { scope: 'col', class: 'num', text: 'Status' }),
					h('th', { scope: 'col', text: '' }), h('th', { scope: 'col', text: 'URL' }))), tb));
		}
		$('#link-check-body').replaceChildren(...out);
	}

	function renderSpamCheck(r) {
		const body = $('#sa-check-body');
		if (r.Error) {
			body.replaceChildren(h('p', { class: 'muted', id: 'sa-check-error', text: r.Error }));
			return;
		}
		const rules = r.Rules || [];
		const tb = h('tbody');
		for (const x of rules) {
			tb.append(h('tr', null, h('td', { class: 'num mono', text: (x.Score || 0).toFixed(1) }),
				h('td', { class: 'mono', text: x.Name }), h('td', { text: x.Description || '' })));
		}
		body.replaceChildren(
			h('div', { class: 'check-summary' }, h('div', { class: `big ${r.IsSpam ? 'no' : 'yes'}`, id: 'sa-check-score', text: (r.Score || 0).toFixed(1) }),
				h('div', { text: r.IsSpam ? 'Spam' : 'Not spam' })),
			h('table', { class: 'check-table', id: 'sa-check-table' },
				h('caption', { class: 'vh', text: 'Spam rules that matched' }),
				h('thead', null, h('tr', null, h('th', { scope: 'col', class: 'num', text: 'Score' }),
					h('th', { scope: 'col', text: 'Rule' }), h('th', { scope: 'col', text: 'Description' }))), tb));
	}

	async function load(kind, msg, query, render, bodySel) {
		const key = kind + (query || '');
		if (cache[key]) return;
		cache[key] = true;
		$(bodySel).replaceChildren(h('p', { class: 'muted', text: 'Checking…' }));
		try {
			const r = await getJSON(`/api/v1/message/${enc(msg.ID)}/${kind}${query || ''}`);
			if (current !== msg) return;
			render(r);
		} catch (e) {
			cache[key] = !!e.note;
			if (current !== msg) return;
			$(bodySel).replaceChildren(h('p', { class: e.note ? 'muted' : 'no', id: `${kind}-note`,
				text: String(e.message || e) }));
		}
	}

	window.ternChecks = {
		reset() {
			cache = {};
			current = null;
			$('#link-check-body').replaceChildren(h('p', { class: 'muted', text: 'Each http(s) link and image of the message is asked for its status when you press “Check links”.' }));
		},
		show(tab, msg) {
			if (!msg) return;
			current = msg;
			if (tab === 'html-check') load('html-check', msg, '', renderHtmlCheck, '#html-check-body');
			else if (tab === 'sa-check') load('sa-check', msg, '', renderSpamCheck, '#sa-check-body');
		},
	};

	document.addEventListener('DOMContentLoaded', () => {
		// Spam Check only when a scanner is configured, as in Mailpit's UI
		const saTab = $('#tab-sa-check');
		saTab.hidden = true;
		getJSON('/api/v1/webui').then((w) => { saTab.hidden = !(w && w.SpamAssassin); }, () => {});
		$('#link-check-run').addEventListener('click', () => {
			if (!current) return;
			const follow = $('#link-check-follow').checked;
			delete cache['link-check' + (follow ? '?follow=true' : '')];
			load('link-check', current, follow ? '?follow=true' : '', renderLinkCheck, '#link-check-body');
		});
	});
})();
