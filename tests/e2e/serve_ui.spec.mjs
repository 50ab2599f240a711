// serve_ui.spec.mjs — end-to-end test of `tern serve`'s web UI (/ui/) in headless Chromium.
//
// Owns: driving Debian's /usr/bin/chromium through playwright-core against a running
// `tern serve` that tests/integration/test_serve_ui.py started and filled (a delivered
// message, one deferred by a fake MX answering 451, a webhook endpoint pointed at a receiver
// that fails), and asserting through the API what each page's buttons did: login refusal and
// redirect, dashboard totals equal to the stats API and to the events API's counts, the
// per-domain table and latency count equal to the stats API, the queue's
// retry/hold/release/delete, the live event stream, suppression add/remove, an API key
// created (its token sends) and revoked (it no longer does), webhook attempts, the archive
// (a body word finds the message, hold and release, the export and raw links' bytes), logout.
// Saves a screenshot of each page to TERN_E2E_ARTIFACTS.
//
// Never: let the browser reach anything but 127.0.0.1 (non-loopback requests are aborted and a
// dead loopback proxy catches anything else), download a browser, or wait without a bound.
//
// Env: TERN_UI_URL, TERN_UI_USER, TERN_UI_PASSWORD, TERN_ADMIN_TOKEN, TERN_DEFER_QID,
//      TERN_WEBHOOK_ID, TERN_ARCHIVE_QID (an archived message whose body has the word
//      TERN_ARCHIVE_WORD), TERN_E2E_ARTIFACTS, CHROMIUM.

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.TERN_UI_URL || '').replace(/\/$/, '');
const USER = process.env.TERN_UI_USER;
const PASSWORD = process.env.TERN_UI_PASSWORD;
const TOKEN = process.env.TERN_ADMIN_TOKEN;
const DEFER_QID = process.env.TERN_DEFER_QID;
const WEBHOOK_ID = process.env.TERN_WEBHOOK_ID;
const ARCHIVE_QID = process.env.TERN_ARCHIVE_QID;
const ARCHIVE_WORD = process.env.TERN_ARCHIVE_WORD;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.TERN_E2E_ARTIFACTS || join(HERE, 'artifacts');
const WAIT = 15_000;
const WATCHDOG = Number(process.env.TERN_E2E_WATCHDOG_MS || 240_000);

if (!BASE || !USER || !PASSWORD || !TOKEN || !DEFER_QID || !WEBHOOK_ID || !ARCHIVE_QID || !ARCHIVE_WORD) {
	console.error('set TERN_UI_URL, TERN_UI_USER, TERN_UI_PASSWORD, TERN_ADMIN_TOKEN, TERN_DEFER_QID, TERN_WEBHOOK_ID, TERN_ARCHIVE_QID, TERN_ARCHIVE_WORD');
	process.exit(2);
}

const watchdog = setTimeout(() => {
	console.error(`FAIL: watchdog: the test took longer than ${WATCHDOG} ms`);
	process.exit(3);
}, WATCHDOG);

let step = 'start';
const log = (s) => { step = s; console.log(`# ${s}`); };
function check(cond, what) {
	if (!cond) throw new Error(`assertion failed: ${what}`);
	console.log(`ok - ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The API with the admin key (not the browser's session): what the server really holds.
async function api(method, path, body, token = TOKEN) {
	const headers = { Authorization: `Bearer ${token}` };
	if (body !== undefined) headers['Content-Type'] = 'application/json';
	const r = await fetch(BASE + path, {
		method, headers, body: body === undefined ? undefined : JSON.stringify(body),
		signal: AbortSignal.timeout(WAIT),
	});
	const text = await r.text();
	let json = null;
	try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
	return { status: r.status, json };
}

// Polls fn (async, returns truthy when done) every 250 ms for at most ms.
async function until(fn, what, ms = WAIT) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await fn();
		if (v) return v;
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
		await sleep(250);
	}
}

const TYPES = ['sent', 'delivered', 'deferred', 'bounced', 'complained', 'opened', 'clicked', 'suppressed'];

// The dashboard's reference: /api/v1/stats, or (no such route) the events of the last 24 h
// counted by type as the stats contract says ("sent" = queued).
async function referenceTotals() {
	const st = await api('GET', '/api/v1/stats?since=24h&bucket=hour&group=domain');
	if (st.status !== 200) throw new Error(`/api/v1/stats: HTTP ${st.status}`);
	return { totals: st.json.totals, groups: st.json.groups, latency: st.json.latency_ms, source: 'stats' };
}

async function eventTotals() {
	const totals = Object.fromEntries(TYPES.map((t) => [t, 0]));
	let cursor = null;
	const since = Math.floor(Date.now() / 1000) - 86400;
	for (let i = 0; i < 100; i++) {
		const r = await api('GET', `/api/v1/events?since=${since}&limit=1000` + (cursor ? `&cursor=${cursor}` : ''));
		if (r.status !== 200) throw new Error(`/api/v1/events: HTTP ${r.status}`);
		for (const e of r.json.events) {
			const k = e.type === 'queued' ? 'sent' : e.type;
			if (k in totals) totals[k]++;
		}
		cursor = r.json.next_cursor;
		if (!r.json.more) break;
	}
	return totals;
}

const isLocal = (u) => {
	try {
		const h = new URL(u).hostname;
		return h === '127.0.0.1' || h === 'localhost' || h === '[::1]';
	} catch (_) {
		return true;
	}
};

async function main() {
	mkdirSync(ARTIFACTS, { recursive: true });
	rmSync(join(ARTIFACTS, 'serve-ui-failure.png'), { force: true }); // from an earlier run
	const work = mkdtempSync(join(tmpdir(), 'tern-serve-ui-'));
	const profile = join(work, 'profile');
	mkdirSync(profile);
	const shot = (name) => page.screenshot({ path: join(ARTIFACTS, `serve-ui-${name}.png`), fullPage: true });

	log('launch chromium');
	const context = await chromium.launchPersistentContext(profile, {
		executablePath: CHROMIUM,
		headless: true,
		viewport: { width: 1400, height: 900 },
		timeout: 30_000,
		args: [
			'--no-sandbox', '--disable-gpu', '--disable-background-networking',
			'--disable-component-update', '--disable-sync', '--no-first-run',
			'--disable-default-apps', '--disable-domain-reliability',
			'--proxy-server=http://127.0.0.1:9',
		],
	});
	const offHost = [];
	await context.route((url) => !isLocal(url.href), (route) => {
		offHost.push(route.request().url());
		return route.abort('blockedbyclient');
	});
	const page = context.pages()[0] || await context.newPage();
	page.setDefaultTimeout(WAIT);
	const pageErrors = [];
	page.on('pageerror', (e) => pageErrors.push(String(e)));
	page.on('console', (m) => { if (m.type() === 'error') console.log(`  [console] ${m.text()}`); });
	page.on('dialog', (d) => d.accept()); // the confirm() of delete and revoke
	const ready = (name) => page.waitForSelector(`body[data-ready="${name}"]`);
	// GET a link's URL from the page itself: same origin, the session cookie as a click sends it.
	const inPage = async (href) => {
		const r = await page.evaluate(async (u) => {
			const x = await fetch(u, { credentials: 'same-origin' });
			return { status: x.status, ctype: x.headers.get('content-type'), bytes: Array.from(new Uint8Array(await x.arrayBuffer())) };
		}, href);
		return { ...r, bytes: Buffer.from(r.bytes) };
	};
	const go = async (hash) => {
		await page.evaluate((h) => { location.hash = h; }, hash);
		await ready(hash.slice(1).split('?')[0]);
	};

	try {
		log('no page without a login');
		await page.goto(`${BASE}/ui/#queue`);
		await page.waitForSelector('#login-form');
		check(new URL(page.url()).pathname === '/ui/login', `/ui/ redirects to the login page (${page.url()})`);
		await shot('login');

		log('a wrong password is refused');
		await page.fill('#login-user', USER);
		await page.fill('#login-password', 'not the password');
		await page.click('#login-submit');
		await page.waitForSelector('#login-error:not([hidden])', { timeout: 30_000 });
		check(/wrong user name or password/.test(await page.textContent('#login-error')), 'the error says so');
		check(new URL(page.url()).pathname === '/ui/login', 'still on the login page');
		await shot('login-refused');

		log('log in');
		await page.fill('#login-password', PASSWORD);
		await page.click('#login-submit');
		await ready('dashboard');
		check((await page.textContent('#who')) === USER, 'the header names the admin');
		const cookies = await context.cookies(BASE);
		const sc = cookies.find((c) => c.name === 'tern_ui');
		check(sc && sc.httpOnly && sc.sameSite === 'Strict', 'the session cookie is HttpOnly and SameSite=Strict');

		log('dashboard totals equal the API');
		let shown, ref;
		for (let i = 0; i < 8; i++) { // events may still arrive: both sides settle
			ref = await referenceTotals();
			await page.reload();
			await ready('dashboard');
			shown = {};
			for (const k of TYPES) shown[k] = Number(await page.textContent(`[data-testid="total-${k}"]`));
			const again = await referenceTotals();
			if (JSON.stringify(shown) === JSON.stringify(ref.totals) && JSON.stringify(again.totals) === JSON.stringify(ref.totals)) break;
			await sleep(500);
		}
		check(JSON.stringify(shown) === JSON.stringify(ref.totals),
			`dashboard totals ${JSON.stringify(shown)} equal the ${ref.source} API's ${JSON.stringify(ref.totals)}`);
		const byEvents = await eventTotals();
		check(JSON.stringify(shown) === JSON.stringify(byEvents),
			`and the events API's counts of the same 24 h ${JSON.stringify(byEvents)}`);
		check(shown.sent >= 2 && shown.delivered >= 1 && shown.deferred >= 1, 'the test mail is counted (sent, delivered, deferred)');
		const rows = await page.$$eval('tr[data-group]', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
		const want = ref.groups.map((g) => [g.name, ...TYPES.map((k) => String(g[k] || 0))]);
		check(JSON.stringify(rows) === JSON.stringify(want), `the per-domain table is the API's groups (${JSON.stringify(rows)})`);
		check(rows.some((r) => r[0] === 'defer.test' && r[3] === '1'), 'defer.test shows its deferral');
		check((await page.textContent('[data-testid="lat-count"]')) === String(ref.latency.count), 'the latency count is the API\'s');
		check(await page.isVisible('#chart .uplot'), 'the uPlot chart is drawn');
		check(/Apple Mail Privacy Protection/.test(await page.textContent('[data-testid="opens-note"]')), 'the opens note is shown');
		await shot('dashboard');

		log('queue');
		const q = await api('GET', '/api/v1/queue?state=all');
		{
			check(q.status === 200, '/api/v1/queue answers');
			await go('#queue');
			const row = `tr[data-queue-id="${DEFER_QID}"]`;
			await page.waitForSelector(row);
			check(/451/.test(await page.textContent(`${row} [data-testid="reason"]`)), 'the deferred message shows its 451 reason');
			await shot('queue');
			const inState = async (state) => {
				const r = await api('GET', `/api/v1/queue?state=${state}`);
				return r.status === 200 && r.json.messages.some((m) => m.queue_id === DEFER_QID);
			};
			await page.click(`${row} button[data-action="hold"]`);
			await until(() => inState('held'), 'the message to be held');
			check(true, 'Hold: the API lists the message as held');
			await ready('queue');
			await page.waitForSelector(`${row} button[data-action="release"]`);
			await page.click(`${row} button[data-action="release"]`);
			await until(async () => !(await inState('held')), 'the message to be released');
			check(true, 'Release: the API no longer lists it as held');
			await ready('queue');
			await page.waitForSelector(`${row} button[data-action="retry"]`);
			await page.click(`${row} button[data-action="retry"]`);
			/* The release's flash may still be showing: wait for the retry's own
			 * answer (its text starts with the action, or an error names it). */
			await page.waitForFunction(() => {
				const f = document.getElementById('flash');
				return f && !f.hidden && /retry/.test(f.textContent);
			}, null, { timeout: 20_000 });
			check(/retry: /.test(await page.textContent('#flash')), `Retry: the API took it (${await page.textContent('#flash')})`);
			await ready('queue');
			await page.click(`${row} button[data-action="delete"]`);
			await until(async () => !(await inState('all')), 'the message to leave the queue');
			check(true, 'Delete: the message is gone from the queue API');
		}

		log('events, live');
		await go('#events');
		await page.waitForSelector('#events-body tr');
		const sent = await api('POST', '/api/v1/messages', { from: 'live@example.test', to: ['alice@example.test'], subject: 'live', text: 'live\n' });
		check(sent.status === 202, 'a message sent while the events page is open');
		await page.waitForSelector(`#events-body tr:has(code:text-is("${sent.json.id}"))`, { timeout: 20_000 });
		check(true, 'its events appear without a reload');
		await shot('events');

		log('suppressions');
		const addr = 'ui-suppressed@example.test';
		await go('#suppressions');
		await page.fill('[data-testid="supp-address"]', addr);
		await page.fill('[data-testid="supp-detail"]', 'added in the UI');
		await page.click('[data-testid="supp-add"]');
		await page.waitForSelector(`tr[data-address="${addr}"]`);
		const got = await api('GET', `/api/v1/suppressions/${encodeURIComponent(addr)}`);
		check(got.status === 200 && got.json.reason === 'manual', 'the API has the address the UI added');
		await shot('suppressions');
		await page.click(`tr[data-address="${addr}"] button[data-action="delete"]`);
		await until(async () => (await api('GET', `/api/v1/suppressions/${encodeURIComponent(addr)}`)).status === 404, 'the suppression to go');
		check(true, 'Remove: the API no longer has it');

		log('API keys');
		await go('#keys');
		await page.fill('[data-testid="key-name"]', 'ui-made');
		await page.fill('[data-testid="key-domains"]', 'example.test');
		await page.click('[data-testid="key-create"]');
		const tokEl = await page.waitForSelector('[data-testid="new-token"]');
		const token = (await tokEl.textContent()).trim();
		check(/^tern_[0-9a-f]{16}_[0-9a-f]{64}$/.test(token), 'the new token is shown once');
		await shot('keys');
		const msg = { from: 'app@example.test', to: ['alice@example.test'], text: 'with the UI key\n' };
		check((await api('POST', '/api/v1/messages', msg, token)).status === 202, 'the key made in the UI sends');
		await page.click('tr[data-key="ui-made"] button[data-action="revoke"]');
		await page.waitForSelector('tr[data-key="ui-made"] [data-testid="key-state"]:text-matches("revoked")');
		check((await api('POST', '/api/v1/messages', msg, token)).status === 401, 'revoked in the UI, it no longer sends');
		await go('#keys');
		check(!(await page.textContent('#view')).includes(token), 'the token is not shown again');

		log('webhooks and their attempts');
		await until(async () => {
			const r = await api('GET', `/api/v1/webhooks/${WEBHOOK_ID}/attempts`);
			return r.status === 200 && r.json.attempts.length > 0;
		}, 'a webhook attempt', 30_000);
		await go('#webhooks');
		await page.click(`tr[data-webhook="${WEBHOOK_ID}"] button[data-action="attempts"]`);
		await page.waitForSelector('[data-testid="attempts-table"] [data-testid="attempt-status"]');
		const codes = await page.$$eval('[data-testid="attempt-status"]', (els) => els.map((e) => e.textContent));
		check(codes.includes('500'), `the failing receiver's 500 is listed (${codes.join(',')})`);
		await shot('webhooks');

		log('archive: search, hold, release, raw');
		{
			await go('#archive');
			await page.fill('[data-testid="archive-query"]', ARCHIVE_WORD);
			await page.click('[data-testid="archive-search"]');
			await page.waitForFunction((w) => location.hash.includes(`query=${w}`) && document.body.dataset.ready === 'archive', ARCHIVE_WORD);
			const row = `tr[data-archive-id="${ARCHIVE_QID}"]`;
			await page.waitForSelector(row);
			const ids = await page.$$eval('tr[data-archive-id]', (trs) => trs.map((tr) => tr.dataset.archiveId));
			check(JSON.stringify(ids) === JSON.stringify([ARCHIVE_QID]), `searching "${ARCHIVE_WORD}" lists exactly the archived message (${ids.join(',')})`);
			check((await page.textContent(`${row} [data-testid="archive-subject"]`)) === 'archived for the UI', 'the row shows its subject');
			check(/archiver@example\.org/.test(await page.textContent(`${row} [data-testid="archive-from"]`)), 'and its sender');
			check(/alice@example\.test/.test(await page.textContent(`${row} [data-testid="archive-to"]`)), 'and its recipient');
			check((await page.textContent('[data-testid="archive-range"]')) === '1–1 of 1', 'the pager says 1–1 of 1');
			const mboxHref = await page.getAttribute('[data-testid="archive-export-mbox"]', 'href');
			check(mboxHref === `/api/v1/archive/export?query=${ARCHIVE_WORD}&format=mbox`, `the mbox export link is for this query (${mboxHref})`);
			const zipHref = await page.getAttribute('[data-testid="archive-export-zip"]', 'href');
			const zr = await inPage(zipHref);
			check(zr.status === 200 && zr.ctype === 'application/zip' && zr.bytes.subarray(0, 4).equals(Buffer.from('PK\x03\x04', 'latin1')),
				'the zip export link answers a zip with the session');
			const held = async () => {
				const r = await api('GET', `/api/v1/archive?query=${ARCHIVE_WORD}`);
				return r.status === 200 && r.json.messages.length === 1 && r.json.messages[0].Hold;
			};
			check(!(await held()), 'not held before');
			await page.click(`${row} button[data-action="hold"]`);
			await until(held, 'the archived message to be held');
			check(true, 'Hold: the API says the message is held');
			await ready('archive');
			await page.waitForSelector(`${row} button[data-action="release"]`);
			check((await page.textContent(`${row} [data-testid="archive-hold"]`)) === 'held', 'the row says held');
			await page.click(`${row} button[data-action="release"]`);
			await until(async () => !(await held()), 'the archived message to be released');
			check(true, 'Release: the API says it is no longer held');
			await ready('archive');
			await page.waitForSelector(`${row} button[data-action="hold"]`);
			const rawHref = await page.getAttribute(`${row} a[data-action="raw"]`, 'href');
			check(rawHref === `/api/v1/archive/${ARCHIVE_QID}/raw`, `the raw link is the message's (${rawHref})`);
			const viaSession = await inPage(rawHref);
			const viaKey = await fetch(BASE + rawHref, { headers: { Authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(WAIT) });
			const b = Buffer.from(await viaKey.arrayBuffer());
			check(viaSession.status === 200 && viaKey.status === 200 && viaSession.bytes.length > 0 && viaSession.bytes.equals(b),
				`raw link bytes equal the API's (${b.length} bytes)`);
			await page.click(`${row} button[data-action="show"]`);
			const shownRaw = await page.waitForSelector('[data-testid="archive-raw"]');
			check((await shownRaw.textContent()).includes(`The word is ${ARCHIVE_WORD}.`), 'Show puts the message text on the page');
			check((await page.textContent('#archive-shown')) === `Message ${ARCHIVE_QID}${await shownRaw.textContent()}`, 'and nothing else');

			log('archive: delivery results, paging, a bad query');
			const dq = await api('GET', '/api/v1/archive?query=subject:deferred');
			const dm = dq.json.messages.find((m) => m.ID === DEFER_QID);
			check(dm && dm.Outcomes.some((o) => o.Recipient === 'someone@defer.test' && o.State), `the API records the deferred message's result (${JSON.stringify(dm && dm.Outcomes)})`);
			await go('#archive?query=subject:deferred');
			const drow = `tr[data-archive-id="${DEFER_QID}"]`;
			const outcome = await page.textContent(`${drow} [data-testid="archive-outcome"]`);
			const last = dm.Outcomes.reduce((a, o) => (o.Time >= a.Time ? o : a));
			const n = dm.Outcomes.length;
			const want = `someone@defer.test: ${last.State}` + (n > 1 ? ` (${n} results)` : '');
			check(outcome === want, `the row shows the latest result and how many (${outcome})`);
			const pageIds = async () => page.$$eval('tr[data-archive-id]', (trs) => trs.map((tr) => tr.dataset.archiveId));
			const apiIds = async (st) => (await api('GET', `/api/v1/archive?start=${st}&limit=2`)).json.messages.map((m) => m.ID);
			// the five messages sent (delivered, deferred, over SMTP, live, with the UI's key):
			// wait for the last ones to be archived, so the counts hold still while compared
			const all = await until(async () => {
				const n = (await api('GET', '/api/v1/archive?limit=1')).json.messages_count;
				return n >= 5 ? n : 0;
			}, 'the five messages to be archived');
			check(all >= 5, `at least 5 messages are archived (${all})`);
			await go('#archive?limit=2');
			check((await page.textContent('[data-testid="archive-range"]')) === `1–2 of ${all}`, 'two a page: 1–2');
			check(await page.isDisabled('[data-testid="archive-prev"]'), 'no newer page before the first');
			check(JSON.stringify(await pageIds()) === JSON.stringify(await apiIds(0)), 'the first page is the API\'s');
			await page.click('[data-testid="archive-next"]');
			await page.waitForFunction(() => /start=2/.test(location.hash) && document.body.dataset.ready === 'archive');
			check((await page.textContent('[data-testid="archive-range"]')) === `3–4 of ${all}`, 'Older: 3–4');
			check(JSON.stringify(await pageIds()) === JSON.stringify(await apiIds(2)), 'the second page is the API\'s start=2');
			await page.fill('[data-testid="archive-query"]', 'before:2026-13-01');
			await page.click('[data-testid="archive-search"]');
			const err = await page.waitForSelector('[data-testid="archive-error"]');
			check(/not a valid search/.test(await err.textContent()), `a bad query says so (${await err.textContent()})`);
			await go('#archive');
			await page.click(`${row} button[data-action="show"]`);
			await page.waitForSelector('[data-testid="archive-raw"]');
			await shot('archive');
		}

		log('logout');
		await page.click('#logout');
		await page.waitForSelector('#login-form');
		await page.goto(`${BASE}/ui/`);
		await page.waitForSelector('#login-form');
		check(new URL(page.url()).pathname === '/ui/login', 'after logout /ui/ asks for a login again');
		check(pageErrors.length === 0, `no JavaScript errors in the UI (${pageErrors.join('; ')})`);
		check(offHost.length === 0, `no off-host requests (${offHost.join(', ')})`);
		console.log('PASS');
	} catch (e) {
		try { await shot('failure'); } catch (_) { /* ignore */ }
		throw e;
	} finally {
		await context.close().catch(() => {});
		rmSync(work, { recursive: true, force: true });
	}
}

main().then(() => { clearTimeout(watchdog); process.exit(0); }, (e) => {
	console.error(`FAIL at step "${step}": ${e && e.stack ? e.stack : e}`);
	clearTimeout(watchdog);
	process.exit(1);
});
