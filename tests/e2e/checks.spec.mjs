// checks.spec.mjs — end-to-end test of the reader's check tabs and message-view fixes in
// headless Chromium (issue 14 item 1): HTML Check lists flexbox with caniemail's verdicts,
// Link Check asks a loopback server's links on request (200 and 404), Spam Check is hidden when
// no scanner is set, the Headers tab shows RFC 2047 encoded words decoded (the raw value one click
// away), and at phone width (375 px) the MIME parts table keeps words whole and its Download
// link in view. Saves capture-checks.png and capture-phone-parts.png to tests/e2e/artifacts/.
//
// Never: let the browser reach anything but 127.0.0.1 (other requests are aborted), download a
// browser, or wait without a bound.
//
// Run: ./run.sh (starts tern and runs every *.spec.mjs), or against a running server:
//   TERN_E2E_URL=http://127.0.0.1:8025 TERN_E2E_SMTP_PORT=1025 node checks.spec.mjs

import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.TERN_E2E_URL || '').replace(/\/$/, '');
const SMTP_PORT = Number(process.env.TERN_E2E_SMTP_PORT || 0);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.TERN_E2E_ARTIFACTS || join(HERE, 'artifacts');
const PYTHON = process.env.PYTHON || '/usr/bin/python3';
const WAIT = 15_000;
const WATCHDOG = Number(process.env.TERN_E2E_WATCHDOG_MS || 120_000);

let step = 'start';
const watchdog = setTimeout(() => {
	console.error(`FAIL: watchdog after ${WATCHDOG} ms at step "${step}"`);
	process.exit(1);
}, WATCHDOG);
const log = (s) => { step = s; console.log(`# ${s}`); };
function check(cond, what) {
	if (!cond) throw new Error(`check failed: ${what}`);
	console.log(`ok - ${what}`);
}

const isLocal = (u) => {
	try {
		const h = new URL(u).hostname;
		return h === '127.0.0.1' || h === 'localhost' || h === '[::1]';
	} catch (_) {
		return true;
	}
};

function sendRaw(work, raw) {
	const f = join(work, `raw-${randomBytes(4).toString('hex')}.eml`);
	writeFileSync(f, raw);
	const py = `
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[2]), timeout=15) as c:
    c.sendmail('sender@example.org', ['bob@example.com'], open(sys.argv[1], 'rb').read())
`;
	const r = spawnSync(PYTHON, ['-c', py, f, String(SMTP_PORT)], { timeout: 30_000, encoding: 'utf8' });
	if (r.status !== 0) throw new Error(`smtplib failed: ${r.stderr || r.error}`);
}

async function main() {
	if (!BASE || !SMTP_PORT) throw new Error('set TERN_E2E_URL and TERN_E2E_SMTP_PORT (run.sh does)');
	mkdirSync(ARTIFACTS, { recursive: true });
	const work = mkdtempSync(join(tmpdir(), 'tern-e2e-checks-'));
	// the links of the mail: /ok answers 200, anything else 404
	const links = createServer((req, res) => {
		res.writeHead(req.url === '/ok' ? 200 : 404, { 'Content-Length': '0' });
		res.end();
	});
	await new Promise((ok) => links.listen(0, '127.0.0.1', ok));
	const lp = links.address().port;
	const context = await chromium.launchPersistentContext(join(work, 'profile'), {
		executablePath: CHROMIUM, headless: true, viewport: { width: 1400, height: 900 }, timeout: 30_000,
		args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
			'--disable-component-update', '--disable-sync', '--proxy-server=http://127.0.0.1:9'],
	});
	await context.route((url) => !isLocal(url.href), (route) => route.abort('blockedbyclient'));
	const page = context.pages()[0] || await context.newPage();
	page.setDefaultTimeout(WAIT);
	const pageErrors = [];
	page.on('pageerror', (e) => pageErrors.push(String(e)));
	try {
		log('send a mail: encoded-word subject, flexbox HTML, two links, an attachment');
		const tag = randomBytes(3).toString('hex');
		const html = `<html><head><style>.row { display: flex; }</style></head><body>` +
			`<div class="row"><a href="http://127.0.0.1:${lp}/ok">ok</a>` +
			`<a href="http://127.0.0.1:${lp}/gone">gone</a></div></body></html>`;
		const raw = [
			'From: Sender <sender@example.org>', 'To: bob@example.com',
			`Subject: =?UTF-8?Q?Caf=C3=A9_check_${tag}?=`, 'MIME-Version: 1.0',
			'Content-Type: multipart/mixed; boundary="b"', '',
			'--b', 'Content-Type: text/html; charset=utf-8', '', html,
			'--b', 'Content-Type: application/pdf; name="quarterly-financial-report-final.pdf"',
			'Content-Disposition: attachment; filename="quarterly-financial-report-final.pdf"',
			'Content-Transfer-Encoding: base64', '', 'JVBERi0xLjQK', '--b--', ''].join('\r\n');
		await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
		await page.locator('#conn.ok').waitFor({ state: 'attached' });
		sendRaw(work, raw);
		const subject = `Café check ${tag}`;
		const item = page.locator('#list button.msg', { hasText: subject });
		await item.waitFor({ state: 'visible' });
		await item.click();
		await page.locator('#reader-subject', { hasText: subject }).waitFor({ state: 'visible' });

		log('Headers tab decodes encoded words');
		await page.getByRole('tab', { name: 'Headers' }).click();
		const subjRow = page.locator('#headers-body tr', { has: page.locator('th', { hasText: /^Subject$/ }) });
		await subjRow.locator('.hdr-value', { hasText: subject }).waitFor({ state: 'visible' });
		check(true, 'Subject shows decoded');
		const rawCode = subjRow.locator('details.hdr-raw code');
		check((await rawCode.textContent()).includes('=?UTF-8?Q?Caf=C3=A9'), 'the raw encoded value is kept');
		check(await rawCode.isHidden(), 'the raw value is folded away until asked');

		log('HTML Check tab');
		await page.getByRole('tab', { name: 'HTML Check' }).click();
		const flexRow = page.locator('#html-check-table tr[data-slug="css-display-flex"]');
		await flexRow.waitFor({ state: 'visible' });
		check(true, 'display:flex is listed');
		await page.locator('#html-check-table tr[data-slug="html-style"]').waitFor({ state: 'visible' });
		check(true, '<style> is listed');
		await flexRow.locator('summary').click();
		check(/Outlook Windows/.test(await flexRow.textContent()), 'flexbox names Outlook on Windows as not supporting it');
		check(/%$/.test((await page.locator('#html-check-score').textContent()).trim()), 'an overall score is shown');
		await page.screenshot({ path: join(ARTIFACTS, 'capture-checks.png') });

		log('Link Check tab: nothing asked before the button');
		await page.getByRole('tab', { name: 'Link Check' }).click();
		check(await page.locator('#link-check-table').count() === 0, 'no check before the press');
		await page.locator('#link-check-run').click();
		await page.locator('#link-check-table').waitFor({ state: 'visible' });
		const linkText = await page.locator('#link-check-table').textContent();
		check(linkText.includes(`http://127.0.0.1:${lp}/ok`) && /200/.test(linkText), 'the good link answers 200');
		check(linkText.includes(`http://127.0.0.1:${lp}/gone`) && /404/.test(linkText), 'the dead link answers 404');
		check((await page.locator('#link-check-summary').textContent()).includes('1 with errors'), 'one error counted');

		log('no Spam Check tab without a scanner');
		check(await page.locator('#tab-sa-check').isHidden(), 'Spam Check tab is hidden (no scanner configured)');

		log('HTML Check of a text-only message says why there is nothing to check');
		sendRaw(work, `From: s@example.org\r\nTo: bob@example.com\r\nSubject: plain ${tag}\r\n\r\nno html\r\n`);
		await page.locator('#list button.msg', { hasText: `plain ${tag}` }).click();
		await page.locator('#reader-subject', { hasText: `plain ${tag}` }).waitFor({ state: 'visible' });
		await page.getByRole('tab', { name: 'HTML Check' }).click();
		await page.locator('#html-check-note', { hasText: 'message does not contain HTML' }).waitFor({ state: 'visible' });
		check(true, 'HTML Check explains there is no HTML');
		await page.locator('#list button.msg', { hasText: subject }).click();
		await page.locator('#reader-subject', { hasText: subject }).waitFor({ state: 'visible' });

		log('phone width: the MIME parts table');
		await page.setViewportSize({ width: 375, height: 800 });
		await page.getByRole('tab', { name: 'MIME structure' }).click();
		const fname = page.locator('#parts-body td.fname', { hasText: 'quarterly' });
		await fname.waitFor({ state: 'visible' });
		const fb = await fname.boundingBox();
		const lineHeight = await fname.evaluate((e) => parseFloat(getComputedStyle(e).lineHeight) || 18);
		check(fb.height < lineHeight * 4, `the file name takes a few lines, not a letter a line (${fb.height}px)`);
		const pid = page.locator('#parts-body td.mono').first();
		check((await pid.boundingBox()).width > 8, 'the PartID column is not squeezed to nothing');
		const dl = page.locator('#parts-body a', { hasText: 'Download' });
		await dl.scrollIntoViewIfNeeded();
		const db = await dl.boundingBox();
		check(db && db.x >= 0 && db.x + db.width <= 375, `Download is inside the 375 px screen (x=${db && db.x})`);
		await page.screenshot({ path: join(ARTIFACTS, 'capture-phone-parts.png') });

		check(pageErrors.length === 0, `no JavaScript errors (${pageErrors.join('; ')})`);
		console.log('PASS');
	} catch (e) {
		try { await page.screenshot({ path: join(ARTIFACTS, 'checks-failure.png') }); } catch (_) { /* ignore */ }
		throw e;
	} finally {
		await context.close().catch(() => {});
		links.close();
		rmSync(work, { recursive: true, force: true });
	}
}

main().then(() => { clearTimeout(watchdog); process.exit(0); }, (e) => {
	console.error(`FAIL at step "${step}": ${e && e.stack ? e.stack : e}`);
	clearTimeout(watchdog);
	process.exit(1);
});
