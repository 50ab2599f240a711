// capture.spec.mjs — end-to-end test of tern capture's web UI in headless Chromium.
//
// Owns: driving Debian's /usr/bin/chromium through playwright-core against a running
// `tern capture` (TERN_E2E_URL, TERN_E2E_SMTP_PORT; started by run.sh), sending mail over SMTP
// with /usr/bin/python3's smtplib, and asserting what a user sees: live arrival, unread count,
// rendered HTML in the sandboxed iframe, blocked remote content, inline cid images, tabs,
// attachment download, search, keyboard use, delete one and delete all. Saves screenshots
// to tests/e2e/artifacts/.
//
// Never: let the browser reach anything but 127.0.0.1 (non-loopback requests are recorded and
// aborted before they leave, and a dead loopback proxy catches anything else), download a
// browser, or wait without a bound (every wait has a timeout; a watchdog ends the run).
//
// Run: ./run.sh (starts tern), or by hand against a running server:
//   TERN_E2E_URL=http://127.0.0.1:8025 TERN_E2E_SMTP_PORT=1025 node capture.spec.mjs

import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.TERN_E2E_URL || '').replace(/\/$/, '');
const SMTP_PORT = Number(process.env.TERN_E2E_SMTP_PORT || 0);
const SMTP_HOST = process.env.TERN_E2E_SMTP_HOST || '127.0.0.1';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.TERN_E2E_ARTIFACTS || join(HERE, 'artifacts');
const PYTHON = process.env.PYTHON || '/usr/bin/python3';
const WAIT = 10_000; // one UI expectation
const WATCHDOG = Number(process.env.TERN_E2E_WATCHDOG_MS || 150_000);

if (!BASE || !SMTP_PORT) {
	console.error('set TERN_E2E_URL and TERN_E2E_SMTP_PORT (or use run.sh)');
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

// 2x2 red PNG, the inline image.
const PNG = Buffer.from(
	'iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==',
	'base64');
const REMOTE_HOST = '192.0.2.1';

// Sends one message with smtplib: text + HTML (inline cid image, remote image) and optional
// binary attachment. Returns nothing; throws with smtplib's output on failure.
function sendMail(work, { subject, from, to, html, text, attachment, inline }) {
	const spec = join(work, `mail-${randomBytes(4).toString('hex')}.json`);
	const files = {};
	if (attachment) {
		files.att = join(work, `att-${randomBytes(4).toString('hex')}`);
		writeFileSync(files.att, attachment.data);
	}
	if (inline) {
		files.inl = join(work, `inl-${randomBytes(4).toString('hex')}`);
		writeFileSync(files.inl, inline.data);
	}
	writeFileSync(spec, JSON.stringify({
		host: SMTP_HOST, port: SMTP_PORT, subject, from, to, html, text,
		att: attachment ? { path: files.att, name: attachment.name } : null,
		inl: inline ? { path: files.inl, cid: inline.cid } : null,
	}));
	const py = `
import json, smtplib, sys
from email.message import EmailMessage
s = json.load(open(sys.argv[1]))
m = EmailMessage()
m['From'] = s['from']; m['To'] = ', '.join(s['to']); m['Subject'] = s['subject']
m.set_content(s['text'])
if s['html']:
    m.add_alternative(s['html'], subtype='html')
    if s['inl']:
        m.get_payload()[1].add_related(open(s['inl']['path'], 'rb').read(), 'image', 'png',
                                       cid='<' + s['inl']['cid'] + '>', filename='logo.png',
                                       disposition='inline')
if s['att']:
    m.add_attachment(open(s['att']['path'], 'rb').read(), maintype='application',
                     subtype='octet-stream', filename=s['att']['name'])
with smtplib.SMTP(s['host'], s['port'], timeout=15) as c:
    c.send_message(m)
`;
	const r = spawnSync(PYTHON, ['-c', py, spec], { timeout: 30_000, encoding: 'utf8' });
	if (r.status !== 0) throw new Error(`smtplib failed (${r.status ?? r.signal}): ${r.stderr || r.error}`);
}

async function api(path, opt) {
	const r = await fetch(BASE + path, { ...opt, signal: AbortSignal.timeout(WAIT) });
	if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
	const text = await r.text();
	return (r.headers.get('content-type') || '').includes('json') ? JSON.parse(text) : text;
}

const isLocal = (u) => {
	try {
		const h = new URL(u).hostname;
		return h === '127.0.0.1' || h === 'localhost' || h === '[::1]';
	} catch (_) {
		return true; // data:, about:, blob: — nothing on the network
	}
};

async function main() {
	mkdirSync(ARTIFACTS, { recursive: true });
	rmSync(join(ARTIFACTS, 'capture-failure.png'), { force: true }); // from an earlier run
	const work = mkdtempSync(join(tmpdir(), 'tern-e2e-browser-'));
	const profile = join(work, 'profile');
	mkdirSync(profile);

	log('launch chromium');
	const context = await chromium.launchPersistentContext(profile, {
		executablePath: CHROMIUM,
		headless: true,
		acceptDownloads: true,
		viewport: { width: 1400, height: 900 },
		timeout: 30_000,
		args: [
			'--no-sandbox', '--disable-gpu', '--disable-background-networking',
			'--disable-component-update', '--disable-sync', '--no-first-run',
			'--disable-default-apps', '--disable-domain-reliability',
			// A dead loopback proxy: if anything escaped interception it still could not
			// leave the machine. Loopback bypasses proxies by default.
			'--proxy-server=http://127.0.0.1:9',
		],
	});
	const offHost = []; // every non-loopback request the browser tried to make
	await context.route((url) => !isLocal(url.href), (route) => {
		offHost.push(route.request().url());
		return route.abort('blockedbyclient');
	});
	const page = context.pages()[0] || await context.newPage();
	page.setDefaultTimeout(WAIT);
	const pageErrors = [];
	page.on('pageerror', (e) => pageErrors.push(String(e)));
	page.on('console', (m) => {
		// Playwright's own probes into the script-less sandboxed frame log "Blocked script
		// execution"; that is the sandbox working, not something the mail tried.
		if (m.type() === 'error' && !/^Blocked script execution/.test(m.text())) console.log(`  [console] ${m.text()}`);
	});
	const requests = [];
	page.on('request', (r) => requests.push(r.url()));
	const failed = new Map(); // url -> Chromium's reason ("csp" when a CSP stopped it)
	page.on('requestfailed', (r) => failed.set(r.url(), r.failure() && r.failure().errorText));
	let mainNavigations = 0;
	page.on('framenavigated', (f) => { if (f === page.mainFrame()) mainNavigations++; });

	try {
		log('start from an empty mailbox');
		await api('/api/v1/messages', { method: 'DELETE', headers: { 'Content-Type': 'application/json' }, body: '{}' });
		await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
		await page.locator('#conn.ok').waitFor({ state: 'attached' });
		check(true, 'UI loaded and the /api/events stream is connected');
		await page.locator('#empty').waitFor({ state: 'visible' });
		check(await page.locator('#list button.msg').count() === 0, 'list starts empty');

		log('send an HTML mail with an attachment, an inline cid image and a remote image');
		const tag = randomBytes(3).toString('hex');
		const subject = `Invoice ${tag} from the e2e test`;
		const attData = Buffer.concat([randomBytes(6000), Buffer.from('\r\n.\r\n\x00\xff end')]);
		const html = `<!doctype html><html><head><title>t</title></head><body>
<h1 id="greeting">Hello from tern e2e ${tag}</h1>
<p>Inline logo: <img id="inline" src="cid:logo-${tag}@tern.test" alt="logo" width="20" height="20"></p>
<p>Tracking pixel: <img id="remote" src="http://${REMOTE_HOST}/x.png" alt="remote"></p>
<p><a href="https://example.com/">a link</a></p>
</body></html>`;
		sendMail(work, {
			subject, from: 'Alice Sender <alice@example.com>', to: ['bob@example.com'], html,
			text: `Hello from tern e2e ${tag} (plain text part)`,
			attachment: { name: 'report.bin', data: attData },
			inline: { cid: `logo-${tag}@tern.test`, data: PNG },
		});

		log('the message appears in the list without a reload');
		const item = page.locator('#list button.msg', { hasText: subject });
		await item.waitFor({ state: 'visible' });
		check(mainNavigations === 1, 'arrived live (no page navigation since the first load)');
		check(await item.evaluate((b) => b.classList.contains('unread')), 'new message is styled unread');
		await page.locator('#unread-badge', { hasText: '1 unread' }).waitFor({ state: 'visible' });
		check(true, 'unread count shows 1');
		check((await item.textContent()).includes('Alice Sender'), 'list row shows the sender');
		await page.screenshot({ path: join(ARTIFACTS, 'capture-list.png') });

		log('open it');
		await item.click();
		await page.locator('#reader-subject', { hasText: subject }).waitFor({ state: 'visible' });
		check(true, 'reader shows the subject');
		const id = await item.getAttribute('data-id');
		check(new URL(page.url()).hash === `#/m/${id}`, 'URL hash names the open message');

		log('rendered HTML in the sandboxed iframe');
		const frameEl = page.locator('#html-frame');
		const sandbox = await frameEl.getAttribute('sandbox');
		check(sandbox !== null && !/allow-scripts/.test(sandbox) && !/allow-same-origin/.test(sandbox),
			`iframe sandbox has neither allow-scripts nor allow-same-origin ("${sandbox}")`);
		check((await frameEl.getAttribute('src')) === `/view/${id}.html?embed=1`, 'iframe loads /view/ID.html?embed=1');
		const frame = page.frameLocator('#html-frame');
		const greeting = frame.locator('#greeting');
		await greeting.waitFor({ state: 'visible' });
		check((await greeting.textContent()).trim() === `Hello from tern e2e ${tag}`, 'HTML body text is rendered in the iframe');
		const view = await fetch(`${BASE}/view/${id}.html?embed=1`, { signal: AbortSignal.timeout(WAIT) });
		const csp = view.headers.get('content-security-policy') || '';
		check(/img-src/.test(csp) || /default-src/.test(csp), `/view/ID.html is served with a CSP ("${csp}")`);

		log('inline cid image renders');
		const inlineOk = await frame.locator('#inline').evaluate((img) => new Promise((res) => {
			const done = () => res({ w: img.naturalWidth, src: img.currentSrc || img.src });
			if (img.complete) done(); else { img.onload = done; img.onerror = done; setTimeout(done, 5000); }
		}));
		check(inlineOk.w > 0, `inline cid image loaded (naturalWidth ${inlineOk.w}, src ${inlineOk.src.slice(0, 60)})`);

		log('remote image is blocked');
		const remote = await frame.locator('#remote').evaluate((img) => new Promise((res) => {
			const done = () => res(img.naturalWidth);
			if (img.complete) done(); else { img.onload = done; img.onerror = done; setTimeout(done, 3000); }
		}));
		check(remote === 0, 'remote image did not load (naturalWidth 0)');
		// Chromium reports a CSP-blocked load as a request that failed with "csp"; the network
		// stage (our route) must never see it.
		check(!offHost.some((u) => u.includes(REMOTE_HOST)), `no request to ${REMOTE_HOST} reached the network stage`);
		const tried = requests.filter((u) => u.includes(REMOTE_HOST));
		check(tried.every((u) => failed.get(u) === 'csp'),
			`the iframe's CSP stopped the remote image (${tried.map((u) => `${u}: ${failed.get(u)}`).join(', ') || 'not requested'})`);
		check(await page.locator('#show-remote').isVisible(), '"Show remote images" is offered');
		check(await page.locator('#remote-note').isVisible(), 'the user is told remote content is blocked');

		log('a link in the mail opens a new tab, not inside the preview');
		const [popup] = await Promise.all([
			context.waitForEvent('page', { timeout: WAIT }),
			frame.locator('a', { hasText: 'a link' }).click(),
		]);
		check(true, 'clicking a link opened a new tab (its request is aborted off-host)');
		await popup.close();
		await greeting.waitFor({ state: 'visible' });
		check(true, 'the preview still shows the message');

		log('marked read when opened');
		await page.waitForFunction((i) => {
			const b = document.querySelector(`#list button.msg[data-id="${i}"]`);
			return b && !b.classList.contains('unread') && document.querySelector('#unread-badge').hidden;
		}, id, { timeout: WAIT });
		check(true, 'row no longer unread, unread badge gone');
		const list1 = await api('/api/v1/messages');
		check(list1.unread === 0 && list1.messages[0].Read === true, 'server agrees the message is read');

		log('preview widths');
		for (const [name, want] of [['Phone', 375], ['Tablet', 768]]) {
			await page.getByRole('button', { name, exact: true }).click();
			await page.waitForTimeout(250); // the width transition
			const box = await frameEl.boundingBox();
			check(Math.abs(box.width - want) <= 1, `${name} preview is ${want}px wide (got ${box.width})`);
		}
		await page.getByRole('button', { name: 'Desktop', exact: true }).click();
		await page.waitForTimeout(250);
		check((await frameEl.boundingBox()).width > 800, 'Desktop preview uses the full width');
		await page.screenshot({ path: join(ARTIFACTS, 'capture-reader.png') });

		log('attachment download');
		const attLink = page.locator('#attachments a', { hasText: 'report.bin' });
		const [download] = await Promise.all([page.waitForEvent('download'), attLink.click()]);
		const got = readFileSync(await download.path());
		check(download.suggestedFilename() === 'report.bin', 'download is named report.bin');
		check(got.equals(attData), `downloaded bytes equal the attachment (${got.length} bytes)`);

		log('tabs: text, headers, raw, MIME');
		await page.getByRole('tab', { name: 'Text' }).click();
		await page.locator('#text-body', { hasText: '(plain text part)' }).waitFor({ state: 'visible' });
		check(true, 'Text tab shows the plain-text part');
		await page.getByRole('tab', { name: 'Headers' }).click();
		await page.locator('#headers-body tr', { hasText: subject }).first().waitFor({ state: 'visible' });
		check(true, 'Headers tab lists the Subject header');
		await page.getByRole('tab', { name: 'Raw source' }).click();
		await page.locator('#raw-body', { hasText: 'multipart/mixed' }).waitFor({ state: 'visible' });
		check((await page.locator('#raw-body').textContent()).includes(`Subject: ${subject}`), 'Raw tab shows the source');
		await page.getByRole('tab', { name: 'MIME structure' }).click();
		await page.locator('#parts-body tr', { hasText: 'report.bin' }).waitFor({ state: 'visible' });
		const partsText = await page.locator('#parts-body').textContent();
		check(/attachment/.test(partsText) && /inline/.test(partsText) && /image\/png/.test(partsText),
			'MIME tab lists the attachment and the inline image with types');
		check((await page.locator('#mime-tree').textContent()).includes('multipart/related'), 'MIME tree shows multipart/related');
		await page.getByRole('tab', { name: 'HTML', exact: true }).click();

		log('show remote images (request is aborted by the test before it leaves the machine)');
		await page.locator('#show-remote').click();
		check((await frameEl.getAttribute('src')) === `/view/${id}.html?embed=1&remote=1`, 'iframe reloads with remote=1');
		await frame.locator('#greeting').waitFor({ state: 'visible' });
		const t0 = Date.now();
		while (!offHost.some((u) => u.includes(REMOTE_HOST)) && Date.now() - t0 < 5000) await page.waitForTimeout(100);
		check(offHost.some((u) => u.includes(REMOTE_HOST)), 'with remote images allowed the browser asks for the remote image');

		log('delete it');
		await page.locator('#delete-one').click();
		await page.locator('#empty').waitFor({ state: 'visible' });
		check(await page.locator('#list button.msg').count() === 0, 'list is empty after delete');
		check(await page.locator('#reader').isHidden(), 'reader closed');
		check((await api('/api/v1/messages')).total === 0, 'server has no messages');

		log('two more: search, keyboard, delete all');
		for (const w of ['alpha', 'beta']) {
			sendMail(work, { subject: `Greek ${w} ${tag}`, from: `${w}@example.com`, to: ['carol@example.com'],
				html: null, text: `letter ${w}` });
		}
		await page.locator('#list button.msg').nth(1).waitFor({ state: 'visible' });
		check(await page.locator('#list button.msg').count() === 2, 'both arrive live');
		await page.locator('#unread-badge', { hasText: '2 unread' }).waitFor({ state: 'visible' });
		check(true, 'unread count shows 2');

		await page.keyboard.press('/');
		check(await page.evaluate(() => document.activeElement.id) === 'search', '/ focuses search');
		await page.keyboard.type('subject:alpha');
		await page.keyboard.press('Enter');
		await page.waitForFunction(() => document.querySelectorAll('#list button.msg').length === 1, null, { timeout: WAIT });
		check((await page.locator('#list button.msg').textContent()).includes('alpha'), 'search subject:alpha finds only alpha');
		await page.keyboard.press('Escape'); // clears the search
		await page.waitForFunction(() => document.querySelectorAll('#list button.msg').length === 2, null, { timeout: WAIT });
		check(true, 'Escape in search clears it');

		await page.locator('#search').blur();
		await page.keyboard.press('j');
		await page.keyboard.press('k');
		await page.keyboard.press('Enter');
		await page.locator('#reader-subject', { hasText: `Greek beta ${tag}` }).waitFor({ state: 'visible' });
		check(true, 'j/k move and Enter opens the newest message');
		check(await page.locator('#tab-html').isHidden(), 'no HTML tab for a text-only message');
		await page.keyboard.press('Escape');
		await page.locator('#reader').waitFor({ state: 'hidden' });
		check(true, 'Escape goes back to the list');
		await page.keyboard.press('Delete');
		await page.waitForFunction(() => document.querySelectorAll('#list button.msg').length === 1, null, { timeout: WAIT });
		check((await page.locator('#list button.msg').textContent()).includes('alpha'), 'Delete key deleted the selected message');

		sendMail(work, { subject: `Greek gamma ${tag}`, from: 'gamma@example.com', to: ['carol@example.com'], html: null, text: 'g' });
		await page.locator('#list button.msg', { hasText: 'gamma' }).waitFor({ state: 'visible' });
		await page.locator('#delete-all').click();
		await page.locator('#confirm-dialog').waitFor({ state: 'visible' });
		await page.locator('#confirm-ok').click();
		await page.locator('#empty').waitFor({ state: 'visible' });
		check(await page.locator('#list button.msg').count() === 0, 'Delete all empties the list');
		check((await api('/api/v1/messages')).total === 0, 'server has no messages after Delete all');
		await page.screenshot({ path: join(ARTIFACTS, 'capture-empty.png') });

		check(pageErrors.length === 0, `no JavaScript errors in the UI (${pageErrors.join('; ')})`);
		const strays = offHost.filter((u) => !u.includes(REMOTE_HOST) && !u.startsWith('https://example.com/'));
		check(strays.length === 0, `no other off-host requests (${strays.join(', ')})`);
		console.log(`screenshot: ${join(ARTIFACTS, 'capture-reader.png')}`);
		console.log('PASS');
	} catch (e) {
		try { await page.screenshot({ path: join(ARTIFACTS, 'capture-failure.png') }); } catch (_) { /* ignore */ }
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
