// tags.spec.mjs — end-to-end test of tags and live WebSocket events in tern capture's web UI,
// in headless Chromium (run by run.sh after capture.spec.mjs, against the same server).
//
// Owns: asserting what a user sees of tags — chips on list rows for plus-address and X-Tags
// tags, the tag bar (filter by tag, rename, delete), the reader's tag editor (add, remove) —
// and that Chromium's own WebSocket on /api/events gets Mailpit's {"Type":"new"} event live.
// Screenshots go to tests/e2e/artifacts/tags-*.png.
//
// Never: let the browser reach anything but 127.0.0.1, or wait without a bound.

import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.TERN_E2E_URL || '').replace(/\/$/, '');
const SMTP_PORT = Number(process.env.TERN_E2E_SMTP_PORT || 0);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.TERN_E2E_ARTIFACTS || join(HERE, 'artifacts');
const PYTHON = process.env.PYTHON || '/usr/bin/python3';
const WAIT = 10_000;

if (!BASE || !SMTP_PORT) {
	console.error('set TERN_E2E_URL and TERN_E2E_SMTP_PORT (or use run.sh)');
	process.exit(2);
}
const watchdog = setTimeout(() => { console.error('FAIL: watchdog'); process.exit(3); }, 120_000);

const log = (s) => console.log(`# ${s}`);
function check(cond, what) {
	if (!cond) throw new Error(`assertion failed: ${what}`);
	console.log(`ok - ${what}`);
}

function sendMail(subject, to, xtags) {
	const py = `
import smtplib, sys
subject, to, xtags, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
msg = f"From: <e2e@example.org>\\r\\nTo: <{to}>\\r\\nSubject: {subject}\\r\\n"
if xtags:
    msg += f"X-Tags: {xtags}\\r\\n"
msg += "\\r\\nbody\\r\\n"
with smtplib.SMTP("127.0.0.1", port, timeout=15) as c:
    c.sendmail("e2e@example.org", [to], msg)
`;
	const r = spawnSync(PYTHON, ['-c', py, subject, to, xtags || '', String(SMTP_PORT)],
		{ timeout: 30_000, encoding: 'utf8' });
	if (r.status !== 0) throw new Error(`smtplib failed: ${r.stderr || r.error}`);
}

async function api(path, opt) {
	const r = await fetch(BASE + path, { ...opt, signal: AbortSignal.timeout(WAIT) });
	if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
	const text = await r.text();
	return (r.headers.get('content-type') || '').includes('json') ? JSON.parse(text) : text;
}

async function until(fn, what) {
	const end = Date.now() + WAIT;
	for (;;) {
		const v = await fn();
		if (v) return v;
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 100));
	}
}

const isLocal = (u) => {
	try {
		const h = new URL(u).hostname;
		return h === '127.0.0.1' || h === 'localhost' || h === '[::1]';
	} catch (_) { return true; }
};

async function main() {
	mkdirSync(ARTIFACTS, { recursive: true });
	rmSync(join(ARTIFACTS, 'tags-failure.png'), { force: true });
	const work = mkdtempSync(join(tmpdir(), 'tern-e2e-tags-'));
	const context = await chromium.launchPersistentContext(join(work, 'profile'), {
		executablePath: CHROMIUM, headless: true, viewport: { width: 1400, height: 900 },
		timeout: 30_000,
		args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
			'--disable-component-update', '--disable-sync', '--no-first-run',
			'--proxy-server=http://127.0.0.1:9'],
	});
	await context.route((url) => !isLocal(url.href), (route) => route.abort('blockedbyclient'));
	const page = context.pages()[0] || await context.newPage();
	page.setDefaultTimeout(WAIT);
	const pageErrors = [];
	page.on('pageerror', (e) => pageErrors.push(String(e)));
	try {
		log('empty mailbox, UI loaded, a WebSocket on /api/events from the page');
		await api('/api/v1/messages', { method: 'DELETE', headers: { 'Content-Type': 'application/json' }, body: '{}' });
		await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
		await page.locator('#conn.ok').waitFor({ state: 'attached' });
		await page.evaluate(() => new Promise((resolve, reject) => {
			const ws = new WebSocket(`ws://${location.host}/api/events`);
			window.__events = [];
			ws.onmessage = (e) => window.__events.push(JSON.parse(e.data));
			ws.onopen = () => resolve();
			ws.onerror = () => reject(new Error('WebSocket error'));
		}));
		check(true, 'Chromium opened a WebSocket on /api/events');

		const run = randomBytes(3).toString('hex');
		const tagged = `Tagged ${run}`;
		const plain = `Plain ${run}`;
		log('send a message to a plus address with an X-Tags header, and an untagged one');
		sendMail(plain, 'ops@example.test', '');
		sendMail(tagged, `dev+feature${run}@example.test`, 'release, QA');

		const row = page.locator('#list button.msg', { hasText: tagged });
		await row.waitFor({ state: 'visible' });
		const chips = await row.locator('.tag').allTextContents();
		check(chips.includes(`feature${run}`) && chips.includes('release') && chips.includes('QA'),
			`list row shows the tags (${chips.join(', ')})`);
		const ev = await until(() => page.evaluate((s) => (window.__events || [])
			.find((e) => e.Type === 'new' && e.Data && e.Data.Subject === s), tagged), 'the WebSocket "new" event');
		check(ev.Data.Tags.includes('release'), 'the live WebSocket event carries the summary with its tags');
		check((await page.evaluate(() => window.__events[0].Type)) === 'stats', 'the first WebSocket event is stats');

		log('the tag bar filters the list');
		const filter = page.locator(`#tag-bar button.tag-filter[data-tag="feature${run}"]`);
		await filter.waitFor({ state: 'visible' });
		await page.screenshot({ path: join(ARTIFACTS, 'tags-list.png') });
		await filter.click();
		await page.locator('#list button.msg', { hasText: plain }).waitFor({ state: 'detached' });
		check(await page.locator('#list button.msg', { hasText: tagged }).count() === 1,
			'filtering by the tag leaves only the tagged message');
		await page.locator(`#tag-bar button.tag-filter[data-tag="feature${run}"][aria-pressed="true"]`)
			.waitFor({ state: 'visible' });
		check(true, 'the tag shows as the active filter');
		await page.locator('#clear-search').click();
		await page.locator('#list button.msg', { hasText: plain }).waitFor({ state: 'visible' });
		check(true, 'clearing the search shows every message again');

		log('the reader edits a message\'s tags');
		await page.locator('#list button.msg', { hasText: tagged }).click();
		const editor = page.locator('#tag-editor');
		await editor.locator('.tag-chip[data-tag="QA"]').waitFor({ state: 'visible' });
		await editor.locator('input.tag-input').fill('urgent');
		await editor.locator('form.tag-add button[type=submit]').click();
		await editor.locator('.tag-chip[data-tag="urgent"]').waitFor({ state: 'visible' });
		await editor.locator('button[aria-label="Remove tag QA"]').click();
		await editor.locator('.tag-chip[data-tag="QA"]').waitFor({ state: 'detached' });
		const id = await page.locator('#list button.msg', { hasText: tagged }).getAttribute('data-id');
		const m = await api(`/api/v1/message/${id}`);
		check(m.Tags.includes('urgent') && !m.Tags.includes('QA'), `the API agrees (${m.Tags.join(', ')})`);
		await page.locator('#reader-meta .meta-row', { hasText: 'urgent' }).waitFor({ state: 'visible' });
		await until(async () => {
			const t = await row.locator('.tag').allTextContents();
			return t.includes('urgent') && !t.includes('QA');
		}, 'the list row to show the new tags');
		check(true, 'the reader\'s Tags line and the list row follow the change');
		await page.screenshot({ path: join(ARTIFACTS, 'tags-reader.png') });

		log('rename and delete a tag from the tag bar');
		page.once('dialog', (d) => d.accept(`renamed${run}`));
		await page.locator('#tag-bar button[aria-label="Rename tag urgent"]').click();
		await page.locator(`#tag-bar button.tag-filter[data-tag="renamed${run}"]`).waitFor({ state: 'visible' });
		check((await api('/api/v1/tags')).includes(`renamed${run}`), 'the renamed tag is in the tags API');
		page.once('dialog', (d) => d.accept());
		await page.locator('#tag-bar button[aria-label="Delete tag release"]').click();
		await page.locator('#tag-bar button.tag-filter[data-tag="release"]').waitFor({ state: 'detached' });
		check(!(await api('/api/v1/tags')).includes('release'), 'the deleted tag is gone');
		check(pageErrors.length === 0, `no script errors (${pageErrors.join('; ')})`);
		console.log('PASS tags');
	} catch (e) {
		await page.screenshot({ path: join(ARTIFACTS, 'tags-failure.png') }).catch(() => {});
		console.log(`FAIL: ${e.message}`);
		process.exitCode = 1;
	} finally {
		await context.close();
		rmSync(work, { recursive: true, force: true });
		clearTimeout(watchdog);
	}
}

main();
